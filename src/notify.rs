//! The service manager's side of the agent: systemd's notify protocol, without libsystemd.
//!
//! [`Notifier::from_env`] reads `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket),
//! `WATCHDOG_USEC` and `WATCHDOG_PID` once, while the process is still one thread, and removes
//! them from the environment so that no child (the docker CLI) talks to systemd in the agent's
//! name. Messages are plain datagrams on an unbound `UnixDatagram`: `READY=1`, `STATUS=...`,
//! `STOPPING=1`, `WATCHDOG=1`. Without `NOTIFY_SOCKET` every send is a no-op.
//!
//! The notify thread ([`start`]) owns the notifier once the agent runs. It sends `READY=1` with a
//! first `STATUS=` (the API listens by then), then on every tick (half of `WATCHDOG_USEC`, or
//! [`STATUS_INTERVAL`] without a watchdog) asks the agent's own `GET /health` over loopback, with
//! a deadline: an answer ticks the `api` liveness stamp, and a changed component summary becomes a
//! new `STATUS=` line ("docker: unavailable ..."). With a watchdog it then sends `WATCHDOG=1` only
//! while no [`LivenessStamp`] of the [`Liveness`] board is past its deadline; a stuck one stops
//! the petting (so systemd restarts the agent after `WatchdogSec`) and is logged by name. It
//! receives nothing else; it stops when the shutdown channel closes, after sending `STOPPING=1`.
//!
//! Component threads may register stamps of their own ([`Liveness::register`]) and tick them
//! from their loops; a stamp dropped by a thread that ended normally no longer counts.

use crate::shutdown::Shutdown;
use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the status is refreshed when systemd asked for no watchdog.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// The most a `/health` self-check may take (less when the watchdog interval is shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The least time the API may go without answering a self-check before it counts as stuck: a
/// burst that fills every connection slot for a while is load, not a hang worth a restart.
const API_DEADLINE_MIN: Duration = Duration::from_secs(60);

/// Longest `STATUS=` text sent; systemd shows it in `systemctl status`, one line.
const STATUS_MAX: usize = 240;

/// Why the notify settings from the environment were not usable.
#[derive(Debug)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor `@name`.
    BadSocket(String),
    /// `WATCHDOG_USEC` is not a positive number of microseconds.
    BadWatchdog(String),
    /// The datagram socket could not be created.
    Socket(std::io::Error),
}

impl fmt::Display for NotifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotifyError::BadSocket(value) => write!(
                f,
                "NOTIFY_SOCKET={value:?} is neither an absolute path nor @name; not notifying systemd"
            ),
            NotifyError::BadWatchdog(value) => write!(
                f,
                "WATCHDOG_USEC={value:?} is not a positive number of microseconds; no watchdog"
            ),
            NotifyError::Socket(e) => {
                write!(f, "cannot create the systemd notify socket: {e}; not notifying systemd")
            }
        }
    }
}

impl std::error::Error for NotifyError {}

/// Sends notify messages to systemd, or nothing when the agent was not started by it.
pub struct Notifier {
    target: Option<(UnixDatagram, UnixAddr, String)>,
    watchdog: Option<Duration>,
    failed: AtomicBool,
}

