//! The I/O thread: owns the listening socket and every connection; accepts, reads heads and
//! bodies, applies the deadlines and the connection cap, hands complete requests to the handler
//! pool, and writes the answers it gets back. Never blocks on a socket: every socket is
//! non-blocking and registered with the poller (one-shot, re-armed after each event).
//!
//! A connection moves through [`Phase`]s: `Head` (waiting for a request; idle or part-sent) →
//! `Body` (admitted; reading the body) → `Dispatched` (at a handler; nothing is read meanwhile,
//! so pipelined requests wait in the buffer and are answered in order) → `Flush` (writing the
//! answer) → `Head` again, or `Linger` (answer sent with `Connection: close`: the write side is
//! shut and what the client still sends is read and dropped for a moment, so it reads the
//! answer instead of a reset).

use crate::http::chunked::{ChunkError, ChunkedDecoder};
use crate::http::parse::{self, HeadStatus, ParsedHead};
use crate::http::pool::{self, Done, Job};
use crate::http::types::{BodyLength, Method, Request, RequestHead, Response};
use crate::http::{limits, HttpError, Lane, Service, StatusCode};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use polling::{Event, Events, PollMode, Poller};
use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The poller key of the listening socket (`usize::MAX` is the poller's own).
const LISTENER: usize = usize::MAX - 1;
/// Connections accepted per wake-up before the others get their turn.
const ACCEPT_BATCH: usize = 256;
/// Bytes read from one connection per wake-up, so one fast sender cannot hog the thread.
const READ_PER_EVENT: usize = 1 << 20;
/// How long, and how much, a closing connection's input is read and dropped.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;
/// The kernel's queue of connections not yet accepted (capped by `net.core.somaxconn`).
const BACKLOG: libc::c_int = 4096;
/// How many connections at most are tried (one last read each) to find one to shed.
const SHED_TRIES: usize = 8;
/// How long accepting pauses when the process is out of file descriptors and nothing can be
/// shed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this interval for repeated accept errors.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The connection layer's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Connections held at once; the process's open-file limit may lower it.
    pub max_connections: usize,
    /// A connection with no request begun is closed after this; a body must arrive within it.
    pub idle_timeout: Duration,
    /// A request head must be complete this long after its first byte.
    pub head_timeout: Duration,
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    /// Body bytes all connections together may be receiving at once (declared lengths are
    /// counted up front, a chunked body as the full limit); past it a request gets 503.
    pub body_budget_bytes: usize,
    pub quick_threads: usize,
    pub slow_threads: usize,
    /// Requests that may wait for a handler thread, per lane; past it a request gets 503.
    pub queue_per_lane: usize,
}

impl ServerConfig {
    /// The defaults around the three settings the operator configures. The head deadline is
    /// the idle timeout, at most 10 s.
    pub fn new(listen: SocketAddr, max_connections: usize, idle_timeout: Duration) -> Self {
        ServerConfig {
            listen,
            max_connections,
            idle_timeout,
            head_timeout: idle_timeout.min(Duration::from_secs(10)),
            max_head_bytes: 16 * 1024,
            max_body_bytes: 1024 * 1024,
            body_budget_bytes: 32 * 1024 * 1024,
            quick_threads: 2,
            slow_threads: 16,
            queue_per_lane: 256,
        }
    }
}

/// Why the server could not start.
pub type StartError = std::io::Error;

