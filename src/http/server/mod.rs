//! The I/O threads: each watches the shared listening socket and owns the connections placed on
//! it; accepts, places new connections on the thread holding the fewest (starting one that is
//! not running when that is where the connection goes: the first runs always, the others only
//! while they hold connections, see [`ServerConfig::io_threads`]), reads heads and
//! bodies, applies the deadlines and the connection cap (one count for all threads: at capacity
//! a thread that cannot shed hands the new connection to the next), hands complete requests to
//! the handler pools, and writes the answers they send back to it. Never blocks on a socket:
//! every socket is non-blocking and registered with its thread's poller (level-triggered;
//! one-shot with no interest while its request is at a handler).
//!
//! A connection moves through [`Phase`]s: `Head` (waiting for a request; idle or part-sent) →
//! `Body` (admitted; reading the body) → `Dispatched` (at a handler; nothing is read meanwhile,
//! so pipelined requests wait in the buffer and are answered in order) → `Flush` (writing the
//! answer) → `Head` again, or `Linger` (answer sent with `Connection: close`: the write side is
//! shut and what the client still sends is read and dropped for a moment, so it reads the
//! answer instead of a reset).
//!
//! Split by responsibility: this file starts and stops the threads and holds what they share;
//! `event_loop.rs` runs a thread's poller, accepts, places, sheds and applies deadlines; `request.rs` reads, parses and dispatches
//! requests and queues answers; `conn.rs` holds a connection's state and writes its output.

mod conn;
mod event_loop;
mod request;

use crate::http::guard::Guarded;
use crate::http::poller::{Event, PollMode, Poller};
use crate::http::pool::Done;
use crate::http::pool::{self, Job};
use crate::http::{limits, Service};
use crate::workers::WorkerPool;
use crossbeam_channel::{Receiver, Sender};
use event_loop::EventLoop;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The poller key of the listening socket (`usize::MAX` is the poller's own).
const LISTENER: usize = usize::MAX - 1;
/// Connections accepted per wake-up before the others get their turn.
const ACCEPT_BATCH: usize = 256;
/// The I/O thread's read buffer.
const SCRATCH: usize = 64 * 1024;
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
/// At capacity with no idle connection and no stalled writer, a connection still receiving a
/// request body begun this long ago is closed to make room.
const SLOW_BODY: Duration = Duration::from_secs(1);
/// The most time the output waiting on a connection may take to be written, however steadily
/// the client reads a trickle (`idle_timeout` when that is longer).
const ANSWER_WRITE_TOTAL: Duration = Duration::from_secs(60);
/// How long accepting pauses when the process is out of file descriptors and nothing can be
/// shed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How long the API must have been quiet (no event at all) after serving requests before the
/// allocator is asked to give back the memory freed meanwhile.
const QUIET_TRIM: Duration = Duration::from_secs(1);
/// The most I/O threads (`Handoff::MakeRoom` keeps the threads tried as bits of a `u64`).
pub const MAX_IO_THREADS: usize = 64;
/// Connections that may wait in an I/O thread's inbox; past it, the thread that accepted one
/// keeps it (or, at capacity, answers 503 itself). The channel is unbounded, its length checked
/// (see [`IoThread::hand`]): a bounded one allocates every slot up front, 48 KiB per I/O
/// thread, for a queue that is nearly always empty.
const INBOX: usize = 1024;
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
    /// The most threads that accept and serve connections (at least 1). The first runs
    /// always; another starts when a new connection would go to it (the thread holding the
    /// fewest), and ends once it has held none for `io_idle_end`. So up to this many active
    /// connections each have a thread, as with a thread per connection, and an idle agent runs
    /// one.
    pub io_threads: usize,
    /// How long an I/O thread other than the first holds no connection before it ends.
    pub io_idle_end: Duration,
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
            io_threads: 8,
            io_idle_end: Duration::from_secs(10),
            quick_threads: 2,
            slow_threads: 16,
            queue_per_lane: 256,
        }
    }
}

/// Why the server could not start.
pub type StartError = std::io::Error;