impl Notifier {
    /// A notifier that sends nothing (no `NOTIFY_SOCKET`).
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
            failed: AtomicBool::new(false),
        }
    }

    /// Reads and removes `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`. Call it while the
    /// process is one thread (it changes the environment). Unusable values are returned as
    /// warnings beside a notifier that does what it still can.
    pub fn from_env() -> (Notifier, Vec<NotifyError>) {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        // The caller is still one thread, so nothing reads the environment meanwhile.
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        Notifier::from_values(
            socket.as_deref(),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// [`Notifier::from_env`] on given values, `own_pid` being this process's id.
    pub fn from_values(
        socket: Option<&str>,
        usec: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
    ) -> (Notifier, Vec<NotifyError>) {
        let mut warnings = Vec::new();
        let mut notifier = Notifier::disabled();
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return (notifier, warnings);
        };
        match target(socket) {
            Ok(target) => notifier.target = Some(target),
            Err(e) => {
                warnings.push(e);
                return (notifier, warnings);
            }
        }
        // WATCHDOG_PID names the process systemd watches; a forked child must not pet for it.
        let for_us = pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(own_pid));
        if let (Some(usec), true) = (usec, for_us) {
            match usec.trim().parse::<u64>() {
                Ok(n) if n > 0 => notifier.watchdog = Some(Duration::from_micros(n)),
                _ => warnings.push(NotifyError::BadWatchdog(usec.to_string())),
            }
        }
        (notifier, warnings)
    }

    /// Whether systemd listens (`NOTIFY_SOCKET` was set and usable).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout systemd asked for (`WATCHDOG_USEC`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A `STATUS=` line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `RELOADING=1` (with the `MONOTONIC_USEC` systemd's `Type=notify-reload` wants): a
    /// configuration reload has begun; `READY=1` ends it.
    pub fn reloading(&self) {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec it is given.
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now);
        }
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!(
            "RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC={usec}"
        ));
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// `WATCHDOG=1`: the agent is alive.
    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        let Some((socket, addr, name)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            // Once loudly; systemd going away is not worth a line per tick.
            if !self.failed.swap(true, Ordering::Relaxed) {
                log::warn!("cannot notify systemd on {name}: {e}");
            } else {
                log::debug!("cannot notify systemd on {name}: {e}");
            }
        } else if self.failed.swap(false, Ordering::Relaxed) {
            log::info!("notifying systemd on {name} works again");
        }
    }
}

/// The socket and address for a `NOTIFY_SOCKET` value.
fn target(value: &str) -> Result<(UnixDatagram, UnixAddr, String), NotifyError> {
    let addr = if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        UnixAddr::from_abstract_name(name.as_bytes())
    } else if value.starts_with('/') {
        UnixAddr::from_pathname(value)
    } else {
        return Err(NotifyError::BadSocket(value.to_string()));
    }
    .map_err(|_| NotifyError::BadSocket(value.to_string()))?;
    let socket = UnixDatagram::unbound().map_err(NotifyError::Socket)?;
    // systemd reads at once; a full queue must not hold a thread for long.
    socket
        .set_write_timeout(Some(Duration::from_secs(1)))
        .map_err(NotifyError::Socket)?;
    Ok((socket, addr, value.to_string()))
}

/// Status text on one line, at most [`STATUS_MAX`] bytes (cut at a character boundary).
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > STATUS_MAX {
        let mut cut = STATUS_MAX;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

/// Liveness stamps of the threads that must keep moving for the watchdog to be petted.
pub struct Liveness {
    epoch: Instant,
    stamps: Mutex<Vec<Arc<Stamp>>>,
    /// The shortest deadline a component thread gets ([`watch`]), in milliseconds.
    floor_ms: AtomicU64,
}

/// How often an idle component thread ticks its stamp: it waits in slices this long.
pub const TICK: Duration = Duration::from_secs(1);

/// A component thread's deadline is never shorter than this (five missed ticks), whatever the
/// watchdog.
pub const MIN_DEADLINE: Duration = Duration::from_secs(5);

/// The deadline without a systemd watchdog (a stuck thread is then only logged).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

/// The process's liveness board: every component thread registers on it ([`watch`]) and the
/// notify thread reads it.
pub fn board() -> &'static Arc<Liveness> {
    static BOARD: std::sync::OnceLock<Arc<Liveness>> = std::sync::OnceLock::new();
    BOARD.get_or_init(Liveness::new)
}

/// A stamp for the component thread `name` on the process's board, with the board's deadline
/// (twice the systemd watchdog timeout, at least [`MIN_DEADLINE`]). The thread ticks it at
/// least every [`TICK`] while idle and after each piece of work, so a thread blocked in a call
/// (NVML on a dying GPU, a hung docker CLI read) goes silent and is named.
pub fn watch(name: &str) -> LivenessStamp {
    let board = board();
    let floor = Duration::from_millis(board.floor_ms.load(Ordering::Relaxed));
    board.register(name, floor.max(MIN_DEADLINE))
}