/// The running server: the I/O thread and the handler threads.
pub struct Server {
    local_addr: SocketAddr,
    max_connections: usize,
    poller: Arc<Poller>,
    stopping: Arc<AtomicBool>,
    stop_deadline: Arc<Mutex<Option<Instant>>>,
    io_thread: Option<JoinHandle<usize>>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `config.listen` and starts the threads.
    pub fn start(
        mut config: ServerConfig,
        service: Arc<dyn Service>,
    ) -> Result<Server, StartError> {
        let soft_limit = limits::raise_nofile_limit().unwrap_or_else(|e| {
            log::warn!("cannot read the open-file limit: {e}; assuming 1024");
            1024
        });
        let cap = limits::connection_cap(config.max_connections, soft_limit);
        if cap < config.max_connections {
            log::warn!(
                "agent_api.max_connections lowered from {} to {cap}: the open-file limit is \
                 {soft_limit} (raise LimitNOFILE / ulimit -n to allow more)",
                config.max_connections
            );
            config.max_connections = cap;
        }

        let listener = TcpListener::bind(config.listen)?;
        // std listens with a backlog of 128; a flood must not make real clients wait for SYN
        // retransmits, so ask for more (Linux allows calling listen again to change it).
        // SAFETY: listen(2) on a socket we own.
        unsafe {
            libc::listen(listener.as_raw_fd(), BACKLOG);
        }
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let poller = Arc::new(Poller::new()?);
        // SAFETY: the listener is deleted from the poller before it is dropped (EventLoop).
        unsafe { poller.add_with_mode(&listener, Event::readable(LISTENER), PollMode::Level)? };

        let stopping = Arc::new(AtomicBool::new(false));
        let stop_deadline = Arc::new(Mutex::new(None));
        let (quick_tx, quick_rx) = crossbeam_channel::bounded(config.queue_per_lane);
        let (slow_tx, slow_rx) = crossbeam_channel::bounded(config.queue_per_lane);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let mut workers = pool::spawn(
            "api-quick",
            config.quick_threads.max(1),
            &quick_rx,
            &done_tx,
            &service,
            &poller,
            &stopping,
        )?;
        workers.extend(pool::spawn(
            "api-slow",
            config.slow_threads.max(1),
            &slow_rx,
            &done_tx,
            &service,
            &poller,
            &stopping,
        )?);
        drop(done_tx);

        let max_connections = config.max_connections;
        let event_loop = EventLoop {
            scratch: vec![0; 64 * 1024],
            config,
            service,
            poller: Arc::clone(&poller),
            stopping: Arc::clone(&stopping),
            stop_deadline: Arc::clone(&stop_deadline),
            listener: Some(listener),
            accept_paused_until: None,
            stop_started: false,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_generation: 0,
            deadlines: BTreeSet::new(),
            quick: quick_tx,
            slow: slow_tx,
            done: done_rx,
            in_flight: 0,
            body_reserved: 0,
            accept_errors: ErrorLog::default(),
        };
        let io_thread = std::thread::Builder::new()
            .name("api-io".into())
            .spawn(move || event_loop.run())?;
        Ok(Server {
            local_addr,
            max_connections,
            poller,
            stopping,
            stop_deadline,
            io_thread: Some(io_thread),
            workers,
        })
    }

    /// The address the server listens on (the port, when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The connection cap in force (the configured one, or less under a low open-file limit).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Stops accepting at once and lets requests at handlers finish until `timeout`; returns how
    /// many were still running when it gave up.
    pub fn shutdown(mut self, timeout: Duration) -> usize {
        self.stop(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        if let Ok(mut slot) = self.stop_deadline.lock() {
            *slot = Some(deadline);
        }
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.poller.notify();
        let left = match self.io_thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                log::error!("the API's I/O thread had panicked");
                0
            }),
            None => 0,
        };
        // The I/O thread dropped the lanes' senders: idle handlers end now, busy ones after
        // their request.
        for worker in std::mem::take(&mut self.workers) {
            while !worker.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
        left
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.io_thread.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}

/// Where a connection is in its request cycle (see the module doc).
enum Phase {
    Head,
    Body(Box<BodyState>),
    Dispatched,
    Flush { close: bool },
    Linger { until: Instant, drained: usize },
}

struct BodyState {
    head: RequestHead,
    keep_alive: bool,
    lane: Lane,
    reading: BodyReading,
    /// Bytes of the body budget this request holds.
    reserved: usize,
    deadline: Instant,
}