/// What every I/O thread shares: the settings, the stop signal, the counts the limits apply to
/// (connections and body bytes, across all threads) and the way to each thread.
pub(super) struct Shared {
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) stop_deadline: Mutex<Option<Instant>>,
    /// Connections held by all I/O threads together, and those being handed from one to
    /// another: the one count `max_connections` caps.
    pub(super) live: AtomicUsize,
    /// Body bytes all connections together are receiving (see `body_budget_bytes`).
    pub(super) body_reserved: AtomicUsize,
    /// Failed accepts, reported once per interval for all I/O threads together.
    accept_errors: Mutex<conn::ErrorLog>,
    pub(super) io: Vec<IoThread>,
}

/// One I/O thread as the others see it.
pub(super) struct IoThread {
    pub(super) poller: Arc<Poller>,
    /// Connections handed to it by another I/O thread.
    pub(super) inbox: Sender<Handoff>,
    /// Connections assigned to it: held, or handed to it and not taken yet (new connections go
    /// to the thread with the fewest). Raised for another thread only under `life`'s lock.
    pub(super) assigned: AtomicUsize,
    /// Whether it runs: changed only under `life`'s lock (read without it to choose a thread).
    pub(super) running: AtomicBool,
    pub(super) life: Mutex<Life>,
}

impl IoThread {
    /// Passes it a connection, unless [`INBOX`] of them wait already (or it could never be
    /// started): the handoff comes back.
    pub(super) fn hand(&self, handoff: Handoff) -> Result<(), Handoff> {
        if self.inbox.len() >= INBOX {
            return Err(handoff);
        }
        self.inbox.try_send(handoff).map_err(|e| e.into_inner())
    }

    /// Its start-and-end state, locked (a panic elsewhere while it was held leaves it usable).
    pub(super) fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An I/O thread's start-and-end state.
#[derive(Default)]
pub(super) struct Life {
    /// The thread, running or ended: joined before it starts again, or when the server stops.
    pub(super) handle: Option<JoinHandle<usize>>,
    /// The receiving ends of its channels while it does not run; `None` while it runs (and for
    /// good if it could not be started).
    pub(super) parked: Option<(Receiver<Handoff>, Receiver<Done>)>,
}

/// Starts I/O thread `index` (not running; `life` is its locked state) on the event loop
/// `build` makes of its channels. Refused once the server stops.
fn start_io_thread(
    shared: &Shared,
    index: usize,
    life: &mut Life,
    build: impl FnOnce(Receiver<Handoff>, Receiver<Done>) -> EventLoop,
) -> std::io::Result<()> {
    if shared.stopping.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("the API is stopping"));
    }
    let Some((inbox, done)) = life.parked.take() else {
        return Err(std::io::Error::other("it could not be started before"));
    };
    // An ended thread returned right after parking its channels: this is immediate.
    if let Some(ended) = life.handle.take() {
        let _ = ended.join();
    }
    let event_loop = build(inbox, done);
    let name = if shared.io.len() == 1 {
        "api-io".to_string()
    } else {
        format!("api-io-{index}")
    };
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || event_loop.run())
        .inspect_err(|e| {
            log::warn!(
                "cannot start API I/O thread {index}: {e}; the others hold its share from now on"
            )
        })?;
    life.handle = Some(thread);
    shared.io[index].running.store(true, Ordering::SeqCst);
    Ok(())
}

/// A connection accepted on one I/O thread for another.
pub(super) enum Handoff {
    /// Counted in `Shared::live` already: hold it.
    Place(TcpStream, SocketAddr),
    /// The cap is reached and the threads in `tried` (a bit per thread) could not make room:
    /// make room for it by shedding, pass it on, or answer 503.
    MakeRoom {
        stream: TcpStream,
        peer: SocketAddr,
        tried: u64,
    },
}

/// The running server: the I/O threads and the handler threads.
pub struct Server {
    local_addr: SocketAddr,
    max_connections: usize,
    shared: Arc<Shared>,
    /// `stop` has run.
    stopped: bool,
    /// The handler pools, once every I/O thread (each holding them too) has ended.
    lanes: Option<Arc<Lanes>>,
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
        config.io_threads = config.io_threads.clamp(1, MAX_IO_THREADS);

