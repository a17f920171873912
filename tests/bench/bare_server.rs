//! The benchmark's ceiling: a bare HTTP/1.1 server answering every request with one prebuilt
//! response (the body read from a file at start), a thread per connection, keep-alive and
//! pipelining, nothing else: no routing, no authentication, no JSON. `scripts/bench.sh` runs it
//! beside the agent with a body the size of the agent's metrics document and reports the agent's
//! request rate as a ratio of this one.
//!
//! Usage: `bare_server ADDRESS BODY_FILE` (e.g. `127.0.0.1:0`); prints `listening on ADDR` once
//! it listens and serves until killed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

/// Requests with heads larger than this close the connection (the benchmark sends small ones).
const MAX_HEAD: usize = 16 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(address), Some(body_file)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_server ADDRESS BODY_FILE");
        std::process::exit(2);
    };
    let body = match std::fs::read(&body_file) {
        Ok(body) => body,
        Err(e) => {
            eprintln!("bare_server: cannot read {body_file}: {e}");
            std::process::exit(1);
        }
    };
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\nConnection: keep-alive\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    let response: Arc<[u8]> = response.into();
    let listener = match TcpListener::bind(&address) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("bare_server: cannot listen on {address}: {e}");
            std::process::exit(1);
        }
    };
    match listener.local_addr() {
        Ok(local) => println!("listening on {local}"),
        Err(e) => eprintln!("bare_server: {e}"),
    }
    for stream in listener.incoming().flatten() {
        let response = Arc::clone(&response);
        std::thread::spawn(move || serve(stream, &response));
    }
}

/// Answers each complete request head on the connection until the peer closes it.
fn serve(mut stream: TcpStream, response: &[u8]) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut out = Vec::new();
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            out.extend_from_slice(response);
        }
        if buf.len() > MAX_HEAD || (!out.is_empty() && stream.write_all(&out).is_err()) {
            return;
        }
    }
}
