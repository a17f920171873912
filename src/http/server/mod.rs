//! The I/O threads: each watches the shared listening socket and owns the connections placed on
//! it; accepts, places new connections on the thread holding the fewest, reads heads and
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
use crate::http::pool::{self, Job};
use crate::http::{limits, Service};
use crate::workers::WorkerPool;
use crossbeam_channel::Sender;
use event_loop::EventLoop;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
/// keeps it (or, at capacity, answers 503 itself).
const INBOX: usize = 1024;
/// The scheduler slice an I/O thread asks for (Linux 6.12 and later; the kernel's least).
const IO_SLICE: Duration = Duration::from_micros(100);
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
    /// Threads that accept and serve connections (each holds its share; at least 1).
    pub io_threads: usize,
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
            io_threads: 2,
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
    pub(super) io: Vec<IoThread>,
}

/// One I/O thread as the others see it.
pub(super) struct IoThread {
    pub(super) poller: Arc<Poller>,
    /// Connections handed to it by another I/O thread.
    pub(super) inbox: Sender<Handoff>,
    /// Connections assigned to it: held, or handed to it and not taken yet (new connections go
    /// to the thread with the fewest).
    pub(super) assigned: AtomicUsize,
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
    io_threads: Vec<JoinHandle<usize>>,
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
        let mut receivers = Vec::with_capacity(config.io_threads);
        let mut routes = Vec::with_capacity(config.io_threads);
        for _ in 0..config.io_threads {
            let poller = Arc::new(Poller::new()?);
            // Every I/O thread watches the listener: whichever is free accepts.
            poller.add(&*listener, Event::readable(LISTENER), PollMode::Level)?;
            let (inbox, inbox_rx) = crossbeam_channel::bounded(INBOX);
            let (done, done_rx) = crossbeam_channel::unbounded();
            routes.push(pool::Route {
                done,
                poller: Arc::clone(&poller),
            });
            io.push(IoThread {
                poller,
                inbox,
                assigned: AtomicUsize::new(0),
            });
            receivers.push((inbox_rx, done_rx));
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
            io,
        });

        let mut server = Server {
            local_addr,
            max_connections: config.max_connections,
            shared: Arc::clone(&shared),
            io_threads: Vec::with_capacity(config.io_threads),
            lanes: Some(Arc::clone(&lanes)),
        };
        for (index, (inbox, done)) in receivers.into_iter().enumerate() {
            let event_loop = EventLoop::new(
                index,
                config.clone(),
                Arc::clone(&service),
                Arc::clone(&shared),
                Arc::clone(&lanes),
                Arc::clone(&listener),
                inbox,
                done,
            );
            let name = if config.io_threads == 1 {
                "api-io".to_string()
            } else {
                format!("api-io-{index}")
            };
            match std::thread::Builder::new().name(name).spawn(move || {
                ask_for_a_short_slice();
                event_loop.run()
            }) {
                Ok(thread) => server.io_threads.push(thread),
                Err(e) => {
                    // The threads already started end with `server`.
                    drop(lanes);
                    drop(server);
                    return Err(e);
                }
            }
        }
        Ok(server)
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
        let mut left = 0;
        for thread in self.io_threads.drain(..) {
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

/// Asks the scheduler for a short slice for the calling thread (`sched_setattr` with
/// `sched_runtime` under the normal policy, at the thread's nice value: no privilege needed).
/// An I/O thread runs for microseconds per wake-up, and every connection it holds waits while
/// it waits for a CPU: with the default slice (0.75-3 ms) it waits behind whole slices of
/// busier threads; with a short one its deadline comes first, so it runs as soon as it wakes.
/// A kernel without custom slices (before 6.12) ignores the value or refuses it: the thread
/// then runs as before.
fn ask_for_a_short_slice() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority/sched_setattr on the calling thread with a valid attribute.
        unsafe {
            // Only under the normal or batch policy (a real-time one is the operator's choice).
            let policy = libc::sched_getscheduler(0);
            if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
                return;
            }
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            if nice == -1 && *libc::__errno_location() != 0 {
                return;
            }
            let mut attr: libc::sched_attr = std::mem::zeroed();
            attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
            attr.sched_policy = policy as u32;
            attr.sched_nice = nice;
            attr.sched_runtime = IO_SLICE.as_nanos() as u64;
            // Threads it starts (the handler threads, started when a request waits) get the
            // default slice and policy back: only the I/O thread wakes for microseconds.
            attr.sched_flags = libc::SCHED_FLAG_RESET_ON_FORK as u64;
            if libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const _, 0) != 0 {
                log::debug!(
                    "cannot ask for a short scheduler slice for the API's I/O thread: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// The handler pools, one per lane, shared by the I/O threads.
pub(super) struct Lanes {
    pub(super) quick: WorkerPool<Job>,
    pub(super) slow: WorkerPool<Job>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.io_threads.is_empty() || self.lanes.is_some() {
            self.stop(Duration::ZERO);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (major, minor) of the running kernel.
    fn kernel() -> Option<(u32, u32)> {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
        let mut parts = release.trim().split(['.', '-']);
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    }

    /// The `se.slice` of the calling thread.
    fn own_slice() -> u64 {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").unwrap();
        sched
            .lines()
            .find_map(|l| l.strip_prefix("se.slice"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no se.slice in {sched}"))
    }

    #[test]
    fn an_io_thread_gets_the_short_slice_and_threads_it_starts_keep_the_default() {
        if kernel().is_none_or(|k| k < (6, 12)) {
            return;
        }
        // The handler threads are started by the I/O thread (when a request waits and none is
        // free): they build documents for milliseconds and must not inherit its short slice.
        let default = own_slice();
        let (io, handler) = std::thread::spawn(|| {
            ask_for_a_short_slice();
            (own_slice(), std::thread::spawn(own_slice).join().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(io, IO_SLICE.as_nanos() as u64);
        assert_eq!(handler, default);
    }
}