struct Stamp {
    name: String,
    deadline: Duration,
    /// Milliseconds since the board's epoch at the last tick.
    last_ms: AtomicU64,
    retired: AtomicBool,
}

/// A thread's handle on its stamp: [`LivenessStamp::tick`] from its loop at least once per
/// deadline. Dropping it (the thread ended) takes it off the board.
pub struct LivenessStamp {
    stamp: Arc<Stamp>,
    epoch: Instant,
}

/// A thread whose stamp is past its deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub name: String,
    pub silent_for: Duration,
    pub deadline: Duration,
}

impl fmt::Display for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (silent for {} ms, deadline {} ms)",
            self.name,
            self.silent_for.as_millis(),
            self.deadline.as_millis()
        )
    }
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            epoch: Instant::now(),
            stamps: Mutex::new(Vec::new()),
            floor_ms: AtomicU64::new(millis(DEFAULT_DEADLINE)),
        }
    }
}

impl Liveness {
    pub fn new() -> Arc<Liveness> {
        Arc::new(Liveness::default())
    }

    /// Sets the deadline of the stamps [`watch`] hands out from now on.
    pub fn set_deadline(&self, deadline: Duration) {
        self.floor_ms.store(millis(deadline), Ordering::Relaxed);
    }

    /// A stamp for the thread `name`, ticked now; it is stuck when not ticked for `deadline`.
    pub fn register(&self, name: impl Into<String>, deadline: Duration) -> LivenessStamp {
        let stamp = Arc::new(Stamp {
            name: name.into(),
            deadline,
            last_ms: AtomicU64::new(millis_since(self.epoch)),
            retired: AtomicBool::new(false),
        });
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        stamps.retain(|s| !s.retired.load(Ordering::Relaxed));
        stamps.push(Arc::clone(&stamp));
        LivenessStamp {
            stamp,
            epoch: self.epoch,
        }
    }

    /// The registered threads past their deadline, by name.
    pub fn stuck(&self) -> Vec<Stuck> {
        let now = millis_since(self.epoch);
        let stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        stamps
            .iter()
            .filter(|s| !s.retired.load(Ordering::Relaxed))
            .filter_map(|s| {
                let silent_for =
                    Duration::from_millis(now.saturating_sub(s.last_ms.load(Ordering::Relaxed)));
                (silent_for > s.deadline).then(|| Stuck {
                    name: s.name.clone(),
                    silent_for,
                    deadline: s.deadline,
                })
            })
            .collect()
    }
}

impl LivenessStamp {
    /// The thread is alive now.
    pub fn tick(&self) {
        self.stamp
            .last_ms
            .store(millis_since(self.epoch), Ordering::Relaxed);
    }

