//! The connection cap's accounting under abuse, on the real binary: after a storm of
//! connections past the cap (shed, refused 503, reset, half-sent, pipelined, closed while being
//! answered) the agent must hold exactly what is open. A count that leaked upwards would shed
//! or refuse connections although none is open; one that went below zero would refuse every
//! connection.

mod common;

use common::{Agent, TOKEN};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CAP: usize = 8;

/// Closes `stream` with a reset instead of a FIN (SO_LINGER 0).
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a descriptor the stream owns, with a live `linger` of that size.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

/// One round of abuse from one client thread: `CAP * 3` connections at once, each doing one
/// kind of thing, then all dropped (some reset).
fn abuse(addr: SocketAddr, round: usize) {
    let health = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut held = Vec::new();
    for i in 0..CAP * 3 {
        let Ok(mut stream) = TcpStream::connect(addr) else {
            continue;
        };
        let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = match (i + round) % 6 {
            // Idle.
            0 => Ok(()),
            // Half a head.
            1 => stream.write_all(b"GET /health HTTP/1.1\r\nHo"),
            // Pipelined requests never read.
            2 => stream.write_all(&health.repeat(32)),
            // A body announced, half sent.
            3 => stream.write_all(
                format!(
                    "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \
                     {TOKEN}\r\nContent-Length: 100\r\n\r\n{{\"image\":"
                )
                .as_bytes(),
            ),
            // A request answered with Connection: close, never read.
            4 => stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
            // Garbage.
            _ => stream.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        };
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(50));
    for (i, stream) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            reset(stream);
        } else {
            drop(stream);
        }
    }
}

/// True when the server closed `stream` (EOF or reset) within `wait`; false when it is still
/// open with nothing sent.
fn closed_within(mut stream: &TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => panic!("the server sent something unasked"),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

#[test]
fn after_a_storm_past_the_cap_every_slot_is_free_again() {
    let agent = Agent::start(|c| {
        c.agent_api.max_connections = CAP;
        c.agent_api.idle_timeout_secs = 30;
    });
    let addr = agent.addr;
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(6) {
        let clients: Vec<_> = (0..4)
            .map(|k| std::thread::spawn(move || abuse(addr, round * 4 + k)))
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        round += 1;
    }
    // Everything the storm opened is closed; the agent notices within moments (a lingering
    // connection's client is gone too).
    std::thread::sleep(Duration::from_millis(500));

    // CAP idle connections now fit: none is shed to make room, none refused.
    let mut idle: Vec<TcpStream> = (0..CAP)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    for (i, stream) in idle.iter().enumerate() {
        assert!(
            !closed_within(stream, Duration::from_millis(300)),
            "after {round} rounds, idle connection {i} of {CAP} was closed or refused: the \
             connection count leaked; log:\n{}",
            agent.log()
        );
    }
    // Each of them is served.
    for (i, stream) in idle.iter_mut().enumerate() {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 200 "),
            "connection {i}: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    drop(idle);
    std::thread::sleep(Duration::from_millis(300));
    // One more than the cap: one idle connection is shed (with several I/O threads, the one
    // idle the longest on the thread that took the newcomer), the newcomer is served.
    let full: Vec<TcpStream> = (0..CAP)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let response = common::try_request(addr, "GET", "/health", &[], b"").unwrap();
    assert_eq!(response.status, 200);
    let shed = full
        .iter()
        .filter(|stream| closed_within(stream, Duration::from_millis(300)))
        .count();
    assert_eq!(
        shed, 1,
        "{shed} idle connections were closed for one newcomer"
    );
}

#[test]
fn connections_that_announce_a_body_and_hold_it_back_cannot_keep_health_out() {
    // A connection that announced a body and holds it back, or drips it, is neither idle nor
    // writing: with every slot held so, a newcomer got 503 until the body deadline
    // (idle_timeout, 15 s by default), renewed by reconnecting. (Until the API stopped reading
    // bodies of GET requests, anyone could do it with `GET /health`; here, the one request
    // that takes a body.)
    let agent = Agent::start(|c| c.agent_api.max_connections = CAP);
    let head = format!(
        "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: 1000\r\n\r\n{{\"image\""
    );
    let mut silent = Vec::new();
    let mut dripping = Vec::new();
    for i in 0..CAP {
        let mut stream = TcpStream::connect(agent.addr).unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        if i % 2 == 0 {
            silent.push(stream);
        } else {
            dripping.push(stream);
        }
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dripper = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                for stream in &mut dripping {
                    let _ = stream.write_all(b"x");
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        let started = Instant::now();
        let response = common::try_request(agent.addr, "GET", "/health", &[], b"").unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    dripper.join().unwrap();
    drop(silent);
}

#[test]
fn bodies_announced_to_public_endpoints_cannot_use_up_the_body_budget() {
    // The layer reserves a request's body (a chunked one as the whole 1 MiB limit) against a
    // budget for all connections (32 MiB) once the request is admitted. /health and
    // /health/ready need no token: 32 connections announcing chunked bodies there and sending
    // none held the whole budget, and the platform's container requests got 503 until the body
    // deadline, renewed by reconnecting.
    let agent = Agent::start(|_| {});
    let mut held = Vec::new();
    for i in 0..40 {
        let mut stream = TcpStream::connect(agent.addr).unwrap();
        let path = if i % 2 == 0 {
            "/health"
        } else {
            "/health/ready"
        };
        stream
            .write_all(
                format!(
                    "GET {path} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"
                )
                .as_bytes(),
            )
            .unwrap();
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    let response = agent.api("POST", "/api/v1/containers", b"{}");
    assert_ne!(
        response.status,
        503,
        "the platform's request was refused: {}",
        response.text()
    );
    drop(held);
}
