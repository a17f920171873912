//! A request head from raw bytes (with `httparse`), and the framing rules that keep one request
//! from being read as two: exactly one way to know where the body ends, or a 4xx.
//!
//! Refused here: a malformed request line or field (400), a head above the size limit or with
//! too many fields (431), `Transfer-Encoding` together with `Content-Length`, on HTTP/1.0 or with
//! any coding but a lone `chunked` (400 / 501), `Content-Length` sent twice, empty, signed or not
//! a plain decimal number (400), HTTP/1.1 without exactly one `Host` (400), an `Expect` other
//! than `100-continue` (417).

use crate::http::types::{BodyLength, Headers, Method, RequestHead};
use crate::http::HttpError;
use std::net::SocketAddr;

/// The most header fields a request may carry.
pub const MAX_HEADERS: usize = 64;

/// A complete head and what the connection needs to know about it.
#[derive(Debug)]
pub struct ParsedHead {
    pub head: RequestHead,
    /// Bytes of the head, blank line included.
    pub head_len: usize,
    /// The client wants the connection kept after the answer.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1.
    pub expect_continue: bool,
}

#[derive(Debug)]
pub enum HeadStatus {
    /// More bytes are needed.
    Partial,
    Complete(Box<ParsedHead>),
}

fn too_large(max_head: usize) -> HttpError {
    HttpError::new(
        crate::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header_too_large",
        format!("the request head is larger than {max_head} bytes or has more than {MAX_HEADERS} fields"),
    )
}

/// Parses the head at the start of `buf` (leading blank lines are skipped, as RFC 9112 allows).
pub fn parse_head(buf: &[u8], peer: SocketAddr, max_head: usize) -> Result<HeadStatus, HttpError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut fields);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_head {
                Err(too_large(max_head))
            } else {
                Ok(HeadStatus::Partial)
            };
        }
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(too_large(max_head)),
        Err(e) => return Err(HttpError::bad_request(format!("malformed request: {e}"))),
    };
    if head_len > max_head {
        return Err(too_large(max_head));
    }
    let (Some(method), Some(target), Some(minor_version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HttpError::bad_request("malformed request line"));
    };
    let (path, query) = split_target(target)?;
    let headers = Headers::new(
        request
            .headers
            .iter()
            .map(|h| (h.name.to_string(), h.value.to_vec()))
            .collect(),
    );
    let body_length = body_length(&headers, minor_version)?;

    match headers.get_single("host") {
        Err(()) => return Err(HttpError::bad_request("more than one Host header")),
        Ok(None) if minor_version == 1 => {
            return Err(HttpError::bad_request(
                "an HTTP/1.1 request needs a Host header",
            ))
        }
        Ok(_) => {}
    }
    let close = headers.has_token("connection", "close");
    let keep_alive = if minor_version == 1 {
        !close
    } else {
        !close && headers.has_token("connection", "keep-alive")
    };
    let mut expect_continue = false;
    if minor_version == 1 {
        let mut expectations = headers.get_all("expect");
        if let Some(value) = expectations.next() {
            if expectations.next().is_some()
                || !value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
            {
                return Err(HttpError::new(
                    crate::http::StatusCode::EXPECTATION_FAILED,
                    "expectation_failed",
                    "only `Expect: 100-continue` is supported",
                ));
            }
            expect_continue = true;
        }
    }
    Ok(HeadStatus::Complete(Box::new(ParsedHead {
        head: RequestHead {
            method: Method::from_token(method),
            path,
            query,
            minor_version,
            headers,
            body_length,
            peer,
        },
        head_len,
        keep_alive,
        expect_continue,
    })))
}

/// Path and query of an origin-form (`/p?q`) or absolute-form (`http://h/p?q`) target.
fn split_target(target: &str) -> Result<(String, Option<String>), HttpError> {
    let origin = if target.starts_with('/') || target == "*" {
        target
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &target[7..]
        } else if lower.starts_with("https://") {
            &target[8..]
        } else {
            return Err(HttpError::bad_request(
                "the request target must be a path such as /health",
            ));
        };
        match rest.find(['/', '?']) {
            Some(at) if rest.as_bytes()[at] == b'/' => &rest[at..],
            Some(at) => return Ok(("/".to_string(), Some(rest[at + 1..].to_string()))),
            None => "/",
        }
    };
    Ok(match origin.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (origin.to_string(), None),
    })
}