    /// Waits up to `timeout` for the shutdown, ticking every [`TICK`]; true as soon as the
    /// shutdown has started.
    pub fn wait(&self, shutdown: &crate::shutdown::Shutdown, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            self.tick();
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if shutdown.wait_timeout(left.min(TICK)) {
                return true;
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Drop for LivenessStamp {
    fn drop(&mut self) {
        self.stamp.retired.store(true, Ordering::Relaxed);
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What the agent's own `GET /health` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthView {
    pub status: String,
    pub components: BTreeMap<String, String>,
}

impl HealthView {
    /// The `STATUS=` text: the overall status, then each component that is not plainly `ok`.
    pub fn summary(&self) -> String {
        let troubled: Vec<String> = self
            .components
            .iter()
            .filter(|(_, state)| state.as_str() != "ok")
            .map(|(name, state)| format!("{name}: {state}"))
            .collect();
        if troubled.is_empty() {
            format!("{}; every component ok", self.status)
        } else {
            format!("{}; {}", self.status, troubled.join("; "))
        }
    }
}

/// Asks `GET /health` of the API listening on `listen` (an unspecified address is asked on
/// loopback), all within `timeout`.
pub fn probe_health(listen: SocketAddr, timeout: Duration) -> Result<HealthView, String> {
    let deadline = Instant::now() + timeout;
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let left = |deadline: Instant| -> Result<Duration, String> {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer from http://{addr}/health within {timeout:?}"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left(deadline)?)
        .map_err(|e| format!("cannot connect to http://{addr}/health: {e}"))?;
    stream
        .set_write_timeout(Some(left(deadline)?))
        .and_then(|_| {
            stream.write_all(
                format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
        })
        .map_err(|e| format!("cannot ask http://{addr}/health: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if raw.len() + n <= 64 * 1024 => raw.extend_from_slice(&buf[..n]),
            Ok(_) => return Err(format!("http://{addr}/health answered more than 64 KiB")),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("no answer from http://{addr}/health: {e}")),
        }
    }
    parse_health(&raw).map_err(|e| format!("http://{addr}/health: {e}"))
}

/// A `/health` answer: a 200 whose body is the health document.
fn parse_health(raw: &[u8]) -> Result<HealthView, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("an incomplete HTTP answer")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!(
            "status {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    let body: serde_json::Value =
        serde_json::from_slice(&raw[split + 4..]).map_err(|e| format!("not JSON: {e}"))?;
    let components = body["components"]
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| {
                    let state = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                    (k.clone(), state)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(HealthView {
        status: body["status"].as_str().unwrap_or("unknown").to_string(),
        components,
    })
}

/// The notify thread's state between ticks.
struct Watch {
    notifier: Arc<Notifier>,
    listen: SocketAddr,
    liveness: Arc<Liveness>,
    api: LivenessStamp,
    last_status: String,
    /// Names reported stuck at the last tick, so the log says it once per change.
    last_stuck: Vec<String>,
    /// Whether the last self-check failed.
    api_failing: bool,
}

impl Watch {
    /// A watch that has reported `last_status` and found nothing stuck or failing yet.
    fn new(
        notifier: Arc<Notifier>,
        listen: SocketAddr,
        liveness: Arc<Liveness>,
        api: LivenessStamp,
        last_status: String,
    ) -> Watch {
        Watch {
            notifier,
            listen,
            liveness,
            api,
            last_status,
            last_stuck: Vec::new(),
            api_failing: false,
        }
    }

    /// One tick: check the API, refresh the status, pet the watchdog when nothing is stuck.
    /// Returns whether it petted.
    fn tick(&mut self, probe_timeout: Duration) -> bool {
        let status = match probe_health(self.listen, probe_timeout) {
            Ok(view) => {
                self.api.tick();
                if std::mem::take(&mut self.api_failing) {
                    log::info!("self-check: the API answers /health again");
                }
                view.summary()
            }
            Err(e) => {
                // Once per failure streak; the stuck report below follows if it lasts.
                if !std::mem::replace(&mut self.api_failing, true) {
                    log::warn!("self-check: {e}");
                }
                format!("API not answering: {e}")
            }
        };
        let stuck = self.liveness.stuck();
        let names: Vec<String> = stuck.iter().map(|s| s.name.clone()).collect();
        if names != self.last_stuck {
            if stuck.is_empty() {
                log::info!("every watched thread is alive again");
            } else {
                let list: Vec<String> = stuck.iter().map(Stuck::to_string).collect();
                let action = if self.notifier.watchdog().is_some() {
                    "not petting the systemd watchdog (systemd restarts the agent)"
                } else {
                    "no watchdog is set to restart the agent"
                };
                log::error!("stuck: {}; {action}", list.join(", "));
            }
            self.last_stuck = names;
        }
        let status = if stuck.is_empty() {
            status
        } else {
            format!("stuck: {}", self.last_stuck.join(", "))
        };
        if status != self.last_status {
            self.notifier.status(&status);
            self.last_status = status;
        }
        let pet = stuck.is_empty() && self.notifier.watchdog().is_some();
        if pet {
            self.notifier.watchdog_ping();
        }
        pet
    }
}

/// Starts the notify thread, which first sends `READY=1` (see the module doc); `None` when systemd does
/// not listen. `listen` is the API's address, `liveness` the board of watched threads.
pub fn start(
    notifier: Arc<Notifier>,
    listen: SocketAddr,
    liveness: Arc<Liveness>,
    shutdown: Shutdown,
) -> std::io::Result<Option<JoinHandle<()>>> {
    if !notifier.is_enabled() {
        return Ok(None);
    }
    let interval = notifier.watchdog().map_or(STATUS_INTERVAL, |w| w / 2);
    let probe_timeout = PROBE_TIMEOUT.min(interval / 2);
    // The API must answer a self-check within two ticks (and at least a minute), or the
    // petting stops.
    let api = liveness.register("api", (interval * 2).max(API_DEADLINE_MIN));
    let ready = format!("ready; API on http://{listen}");
    if let Some(watchdog) = notifier.watchdog() {
        log::info!(
            "systemd watchdog: {} ms, petted every {} ms while the API answers",
            watchdog.as_millis(),
            interval.as_millis()
        );
    }
    let mut watch = Watch::new(notifier, listen, liveness, api, ready);
    let thread = std::thread::Builder::new()
        .name("systemd-notify".into())
        .spawn(move || {
            watch.notifier.ready(&watch.last_status);
            let mut next = Instant::now();
            loop {
                watch.tick(probe_timeout);
                next += interval;
                // After a stall (a suspended host), tick at once rather than in a burst.
                let now = Instant::now();
                if next < now {
                    next = now;
                }
                if shutdown.wait_timeout(next - now) {
                    break;
                }
            }
            watch.notifier.stopping();
        })?;
    Ok(Some(thread))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn bound_socket() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path.to_string_lossy().into_owned())
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).expect("a notify message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let (_dir, socket, path) = bound_socket();
        let (notifier, warnings) = Notifier::from_values(Some(&path), None, None, 1);
        assert!(warnings.is_empty());
        notifier.ready("up\nand running");
        assert_eq!(recv(&socket), "READY=1\nSTATUS=up and running");
        notifier.stopping();
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("utopia-notify-unit-{}", std::process::id());
        let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let (notifier, _) = Notifier::from_values(Some(&format!("@{name}")), None, None, 1);
        notifier.status("hello");
        assert_eq!(recv(&socket), "STATUS=hello");
    }

    #[test]
    fn unusable_values_are_warnings() {
        let (notifier, warnings) = Notifier::from_values(Some("relative/path"), None, None, 1);
        assert!(!notifier.is_enabled());
        assert!(warnings[0].to_string().contains("relative/path"));
        let (_dir, _socket, path) = bound_socket();
        let (notifier, warnings) = Notifier::from_values(Some(&path), Some("soon"), None, 1);
        assert!(notifier.is_enabled());
        assert_eq!(notifier.watchdog(), None);
        assert!(warnings[0].to_string().contains("WATCHDOG_USEC"));
        // The watchdog of another process is not ours to pet.
        let (notifier, _) = Notifier::from_values(Some(&path), Some("2000000"), Some("7"), 8);
        assert_eq!(notifier.watchdog(), None);
        let (notifier, _) = Notifier::from_values(Some(&path), Some("2000000"), Some("8"), 8);
        assert_eq!(notifier.watchdog(), Some(Duration::from_secs(2)));
        // Without NOTIFY_SOCKET nothing is sent and nothing is wrong.
        let (notifier, warnings) = Notifier::from_values(None, Some("2000000"), None, 8);
        assert!(!notifier.is_enabled() && warnings.is_empty());
        notifier.ready("nobody listens");
    }

    #[test]
    fn a_stamp_past_its_deadline_is_stuck_by_name_until_it_ticks() {
        let board = Liveness::new();
        let sampler = board.register("gpu-sampler", Duration::from_millis(100));
        let runner = board.register("docker-runner", Duration::from_secs(60));
        assert!(board.stuck().is_empty());
        std::thread::sleep(Duration::from_millis(150));
        let stuck = board.stuck();
        assert_eq!(stuck.len(), 1);
        assert_eq!(stuck[0].name, "gpu-sampler");
        assert!(stuck[0].silent_for >= Duration::from_millis(150));
        assert!(stuck[0].to_string().starts_with("gpu-sampler (silent for "));
        sampler.tick();
        assert!(board.stuck().is_empty());
        // A thread that ended (dropped its stamp) is never stuck.
        std::thread::sleep(Duration::from_millis(150));
        drop(sampler);
        assert!(board.stuck().is_empty());
        drop(runner);
    }

    /// A one-shot HTTP server answering `/health` with `body` (or never answering).
    fn health_server(body: Option<&'static str>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                match body {
                    Some(body) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    // Hold the connection open without answering: a hung API.
                    None => std::thread::sleep(Duration::from_secs(3)),
                }
            }
        });
        addr
    }

