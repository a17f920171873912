//! The loads and stand-ins `scripts/torture.sh` needs, on loopback only, each bounded in count
//! and time. Every check prints `held: ...` or `FAILED: ...`; the exit status is the number of
//! failed checks (capped at 100).
//!
//! Usage:
//! - `torture_client flood ADDR COUNT SECS`: COUNT connections (a third idle, a third with half
//!   a request line, a third dripping a header byte every 200 ms, each reopened when the agent
//!   closes it) for SECS seconds, while `GET /health` is asked every 100 ms on a new
//!   connection: every answer within 1 s, and one at once after the flood.
//! - `torture_client bombs ADDR TOKEN`: header bombs, body bombs, pipelining, smuggling.
//! - `torture_client load ADDR TOKEN SECS RATE`: mixed GETs (`/health`, `/api/v1/metrics`,
//!   `/api/v1/containers`) at about RATE a second over 4 keep-alive connections; any answer but
//!   200, or any connection error, fails.
//! - `torture_client count ADDR TOKEN PATH COUNT CONNS`: exactly COUNT `GET PATH` over CONNS
//!   keep-alive connections, each waiting for its answer before the next (as wrk does): a fixed
//!   amount of work to profile the server with (`valgrind --tool=callgrind`, `strace -c`); any
//!   answer but 200 fails.
//! - `torture_client ledger ADDR TOKEN LABEL`: the agent's container list equals what docker
//!   has under the managed label `LABEL` (`key=value`), and no GPU is held twice (by the list's
//!   `gpu_ids` and by `/api/v1/metrics`'s holders).
//! - `torture_client platform ADDR DOWN_SECS UP_SECS [DOWN_SECS UP_SECS ...]`: a stand-in
//!   platform answering 503 to everything for DOWN_SECS, then registration `201 {"node_id":
//!   "node-torture"}` and heartbeats `200` for UP_SECS, and so on for each further pair of
//!   phases; prints one line per request (`ms-since-start METHOD PATH STATUS`) and exits.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let failures = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["flood", addr, count, secs] => flood(parse_addr(addr), number(count), number(secs)),
        ["bombs", addr, token] => bombs(parse_addr(addr), token),
        ["load", addr, token, secs, rate] => {
            load(parse_addr(addr), token, number(secs), number(rate))
        }
        ["count", addr, token, path, count, conns] => {
            count_requests(parse_addr(addr), token, path, number(count), number(conns))
        }
        ["ledger", addr, token, label] => ledger(parse_addr(addr), token, label),
        ["platform", addr, phases @ ..] if !phases.is_empty() && phases.len() % 2 == 0 => platform(
            parse_addr(addr),
            &phases.iter().map(|p| number(p)).collect::<Vec<_>>(),
        ),
        _ => {
            eprintln!(
                "usage: torture_client flood ADDR COUNT SECS | bombs ADDR TOKEN | \
                 load ADDR TOKEN SECS RATE | count ADDR TOKEN PATH COUNT CONNS | ledger ADDR TOKEN LABEL | \
                 platform ADDR DOWN_SECS UP_SECS [DOWN_SECS UP_SECS ...]"
            );
            2
        }
    };
    std::process::exit(failures.min(100) as i32);
}

fn parse_addr(text: &str) -> SocketAddr {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_loopback() => addr,
        _ => {
            eprintln!("torture_client: {text} is not a loopback address:port");
            std::process::exit(2);
        }
    }
}

fn number(text: &str) -> u64 {
    text.parse().unwrap_or_else(|_| {
        eprintln!("torture_client: {text} is not a number");
        std::process::exit(2);
    })
}

/// Prints a check's outcome; returns 1 when it failed.
fn check(held: bool, what: &str) -> u64 {
    println!("  {}: {what}", if held { "held" } else { "FAILED" });
    u64::from(!held)
}

/// One request on a new connection; the status code and the time it took, or why none came.
fn request(addr: SocketAddr, raw: &[u8], timeout: Duration) -> Result<(u16, Duration), String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream.write_all(raw).map_err(|e| e.to_string())?;
    let status = read_status(&mut stream)?;
    Ok((status, started.elapsed()))
}

/// Reads up to the end of a status line and returns its code.
fn read_status(stream: &mut TcpStream) -> Result<u16, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => return Err("closed without an answer".into()),
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e.to_string()),
        }
        if line.len() > 200 {
            return Err("status line too long".into());
        }
    }
    let text = String::from_utf8_lossy(&line);
    text.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("not a status line: {text:?}"))
}

