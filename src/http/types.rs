//! The request and response types the connection layer hands to and takes from a [`Service`]
//! (crate::http::Service): method, status code, headers, request head and body, and the
//! response with its encoding on the wire.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

/// A request method. The common ones are constants; any other token is kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Method(MethodName);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum MethodName {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other(Box<str>),
}

impl Method {
    pub const GET: Method = Method(MethodName::Get);
    pub const HEAD: Method = Method(MethodName::Head);
    pub const POST: Method = Method(MethodName::Post);
    pub const PUT: Method = Method(MethodName::Put);
    pub const DELETE: Method = Method(MethodName::Delete);
    pub const PATCH: Method = Method(MethodName::Patch);
    pub const OPTIONS: Method = Method(MethodName::Options);

    /// The method as sent (methods are case-sensitive: `get` is not `GET`).
    pub fn from_token(token: &str) -> Method {
        Method(match token {
            "GET" => MethodName::Get,
            "HEAD" => MethodName::Head,
            "POST" => MethodName::Post,
            "PUT" => MethodName::Put,
            "DELETE" => MethodName::Delete,
            "PATCH" => MethodName::Patch,
            "OPTIONS" => MethodName::Options,
            other => MethodName::Other(other.into()),
        })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            MethodName::Get => "GET",
            MethodName::Head => "HEAD",
            MethodName::Post => "POST",
            MethodName::Put => "PUT",
            MethodName::Delete => "DELETE",
            MethodName::Patch => "PATCH",
            MethodName::Options => "OPTIONS",
            MethodName::Other(token) => token,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An HTTP status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(u16);

impl StatusCode {
    pub const CONTINUE: StatusCode = StatusCode(100);
    pub const OK: StatusCode = StatusCode(200);
    pub const CREATED: StatusCode = StatusCode(201);
    pub const ACCEPTED: StatusCode = StatusCode(202);
    pub const NO_CONTENT: StatusCode = StatusCode(204);
    pub const BAD_REQUEST: StatusCode = StatusCode(400);
    pub const UNAUTHORIZED: StatusCode = StatusCode(401);
    pub const FORBIDDEN: StatusCode = StatusCode(403);
    pub const NOT_FOUND: StatusCode = StatusCode(404);
    pub const METHOD_NOT_ALLOWED: StatusCode = StatusCode(405);
    pub const REQUEST_TIMEOUT: StatusCode = StatusCode(408);
    pub const CONFLICT: StatusCode = StatusCode(409);
    pub const LENGTH_REQUIRED: StatusCode = StatusCode(411);
    pub const PAYLOAD_TOO_LARGE: StatusCode = StatusCode(413);
    pub const URI_TOO_LONG: StatusCode = StatusCode(414);
    pub const EXPECTATION_FAILED: StatusCode = StatusCode(417);
    pub const UNPROCESSABLE_ENTITY: StatusCode = StatusCode(422);
    pub const REQUEST_HEADER_FIELDS_TOO_LARGE: StatusCode = StatusCode(431);
    pub const INTERNAL_SERVER_ERROR: StatusCode = StatusCode(500);
    pub const NOT_IMPLEMENTED: StatusCode = StatusCode(501);
    pub const BAD_GATEWAY: StatusCode = StatusCode(502);
    pub const SERVICE_UNAVAILABLE: StatusCode = StatusCode(503);
    pub const GATEWAY_TIMEOUT: StatusCode = StatusCode(504);
    pub const HTTP_VERSION_NOT_SUPPORTED: StatusCode = StatusCode(505);

    pub fn as_u16(self) -> u16 {
        self.0
    }

    /// The reason phrase sent on the status line.
    pub fn canonical_reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            204 => "No Content",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Content Too Large",
            414 => "URI Too Long",
            417 => "Expectation Failed",
            422 => "Unprocessable Content",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }

    /// 1xx, 204 and 304 answers carry no body.
    fn allows_body(self) -> bool {
        !(self.0 < 200 || self.0 == 204 || self.0 == 304)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.canonical_reason())
    }
}

/// A request's header fields in the order sent; names compare case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct Headers(Vec<(String, Vec<u8>)>);

impl Headers {
    pub fn new(fields: Vec<(String, Vec<u8>)>) -> Headers {
        Headers(fields)
    }

    /// Every value of the field `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The value of a field sent once; `Err(())` when it was sent more than once.
    #[allow(clippy::result_unit_err)]
    pub fn get_single(&self, name: &str) -> Result<Option<&[u8]>, ()> {
        let mut values = self
            .0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice());
        let first = values.next();
        match values.next() {
            Some(_) => Err(()),
            None => Ok(first),
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// True when a comma-separated field (such as `Connection`) lists `token`.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).any(|value| {
            value
                .split(|b| *b == b',')
                .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
        })
    }
}

/// How a request's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body (no `Content-Length`, or `Content-Length: 0`).
    Empty,
    /// `Content-Length: n`, n > 0.
    Exact(u64),
    /// `Transfer-Encoding: chunked`: unknown until the last chunk.
    Chunked,
}

/// Everything about a request but its body: what a service decides on before any body byte is
/// read.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    /// The path of the request target, as sent (not percent-decoded).
    pub path: String,
    /// The query string after `?`, as sent.
    pub query: Option<String>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Headers,
    pub body_length: BodyLength,
    pub peer: SocketAddr,
}

