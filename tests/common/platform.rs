//! A test stand-in for the central platform: an HTTP/1.1 server on a loopback port, in its own
//! thread, that records every request (method, path, headers, JSON body, arrival time) and
//! answers from a script: per endpoint, a queue of replies (status, body, delay) and a default
//! reply once the queue is empty. It also answers `CONNECT` (acting as the proxy), then serves
//! the request that follows through the tunnel. [`PlatformServer::start_tls`] serves HTTPS with
//! the certificate in `tests/fixtures/tls` (issued to 127.0.0.1 by the test CA `ca.pem` there).
//! Stopped on drop.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as the platform received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target as sent (a path, or `host:port` for CONNECT).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn is_register(&self) -> bool {
        self.method == "POST" && self.path == "/api/v1/nodes/register"
    }

    pub fn is_heartbeat(&self) -> bool {
        self.method == "POST" && self.path.ends_with("/heartbeat")
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    /// Waited before answering (the request is recorded on arrival).
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// `201 {"node_id": id}`.
    pub fn registered(node_id: &str) -> Reply {
        Reply::json(201, serde_json::json!({ "node_id": node_id }))
    }

    pub fn status(status: u16) -> Reply {
        Reply::json(
            status,
            serde_json::json!({ "error": format!("scripted {status}") }),
        )
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

struct Route {
    queue: VecDeque<Reply>,
    default: Reply,
}

impl Route {
    fn next(&mut self) -> Reply {
        self.queue
            .pop_front()
            .unwrap_or_else(|| self.default.clone())
    }
}

struct State {
    requests: Vec<RecordedRequest>,
    register: Route,
    heartbeat: Route,
}

/// The running test platform.
pub struct PlatformServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PlatformServer {
    /// On a free port; registration answers `201 {"node_id": "node-test-1"}`, heartbeats `200`.
    pub fn start() -> PlatformServer {
        PlatformServer::start_on(0)
    }

    /// On a given loopback port (e.g. one an agent has been failing to reach).
    pub fn start_on(port: u16) -> PlatformServer {
        PlatformServer::start_with(port, None)
    }

    /// HTTPS on a free port, with the fixture certificate for 127.0.0.1.
    pub fn start_tls() -> PlatformServer {
        PlatformServer::start_with(0, Some(tls_config()))
    }

    fn start_with(port: u16, tls: Option<Arc<rustls::ServerConfig>>) -> PlatformServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the test platform");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            requests: Vec::new(),
            register: Route {
                queue: VecDeque::new(),
                default: Reply::registered("node-test-1"),
            },
            heartbeat: Route {
                queue: VecDeque::new(),
                default: Reply::json(200, serde_json::json!({ "ok": true })),
            },
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let state = Arc::clone(&state);
                            let stop = Arc::clone(&stop);
                            let tls = tls.clone();
                            std::thread::spawn(move || {
                                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                                match tls {
                                    None => serve(stream, &state, &stop),
                                    Some(config) => {
                                        let Ok(session) = rustls::ServerConnection::new(config)
                                        else {
                                            return;
                                        };
                                        let tls_stream = rustls::StreamOwned::new(session, stream);
                                        serve(tls_stream, &state, &stop);
                                    }
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        PlatformServer {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`, for `central_platform.api_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://127.0.0.1:PORT`, for a server started with [`PlatformServer::start_tls`].
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replies to the next registrations, in order, before the default.
    pub fn queue_register(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().register.queue.extend(replies);
    }

    pub fn set_register_default(&self, reply: Reply) {
        self.lock().register.default = reply;
    }

    pub fn queue_heartbeat(&self, replies: impl IntoIterator<Item = Reply>) {
        self.lock().heartbeat.queue.extend(replies);
    }

    pub fn set_heartbeat_default(&self, reply: Reply) {
        self.lock().heartbeat.default = reply;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    pub fn registrations(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_register())
            .collect()
    }

    pub fn heartbeats(&self) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is_heartbeat())
            .collect()
    }

    /// Waits until `done` holds for the recorded requests; panics after `timeout`.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[RecordedRequest]) -> bool,
    ) -> Vec<RecordedRequest> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = requests
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect();
                panic!("test platform: no {what} within {timeout:?}; saw {seen:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for at least `n` registrations.
    pub fn wait_for_registrations(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        self.wait_for(&format!("{n} registration(s)"), timeout, |r| {
            r.iter().filter(|r| r.is_register()).count() >= n
        })
        .into_iter()
        .filter(|r| r.is_register())
        .collect()
    }

    /// Waits for at least `n` heartbeats.
    pub fn wait_for_heartbeats(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        self.wait_for(&format!("{n} heartbeat(s)"), timeout, |r| {
            r.iter().filter(|r| r.is_heartbeat()).count() >= n
        })
        .into_iter()
        .filter(|r| r.is_heartbeat())
        .collect()
    }
}

impl Drop for PlatformServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one connection: requests until the client closes, a reply says `Connection: close`,
/// or the server stops.
fn serve<S: Read + Write>(stream: S, state: &Mutex<State>, stop: &AtomicBool) {
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader) {
        let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
        if request.method == "CONNECT" {
            lock().requests.push(request);
            let writer = reader.get_mut();
            if writer
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .and_then(|()| writer.flush())
                .is_err()
            {
                return;
            }
            continue;
        }
        let reply = {
            let mut state = lock();
            let reply = if request.is_register() {
                state.register.next()
            } else if request.is_heartbeat() {
                state.heartbeat.next()
            } else {
                Reply::status(404)
            };
            state.requests.push(request);
            reply
        };
        let deadline = Instant::now() + reply.delay;
        while Instant::now() < deadline {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let head = format!(
            "HTTP/1.1 {} Scripted\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            reply.status,
            reply.body.len()
        );
        let writer = reader.get_mut();
        let _ = writer.write_all(head.as_bytes());
        let _ = writer.write_all(reply.body.as_bytes());
        let _ = writer.flush();
        return;
    }
}

/// The directory of the TLS fixtures.
pub fn tls_fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(tls_fixture("server.pem"))
        .expect("read server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse server.pem");
    let key = PrivateKeyDer::from_pem_file(tls_fixture("server.key")).expect("server.key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server certificate");
    Arc::new(config)
}

fn read_request<S: Read>(reader: &mut BufReader<S>) -> Option<RecordedRequest> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let at = Instant::now();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(length) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Some(RecordedRequest {
        method,
        path,
        headers,
        body,
        at,
    })
}