/// Reads every complete answer the connection sends within `timeout`; their status codes.
fn read_statuses(stream: &mut TcpStream, want: usize, timeout: Duration) -> Vec<u16> {
    let deadline = Instant::now() + timeout;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut statuses = Vec::new();
    while statuses.len() < want && Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        // Split off complete answers (every answer here has a Content-Length).
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + length {
                break;
            }
            let status = head
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            statuses.push(status);
            buf.drain(..end + 4 + length);
        }
    }
    statuses
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

fn flood(addr: SocketAddr, count: u64, secs: u64) -> u64 {
    let count = count.min(4000) as usize;
    let secs = secs.min(600);
    println!(
        "flood: {count} connections (idle, half a request line, a header byte every 200 ms) \
         for {secs} s; GET /health every 100 ms"
    );
    let mut conns: Vec<Option<TcpStream>> = (0..count).map(|_| None).collect();
    let (mut opened, mut refused) = (0u64, 0u64);
    let mut probes = Vec::new();
    let mut probe_errors = Vec::new();
    let started = Instant::now();
    let mut next_drip = Instant::now();
    let mut next_probe = Instant::now();
    while started.elapsed() < Duration::from_secs(secs) {
        for (i, slot) in conns.iter_mut().enumerate() {
            if slot.is_none() {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    Ok(stream) => {
                        let _ = stream.set_nonblocking(true);
                        let mut stream = stream;
                        if i % 3 == 1 {
                            let _ = stream.write(b"GET /health HT");
                        } else if i % 3 == 2 {
                            let _ = stream.write(b"GET /health HTTP/1.1\r\n");
                        }
                        *slot = Some(stream);
                        opened += 1;
                    }
                    Err(_) => refused += 1,
                }
            }
        }
        if Instant::now() >= next_drip {
            next_drip += Duration::from_millis(200);
            for (i, slot) in conns.iter_mut().enumerate() {
                let Some(stream) = slot else { continue };
                // A closed connection (the agent shed it or cut it at its deadline) reads 0 or
                // fails: reopen it next round.
                let mut byte = [0u8; 512];
                let closed = match stream.read(&mut byte) {
                    Ok(_) => true,
                    Err(e) => e.kind() != ErrorKind::WouldBlock,
                };
                let failed_write = i % 3 == 2 && stream.write(b"X").is_err();
                if closed || failed_write {
                    *slot = None;
                }
            }
        }
        if Instant::now() >= next_probe {
            next_probe += Duration::from_millis(100);
            match request(addr, HEALTH, Duration::from_secs(5)) {
                Ok((200, took)) => probes.push(took),
                Ok((status, _)) => probe_errors.push(format!("status {status}")),
                Err(e) => probe_errors.push(e),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(conns);
    let after = request(addr, HEALTH, Duration::from_secs(5));
    probes.sort();
    let max = probes.last().copied().unwrap_or_default();
    let p50 = probes.get(probes.len() / 2).copied().unwrap_or_default();
    println!(
        "  {opened} connections opened ({refused} connects refused or timed out), {} probes: \
         p50 {:.1} ms, max {:.1} ms",
        probes.len(),
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
    let mut failed = check(
        probe_errors.is_empty() && !probes.is_empty() && max < Duration::from_secs(1),
        &format!(
            "every GET /health during the flood answered 200 within 1 s ({} errors{})",
            probe_errors.len(),
            probe_errors
                .first()
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        ),
    );
    failed += check(
        matches!(after, Ok((200, took)) if took < Duration::from_millis(200)),
        &format!("GET /health right after the flood: {after:?}"),
    );
    failed
}

fn bombs(addr: SocketAddr, token: &str) -> u64 {
    let auth = format!("Authorization: Bearer {token}\r\n");
    let mut failed = 0;
    let timeout = Duration::from_secs(5);
    let expect = |raw: Vec<u8>, want: &[u16], what: &str| -> u64 {
        let got = request(addr, &raw, timeout);
        check(
            matches!(got, Ok((status, _)) if want.contains(&status)),
            &format!("{what}: {got:?} (want {want:?})"),
        )
    };

    println!("header bombs");
    let big = "a".repeat(64 * 1024);
    failed += expect(
        format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").into_bytes(),
        &[431],
        "one 64 KiB header field",
    );
    let many: String = (0..5000).map(|i| format!("X-{i}: v\r\n")).collect();
    failed += expect(
        format!("GET /health HTTP/1.1\r\nHost: t\r\n{many}\r\n").into_bytes(),
        &[431],
        "5,000 header fields",
    );
    let long_path = "/".to_string() + &"p".repeat(40 * 1024);
    failed += expect(
        format!("GET {long_path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes(),
        &[431, 414],
        "a 40 KiB request target",
    );
    failed += expect(
        b"GET /health HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n".to_vec(),
        &[400],
        "a header name with a space",
    );
    failed += expect(
        b"\x00\x01\x02garbage\r\n\r\n".to_vec(),
        &[400],
        "binary garbage",
    );

    println!("body bombs");
    failed += expect(
        format!(
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 1073741824\r\n\r\n"
        )
        .into_bytes(),
        &[413],
        "Content-Length of 1 GiB, refused before any body byte",
    );
    // A chunked body past 1 MiB: the answer must be 413 once the limit is passed.
    {
        let mut raw = format!(
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..20 {
            raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            raw.extend_from_slice(&chunk);
            raw.extend_from_slice(b"\r\n");
        }
        let got = (|| -> Result<u16, String> {
            let mut stream =
                TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            // The agent may answer and close before everything is written.
            let _ = stream.write_all(&raw);
            read_status(&mut stream)
        })();
        failed += check(
            matches!(got, Ok(413)),
            &format!("a 1.25 MiB chunked body: {got:?} (want 413)"),
        );
    }
    failed += expect(
        format!(
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 30\r\n\r\n{{\"claim_id\": [[[[[[[[[[[[[[[[[[["
        )
        .into_bytes(),
        &[400],
        "a truncated, deeply nested JSON body (Content-Length matches)",
    );
    let nested = "[".repeat(100_000);
    failed += expect(
        format!(
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{nested}",
            nested.len()
        )
        .into_bytes(),
        &[400],
        "100,000 nested arrays",
    );

    println!("pipelining");
    {
        let mut raw = Vec::new();
        for _ in 0..100 {
            raw.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        raw.extend_from_slice(
            format!("GET /api/v1/metrics HTTP/1.1\r\nHost: t\r\n{auth}\r\n").as_bytes(),
        );
        raw.extend_from_slice(
            b"GET /api/v1/containers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        );
        let statuses = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| e.to_string())
            .and_then(|mut s| {
                s.write_all(&raw).map_err(|e| e.to_string())?;
                Ok(read_statuses(&mut s, 102, Duration::from_secs(10)))
            });
        let want: Vec<u16> = std::iter::repeat_n(200, 101).chain([401]).collect();
        failed += check(
            statuses.as_ref().is_ok_and(|s| *s == want),
            &format!(
                "102 pipelined requests in one write answered in order (100 x 200, 200, 401): \
                 got {:?}",
                statuses.map(|s| (s.len(), s.iter().filter(|&&c| c == 200).count()))
            ),
        );
    }

    println!("smuggling");
    let cases: [(&str, String); 6] = [
        (
            "Content-Length and Transfer-Encoding together",
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\
             Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_string(),
        ),
        (
            "two different Content-Length fields",
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\
             Content-Length: 6\r\n\r\nhello!"
                .to_string(),
        ),
        (
            "a Content-Length list",
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello"
                .to_string(),
        ),
        (
            "Transfer-Encoding other than chunked",
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                .to_string(),
        ),
        (
            "a bad chunk size",
            format!(
                "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\n{auth}Transfer-Encoding: chunked\r\n\r\n\
                 zz\r\nhello\r\n0\r\n\r\n"
            ),
        ),
        (
            "a negative Content-Length",
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n".to_string(),
        ),
    ];
    for (what, raw) in cases {
        failed += expect(raw.into_bytes(), &[400, 501], what);
    }
    // A request hidden in a body must stay body: one answer, not two.
    {
        let hidden = "GET /api/v1/containers HTTP/1.1\r\nHost: t\r\n\r\n";
        let raw = format!(
            "POST /api/v1/containers HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{hidden}",
            hidden.len()
        );
        let statuses = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| e.to_string())
            .and_then(|mut s| {
                s.write_all(raw.as_bytes()).map_err(|e| e.to_string())?;
                Ok(read_statuses(&mut s, 2, Duration::from_secs(3)))
            });
        failed += check(
            statuses.as_ref().is_ok_and(|s| *s == [400]),
            &format!("a request inside a Content-Length body is body (one 400): {statuses:?}"),
        );
    }
    failed
}

fn load(addr: SocketAddr, token: &str, secs: u64, rate: u64) -> u64 {
    let secs = secs.min(3600);
    let rate = rate.clamp(1, 20_000);
    let connections = 4u64;
    println!("load: ~{rate} GET/s over {connections} keep-alive connections for {secs} s");
    let paths = ["/health", "/api/v1/metrics", "/api/v1/containers"];
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let token = token.to_string();
            std::thread::spawn(move || {
                let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
                let started = Instant::now();
                let mut next = started;
                let (mut ok, mut bad, mut errors) = (0u64, Vec::new(), Vec::new());
                let mut latencies = Vec::new();
                let mut stream: Option<TcpStream> = None;
                let mut i = c as usize;
                while started.elapsed() < Duration::from_secs(secs) {
                    let now = Instant::now();
                    if now < next {
                        std::thread::sleep(next - now);
                    }
                    next += interval;
                    let path = paths[i % paths.len()];
                    i += 1;
                    let raw = format!(
                        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n"
                    );
                    let sent = Instant::now();
                    let s = match stream.take() {
                        Some(s) => Ok(s),
                        None => TcpStream::connect_timeout(&addr, Duration::from_secs(2)),
                    };
                    let result = s.map_err(|e| e.to_string()).and_then(|mut s| {
                        s.write_all(raw.as_bytes()).map_err(|e| e.to_string())?;
                        let statuses = read_statuses(&mut s, 1, Duration::from_secs(5));
                        let status = statuses.first().copied().ok_or("no answer in 5 s")?;
                        stream = Some(s);
                        Ok(status)
                    });
                    match result {
                        Ok(200) => {
                            ok += 1;
                            latencies.push(sent.elapsed());
                        }
                        Ok(status) => bad.push(format!("{path}: {status}")),
                        Err(e) => errors.push(format!("{path}: {e}")),
                    }
                }
                (ok, bad, errors, latencies)
            })
        })
        .collect();
    let (mut ok, mut bad, mut errors, mut latencies) = (0, Vec::new(), Vec::new(), Vec::new());
    for thread in threads {
        if let Ok((o, b, e, l)) = thread.join() {
            ok += o;
            bad.extend(b);
            errors.extend(e);
            latencies.extend(l);
        }
    }
    latencies.sort();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "  {ok} answered 200 ({:.0}/s), p99 {:.2} ms, {} other statuses, {} errors",
        ok as f64 / secs.max(1) as f64,
        p99.as_secs_f64() * 1000.0,
        bad.len(),
        errors.len()
    );
    check(
        bad.is_empty() && errors.is_empty() && ok > 0,
        &format!(
            "zero errors ({:?})",
            bad.iter().chain(errors.iter()).take(3).collect::<Vec<_>>()
        ),
    )
}

fn count_requests(addr: SocketAddr, token: &str, path: &str, count: u64, conns: u64) -> u64 {
    let conns = conns.clamp(1, 64);
    let count = count.min(10_000_000);
    let started = Instant::now();
    let threads: Vec<_> = (0..conns)
        .map(|c| {
            let raw =
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n");
            let mine = count / conns + u64::from(c < count % conns);
            std::thread::spawn(move || -> Result<u64, String> {
                let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .map_err(|e| e.to_string())?;
                let _ = stream.set_nodelay(true);
                for _ in 0..mine {
                    stream
                        .write_all(raw.as_bytes())
                        .map_err(|e| e.to_string())?;
                    match read_statuses(&mut stream, 1, Duration::from_secs(5)).first() {
                        Some(200) => {}
                        Some(status) => return Err(format!("status {status}")),
                        None => return Err("no answer in 5 s".into()),
                    }
                }
                Ok(mine)
            })
        })
        .collect();
    let mut ok = 0;
    let mut errors = Vec::new();
    for thread in threads {
        match thread.join() {
            Ok(Ok(n)) => ok += n,
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a client thread panicked".into()),
        }
    }
    println!(
        "count: {ok} of {count} GET {path} answered 200 over {conns} connections in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    check(
        ok == count && errors.is_empty(),
        &format!("every answer 200 ({:?})", errors.first()),
    )
}

/// `phases`: seconds down, seconds up, down, up, ...
fn platform(addr: SocketAddr, phases: &[u64]) -> u64 {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("torture_client: cannot listen on {addr}: {e}");
            return 1;
        }
    };
    let _ = listener.set_nonblocking(true);
    let started = Instant::now();
    let phases: Vec<u64> = phases.iter().map(|p| (*p).min(3600)).collect();
    let end = Duration::from_secs(phases.iter().sum());
    // Down while the time since the start falls in an even-numbered phase.
    let is_down = |now: Duration| {
        let mut edge = Duration::ZERO;
        for (i, p) in phases.iter().enumerate() {
            edge += Duration::from_secs(*p);
            if now < edge {
                return i % 2 == 0;
            }
        }
        false
    };
    while started.elapsed() < end {
        let (mut stream, _) = match listener.accept() {
            Ok(pair) => pair,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        // Keep-alive: answer every request on the connection until it closes.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        while started.elapsed() < end {
            let Some(head_end) = find(&buf, b"\r\n\r\n") else {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let length = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(str::to_string))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < head_end + 4 + length {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..head_end + 4 + length);
            let mut words = head.split(' ');
            let method = words.next().unwrap_or("").to_string();
            let path = words.next().unwrap_or("").to_string();
            let now = started.elapsed();
            let (status, body) = if is_down(now) {
                (503, r#"{"error":"down"}"#)
            } else if path.ends_with("/register") {
                (201, r#"{"node_id":"node-torture"}"#)
            } else {
                (200, r#"{"ok":true}"#)
            };
            println!("{} {method} {path} {status}", now.as_millis());
            let answer = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if stream.write_all(answer.as_bytes()).is_err() {
                break;
            }
        }
    }
    0
}

/// GET `path` with the token; the JSON body of a 200.
fn get_json(addr: SocketAddr, token: &str, path: &str) -> Result<serde_json::Value, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(raw.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    let end = find(&answer, b"\r\n\r\n").ok_or("no complete answer")?;
    let status = String::from_utf8_lossy(&answer[..end])
        .split(' ')
        .nth(1)
        .unwrap_or("")
        .to_string();
    if status != "200" {
        return Err(format!("GET {path} answered {status}"));
    }
    serde_json::from_slice(&answer[end + 4..]).map_err(|e| format!("GET {path}: {e}"))
}

fn ledger(addr: SocketAddr, token: &str, label: &str) -> u64 {
    let listed = match get_json(addr, token, "/api/v1/containers") {
        Ok(v) => v,
        Err(e) => return check(false, &format!("the agent lists its containers: {e}")),
    };
    let metrics = match get_json(addr, token, "/api/v1/metrics") {
        Ok(v) => v,
        Err(e) => return check(false, &format!("the agent serves metrics: {e}")),
    };
    let docker = std::process::Command::new("docker")
        .args(["ps", "-a", "-q", "--no-trunc", "--filter"])
        .arg(format!("label={label}"))
        .output();
    let Ok(docker) = docker else {
        return check(false, "docker ps runs");
    };
    let mut in_docker: Vec<String> = String::from_utf8_lossy(&docker.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    in_docker.sort();
    let containers = listed.as_array().cloned().unwrap_or_default();
    let mut in_agent: Vec<String> = containers
        .iter()
        .filter_map(|c| c["id"].as_str().map(str::to_string))
        .collect();
    in_agent.sort();
    let mut failed = check(
        in_agent == in_docker,
        &format!(
            "the agent's list equals docker's ({} listed, {} in docker)",
            in_agent.len(),
            in_docker.len()
        ),
    );
    let mut held = std::collections::BTreeMap::new();
    let mut twice = Vec::new();
    for c in &containers {
        for gpu in c["gpu_ids"].as_array().cloned().unwrap_or_default() {
            let id = c["id"].as_str().unwrap_or("?").to_string();
            if let Some(other) = held.insert(gpu.to_string(), id.clone()) {
                twice.push(format!("GPU {gpu}: {other} and {id}"));
            }
        }
    }
    failed += check(
        twice.is_empty(),
        &format!("no GPU held twice among the listed containers ({twice:?})"),
    );
    // Every GPU metrics shows held is held by a listed container, and the other way round.
    let holders: std::collections::BTreeMap<String, String> = metrics["gpus"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|g| {
            let id = g["container_id"].as_str()?;
            Some((g["id"].to_string(), id.to_string()))
        })
        .collect();
    failed += check(
        holders == held,
        &format!(
            "the GPU ledger in metrics matches the containers' GPUs ({} held)",
            held.len()
        ),
    );
    failed
}