        let listener = TcpListener::bind(config.listen)?;
        // std listens with a backlog of 128; a flood must not make real clients wait for SYN
        // retransmits, so ask for more (Linux allows calling listen again to change it).
        // SAFETY: listen(2) on a socket we own.
        unsafe {
            libc::listen(listener.as_raw_fd(), BACKLOG);
        }
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let listener = Arc::new(listener);

        // Every call into the service, on any thread, turns a panic into an answer.
        let service: Arc<dyn Service> = Arc::new(Guarded(service));

        let mut io = Vec::with_capacity(config.io_threads);
        let mut routes = Vec::with_capacity(config.io_threads);
        for _ in 0..config.io_threads {
            let poller = Arc::new(Poller::new()?);
            // Every I/O thread watches the listener: whichever is free accepts. (A thread that
            // does not run waits on nothing: its poller only collects readiness meanwhile.)
            poller.add(&*listener, Event::readable(LISTENER), PollMode::Level)?;
            let (inbox, inbox_rx) = crossbeam_channel::unbounded();
            let (done, done_rx) = crossbeam_channel::unbounded();
            routes.push(pool::Route {
                done,
                poller: Arc::clone(&poller),
            });
            io.push(IoThread {
                poller,
                inbox,
                assigned: AtomicUsize::new(0),
                running: AtomicBool::new(false),
                life: Mutex::new(Life {
                    handle: None,
                    parked: Some((inbox_rx, done_rx)),
                }),
            });
        }
        let routes: Arc<[pool::Route]> = routes.into();
        let stopping = Arc::new(AtomicBool::new(false));
        let lane = |name: &str, count: usize| {
            pool::start(
                name,
                count,
                config.queue_per_lane,
                Arc::clone(&routes),
                Arc::clone(&service),
                Arc::clone(&stopping),
            )
        };
        let lanes = Arc::new(Lanes {
            quick: lane("api-quick", config.quick_threads),
            slow: lane("api-slow", config.slow_threads),
        });
        let shared = Arc::new(Shared {
            stopping,
            stop_deadline: Mutex::new(None),
            live: AtomicUsize::new(0),
            body_reserved: AtomicUsize::new(0),
            accept_errors: Mutex::new(conn::ErrorLog::default()),
            io,
        });

        let mut server = Server {
            local_addr,
            max_connections: config.max_connections,
            shared: Arc::clone(&shared),
            stopped: false,
            lanes: Some(Arc::clone(&lanes)),
        };
        // The first I/O thread; the others start as connections come.
        let started = start_io_thread(&shared, 0, &mut shared.io[0].life(), |inbox, done| {
            EventLoop::new(
                0,
                config.clone(),
                Arc::clone(&service),
                Arc::clone(&shared),
                Arc::clone(&lanes),
                Arc::clone(&listener),
                inbox,
                done,
            )
        });
        if let Err(e) = started {
            drop(lanes);
            server.stop(Duration::ZERO);
            return Err(e);
        }
        Ok(server)
    }

    /// I/O threads running now.
    pub fn io_threads_running(&self) -> usize {
        self.shared
            .io
            .iter()
            .filter(|io| io.running.load(Ordering::SeqCst))
            .count()
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
        if let Ok(mut slot) = self.shared.stop_deadline.lock() {
            *slot = Some(deadline);
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        for io in &self.shared.io {
            let _ = io.poller.notify();
        }
        self.stopped = true;
        let mut left = 0;
        // No thread starts once `stopping` is set (checked under the same lock as here).
        for io in &self.shared.io {
            let Some(thread) = io.life().handle.take() else {
                continue;
            };
            match thread.join() {
                Ok(in_flight) => left += in_flight,
                // Its connections were dropped with it.
                Err(_) => log::error!("an API I/O thread had panicked"),
            }
        }
        // Every I/O thread has ended and dropped its reference: closing the lanes' queues lets
        // idle handlers end now, busy ones after their request.
        if let Some(lanes) = self.lanes.take().and_then(Arc::into_inner) {
            lanes.quick.join(Some(deadline));
            lanes.slow.join(Some(deadline));
        }
        left
    }
}

/// The handler pools, one per lane, shared by the I/O threads.
pub(super) struct Lanes {
    pub(super) quick: WorkerPool<Job>,
    pub(super) slow: WorkerPool<Job>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped || self.lanes.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}
