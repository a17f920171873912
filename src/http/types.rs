//! The request and response types the connection layer hands to and takes from a [`Service`]
//! (crate::http::Service): method, status code, headers, request head and body, and the
//! response with its encoding on the wire.

use std::fmt;
use std::net::SocketAddr;

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

/// An answer: status, header fields, body. `Content-Length`, `Date` and `Connection` are added
/// by the connection layer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// Close the connection after this answer.
    pub close: bool,
}

impl Response {
    pub fn new(status: StatusCode, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body,
            close: false,
        }
    }

    /// Adds a header field (names are written as given).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire: status line, fields, and the body unless `head_only` (a HEAD
    /// request, whose answer carries the GET answer's `Content-Length` and no body).
    pub fn encode(&self, head_only: bool, keep_alive: bool, date: &str) -> Vec<u8> {
        let body: &[u8] = if self.status.allows_body() {
            &self.body
        } else {
            &[]
        };
        let mut out = Vec::with_capacity(160 + body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                self.status.as_u16(),
                self.status.canonical_reason()
            )
            .as_bytes(),
        );
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
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(if keep_alive {
            b"Connection: keep-alive\r\n\r\n".as_slice()
        } else {
            b"Connection: close\r\n\r\n".as_slice()
        });
        if !head_only {
            out.extend_from_slice(body);
        }
        out
    }
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
        let empty = Response::new(StatusCode::NO_CONTENT, b"x".to_vec());
        let wire = String::from_utf8(empty.encode(false, true, "D")).unwrap();
        assert!(!wire.contains("Content-Length"));
        assert!(wire.ends_with("\r\n\r\n"));
    }
}