/// A complete request, body included, as a handler thread receives it.
#[derive(Debug, Clone)]
pub struct Request {
    pub head: RequestHead,
    pub body: Vec<u8>,
}

/// A response body: bytes of its own, or bytes shared with a cache (a cached document is
/// written to the socket from the cache itself, with no copy per request).
#[derive(Debug, Clone)]
pub enum Body {
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Body {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Body::Owned(bytes) => bytes,
            Body::Shared(bytes) => bytes,
        }
    }
}

impl std::ops::Deref for Body {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::Owned(bytes)
    }
}

impl From<Arc<[u8]>> for Body {
    fn from(bytes: Arc<[u8]>) -> Body {
        Body::Shared(bytes)
    }
}

/// An answer: status, header fields, body. `Content-Length`, `Date` and `Connection` are added
/// by the connection layer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    pub body: Body,
    /// Close the connection after this answer.
    pub close: bool,
}

impl Response {
    pub fn new(status: StatusCode, body: impl Into<Body>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
            close: false,
        }
    }

    /// Adds a header field (names are written as given).
    pub fn with_header(
        mut self,
        name: &'static str,
        value: impl Into<Cow<'static, str>>,
    ) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The body bytes sent on the wire: none for a HEAD request (whose answer carries the GET
    /// answer's `Content-Length`) or a status that allows no body.
    pub fn wire_body(&self, head_only: bool) -> &[u8] {
        if head_only || !self.status.allows_body() {
            &[]
        } else {
            &self.body
        }
    }

    /// Appends the status line and header fields, blank line included, to `out`.
    pub fn encode_head(&self, out: &mut Vec<u8>, keep_alive: bool, date: &str) {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(self.status.as_u16()));
        out.push(b' ');
        out.extend_from_slice(self.status.canonical_reason().as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            // A value with a line break would split the answer; the services never build one,
            // but the layer refuses to send it rather than trust that.
            if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.status.allows_body() {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, self.body.len() as u64);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n\r\n".as_slice()
        } else {
            b"Connection: close\r\n\r\n".as_slice()
        });
    }

    /// The bytes on the wire: status line, fields, and the body unless `head_only` (a HEAD
    /// request, whose answer carries the GET answer's `Content-Length` and no body).
    pub fn encode(&self, head_only: bool, keep_alive: bool, date: &str) -> Vec<u8> {
        let body = self.wire_body(head_only);
        let mut out = Vec::with_capacity(160 + body.len());
        self.encode_head(&mut out, keep_alive, date);
        out.extend_from_slice(body);
        out
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_case_sensitive_tokens() {
        assert_eq!(Method::from_token("GET"), Method::GET);
        assert_ne!(Method::from_token("get"), Method::GET);
        assert_eq!(Method::from_token("BREW").as_str(), "BREW");
        assert!(matches!(Method::from_token("HEAD"), Method::HEAD));
    }

    #[test]
    fn headers_lookup() {
        let headers = Headers::new(vec![
            ("Host".into(), b"x".to_vec()),
            ("connection".into(), b"keep-alive, Close".to_vec()),
            ("X-A".into(), b"1".to_vec()),
            ("x-a".into(), b"2".to_vec()),
        ]);
        assert_eq!(headers.get("HOST"), Some(b"x".as_slice()));
        assert!(headers.has_token("Connection", "close"));
        assert!(!headers.has_token("Connection", "upgrade"));
        assert!(headers.get_single("x-a").is_err());
        assert_eq!(headers.get_single("host"), Ok(Some(b"x".as_slice())));
        assert_eq!(headers.get_single("nope"), Ok(None));
    }

    #[test]
    fn encoding_adds_length_date_and_connection() {
        let response = Response::new(StatusCode::OK, b"hello".to_vec())
            .with_header("Content-Type", "text/plain")
            .with_header("X-Bad", "a\r\nInjected: yes");
        let wire = String::from_utf8(response.encode(false, true, "D")).unwrap();
        assert_eq!(
            wire,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nDate: D\r\nContent-Length: 5\r\n\
             Connection: keep-alive\r\n\r\nhello"
        );
        let head = String::from_utf8(response.encode(true, false, "D")).unwrap();
        assert!(head.ends_with("Content-Length: 5\r\nConnection: close\r\n\r\n"));
        let shared: Arc<[u8]> = Arc::from(b"hello".as_slice());
        let cached =
            Response::new(StatusCode::OK, shared).with_header("Content-Type", "text/plain");
        assert_eq!(cached.encode(false, true, "D"), {
            let mut same = response.clone();
            same.headers.pop();
            same.encode(false, true, "D")
        });
        let mut head = Vec::new();
        cached.encode_head(&mut head, true, "D");
        assert!(head.ends_with(b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\n"));
        assert_eq!(cached.wire_body(false), b"hello");
        assert_eq!(cached.wire_body(true), b"");
        let mut long = Vec::new();
        push_decimal(&mut long, 0);
        push_decimal(&mut long, 7319);
        push_decimal(&mut long, u64::MAX);
        assert_eq!(long, format!("07319{}", u64::MAX).into_bytes());
        let empty = Response::new(StatusCode::NO_CONTENT, b"x".to_vec());
        let wire = String::from_utf8(empty.encode(false, true, "D")).unwrap();
        assert!(!wire.contains("Content-Length"));
        assert!(wire.ends_with("\r\n\r\n"));
        assert_eq!(empty.wire_body(false), b"");
    }
}