/// Where the body ends, from `Content-Length` / `Transfer-Encoding` (RFC 9112 6.3), refusing
/// every combination two parsers could read differently.
fn body_length(headers: &Headers, minor_version: u8) -> Result<BodyLength, HttpError> {
    let mut encodings = headers.get_all("transfer-encoding");
    let mut lengths = headers.get_all("content-length");
    let encoding = encodings.next();
    let length = lengths.next();
    if lengths.next().is_some() {
        return Err(HttpError::bad_request(
            "Content-Length is sent more than once",
        ));
    }
    if let Some(encoding) = encoding {
        if length.is_some() {
            return Err(HttpError::bad_request(
                "Content-Length and Transfer-Encoding must not be sent together",
            ));
        }
        if minor_version == 0 {
            return Err(HttpError::bad_request(
                "Transfer-Encoding is not allowed in an HTTP/1.0 request",
            ));
        }
        if encodings.next().is_some() || !encoding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
            return Err(HttpError::new(
                crate::http::StatusCode::NOT_IMPLEMENTED,
                "unsupported_transfer_encoding",
                "only `Transfer-Encoding: chunked` is supported",
            ));
        }
        return Ok(BodyLength::Chunked);
    }
    let Some(length) = length else {
        return Ok(BodyLength::Empty);
    };
    let digits = length.trim_ascii();
    // `u64::from_str` would take `+3`; the grammar is 1*DIGIT and nothing else.
    let valid = !digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit);
    let parsed = valid
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| {
            HttpError::bad_request(format!(
                "Content-Length {:?} is not a decimal number of bytes",
                String::from_utf8_lossy(length)
            ))
        })?;
    Ok(match parsed {
        0 => BodyLength::Empty,
        n => BodyLength::Exact(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::StatusCode;

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    fn parse(raw: &str) -> Result<ParsedHead, HttpError> {
        match parse_head(raw.as_bytes(), peer(), 16 * 1024)? {
            HeadStatus::Complete(head) => Ok(*head),
            HeadStatus::Partial => panic!("partial: {raw:?}"),
        }
    }

    fn status(raw: &str) -> u16 {
        parse(raw).unwrap_err().status.as_u16()
    }

    #[test]
    fn a_plain_get() {
        let parsed = parse("GET /api/v1/x?tail=5 HTTP/1.1\r\nHost: a\r\n\r\nrest").unwrap();
        assert_eq!(parsed.head.method, Method::GET);
        assert_eq!(parsed.head.path, "/api/v1/x");
        assert_eq!(parsed.head.query.as_deref(), Some("tail=5"));
        assert_eq!(parsed.head.body_length, BodyLength::Empty);
        assert_eq!(
            parsed.head_len,
            "GET /api/v1/x?tail=5 HTTP/1.1\r\nHost: a\r\n\r\n".len()
        );
        assert!(parsed.keep_alive);
        assert!(!parsed.expect_continue);
    }

    #[test]
    fn partial_heads_wait_and_oversize_ones_are_431() {
        let partial = parse_head(b"GET / HTTP/1.1\r\nHo", peer(), 64).unwrap();
        assert!(matches!(partial, HeadStatus::Partial));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(100));
        let e = parse_head(big.as_bytes(), peer(), 64).unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let complete_but_big = format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n",
            "a".repeat(100)
        );
        let e = parse_head(complete_but_big.as_bytes(), peer(), 64).unwrap_err();
        assert_eq!(e.status.as_u16(), 431);
        let many: String = (0..70).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            431
        );
    }

    #[test]
    fn malformed_is_400() {
        for raw in [
            "GARBAGE\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET relative HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(status(raw), 400, "{raw:?}");
        }
    }

    #[test]
    fn content_length_must_be_one_plain_number() {
        let ok = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert_eq!(ok.head.body_length, BodyLength::Exact(3));
        let zero = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(zero.head.body_length, BodyLength::Empty);
        for value in [
            "+3",
            "-1",
            "3 3",
            "3,3",
            "0x10",
            "",
            "99999999999999999999",
            " 3a",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(status(&raw), 400, "{value:?}");
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            400
        );
    }

    #[test]
    fn transfer_encoding_rules() {
        let chunked =
            parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(chunked.head.body_length, BodyLength::Chunked);
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        for te in ["gzip, chunked", "chunked, chunked", "identity", "chunked;x"] {
            let raw = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
            assert_eq!(status(&raw), 501, "{te}");
        }
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
    }

    #[test]
    fn connection_and_expect() {
        let close = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(!close.keep_alive);
        let old = parse("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!old.keep_alive);
        let old_ka = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(old_ka.keep_alive);
        let expect = parse(
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
        )
        .unwrap();
        assert!(expect.expect_continue);
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nExpect: fast\r\n\r\n"),
            417
        );
    }

    #[test]
    fn targets() {
        let abs = parse("GET http://h:1/health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            (abs.head.path.as_str(), abs.head.query.as_deref()),
            ("/health", Some("x=1"))
        );
        let bare = parse("GET http://h HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(bare.head.path, "/");
        let leading = parse("\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(leading.head.path, "/x");
    }
}
