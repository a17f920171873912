//! The API contract of the running agent: health, bearer auth, error statuses and bodies, body
//! limits, and the connection limits that keep it alive under a flood of idle connections.

mod common;

use common::{try_request, Agent, AgentOptions, TOKEN};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn health_is_public_and_reports_components() {
    let agent = Agent::start(|_| {});
    let response = agent.request("GET", "/health", &[], b"");
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let health = response.json();
    // Degraded only while docker is unreachable (no engine on this machine; see tests/health.rs).
    let docker_down = health["components"]["docker"]
        .as_str()
        .is_some_and(|s| s.starts_with("unavailable"));
    assert_eq!(
        health["status"],
        if docker_down { "degraded" } else { "ok" }
    );
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_secs"].is_u64());
    assert_eq!(health["components"]["gpu"], "ok");
    assert_eq!(health["components"]["api"], "ok");
    assert_eq!(health["components"]["system"], "ok");
    assert!(health["components"]["platform"]
        .as_str()
        .unwrap()
        .starts_with("disabled"));
    assert!(!response.text().contains(TOKEN));
}

#[test]
fn api_needs_the_bearer_token() {
    let agent = Agent::start(|_| {});
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let cases: [&[(&str, &str)]; 4] = [
        &[],
        &[("Authorization", wrong.as_str())],
        &[("Authorization", basic.as_str())],
        &[("Authorization", "Bearer ")],
    ];
    for headers in cases {
        let response = agent.request("GET", "/api/v1/metrics", headers, b"");
        assert_eq!(response.status, 401, "{headers:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        assert_eq!(response.error_code(), "unauthorized");
        assert!(!response.text().contains(TOKEN));
    }
    // Unknown paths under /api/ do not tell an unauthenticated caller what exists.
    let response = agent.request("GET", "/api/v1/secret-admin", &[], b"");
    assert_eq!(response.status, 401);
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
}

#[test]
fn errors_have_the_right_status_and_a_json_body() {
    let agent = Agent::start(|_| {});

    let response = agent.get("/api/v1/nothing-here");
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), "not_found");
    assert!(response.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/api/v1/nothing-here"));
    assert_eq!(agent.request("GET", "/", &[], b"").status, 404);

    for method in ["POST", "DELETE", "PUT", "PATCH"] {
        let response = agent.api(method, "/api/v1/metrics", b"");
        assert_eq!(response.status, 405, "{method}");
        assert_eq!(response.header("allow"), Some("GET"));
        assert_eq!(response.error_code(), "method_not_allowed");
    }
    let response = agent.request("POST", "/health", &[], b"{}");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET"));

    // A request that is not HTTP gets a 400, never a 500, and the server lives on.
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    stream
        .write_all(b"GARBAGE\r\nno: colon\r\nbad header\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut raw);
    let response = common::parse_response(&raw).unwrap();
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
}

#[test]
fn bodies_above_one_mib_are_refused() {
    let agent = Agent::start(|_| {});
    let auth = format!("Bearer {TOKEN}");
    let big = vec![b'x'; 1024 * 1024 + 1];

    // Announced by Content-Length: refused before the body is read. Without a token the
    // answer is 401 (issue 13: the token is checked first, so an unauthenticated caller learns
    // nothing, not even the size limit); either way no body byte is read.
    let response = agent.request("POST", "/api/v1/metrics", &[("Authorization", &auth)], &big);
    assert_eq!(response.status, 413);
    assert_eq!(response.error_code(), "payload_too_large");
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(
        agent.request("POST", "/api/v1/metrics", &[], &big).status,
        401
    );

    // Chunked, with no length announced: refused once more than 1 MiB has been read.
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    let head = format!(
        "POST /api/v1/containers HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'y'; 64 * 1024];
    for _ in 0..17 {
        let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
        let _ = stream.write_all(&chunk);
        let _ = stream.write_all(b"\r\n");
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut raw);
    let response = common::parse_response(&raw).unwrap();
    assert_eq!(response.status, 413, "{}", response.text());

    // Exactly 1 MiB is read (the route then decides: not a container spec).
    let limit = vec![b'z'; 1024 * 1024];
    let response = agent.request(
        "POST",
        "/api/v1/containers",
        &[("Authorization", &auth)],
        &limit,
    );
    assert_eq!(response.status, 400, "{}", response.text());

    // A GET announcing a body is answered without reading it, and the connection closed.
    let response = agent.request(
        "GET",
        "/api/v1/metrics",
        &[("Authorization", &auth)],
        &limit,
    );
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    let response = agent.request("GET", "/api/v1/tunnels", &[("Authorization", &auth)], b"x");
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("takes no request body"),
        "{}",
        response.text()
    );
}

#[test]
fn tokens_never_reach_the_log() {
    let agent = Agent::start_with(
        |c| c.log_level = utopia_node_agent::config::LogLevel::Trace,
        AgentOptions::default(),
    );
    let wrong = "Bearer wrong-token-that-is-long-enough";
    agent.request("GET", "/api/v1/metrics", &[("Authorization", wrong)], b"");
    agent.get("/api/v1/metrics");
    let log = agent.log();
    assert!(
        log.contains("GET /api/v1/metrics -> 200"),
        "access log: {log}"
    );
    assert!(
        log.contains("GET /api/v1/metrics -> 401"),
        "access log: {log}"
    );
    assert!(!log.contains(TOKEN), "token leaked: {log}");
    assert!(
        !log.contains("wrong-token-that-is-long-enough"),
        "leaked: {log}"
    );
}

/// Threads of a process, from /proc.
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_idle_connections_is_bounded_and_the_api_recovers() {
    let agent = Agent::start(|c| {
        c.agent_api.max_connections = 32;
        c.agent_api.idle_timeout_secs = 1;
    });
    // Let start-up threads (the docker events watcher, workers) settle before counting.
    std::thread::sleep(Duration::from_millis(500));
    let baseline = thread_count(agent.pid());
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(agent.addr).ok())
        .collect();
    assert!(flood.len() >= 200, "opened {} connections", flood.len());
    std::thread::sleep(Duration::from_millis(500));
    let during = thread_count(agent.pid());
    assert!(
        during <= baseline + 32 + 4,
        "threads are not made per connection: {baseline} before, {during} during the flood"
    );

    // At the cap (32) the idle connections are shed to make room: a real request is answered
    // at once (the old bound of 30 s is kept as the assertion; the flood tests below ask 1 s).
    let started = Instant::now();
    let response = try_request(agent.addr, "GET", "/health", &[], b"").unwrap();
    assert_eq!(response.status, 200);
    assert!(started.elapsed() < Duration::from_secs(30));

    // Once the flood goes, the API answers at once.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let response = try_request(agent.addr, "GET", "/health", &[], b"").unwrap();
        if response.status == 200 && started.elapsed() < Duration::from_millis(500) {
            break;
        }
        assert!(Instant::now() < deadline, "API did not recover");
    }
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
}