enum BodyReading {
    Exact(usize),
    Chunked(ChunkedDecoder),
}

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    generation: u64,
    phase: Phase,
    /// Bytes read and not yet consumed: a head being received, a body, pipelined requests.
    buf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// The client shut its side.
    eof: bool,
    /// When the connection became ready for its next request.
    ready_since: Instant,
    /// When the first byte of the current head arrived.
    first_byte: Option<Instant>,
    write_deadline: Instant,
    /// The deadline as filed in `EventLoop::deadlines`.
    deadline: Option<Instant>,
    /// The interest the poller holds for it (`None`: disarmed after an event).
    armed: Option<(bool, bool)>,
}

#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn report(&mut self, error: &std::io::Error) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < ACCEPT_ERROR_LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!(
                "cannot accept an API connection: {error} ({} more since the last report)",
                self.suppressed
            );
        } else {
            log::warn!("cannot accept an API connection: {error}");
        }
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

struct EventLoop {
    config: ServerConfig,
    service: Arc<dyn Service>,
    poller: Arc<Poller>,
    stopping: Arc<AtomicBool>,
    stop_deadline: Arc<Mutex<Option<Instant>>>,
    listener: Option<TcpListener>,
    accept_paused_until: Option<Instant>,
    stop_started: bool,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    live: usize,
    next_generation: u64,
    /// Every connection's next deadline, earliest first.
    deadlines: BTreeSet<(Instant, usize)>,
    quick: Sender<Job>,
    slow: Sender<Job>,
    done: Receiver<Done>,
    /// Requests sent to handlers and not answered yet.
    in_flight: usize,
    body_reserved: usize,
    scratch: Vec<u8>,
    accept_errors: ErrorLog,
}

