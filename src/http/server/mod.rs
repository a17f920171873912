//! The I/O thread: owns the listening socket and every connection; accepts, reads heads and
//! bodies, applies the deadlines and the connection cap, hands complete requests to the handler
//! pool, and writes the answers it gets back. Never blocks on a socket: every socket is
//! non-blocking and registered with the poller (level-triggered; one-shot with no interest
//! while its request is at a handler).
//!
//! A connection moves through [`Phase`]s: `Head` (waiting for a request; idle or part-sent) →
//! `Body` (admitted; reading the body) → `Dispatched` (at a handler; nothing is read meanwhile,
//! so pipelined requests wait in the buffer and are answered in order) → `Flush` (writing the
//! answer) → `Head` again, or `Linger` (answer sent with `Connection: close`: the write side is
//! shut and what the client still sends is read and dropped for a moment, so it reads the
//! answer instead of a reset).
//!
//! Split by responsibility: this file starts and stops the threads; `event_loop.rs` runs the
//! poller, accepts, sheds and applies deadlines; `request.rs` reads, parses and dispatches
//! requests and queues answers; `conn.rs` holds a connection's state and writes its output.

mod conn;
mod event_loop;
mod request;

use crate::http::guard::Guarded;
use crate::http::pool::{self, Job};
use crate::http::{limits, Service};
use crate::workers::WorkerPool;
use event_loop::EventLoop;
use polling::{Event, PollMode, Poller};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
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
/// At capacity with no idle connection, a connection writing an answer that has written
/// nothing for this long (its client does not read) is closed to make room.
const WRITE_STALL: Duration = Duration::from_secs(1);
/// The most time the output waiting on a connection may take to be written, however steadily
/// the client reads a trickle (`idle_timeout` when that is longer).
const ANSWER_WRITE_TOTAL: Duration = Duration::from_secs(60);
/// How long accepting pauses when the process is out of file descriptors and nothing can be
/// shed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long the API must have been quiet (no event at all) after serving requests before the
/// allocator is asked to give back the memory freed meanwhile.
const QUIET_TRIM: Duration = Duration::from_secs(1);
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
    /// Returns the requests still at handlers and the handler pools to join.
    io_thread: Option<JoinHandle<(usize, [WorkerPool<Job>; 2])>>,
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

        // Every call into the service, on any thread, turns a panic into an answer.
        let service: Arc<dyn Service> = Arc::new(Guarded(service));
        let stopping = Arc::new(AtomicBool::new(false));
        let stop_deadline = Arc::new(Mutex::new(None));
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let lane = |name: &str, count: usize| {
            pool::start(
                name,
                count,
                config.queue_per_lane,
                done_tx.clone(),
                Arc::clone(&service),
                Arc::clone(&poller),
                Arc::clone(&stopping),
            )
        };
        let quick = lane("api-quick", config.quick_threads);
        let slow = lane("api-slow", config.slow_threads);
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
            quick,
            slow,
            done: done_rx,
            in_flight: 0,
            body_reserved: 0,
            last_activity: Instant::now(),
            served_since_trim: false,
            accept_errors: conn::ErrorLog::default(),
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
        let Some(thread) = self.io_thread.take() else {
            return 0;
        };
        match thread.join() {
            Ok((left, pools)) => {
                // Closing the lanes' queues: idle handlers end now, busy ones after their
                // request.
                for pool in pools {
                    pool.join(Some(deadline));
                }
                left
            }
            Err(_) => {
                // Its pools were dropped with it: their threads end on their own.
                log::error!("the API's I/O thread had panicked");
                0
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.io_thread.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}
