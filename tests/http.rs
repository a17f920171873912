//! The connection layer (`utopia_node_agent::http`) in-process, over raw sockets: keep-alive,
//! pipelining, bodies and their limits, `Expect: 100-continue`, HEAD, oversize and malformed
//! heads, request smuggling shapes, deadlines, the connection cap, and shutdown. Every test
//! runs its own server on a free loopback port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use utopia_node_agent::http::{
    Admission, HttpError, Lane, Request, RequestHead, Response, Server, ServerConfig, Service,
    StatusCode,
};

/// Echoes what it got; `/deny` is refused at admission (like a missing token), `/slow` sleeps
/// on a handler, `/panic` panics; `/cached` is answered at admission with a shared body (like
/// the API's cached documents), `/inline` is served on the I/O thread; `/block-io?MS` holds the
/// I/O thread that admits it for MS milliseconds. Records which thread admitted each path.
#[derive(Default)]
struct Echo {
    served: AtomicUsize,
    admitted: AtomicUsize,
    admitted_on: Mutex<Vec<(String, String)>>,
}

impl Echo {
    /// The thread that admitted the request for `path` (the I/O thread holding its connection).
    fn thread_of(&self, path: &str) -> String {
        let seen = self.admitted_on.lock().unwrap();
        let found = seen.iter().find(|(p, _)| p == path).map(|(_, t)| t.clone());
        found.unwrap_or_else(|| panic!("{path} was not admitted; seen: {seen:?}"))
    }
}

/// `/cached`'s body: large enough that a socket buffer cannot take many at once.
fn cached_body() -> Arc<[u8]> {
    static BODY: std::sync::OnceLock<Arc<[u8]>> = std::sync::OnceLock::new();
    Arc::clone(BODY.get_or_init(|| {
        (0..300_000u32)
            .map(|i| b'a' + (i % 26) as u8)
            .collect::<Vec<u8>>()
            .into()
    }))
}

impl Service for Echo {
    fn admit(&self, head: &RequestHead) -> Admission {
        if head.path == "/admit-panic" {
            panic!("an admission bug");
        }
        if head.path == "/deny" {
            return Admission::Answer(Response::new(StatusCode::UNAUTHORIZED, b"denied".to_vec()));
        }
        self.admitted.fetch_add(1, Ordering::SeqCst);
        let thread = std::thread::current().name().unwrap_or("").to_string();
        self.admitted_on
            .lock()
            .unwrap()
            .push((head.path.clone(), thread));
        if head.path == "/block-io" {
            let ms = head.query.as_deref().and_then(|q| q.parse().ok());
            std::thread::sleep(Duration::from_millis(ms.unwrap_or(300)));
        }
        if head.path == "/cached" {
            return Admission::Answer(
                Response::new(StatusCode::OK, cached_body())
                    .with_header("Content-Type", "text/plain"),
            );
        }
        Admission::Serve(if head.path.starts_with("/slow") {
            Lane::Slow
        } else if head.path.starts_with("/inline") || head.path == "/block-io" {
            Lane::Inline
        } else {
            Lane::Quick
        })
    }

    fn serve(&self, request: Request) -> Response {
        self.served.fetch_add(1, Ordering::SeqCst);
        let head = &request.head;
        if head.path == "/slow" {
            let ms = head
                .query
                .as_deref()
                .and_then(|q| q.parse().ok())
                .unwrap_or(1500);
            std::thread::sleep(Duration::from_millis(ms));
        }
        if head.path == "/panic" {
            panic!("a handler bug");
        }
        let mut body =
            format!("{} {} {}:", head.method, head.path, request.body.len()).into_bytes();
        body.extend_from_slice(&request.body);
        Response::new(StatusCode::OK, body).with_header("Content-Type", "text/plain")
    }

    fn reject(&self, error: &HttpError) -> Response {
        Response::new(
            error.status,
            format!("{}: {}", error.code, error.message).into_bytes(),
        )
    }
}

struct TestServer {
    server: Option<Server>,
    addr: SocketAddr,
    service: Arc<Echo>,
}