#[test]
fn slow_readers_in_every_slot_cannot_keep_health_out() {
    let agent = Agent::start(|c| c.agent_api.max_connections = 8);
    let document = agent.get("/api/v1/openapi.json");
    assert_eq!(document.status, 200);
    // Each slow reader pipelines requests for the big document, far more than the socket
    // buffers hold (16 MiB of answers), and never reads: the agent is stuck writing to it.
    let count = ((16 << 20) / document.body.len().max(1)).clamp(16, 4000);
    let request = format!(
        "GET /api/v1/openapi.json HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let pipeline = request.repeat(count);
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(agent.addr).unwrap();
            stream
                .set_write_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            // What the kernel does not take at once stays unsent: the agent stops reading a
            // connection while it writes to it.
            let _ = stream.write_all(pipeline.as_bytes());
            stream
        })
        .collect();
    // Each has written nothing for over a second.
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    let response = try_request(agent.addr, "GET", "/health", &[], b"").unwrap();
    let took = started.elapsed();
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    drop(slow);
}

#[test]
fn keep_alive_connections_serve_several_requests() {
    let agent = Agent::start(|_| {});
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let request =
        format!("GET /api/v1/metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    for _ in 0..3 {
        stream.write_all(request.as_bytes()).unwrap();
        let mut buffer = [0u8; 65536];
        let n = std::io::Read::read(&mut stream, &mut buffer).unwrap();
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (or 5 s pass).
fn raw_exchange(agent: &Agent, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut raw);
    raw
}

#[test]
fn head_works_wherever_get_does() {
    let agent = Agent::start(|_| {});
    let auth = format!("Bearer {TOKEN}");
    for (path, headers) in [
        ("/health", vec![]),
        ("/api/v1/metrics", vec![("Authorization", auth.as_str())]),
    ] {
        let get = agent.request("GET", path, &headers, b"");
        let head = agent.request("HEAD", path, &headers, b"");
        assert_eq!(head.status, 200, "{path}");
        assert!(head.body.is_empty(), "{path}: {}", head.text());
        assert_eq!(head.header("content-type"), get.header("content-type"));
        let length: usize = head.header("content-length").unwrap().parse().unwrap();
        // The metrics document carries a timestamp, so lengths may differ by a digit or two.
        assert!(
            length.abs_diff(get.body.len()) < 8,
            "{path}: {length} vs {}",
            get.body.len()
        );
    }
    assert_eq!(
        agent.request("HEAD", "/api/v1/metrics", &[], b"").status,
        401
    );
    let response = agent.api("HEAD", "/api/v1/containers/abc/stop", b"");
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
}

#[test]
fn the_token_is_checked_before_any_body_byte_is_read() {
    let agent = Agent::start(|_| {});
    // No token, 2 GB announced, nothing sent: 401 at once, and the connection closes.
    let started = Instant::now();
    let raw = raw_exchange(
        &agent,
        b"POST /api/v1/containers HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n\r\n",
    );
    let response = common::parse_response(&raw).unwrap();
    assert_eq!(response.status, 401, "{}", response.text());
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // Expect: 100-continue without a token: 401, never 100 Continue.
    let raw = raw_exchange(
        &agent,
        b"POST /api/v1/containers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\
          Expect: 100-continue\r\n\r\n",
    );
    assert!(
        raw.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(!String::from_utf8_lossy(&raw).contains("100 Continue"));

    // With the token: 100 Continue, then the body is read and judged (here: not a valid create).
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let head = format!(
        "POST /api/v1/containers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    std::io::Read::read_exact(&mut stream, &mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"{}").unwrap();
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut raw);
    let response = common::parse_response(&raw).unwrap();
    assert_eq!(response.status, 400, "{}", response.text());

    // Too large with the token: 413 and no 100 Continue either.
    let head = format!(
        "POST /api/v1/containers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 2000000000\r\nExpect: 100-continue\r\n\r\n"
    );
    let raw = raw_exchange(&agent, head.as_bytes());
    assert!(
        raw.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn ambiguous_requests_are_400() {
    let agent = Agent::start(|_| {});
    let auth = format!("Bearer {TOKEN}");
    // Two Authorization headers: which one counts is a guess, so neither does.
    let response = agent.request(
        "GET",
        "/api/v1/metrics",
        &[
            ("Authorization", &auth),
            ("Authorization", "Bearer other-token-0123456789"),
        ],
        b"",
    );
    assert_eq!(response.status, 400, "{}", response.text());
    let response = agent.request(
        "GET",
        "/api/v1/metrics",
        &[("Authorization", &auth), ("Authorization", &auth)],
        b"",
    );
    assert_eq!(response.status, 400);

    for framing in [
        "Content-Length: +3\r\n",
        "Content-Length: 3\r\nContent-Length: 3\r\n",
        "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let head = format!(
            "POST /api/v1/containers HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n{framing}\r\nabc"
        );
        let response = common::parse_response(&raw_exchange(&agent, head.as_bytes())).unwrap();
        assert_eq!(response.status, 400, "{framing:?}: {}", response.text());
        assert_eq!(response.error_code(), "bad_request");
        assert_eq!(response.header("connection"), Some("close"));
    }
    // Oversize head: 431 with the JSON error body.
    let head = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let response = common::parse_response(&raw_exchange(&agent, head.as_bytes())).unwrap();
    assert_eq!(response.status, 431);
    assert_eq!(response.error_code(), "header_too_large");
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_quietly() {
    let agent = Agent::start(|c| c.agent_api.idle_timeout_secs = 1);
    let mut stream = TcpStream::connect(agent.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = std::io::Read::read(&mut stream, &mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // Nothing more is sent: no unprompted 500 (or any answer) at the idle timeout, only EOF.
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut rest);
    assert!(
        rest.is_empty(),
        "unprompted: {}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// VmRSS of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// How a flood connection misbehaves.
#[derive(Clone, Copy)]
enum Abuse {
    /// Connects and sends nothing.
    Idle,
    /// Sends half a request line, then nothing.
    HalfSent,
    /// Sends one byte of a never-ending head every round.
    Dripping,
}

/// 2,000 abusive connections to `addr` for `duration`, reconnecting (at most 250 per round of
/// 200 ms) whatever the server closes; loopback only. Returns (connections opened, closed by
/// the server).
fn flood(
    addr: std::net::SocketAddr,
    duration: Duration,
    stop: &std::sync::atomic::AtomicBool,
) -> (usize, usize) {
    use std::sync::atomic::Ordering;
    const COUNT: usize = 2000;
    let connect = |abuse: Abuse| -> Option<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        if let Abuse::HalfSent = abuse {
            let _ = stream.write_all(b"GET /api/v1/metr");
        }
        stream.set_nonblocking(true).ok()?;
        Some(stream)
    };
    let kinds = [Abuse::Idle, Abuse::HalfSent, Abuse::Dripping];
    let mut opened = 0;
    let mut closed = 0;
    let mut conns: Vec<(Abuse, Option<TcpStream>, usize)> = (0..COUNT)
        .map(|i| {
            let abuse = kinds[i % 3];
            opened += 1;
            (abuse, connect(abuse), 0)
        })
        .collect();
    let held = conns.iter().filter(|(_, s, _)| s.is_some()).count();
    assert!(
        held >= COUNT * 95 / 100,
        "only {held} of {COUNT} flood connections opened"
    );
    let drip = b"GET /api/v1/metrics HTTP/1.1\r\nHost: x\r\nX-Drip: ";
    let started = Instant::now();
    while started.elapsed() < duration && !stop.load(Ordering::SeqCst) {
        let mut reconnects = 0;
        for (abuse, stream, sent) in conns.iter_mut() {
            let alive = match stream {
                None => false,
                Some(s) => {
                    let mut buf = [0u8; 512];
                    let gone = std::io::Read::read(s, &mut buf).is_ok()
                        || matches!(&*abuse, Abuse::Dripping)
                            && s.write(&[*drip.get(*sent).unwrap_or(&b'a')])
                                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock);
                    *sent += 1;
                    !gone
                }
            };
            if !alive && reconnects < 250 {
                if stream.is_some() {
                    closed += 1;
                }
                reconnects += 1;
                opened += 1;
                *stream = connect(*abuse);
                *sent = 0;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (opened, closed)
}

/// Runs the flood while a legitimate client asks for /health every 100 ms: each answer must
/// come within 1 s, and at once after the flood. Prints the figures.
fn health_survives_a_flood(agent: &Agent, label: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    // The test process holds the 2,000 connections: it needs the file descriptors too.
    let limit = utopia_node_agent::http::limits::raise_nofile_limit().unwrap_or(0);
    assert!(
        limit >= 2500,
        "this test holds 2,000 connections: it needs an open-file hard limit of at least 2500 \
         (ulimit -Hn), not {limit}"
    );
    let pid = agent.pid();
    let rss_before = rss_kib(pid);
    let threads_before = thread_count(pid);
    let stop = AtomicBool::new(false);
    let addr = agent.addr;
    std::thread::scope(|scope| {
        let flooder = scope.spawn(|| flood(addr, Duration::from_secs(8), &stop));
        std::thread::sleep(Duration::from_millis(1500));
        let mut latencies = Vec::new();
        let mut rss_max = 0;
        let mut threads_max = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            let t = Instant::now();
            let response = try_request(addr, "GET", "/health", &[], b"");
            let took = t.elapsed();
            let response = response.unwrap_or_else(|e| panic!("{label}: /health failed: {e}"));
            assert_eq!(response.status, 200, "{label}");
            assert!(
                took < Duration::from_secs(1),
                "{label}: /health took {took:?}"
            );
            latencies.push(took);
            rss_max = rss_max.max(rss_kib(pid));
            threads_max = threads_max.max(thread_count(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::SeqCst);
        let (opened, closed) = flooder.join().unwrap();
        latencies.sort();
        let p50 = latencies[latencies.len() / 2];
        let max = latencies[latencies.len() - 1];
        eprintln!(
            "{label}: {} /health requests during the flood: p50 {p50:?}, max {max:?}; \
             flood connections opened {opened}, closed by the agent {closed}; \
             agent RSS {rss_before} KiB before, {rss_max} KiB max during; \
             threads {threads_before} before, {threads_max} max during",
            latencies.len()
        );
        assert!(opened >= 2000);
        if label.contains("idle_timeout_secs 2") {
            assert!(
                closed >= 1900,
                "{label}: deadlines cut only {closed} connections"
            );
        }
        // The I/O threads (8 at most by default, one running before) start as connections
        // come; none is started per connection.
        assert!(
            threads_max <= threads_before + 7 + 2,
            "{label}: no thread per connection: {threads_before} -> {threads_max}"
        );
        assert!(
            rss_max < rss_before + 32 * 1024,
            "{label}: RSS grew from {rss_before} to {rss_max} KiB"
        );
    });
    // The flood's connections are gone: answered at once.
    let t = Instant::now();
    let response = try_request(addr, "GET", "/health", &[], b"").unwrap();
    assert_eq!(response.status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{label}: {:?}",
        t.elapsed()
    );
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
}

#[test]
fn a_flood_of_2000_abusive_connections_cannot_starve_health_with_the_defaults() {
    // max_connections 1024 (the default): the agent sheds the flood as it comes.
    let agent = Agent::start(|_| {});
    health_survives_a_flood(&agent, "default config (1024 connections)");
}

#[test]
fn a_flood_of_2000_abusive_connections_held_at_once_cannot_starve_health() {
    // Room for the whole flood: the agent holds every connection, each at a small fixed cost.
    let agent = Agent::start(|c| c.agent_api.max_connections = 4096);
    health_survives_a_flood(&agent, "max_connections 4096");
}

/// Open file descriptors of a process.
fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

#[test]
fn a_low_open_file_limit_caps_connections_and_running_out_is_survived_quietly() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(dir.path());
    let path = common::write_config(dir.path(), &config);
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = std::process::Command::new(common::agent_binary());
    command
        .arg("--config")
        .arg(&path)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(command.spawn().unwrap());
    let pid = child.0.id();
    let addr: std::net::SocketAddr = config.agent_api.listen_address.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while try_request(addr, "GET", "/health", &[], b"").is_err() {
        assert!(Instant::now() < deadline, "agent did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&log_path).unwrap();
    // The soft limit (64) was raised to the hard one (256) and the cap fitted under it.
    assert!(
        text.contains("max_connections lowered from 1024 to 128"),
        "{text}"
    );

    // 300 idle connections against a cap of 128: shed, never out of descriptors.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(fd_count(pid) <= 256);
    let t = Instant::now();
    assert_eq!(
        try_request(addr, "GET", "/health", &[], b"")
            .unwrap()
            .status,
        200
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    drop(flood);

    // Now take the descriptors away under the running agent: accept fails with EMFILE. The
    // agent sheds idle connections to make room, keeps answering, and logs the error once,
    // not once per failed accept.
    std::thread::sleep(Duration::from_millis(300));
    let open = fd_count(pid);
    let tight = libc::rlimit {
        rlim_cur: open + 20,
        rlim_max: 256,
    };
    // SAFETY: prlimit on our own child.
    assert_eq!(
        unsafe {
            libc::prlimit(
                pid as libc::pid_t,
                libc::RLIMIT_NOFILE,
                &tight,
                std::ptr::null_mut(),
            )
        },
        0
    );
    let flood: Vec<TcpStream> = (0..200)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..5 {
        let t = Instant::now();
        let response = try_request(addr, "GET", "/health", &[], b"").unwrap();
        assert_eq!(response.status, 200);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    drop(flood);
    let text = std::fs::read_to_string(&log_path).unwrap();
    let reports = text.matches("cannot accept an API connection").count();
    assert!((1..=2).contains(&reports), "{reports} reports:\n{text}");
}

#[test]
fn a_flood_whose_heads_never_finish_is_cut_at_the_head_deadline() {
    // Short deadlines: half-sent and dripping heads get 408 after 2 s however slowly they drip,
    // idle connections are closed, and the flood has to keep reconnecting.
    let agent = Agent::start(|c| {
        c.agent_api.max_connections = 4096;
        c.agent_api.idle_timeout_secs = 2;
    });
    health_survives_a_flood(&agent, "max_connections 4096, idle_timeout_secs 2");
}

#[test]
fn health_shows_each_samplers_last_run() {
    let agent = Agent::start(|_| {});
    let health = agent.request("GET", "/health", &[], b"").json();
    for sampler in ["system", "gpu"] {
        let run = &health["samplers"][sampler];
        assert!(
            run["samples"].as_u64().unwrap_or(0) >= 1,
            "{sampler}: {run}"
        );
        assert!(run["last_duration_ms"].is_u64(), "{sampler}: {run}");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let agent = Agent::start(|_| {});
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    // Answers made on the I/O thread (404, 401) and on handler threads (200) interleave.
    let pipeline = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /api/v1/nothing HTTP/1.1\r\nHost: x\r\n{auth}\r\n\
         GET /api/v1/metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n\
         GET /api/v1/metrics HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let raw = raw_exchange(&agent, pipeline.as_bytes());
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| &text[at + 9..at + 12])
        .collect();
    assert_eq!(
        statuses,
        ["200", "404", "200", "401", "200", "200"],
        "{text}"
    );
    let health = text.find("\"uptime_secs\"").unwrap();
    let metrics = text.find("\"gpus\"").unwrap();
    assert!(health < metrics, "{text}");
    assert_eq!(
        text.matches("\"uptime_secs\"").count(),
        2,
        "HEAD sent no body: {text}"
    );
}