impl EventLoop {
    /// Runs until stopped; returns the number of requests still at handlers.
    fn run(mut self) -> usize {
        let mut events = Events::new();
        loop {
            if !self.stop_started && self.stopping.load(Ordering::SeqCst) {
                self.begin_stop();
            }
            let now = Instant::now();
            let stop_deadline = self.stop_deadline.lock().ok().and_then(|d| *d);
            if self.stop_started && (self.live == 0 || stop_deadline.is_none_or(|d| now >= d)) {
                break;
            }
            let mut wake = self.deadlines.first().map(|(t, _)| *t);
            for other in [
                self.accept_paused_until,
                stop_deadline.filter(|_| self.stop_started),
            ]
            .into_iter()
            .flatten()
            {
                wake = Some(wake.map_or(other, |w| w.min(other)));
            }
            let timeout = wake.map(|w| w.saturating_duration_since(now));
            events.clear();
            if let Err(e) = self.poller.wait(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("API poller failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                if event.key == LISTENER {
                    self.accept();
                } else {
                    self.on_event(event.key, event.readable);
                }
            }
            self.collect_done();
            let now = Instant::now();
            self.expire(now);
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                if let Some(listener) = &self.listener {
                    let _ = self.poller.modify_with_mode(
                        listener,
                        Event::readable(LISTENER),
                        PollMode::Level,
                    );
                }
            }
        }
        for slot in 0..self.slots.len() {
            if let Some(conn) = self.slots[slot].take() {
                self.release(slot, conn);
            }
        }
        self.in_flight
    }

    fn begin_stop(&mut self) {
        self.stop_started = true;
        if let Some(listener) = self.listener.take() {
            let _ = self.poller.delete(&listener);
        }
        for slot in 0..self.slots.len() {
            let Some(conn) = self.slots[slot].take() else {
                continue;
            };
            match conn.phase {
                Phase::Dispatched | Phase::Flush { .. } => self.slots[slot] = Some(conn),
                Phase::Head | Phase::Body(_) | Phase::Linger { .. } => self.release(slot, conn),
            }
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.add_connection(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.accept_errors.report(&e);
                    let out_of_resources = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if out_of_resources {
                        // Free a descriptor by shedding an idle connection; with none to shed,
                        // wait a moment instead of spinning on a listener that stays readable.
                        if !self.shed_one() {
                            self.pause_accepting();
                        }
                        return;
                    }
                }
            }
        }
    }

    fn pause_accepting(&mut self) {
        if let Some(listener) = &self.listener {
            let _ = self
                .poller
                .modify_with_mode(listener, Event::none(LISTENER), PollMode::Level);
            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        }
    }

    fn add_connection(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.live >= self.config.max_connections && !self.shed_one() {
            // Every slot holds a request in progress: say so at once rather than queue.
            let response = self.service.reject(&HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "the API has no free connection; retry shortly",
            ));
            let _ = stream.set_nonblocking(true);
            let _ = (&stream).write(&pool::encode(&response, false, false));
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        // SAFETY: every connection is deleted from the poller in `release` before it is dropped.
        if let Err(e) = unsafe { self.poller.add(&stream, Event::readable(slot)) } {
            log::warn!("cannot watch an API connection from {peer}: {e}");
            self.free.push(slot);
            return;
        }
        self.next_generation += 1;
        let now = Instant::now();
        let mut conn = Conn {
            stream,
            peer,
            generation: self.next_generation,
            phase: Phase::Head,
            buf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
            ready_since: now,
            first_byte: None,
            write_deadline: now,
            deadline: None,
            armed: Some((true, false)),
        };
        self.live += 1;
        self.rearm(slot, &mut conn);
        self.slots[slot] = Some(conn);
    }

    /// Closes the connection nearest its deadline among those with no request in progress,
    /// after one last read (a request it already sent is served instead). False when every
    /// connection is busy with a request.
    fn shed_one(&mut self) -> bool {
        let candidates: Vec<usize> = self
            .deadlines
            .iter()
            .map(|(_, slot)| *slot)
            .filter(|slot| {
                matches!(
                    self.slots[*slot].as_ref().map(|c| &c.phase),
                    Some(Phase::Head | Phase::Linger { .. })
                )
            })
            .take(SHED_TRIES)
            .collect();
        for slot in candidates {
            let Some(mut conn) = self.slots[slot].take() else {
                continue;
            };
            if matches!(conn.phase, Phase::Linger { .. }) {
                self.release(slot, conn);
                return true;
            }
            let alive = self.read_into(&mut conn) && self.step(slot, &mut conn);
            if !alive || matches!(conn.phase, Phase::Head) {
                log::debug!(
                    "closing an idle API connection from {} to make room",
                    conn.peer
                );
                self.release(slot, conn);
                return true;
            }
            self.settle(slot, conn, true);
        }
        false
    }

    fn on_event(&mut self, slot: usize, readable: bool) {
        let Some(mut conn) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        // One-shot: the poller disarmed it when it reported the event.
        conn.armed = None;
        let mut alive = true;
        if readable {
            alive = self.read_into(&mut conn);
        }
        if alive {
            alive = self.step(slot, &mut conn);
        }
        self.settle(slot, conn, alive);
    }

    /// Reads what the connection's phase may take now; false when the connection failed.
    fn read_into(&mut self, conn: &mut Conn) -> bool {
        let mut cap = match &conn.phase {
            Phase::Head => (self.config.max_head_bytes + 1).saturating_sub(conn.buf.len()),
            Phase::Body(body) => match body.reading {
                BodyReading::Exact(n) => {
                    (n + self.config.max_head_bytes).saturating_sub(conn.buf.len())
                }
                BodyReading::Chunked(_) => self.scratch.len(),
            },
            Phase::Linger { .. } => usize::MAX,
            Phase::Dispatched | Phase::Flush { .. } => 0,
        };
        let mut budget = READ_PER_EVENT;
        while cap > 0 && budget > 0 && !conn.eof {
            let want = cap.min(budget).min(self.scratch.len());
            match conn.stream.read(&mut self.scratch[..want]) {
                Ok(0) => conn.eof = true,
                Ok(n) => {
                    budget -= n;
                    if let Phase::Linger { drained, .. } = &mut conn.phase {
                        *drained += n;
                        if *drained > LINGER_BYTES {
                            return false;
                        }
                        continue;
                    }
                    if conn.buf.is_empty() && matches!(conn.phase, Phase::Head) {
                        conn.first_byte.get_or_insert_with(Instant::now);
                    }
                    conn.buf.extend_from_slice(&self.scratch[..n]);
                    cap -= n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }

    /// Advances the connection as far as its buffers allow; false when it is to be closed.
    fn step(&mut self, slot: usize, conn: &mut Conn) -> bool {
        loop {
            if conn.out_pos < conn.out.len() && flush(conn, self.config.idle_timeout).is_err() {
                return false;
            }
            let writing = conn.out_pos < conn.out.len();
            match conn.phase {
                Phase::Flush { close } => {
                    if writing {
                        return true;
                    }
                    if close && self.stop_started {
                        return false;
                    }
                    if close {
                        let _ = conn.stream.shutdown(Shutdown::Write);
                        conn.buf = Vec::new();
                        conn.phase = Phase::Linger {
                            until: Instant::now() + LINGER,
                            drained: 0,
                        };
                        return !conn.eof;
                    }
                    let now = Instant::now();
                    conn.phase = Phase::Head;
                    conn.ready_since = now;
                    conn.first_byte = (!conn.buf.is_empty()).then_some(now);
                    if conn.buf.capacity() > 4096 {
                        conn.buf = conn.buf.as_slice().to_vec();
                    }
                }
                Phase::Linger { .. } => return !conn.eof,
                Phase::Dispatched => return true,
                Phase::Head => {
                    if self.stop_started {
                        return false;
                    }
                    if conn.buf.is_empty() {
                        return !conn.eof;
                    }
                    match parse::parse_head(&conn.buf, conn.peer, self.config.max_head_bytes) {
                        Ok(HeadStatus::Partial) => return !conn.eof,
                        Err(error) => self.fail(conn, &error),
                        Ok(HeadStatus::Complete(parsed)) => {
                            conn.buf.drain(..parsed.head_len);
                            conn.first_byte = None;
                            self.begin_request(conn, *parsed);
                        }
                    }
                }
                Phase::Body(ref mut body) => {
                    let complete = match &mut body.reading {
                        BodyReading::Exact(n) => Ok(conn.buf.len() >= *n),
                        BodyReading::Chunked(decoder) => match decoder.feed(&conn.buf) {
                            Ok(used) => {
                                conn.buf.drain(..used);
                                Ok(decoder.is_done())
                            }
                            Err(ChunkError::TooLarge) => Err(too_large(self.config.max_body_bytes)),
                            Err(ChunkError::Malformed(what)) => Err(HttpError::bad_request(
                                format!("malformed chunked body: {what}"),
                            )),
                        },
                    };
                    match complete {
                        Err(error) => self.fail(conn, &error),
                        Ok(false) => return !conn.eof,
                        Ok(true) => {
                            let Phase::Body(body) =
                                std::mem::replace(&mut conn.phase, Phase::Dispatched)
                            else {
                                unreachable!("matched Phase::Body above");
                            };
                            let BodyState {
                                head,
                                keep_alive,
                                lane,
                                reading,
                                reserved,
                                ..
                            } = *body;
                            self.body_reserved = self.body_reserved.saturating_sub(reserved);
                            let bytes = match reading {
                                BodyReading::Exact(n) => conn.buf.drain(..n).collect(),
                                BodyReading::Chunked(decoder) => decoder.into_body(),
                            };
                            let request = Request { head, body: bytes };
                            self.dispatch(slot, conn, request, keep_alive, lane);
                        }
                    }
                }
            }
        }
    }

    /// A complete head: ask the service, then read the body (or answer at once).
    fn begin_request(&mut self, conn: &mut Conn, parsed: ParsedHead) {
        let ParsedHead {
            head,
            keep_alive,
            expect_continue,
            ..
        } = parsed;
        let has_body = head.body_length != BodyLength::Empty;
        let head_only = head.method == Method::HEAD;
        // The service's code runs on the one thread every connection depends on: a bug in it
        // must cost this request, not the API.
        let admitted =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.service.admit(&head)));
        let lane = match admitted {
            Ok(Ok(lane)) => lane,
            Ok(Err(response)) => {
                // The body was not read: the connection cannot carry another request.
                self.respond(conn, &response, head_only, keep_alive && !has_body);
                return;
            }
            Err(_) => {
                log::error!(
                    "the API's admission check panicked on {} {}",
                    head.method,
                    head.path
                );
                let response = self.service.reject(&HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the agent's log",
                ));
                self.respond(conn, &response, head_only, false);
                return;
            }
        };
        let max_body = self.config.max_body_bytes;
        let (reading, reserved) = match head.body_length {
            BodyLength::Empty => (BodyReading::Exact(0), 0),
            BodyLength::Exact(n) if n > max_body as u64 => {
                let response = self.service.reject(&too_large(max_body));
                self.respond(conn, &response, head_only, false);
                return;
            }
            BodyLength::Exact(n) => (BodyReading::Exact(n as usize), n as usize),
            BodyLength::Chunked => (
                BodyReading::Chunked(ChunkedDecoder::new(max_body)),
                max_body,
            ),
        };
        if self.body_reserved + reserved > self.config.body_budget_bytes {
            let response = self.service.reject(&HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "too many request bodies are being received at once; retry shortly",
            ));
            self.respond(conn, &response, head_only, false);
            return;
        }
        self.body_reserved += reserved;
        if expect_continue && has_body && conn.buf.is_empty() {
            conn.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            conn.write_deadline = Instant::now() + self.config.idle_timeout;
        }
        conn.phase = Phase::Body(Box::new(BodyState {
            head,
            keep_alive,
            lane,
            reading,
            reserved,
            deadline: Instant::now() + self.config.idle_timeout,
        }));
    }

    fn dispatch(
        &mut self,
        slot: usize,
        conn: &mut Conn,
        request: Request,
        keep_alive: bool,
        lane: Lane,
    ) {
        let head_only = request.head.method == Method::HEAD;
        if lane == Lane::Inline {
            // On this thread: a bug in the service costs this request, not the API.
            let response = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.service.serve(request)
            }))
            .unwrap_or_else(|_| {
                self.service.reject(&HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the agent's log",
                ))
            });
            self.respond(conn, &response, head_only, keep_alive);
            return;
        }
        let job = Job {
            slot,
            generation: conn.generation,
            request,
            keep_alive,
        };
        let lane = match lane {
            Lane::Inline | Lane::Quick => &self.quick,
            Lane::Slow => &self.slow,
        };
        match lane.try_send(job) {
            Ok(()) => {
                conn.phase = Phase::Dispatched;
                self.in_flight += 1;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let response = self.service.reject(&HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_busy",
                    "too many requests are waiting; retry shortly",
                ));
                self.respond(conn, &response, head_only, false);
            }
        }
    }

    /// Answers from the I/O thread (refusals, inline answers); the connection closes unless
    /// `keep_alive`.
    fn respond(&mut self, conn: &mut Conn, response: &Response, head_only: bool, keep_alive: bool) {
        if let Phase::Body(body) = &conn.phase {
            self.body_reserved = self.body_reserved.saturating_sub(body.reserved);
        }
        let keep = keep_alive && !response.close && !self.stop_started;
        conn.out
            .extend_from_slice(&pool::encode(response, head_only, keep));
        conn.write_deadline = Instant::now() + self.config.idle_timeout;
        conn.phase = Phase::Flush { close: !keep };
        if !keep {
            conn.buf = Vec::new();
        }
    }

    fn fail(&mut self, conn: &mut Conn, error: &HttpError) {
        log::debug!("API request from {} refused: {error}", conn.peer);
        let response = self.service.reject(error);
        self.respond(conn, &response, false, false);
    }

    /// Answers from the handler threads.
    fn collect_done(&mut self) {
        while let Ok(done) = self.done.try_recv() {
            self.in_flight = self.in_flight.saturating_sub(1);
            let Some(mut conn) = self.slots.get_mut(done.slot).and_then(Option::take) else {
                continue;
            };
            if conn.generation != done.generation || !matches!(conn.phase, Phase::Dispatched) {
                self.slots[done.slot] = Some(conn);
                continue;
            }
            conn.out.extend_from_slice(&done.bytes);
            conn.write_deadline = Instant::now() + self.config.idle_timeout;
            conn.phase = Phase::Flush { close: done.close };
            let alive = self.step(done.slot, &mut conn);
            self.settle(done.slot, conn, alive);
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(when, slot)) = self.deadlines.first() {
            if when > now {
                return;
            }
            self.deadlines.pop_first();
            let Some(mut conn) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            conn.deadline = None;
            let alive = match conn.phase {
                // Idle (or only blank lines): close quietly, no unprompted answer.
                Phase::Head if conn.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) => false,
                Phase::Head => {
                    let error = HttpError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!(
                            "the request head did not arrive within {} s",
                            self.config.head_timeout.as_secs_f64()
                        ),
                    );
                    self.fail(&mut conn, &error);
                    self.step(slot, &mut conn)
                }
                Phase::Body(_) => {
                    let error = HttpError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!(
                            "the request body did not arrive within {} s",
                            self.config.idle_timeout.as_secs_f64()
                        ),
                    );
                    self.fail(&mut conn, &error);
                    self.step(slot, &mut conn)
                }
                Phase::Dispatched => true,
                // A client that does not read its answer, or a finished linger.
                Phase::Flush { .. } | Phase::Linger { .. } => false,
            };
            self.settle(slot, conn, alive);
        }
    }

    fn settle(&mut self, slot: usize, mut conn: Conn, alive: bool) {
        if alive {
            self.rearm(slot, &mut conn);
            self.slots[slot] = Some(conn);
        } else {
            self.release(slot, conn);
        }
    }

    /// Files the connection's deadline and poller interest for its phase.
    fn rearm(&mut self, slot: usize, conn: &mut Conn) {
        let writing = conn.out_pos < conn.out.len();
        let (read, deadline) = match &conn.phase {
            Phase::Head => (
                true,
                Some(match conn.first_byte {
                    Some(first) => first + self.config.head_timeout,
                    None => conn.ready_since + self.config.idle_timeout,
                }),
            ),
            Phase::Body(body) => (true, Some(body.deadline)),
            Phase::Dispatched => (false, None),
            Phase::Flush { .. } => (false, Some(conn.write_deadline)),
            Phase::Linger { until, .. } => (true, Some(*until)),
        };
        let deadline = match (deadline, writing) {
            (Some(d), true) => Some(d.min(conn.write_deadline)),
            (None, true) => Some(conn.write_deadline),
            (d, false) => d,
        };
        if conn.deadline != deadline {
            if let Some(old) = conn.deadline {
                self.deadlines.remove(&(old, slot));
            }
            if let Some(new) = deadline {
                self.deadlines.insert((new, slot));
            }
            conn.deadline = deadline;
        }
        let wanted = (read, writing);
        // A disarmed connection that wants nothing stays disarmed: re-arming it with no
        // interest would still report a hang-up, again and again while a handler works.
        let change = match conn.armed {
            Some(current) => current != wanted,
            None => wanted != (false, false),
        };
        if change {
            match self
                .poller
                .modify(&conn.stream, Event::new(slot, wanted.0, wanted.1))
            {
                Ok(()) => conn.armed = Some(wanted),
                Err(e) => log::warn!("cannot watch the API connection from {}: {e}", conn.peer),
            }
        }
    }

    fn release(&mut self, slot: usize, conn: Conn) {
        let _ = self.poller.delete(&conn.stream);
        if let Some(old) = conn.deadline {
            self.deadlines.remove(&(old, slot));
        }
        if let Phase::Body(body) = &conn.phase {
            self.body_reserved = self.body_reserved.saturating_sub(body.reserved);
        }
        self.live -= 1;
        self.free.push(slot);
        drop(conn);
    }
}

fn too_large(limit: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {limit} bytes"),
    )
}

/// Writes what the socket takes now.
fn flush(conn: &mut Conn, idle_timeout: Duration) -> std::io::Result<()> {
    while conn.out_pos < conn.out.len() {
        match (&conn.stream).write(&conn.out[conn.out_pos..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.out_pos += n;
                conn.write_deadline = Instant::now() + idle_timeout;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if conn.out.capacity() > 64 * 1024 {
        conn.out = Vec::new();
    } else {
        conn.out.clear();
    }
    conn.out_pos = 0;
    Ok(())
}