impl TestServer {
    fn start(edit: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config =
            ServerConfig::new("127.0.0.1:0".parse().unwrap(), 64, Duration::from_secs(5));
        config.max_body_bytes = 1024;
        edit(&mut config);
        let service = Arc::new(Echo::default());
        let server = Server::start(config, service.clone()).expect("server starts");
        TestServer {
            addr: server.local_addr(),
            server: Some(server),
            service,
        }
    }

    fn connect(&self) -> Client {
        let stream = TcpStream::connect(self.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown(Duration::from_millis(200));
        }
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => panic!(
                "read failed: {e}; have {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// The next answer; `head` when it answers a HEAD request (no body follows).
    fn answer_to(&mut self, head: bool) -> Answer {
        let end = loop {
            if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            assert!(
                self.fill(),
                "connection closed before an answer: {:?}",
                self.buf
            );
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        self.buf.drain(..end + 4);
        let length: usize = if head {
            0
        } else {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or(0)
        };
        while self.buf.len() < length {
            assert!(self.fill(), "connection closed inside a body");
        }
        let body = self.buf.drain(..length).collect();
        Answer {
            status,
            headers,
            body,
        }
    }

    fn answer(&mut self) -> Answer {
        self.answer_to(false)
    }

    /// True when the server closed the connection (EOF, or a reset) with nothing more sent.
    fn closed(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => self.buf.is_empty(),
            Ok(n) => panic!(
                "unexpected bytes: {:?}",
                String::from_utf8_lossy(&chunk[..n])
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
            Err(e) => panic!("connection still open ({e})"),
        }
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

#[test]
fn keep_alive_and_pipelined_requests_are_answered_in_order() {
    let server = TestServer::start(|_| {});
    let mut client = server.connect();
    for i in 0..3 {
        client.send(get(&format!("/one/{i}")).as_bytes());
        let answer = client.answer();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("connection"), Some("keep-alive"));
        assert!(answer.header("date").is_some_and(|d| d.ends_with(" GMT")));
        assert_eq!(answer.text(), format!("GET /one/{i} 0:"));
    }
    // Pipelined, with a slow one first: the fast ones wait their turn.
    let mut pipeline = String::from("GET /slow?300 HTTP/1.1\r\nHost: t\r\n\r\n");
    for i in 0..5 {
        pipeline.push_str(&get(&format!("/p/{i}")));
    }
    pipeline.push_str("POST /p/body HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    pipeline.push_str(&get("/p/last"));
    client.send(pipeline.as_bytes());
    assert_eq!(client.answer().text(), "GET /slow 0:");
    for i in 0..5 {
        assert_eq!(client.answer().text(), format!("GET /p/{i} 0:"));
    }
    assert_eq!(client.answer().text(), "POST /p/body 5:hello");
    assert_eq!(client.answer().text(), "GET /p/last 0:");
}

#[test]
fn cached_and_inline_answers_keep_order_and_framing_under_pipelining() {
    let server = TestServer::start(|_| {});
    let mut client = server.connect();
    // Cached answers (300 KB each: more than the socket takes at once, so a write is cut short
    // and finished later) between inline and handler answers, and HEAD of the cached document,
    // all pipelined while the client does not read yet.
    let mut pipeline = String::new();
    for i in 0..3 {
        pipeline.push_str(&get("/cached"));
        pipeline.push_str(&get(&format!("/inline/{i}")));
        pipeline.push_str("HEAD /cached HTTP/1.1\r\nHost: t\r\n\r\n");
        pipeline.push_str(&format!(
            "POST /inline/b{i} HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello"
        ));
        pipeline.push_str(&get(&format!("/q/{i}")));
    }
    client.send(pipeline.as_bytes());
    std::thread::sleep(Duration::from_millis(200));
    let body = cached_body();
    for i in 0..3 {
        let answer = client.answer();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("content-length"), Some("300000"));
        assert_eq!(answer.header("content-type"), Some("text/plain"));
        assert!(answer.body == *body, "the cached body arrives whole");
        assert_eq!(client.answer().text(), format!("GET /inline/{i} 0:"));
        let head = client.answer_to(true);
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-length"), Some("300000"));
        assert_eq!(client.answer().text(), format!("POST /inline/b{i} 5:hello"));
        assert_eq!(client.answer().text(), format!("GET /q/{i} 0:"));
    }
    // A cached answer on a closing connection: whole, then the connection closes.
    client.send(b"GET /cached HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let last = client.answer();
    assert_eq!(last.header("connection"), Some("close"));
    assert!(last.body == *body);
    assert!(client.closed());
    assert_eq!(
        server.service.served.load(Ordering::SeqCst),
        9,
        "cached answers skip serve"
    );
}

#[test]
fn connection_close_and_http_1_0_close_after_the_answer() {
    let server = TestServer::start(|_| {});
    let mut client = server.connect();
    client.send(b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    let answer = client.answer();
    assert_eq!(answer.text(), "GET /a 0:");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(
        client.closed(),
        "the pipelined request after close is not served"
    );

    let mut client = server.connect();
    client.send(b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(client.answer().header("connection"), Some("close"));
    assert!(client.closed());

    let mut client = server.connect();
    client.send(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(client.answer().header("connection"), Some("keep-alive"));
    client.send(b"GET /again HTTP/1.0\r\n\r\n");
    assert_eq!(client.answer().text(), "GET /again 0:");
}

#[test]
fn bodies_by_length_and_chunked_with_the_limit() {
    let server = TestServer::start(|_| {});
    let mut client = server.connect();
    client.send(b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(client.answer().text(), "POST /b 3:abc");
    client.send(
        b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
    );
    assert_eq!(client.answer().text(), "POST /c 5:abcde");
    // Exactly the limit (1024 here) is fine.
    let body = vec![b'x'; 1024];
    client.send(
        format!(
            "POST /max HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    client.send(&body);
    assert!(client.answer().text().starts_with("POST /max 1024:"));

    // Declared above the limit: 413 at once and the connection closes (its body is unread).
    let mut client = server.connect();
    client.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1025\r\n\r\n");
    let answer = client.answer();
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed());

    // Chunked past the limit: 413 once the limit is crossed.
    let mut client = server.connect();
    client.send(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    client.send(format!("400\r\n{}\r\n", "y".repeat(1024)).as_bytes());
    client.send(b"1\r\nz\r\n");
    let answer = client.answer();
    assert_eq!(answer.status, 413);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed());
}

#[test]
fn smuggling_shapes_are_refused_and_the_connection_closed() {
    let server = TestServer::start(|_| {});
    let cases: [(&[u8], u16); 9] = [
        // CL.TE: a front end using Content-Length would pass "0\r\n\r\nG" as the body.
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc",
            400,
        ),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n+3\r\nabc\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
            400,
        ),
    ];
    for (raw, status) in cases {
        let mut client = server.connect();
        client.send(raw);
        // A second request behind it must never be answered.
        let _ = client.stream.write_all(get("/smuggled").as_bytes());
        let answer = client.answer();
        assert_eq!(
            answer.status,
            status,
            "{:?}: {}",
            String::from_utf8_lossy(raw),
            answer.text()
        );
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(client.closed(), "{:?}", String::from_utf8_lossy(raw));
    }
    assert_eq!(server.service.served.load(Ordering::SeqCst), 0);
}

#[test]
fn malformed_and_oversize_heads() {
    let server = TestServer::start(|_| {});
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    ] {
        let mut client = server.connect();
        client.send(raw);
        let answer = client.answer();
        assert_eq!(answer.status, 400, "{:?}", String::from_utf8_lossy(raw));
        assert!(client.closed());
    }
    // 16 KiB of head: 431, without waiting for the end of it.
    let mut client = server.connect();
    client.send(
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}",
            "a".repeat(17 * 1024)
        )
        .as_bytes(),
    );
    let answer = client.answer();
    assert_eq!(answer.status, 431);
    let fields: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
    let mut client = server.connect();
    client.send(format!("GET / HTTP/1.1\r\nHost: t\r\n{fields}\r\n").as_bytes());
    assert_eq!(client.answer().status, 431);
    // An unknown expectation.
    let mut client = server.connect();
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\nExpect: magic\r\n\r\n");
    assert_eq!(client.answer().status, 417);
    assert_eq!(server.service.served.load(Ordering::SeqCst), 0);
    // The server lives on.
    let mut client = server.connect();
    client.send(get("/alive").as_bytes());
    assert_eq!(client.answer().status, 200);
}

#[test]
fn expect_continue_only_after_admission() {
    let server = TestServer::start(|_| {});
    let mut client = server.connect();
    client
        .send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = client.answer();
    assert_eq!(interim.status, 100);
    client.send(b"data");
    let answer = client.answer();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), "POST /x 4:data");

    // Refused at admission: the final answer comes at once, never 100 Continue, and the
    // connection closes since the body was not read.
    let mut client = server.connect();
    client.send(
        b"POST /deny HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    let answer = client.answer();
    assert_eq!(answer.status, 401);
    assert!(client.closed());

    // Declared too large: 413, never 100 Continue.
    let mut client = server.connect();
    client.send(
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(client.answer().status, 413);
}

#[test]
fn no_body_byte_is_read_before_admission() {
    let server = TestServer::start(|c| c.max_body_bytes = 1 << 20);
    let mut client = server.connect();
    let started = Instant::now();
    // 2 GB declared, nothing sent: the refusal comes at once.
    client.send(b"POST /deny HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000000\r\n\r\n");
    let answer = client.answer();
    assert_eq!(answer.status, 401);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(answer.header("connection"), Some("close"));
    // A refusal without a body keeps the connection.
    let mut client = server.connect();
    client.send(b"GET /deny HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(client.answer().status, 401);
    client.send(get("/after").as_bytes());
    assert_eq!(client.answer().text(), "GET /after 0:");
}

#[test]
fn head_answers_carry_the_length_and_no_body() {
    let server = TestServer::start(|_| {});
    let mut client = server.connect();
    client.send(get("/thing").as_bytes());
    assert_eq!(client.answer().text(), "GET /thing 0:");
    client.send(b"HEAD /thing HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = client.answer_to(true);
    assert_eq!(head.status, 200);
    // The length of the body a HEAD request gets from this service: "HEAD /thing 0:".
    assert_eq!(head.header("content-length"), Some("14"));
    // Had a body been sent after the HEAD answer, this would read it as the next answer.
    client.send(get("/next").as_bytes());
    assert_eq!(client.answer().text(), "GET /next 0:");
}

#[test]
fn a_panicking_handler_or_admission_costs_one_request() {
    let server = TestServer::start(|_| {});
    let mut client = server.connect();
    client.send(get("/panic").as_bytes());
    assert_eq!(client.answer().status, 500);
    client.send(get("/fine").as_bytes());
    assert_eq!(client.answer().status, 200);
    // A panic in admission runs on the I/O thread: it must not take the server with it.
    let mut client = server.connect();
    client.send(get("/admit-panic").as_bytes());
    assert_eq!(client.answer().status, 500);
    let mut client = server.connect();
    client.send(get("/fine").as_bytes());
    assert_eq!(client.answer().status, 200);
}

#[test]
fn random_bytes_in_random_pieces_never_break_the_server() {
    let server = TestServer::start(|c| {
        c.idle_timeout = Duration::from_millis(300);
        c.head_timeout = Duration::from_millis(300);
    });
    let mut rng = fastrand::Rng::with_seed(9);
    let mut left_open = Vec::new();
    let pieces: [&[u8]; 12] = [
        b"GET / HTTP/1.1\r\n",
        b"POST /x HTTP/1.1\r\n",
        b"Host: t\r\n",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Expect: 100-continue\r\n",
        b"\r\n",
        b"5\r\nhello\r\n",
        b"0\r\n\r\n",
        b"\n",
        b"\x00\xff",
        b"Connection: close\r\n",
    ];
    for _ in 0..150 {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        let mut bytes = Vec::new();
        for _ in 0..rng.usize(1..12) {
            if rng.bool() {
                bytes.extend_from_slice(pieces[rng.usize(..pieces.len())]);
            } else {
                bytes.extend((0..rng.usize(1..20)).map(|_| rng.u8(..)));
            }
        }
        let mut at = 0;
        while at < bytes.len() {
            let end = (at + rng.usize(1..=bytes.len() - at)).min(bytes.len());
            if stream.write_all(&bytes[at..end]).is_err() {
                break;
            }
            at = end;
        }
        // Half of them hang up at once, half leave the connection to the deadlines.
        if rng.bool() {
            drop(stream);
        } else {
            left_open.push(stream);
        }
    }
    let mut client = server.connect();
    client.send(get("/alive").as_bytes());
    assert_eq!(client.answer().text(), "GET /alive 0:");
}

#[test]
fn idle_connections_close_quietly_and_heads_have_a_total_deadline() {
    let server = TestServer::start(|c| {
        c.idle_timeout = Duration::from_millis(600);
        c.head_timeout = Duration::from_millis(600);
    });
    // An idle keep-alive connection: closed at the idle timeout with nothing sent (no
    // unprompted 408 or 500).
    let mut client = server.connect();
    client.send(get("/a").as_bytes());
    assert_eq!(client.answer().status, 200);
    let started = Instant::now();
    assert!(client.closed());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A byte every 100 ms keeps every read short but the head never completes: 408 at the
    // total deadline.
    let mut client = server.connect();
    let started = Instant::now();
    let request = get("/drip");
    let mut answered = None;
    for byte in request.as_bytes()[..request.len() - 2].iter() {
        if client.stream.write_all(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
        client.stream.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 256];
        if let Ok(n) = client.stream.read(&mut chunk) {
            answered = Some((started.elapsed(), chunk[..n].to_vec()));
            client.stream.set_nonblocking(false).unwrap();
            break;
        }
        client.stream.set_nonblocking(false).unwrap();
    }
    let (when, bytes) = answered.expect("the dripping client got an answer");
    assert!(
        bytes.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    assert!(when < Duration::from_millis(1500), "{when:?}");
    assert_eq!(server.service.admitted.load(Ordering::SeqCst), 1);
}

#[test]
fn at_capacity_the_oldest_idle_connection_is_shed() {
    let server = TestServer::start(|c| c.max_connections = 4);
    let mut idle: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    std::thread::sleep(Duration::from_millis(100));
    // A fifth connection is served; the oldest idle one made room.
    let mut client = server.connect();
    client.send(get("/fifth").as_bytes());
    assert_eq!(client.answer().status, 200);
    assert!(idle[0].closed(), "the oldest idle connection was shed");
    // A connection whose request is already in the kernel's buffer is served, not shed.
    let mut sent = server.connect();
    sent.send(get("/sent").as_bytes());
    std::thread::sleep(Duration::from_millis(50));
    for _ in 0..6 {
        idle.push(server.connect());
    }
    assert_eq!(sent.answer().text(), "GET /sent 0:");
}

#[test]
fn at_capacity_with_every_slot_busy_the_answer_is_503_at_once() {
    let server = TestServer::start(|c| c.max_connections = 2);
    let mut busy: Vec<Client> = (0..2).map(|_| server.connect()).collect();
    for client in &mut busy {
        client.send(b"GET /slow?1000 HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut client = server.connect();
    let answer = client.answer();
    assert_eq!(answer.status, 503);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(started.elapsed() < Duration::from_millis(500));
    for client in &mut busy {
        assert_eq!(client.answer().status, 200);
    }
}

#[test]
fn at_capacity_a_client_that_does_not_read_its_answers_is_shed() {
    let server = TestServer::start(|c| c.max_connections = 8);
    // Every slot holds a slow reader: it pipelines requests for a big document (far more than
    // the socket buffers hold) and never reads, so the server is stuck writing to it.
    let pipeline = get("/cached").repeat(60);
    let mut slow: Vec<Client> = (0..8).map(|_| server.connect()).collect();
    for client in &mut slow {
        client.send(pipeline.as_bytes());
    }
    // Long enough for each to have written nothing for over a second.
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let mut client = server.connect();
    client.send(get("/health").as_bytes());
    let answer = client.answer();
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{:?}", answer.text());
    assert_eq!(answer.text(), "GET /health 0:");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    // The slow reader that made no progress the longest was closed to make room: reading all
    // it holds ends (EOF or reset) well before its write deadline (5 s).
    let shed = slow.iter_mut().map(|c| {
        c.stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    });
    assert!(
        shed.filter(|&closed| closed).count() >= 1,
        "no slow reader was shed"
    );
}

#[test]
fn at_capacity_a_client_reading_its_answers_slowly_is_not_shed() {
    let server = TestServer::start(|c| c.max_connections = 4);
    // Every slot holds a client reading a long pipeline of big answers (24 MB, more than the
    // socket buffers hold) slowly but steadily (256 KiB every 50 ms): its answers keep moving,
    // so it is not shed.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = server.connect();
            std::thread::spawn(move || {
                client.send(get("/cached").repeat(80).as_bytes());
                let mut got = Vec::new();
                let mut chunk = vec![0u8; 256 * 1024];
                let expected = 80 * cached_body().len();
                while got.len() < expected {
                    std::thread::sleep(Duration::from_millis(50));
                    match client.stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&chunk[..n]),
                    }
                }
                client.buf = got;
                (0..80).all(|_| {
                    let answer = client.answer();
                    answer.status == 200 && answer.body == cached_body()[..]
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let mut client = server.connect();
    assert_eq!(client.answer().status, 503);
    assert!(started.elapsed() < Duration::from_millis(500));
    for reader in readers {
        assert!(
            reader.join().unwrap(),
            "a slow but steady reader lost answers"
        );
    }
}

#[test]
fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let mut server = TestServer::start(|_| {});
    let mut client = server.connect();
    client.send(b"GET /slow?300 HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut idle = server.connect();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let left = server
        .server
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(2));
    assert_eq!(left, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    let answer = client.answer();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(idle.closed());
    assert!(TcpStream::connect(server.addr).is_err(), "still accepting");
}

#[test]
fn connections_are_spread_over_the_io_threads_and_answers_return_to_their_owner() {
    for threads in [1, 2, 3] {
        let server = TestServer::start(|c| c.io_threads = threads);
        let mut clients: Vec<Client> = (0..3 * threads).map(|_| server.connect()).collect();
        for (i, client) in clients.iter_mut().enumerate() {
            client.send(get(&format!("/inline/{threads}/{i}")).as_bytes());
            assert_eq!(
                client.answer().text(),
                format!("GET /inline/{threads}/{i} 0:")
            );
        }
        // Each I/O thread holds its share: connections opened one after another go to the
        // thread with the fewest.
        let mut held: Vec<String> = (0..clients.len())
            .map(|i| server.service.thread_of(&format!("/inline/{threads}/{i}")))
            .collect();
        held.sort();
        let expected: Vec<String> = if threads == 1 {
            vec!["api-io".to_string(); 3]
        } else {
            (0..threads)
                .flat_map(|t| std::iter::repeat_n(format!("api-io-{t}"), 3))
                .collect()
        };
        assert_eq!(held, expected, "{threads} I/O threads");
        // Answers made on handler threads (quick and slow lanes), pipelined on every
        // connection at once, each come back to the I/O thread holding its connection.
        for (i, client) in clients.iter_mut().enumerate() {
            client.send(format!("{}{}", get(&format!("/q/{i}")), get("/slow?50")).as_bytes());
        }
        for (i, client) in clients.iter_mut().enumerate() {
            assert_eq!(client.answer().text(), format!("GET /q/{i} 0:"));
            assert_eq!(client.answer().text(), "GET /slow 0:");
        }
    }
}

#[test]
fn io_threads_start_as_connections_come_and_end_once_they_hold_none() {
    let server = TestServer::start(|c| {
        c.io_threads = 4;
        c.io_idle_end = Duration::from_millis(300);
    });
    let running = || server.server.as_ref().unwrap().io_threads_running();
    let wait_for = |n: usize| {
        let until = Instant::now() + Duration::from_secs(5);
        while running() != n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        running()
    };
    // An idle server runs one I/O thread.
    assert_eq!(running(), 1);
    for round in 0..2 {
        // Four busy clients: each gets a thread of its own (started for it), and answers made
        // on handler threads come back to the thread holding the connection.
        let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
        for (i, client) in clients.iter_mut().enumerate() {
            client.send(
                format!(
                    "{}{}",
                    get(&format!("/inline/{round}/{i}")),
                    get("/slow?20")
                )
                .as_bytes(),
            );
            assert_eq!(
                client.answer().text(),
                format!("GET /inline/{round}/{i} 0:")
            );
            assert_eq!(client.answer().text(), "GET /slow 0:");
        }
        let mut held: Vec<String> = (0..4)
            .map(|i| server.service.thread_of(&format!("/inline/{round}/{i}")))
            .collect();
        held.sort();
        assert_eq!(
            held,
            ["api-io-0", "api-io-1", "api-io-2", "api-io-3"],
            "round {round}"
        );
        assert_eq!(running(), 4);
        // A fifth shares a thread: no more than io_threads run.
        let mut fifth = server.connect();
        fifth.send(get(&format!("/fifth/{round}")).as_bytes());
        assert_eq!(fifth.answer().status, 200);
        assert_eq!(running(), 4);
        // Once their connections are gone, the started threads end; the first stays.
        drop(clients);
        drop(fifth);
        assert_eq!(wait_for(1), 1, "round {round}: threads still running");
        assert_eq!(running(), 1);
    }
    // Stopping with started threads running ends every one of them.
    let mut clients: Vec<Client> = (0..3).map(|_| server.connect()).collect();
    for client in &mut clients {
        client.send(get("/inline/last").as_bytes());
        assert_eq!(client.answer().status, 200);
    }
    assert_eq!(running(), 3);
    let mut server = server;
    let started = Instant::now();
    let left = server
        .server
        .take()
        .unwrap()
        .shutdown(Duration::from_millis(500));
    assert_eq!(left, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(TcpStream::connect(server.addr).is_err(), "still accepting");
}

#[test]
fn at_capacity_a_thread_with_nothing_to_shed_hands_the_connection_to_one_that_has() {
    let server = TestServer::start(|c| {
        c.io_threads = 2;
        c.max_connections = 4;
    });
    // Four connections, two on each I/O thread (learnt from the thread admitting a request).
    let mut clients: Vec<Client> = (0..4).map(|_| server.connect()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(get(&format!("/inline/{i}")).as_bytes());
        assert_eq!(client.answer().status, 200);
    }
    let (mut busy, mut idle): (Vec<_>, Vec<_>) = clients
        .into_iter()
        .enumerate()
        .partition(|(i, _)| server.service.thread_of(&format!("/inline/{i}")) == "api-io-0");
    assert_eq!((busy.len(), idle.len()), (2, 2));
    // Thread 0's connections wait for a handler: nothing there can be shed.
    for (_, client) in &mut busy {
        client.send(get("/slow?2000").as_bytes());
    }
    std::thread::sleep(Duration::from_millis(100));
    // Thread 1 is held for a moment by a request it admits, so thread 0 alone accepts the
    // next connection; the cap is reached and thread 0 has nothing idle: it must hand the
    // connection to thread 1, which sheds its idle connection for it.
    let (_, blocker) = &mut idle[0];
    blocker.send(get("/block-io?400").as_bytes());
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    let mut client = server.connect();
    client.send(get("/after").as_bytes());
    let answer = client.answer();
    let took = started.elapsed();
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.text(), "GET /after 0:");
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    assert_eq!(server.service.thread_of("/block-io"), "api-io-1");
    assert_eq!(
        server.service.thread_of("/after"),
        "api-io-1",
        "the new connection is held where room was made"
    );
    assert!(idle[1].1.closed(), "thread 1's idle connection was shed");
    assert_eq!(idle[0].1.answer().text(), "GET /block-io 0:");
    for (_, client) in &mut busy {
        assert_eq!(client.answer().text(), "GET /slow 0:");
    }
}
