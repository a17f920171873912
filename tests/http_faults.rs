//! The connection layer (`utopia_node_agent::http`) in-process, over raw sockets, with a service
//! whose code panics: in a handler, in admission, and while rendering the refusal that should
//! report the panic (or any other refusal). Every such request must end in an answer (or a
//! close) within its deadline, free its connection slot, and leave the server serving.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use utopia_node_agent::http::{
    Admission, HttpError, Lane, Request, RequestHead, Response, Server, ServerConfig, Service,
    StatusCode,
};

/// Panics on `/panic` (a handler thread), `/inline-panic` (served on the I/O thread) and
/// `/admit-panic` (admission, on the I/O thread); every refusal it is asked to render panics
/// too (a bug in the error page: what reports a failure fails as well).
struct Faulty;

impl Service for Faulty {
    fn admit(&self, head: &RequestHead) -> Admission {
        match head.path.as_str() {
            "/admit-panic" => panic!("an admission bug"),
            "/inline-panic" => Admission::Serve(Lane::Inline),
            "/slow-panic" => Admission::Serve(Lane::Slow),
            _ => Admission::Serve(Lane::Quick),
        }
    }

    fn serve(&self, request: Request) -> Response {
        if request.head.path.ends_with("panic") {
            panic!("a handler bug");
        }
        Response::new(StatusCode::OK, b"fine".to_vec())
    }

    fn reject(&self, error: &HttpError) -> Response {
        panic!("a bug rendering the refusal {error}");
    }
}

/// A server with `max_connections` slots and a 2 s idle timeout.
fn start(max_connections: usize) -> (Server, SocketAddr) {
    let mut config = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        max_connections,
        Duration::from_secs(2),
    );
    config.quick_threads = 1;
    config.slow_threads = 1;
    let server = Server::start(config, std::sync::Arc::new(Faulty)).expect("server starts");
    let addr = server.local_addr();
    (server, addr)
}

/// Sends `request` on a new connection and reads until the server closes it (or 5 s pass):
/// what arrived, and whether the server closed the connection.
fn exchange(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    stream.write_all(request).expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    break false;
                }
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

#[test]
fn a_handler_panic_whose_500_cannot_be_rendered_is_still_answered_and_frees_its_slot() {
    // Two slots: a connection left at a handler for ever would hold one, and after two of them
    // every newcomer would get 503 (or nothing).
    let (server, addr) = start(2);
    for path in ["/panic", "/slow-panic", "/panic", "/slow-panic", "/panic"] {
        let (answer, closed) = exchange(addr, &get(path));
        assert!(
            answer.starts_with("HTTP/1.1 500 "),
            "{path}: not a 500 within 5 s: {answer:?}"
        );
        assert!(answer.contains("Connection: close\r\n"), "{answer:?}");
        assert!(closed, "{path}: the connection was left open");
    }
    let (answer, _) = exchange(
        addr,
        b"GET /fine HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(answer.ends_with("fine"), "{answer:?}");
    assert_eq!(server.shutdown(Duration::from_secs(2)), 0);
}

#[test]
fn a_refusal_that_panics_on_the_io_thread_costs_one_request_not_the_server() {
    let (server, addr) = start(4);
    // Admission and inline serving run on the I/O thread; so does every refusal the layer
    // finds itself (a malformed head, a late one, an oversize body).
    let cases: [(&str, &[u8], &str); 4] = [
        ("admission", &get("/admit-panic"), "HTTP/1.1 500 "),
        ("inline", &get("/inline-panic"), "HTTP/1.1 500 "),
        (
            "malformed",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "HTTP/1.1 400 ",
        ),
        (
            "too large",
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n",
            "HTTP/1.1 413 ",
        ),
    ];
    for (what, request, status) in cases {
        let (answer, closed) = exchange(addr, request);
        assert!(answer.starts_with(status), "{what}: {answer:?}");
        assert!(closed, "{what}: the connection was left open");
        let (answer, _) = exchange(
            addr,
            b"GET /fine HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        assert!(
            answer.starts_with("HTTP/1.1 200 "),
            "after {what}: the server no longer serves: {answer:?}"
        );
    }
    // A head that never completes: its 408 is rendered on the I/O thread when the deadline
    // passes (2 s here).
    let (answer, closed) = exchange(addr, b"GET /fine HTTP/1.1\r\nHost:");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(closed);
    let (answer, _) = exchange(
        addr,
        b"GET /fine HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert_eq!(server.shutdown(Duration::from_secs(2)), 0);
}