    #[test]
    fn the_health_probe_reads_the_components() {
        let addr = health_server(Some(
            r#"{"status":"ok","components":{"api":"ok","docker":"unavailable: no engine"}}"#,
        ));
        let view = probe_health(addr, Duration::from_secs(2)).unwrap();
        assert_eq!(view.components["docker"], "unavailable: no engine");
        assert_eq!(view.summary(), "ok; docker: unavailable: no engine");
    }

    #[test]
    fn a_hung_api_fails_the_probe_within_its_timeout() {
        let addr = health_server(None);
        let start = Instant::now();
        let error = probe_health(addr, Duration::from_millis(200)).unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1), "{error}");
        assert!(error.contains("/health"), "{error}");
    }

    #[test]
    fn a_hung_api_stops_the_petting_after_its_deadline() {
        let (_dir, socket, path) = bound_socket();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let (notifier, _) = Notifier::from_values(Some(&path), Some("1000000"), None, 1);
        let board = Liveness::new();
        let api = board.register("api", Duration::from_millis(300));
        let mut watch = Watch::new(
            notifier.into(),
            health_server(None),
            Arc::clone(&board),
            api,
            String::new(),
        );
        // Within its deadline one unanswered self-check is tolerated.
        assert!(watch.tick(Duration::from_millis(50)));
        assert!(recv(&socket).starts_with("STATUS=API not answering: "));
        assert_eq!(recv(&socket), "WATCHDOG=1");
        std::thread::sleep(Duration::from_millis(350));
        assert!(!watch.tick(Duration::from_millis(50)));
        assert_eq!(recv(&socket), "STATUS=stuck: api");
        let mut buf = [0u8; 64];
        assert!(socket.recv(&mut buf).is_err(), "no WATCHDOG=1 while stuck");
    }

    #[test]
    fn a_stuck_thread_stops_the_petting_and_a_tick_resumes_it() {
        let (_dir, socket, path) = bound_socket();
        socket
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let (notifier, _) = Notifier::from_values(Some(&path), Some("1000000"), None, 1);
        let board = Liveness::new();
        let api = board.register("api", Duration::from_secs(60));
        let mut watch = Watch::new(
            notifier.into(),
            health_server(Some(r#"{"status":"ok","components":{"api":"ok"}}"#)),
            Arc::clone(&board),
            api,
            String::new(),
        );
        assert!(watch.tick(Duration::from_secs(1)));
        assert_eq!(recv(&socket), "STATUS=ok; every component ok");
        assert_eq!(recv(&socket), "WATCHDOG=1");

        let stamp = board.register("docker-events", Duration::from_millis(500));
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            !watch.tick(Duration::from_secs(1)),
            "a stuck thread stops the petting"
        );
        assert_eq!(recv(&socket), "STATUS=stuck: docker-events");
        let mut buf = [0u8; 64];
        assert!(socket.recv(&mut buf).is_err(), "no WATCHDOG=1 while stuck");

        stamp.tick();
        assert!(watch.tick(Duration::from_secs(1)));
        assert_eq!(recv(&socket), "STATUS=ok; every component ok");
        assert_eq!(recv(&socket), "WATCHDOG=1");
    }
}
