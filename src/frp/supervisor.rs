//! The `frp` thread: starts `frp.frpc_path -c <work_dir>/frpc.toml` once the frp user is known
//! (the node id with a platform, `frp.user` without), watches it, and keeps its proxies in step
//! with the managed containers' published ports.
//!
//! - frpc is started by this thread with the parent-death signal set ([`Supervised`]), so an
//!   agent killed outright takes frpc with it; its output goes to the agent's log through
//!   [`OutputFilter`].
//! - frpc exits: it is started again after a backoff of 1 s doubling to
//!   `frp.restart_backoff_max_secs` (60 s by default), back to 1 s once
//!   it ran [`STABLE`]; every restart is counted. frpc missing or not executable: the tunnel is
//!   `failed` with that reason in `/health` and the log, and retried on the same schedule.
//! - The proxy set changes (a container created or deleted, the API proxy's settings): once
//!   no change came for [`COALESCE`], the file is rewritten and frpc's admin API asked to reload
//!   it (unchanged proxies keep their connections); a failed reload (any non-200, or no admin
//!   API) restarts frpc instead. A new frp user (a new node id) always restarts it: frpc does
//!   not reload its common section.
//! - frpc's `/api/status` is read every [`STATUS_INTERVAL`] for the proxies' state and remote
//!   addresses; the tunnel's view is published in the snapshot (`GET /api/v1/tunnels`, the
//!   heartbeat) with the `frp` component's health.
//! - Before any admin API call the admin port must be held by this frpc
//!   ([`super::listener`]): when another process holds it, nothing is sent (the password would
//!   go to it), the tunnel's view and `/health` warn, and the call is tried again later (the
//!   status every [`STATUS_INTERVAL`], a pending reload as often).
//! - Shutdown: SIGTERM to frpc's process group, SIGKILL after [`STOP_GRACE`]; reaped. Admin API
//!   calls run on a thread of their own that this thread waits for only until shutdown starts,
//!   so a call that hangs (up to its 2 s timeout) never keeps the stop past the agent's
//!   deadline: once frpc is gone its connection closes and the call ends.

use super::admin::{AdminClient, AdminError};
use super::frpc_config::{self, FrpcConfig, ADMIN_USER};
use super::listener::HolderNames;
use super::output::{OutputEvent, OutputFilter};
use super::resolve_api_proxy;
use crate::backoff::Backoff;
use crate::child::Supervised;
use crate::component::{self, StartError};
use crate::config::{FrpSettings, LogLevel, Settings};
use crate::shutdown::Shutdown;
use crate::state::{Health, PublishedPort, Snapshot, TunnelState, TunnelView, TunnelWriter};
use crossbeam_channel::{select, Receiver};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// First wait before starting frpc again; it doubles per restart up to
/// `frp.restart_backoff_max_secs` (60 s by default).
pub const RESTART_INITIAL: Duration = Duration::from_secs(1);
/// frpc running this long resets the restart backoff.
pub const STABLE: Duration = Duration::from_secs(60);
/// A burst of proxy changes closer together than this becomes one reload.
pub const COALESCE: Duration = Duration::from_millis(300);
/// How often frpc's `/api/status` is read.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);
/// SIGTERM to SIGKILL at shutdown (inside the agent's stop deadline).
pub const STOP_GRACE: Duration = Duration::from_millis(800);
/// How long a stop waits for an admin API call left running at shutdown to end once frpc is
/// gone (still inside the agent's stop deadline).
const ADMIN_CALL_END: Duration = Duration::from_millis(200);
/// How often the thread looks at frpc, its output and the proxy set.
const TICK: Duration = Duration::from_millis(100);
/// Why frpc is not started yet with a platform that has not registered the node.
const WAITING_FOR_NODE_ID: &str = "waiting for the node id from the platform";
/// A change right after a start waits this long for frpc's admin API to come up.
const ADMIN_STARTUP: Duration = Duration::from_secs(1);

/// Starts the `frp` thread, or publishes the tunnel as disabled when `frp.server_addr` is
/// empty (no thread, no frpc).
pub fn start(
    settings: &Settings,
    snapshot: Arc<Snapshot>,
    writer: TunnelWriter,
    shutdown: Shutdown,
) -> Result<Option<JoinHandle<()>>, StartError> {
    let Some(server_addr) = settings.frp.server_addr.clone() else {
        writer.publish(
            TunnelView::disabled(),
            Health::Disabled("frp.server_addr is empty".into()),
        );
        return Ok(None);
    };
    let platform = settings.platform.api_url.is_some();
    let unregistered = snapshot.node_id().is_none();
    let supervisor = Supervisor {
        frp: settings.frp.clone(),
        server: format!("{server_addr}:{}", settings.frp.server_port),
        server_addr,
        platform,
        api_local_port: settings.api.listen.port(),
        publish_address: settings.docker.run.publish_address.to_string(),
        log_level: frpc_log_level(settings.log_level),
        config_path: settings.frp.work_dir.join("frpc.toml"),
        snapshot,
        writer,
        shutdown,
        view: TunnelView {
            state: TunnelState::Starting,
            ..TunnelView::disabled()
        },
        waiting_for: (platform && unregistered).then_some(WAITING_FOR_NODE_ID),
        backoff: Backoff::exact(RESTART_INITIAL, settings.frp.restart_backoff_max),
        next_start: Instant::now(),
        started_once: false,
        running: None,
        admin_port_taken: None,
        holders: Arc::default(),
    };
    supervisor.publish();
    component::spawn("frp", move || supervisor.run()).map(Some)
}

/// frpc's `log.level` for the agent's.
fn frpc_log_level(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

struct Supervisor {
    frp: FrpSettings,
    server_addr: String,
    /// `host:port`.
    server: String,
    platform: bool,
    api_local_port: u16,
    publish_address: String,
    log_level: &'static str,
    config_path: PathBuf,
    snapshot: Arc<Snapshot>,
    writer: TunnelWriter,
    shutdown: Shutdown,
    view: TunnelView,
    /// Why frpc is not started yet although nothing failed (waiting for the node id).
    waiting_for: Option<&'static str>,
    backoff: Backoff,
    /// frpc is (re)started no earlier than this.
    next_start: Instant,
    /// frpc was started at least once (a later start is a restart).
    started_once: bool,
    running: Option<Running>,
    /// The admin port is held by another process than frpc (why), since the last admin call.
    admin_port_taken: Option<String>,
    /// Names that process, across frpc's restarts.
    holders: Arc<HolderNames>,
}

/// One running frpc.
struct Running {
    child: Supervised,
    started: Instant,
    admin: Arc<AdminClient>,
    /// An admin API call left running when shutdown started (it ends once frpc is stopped).
    admin_call: Option<JoinHandle<()>>,
    /// What its file says now.
    written: FrpcConfig,
    events: Receiver<OutputEvent>,
    readers: Vec<JoinHandle<()>>,
    /// The last error line it printed (the reason given if it exits).
    last_error_line: Option<String>,
    /// Removes its secrets from what its admin API answers.
    scrub: OutputFilter,
    next_status: Instant,
    /// Since when the wanted config differs from the written one.
    change_pending_since: Option<Instant>,
    /// No reload before this (the admin port was held by another process).
    reload_not_before: Option<Instant>,
}

/// Why frpc could not be started now.
enum StartFailure {
    /// Not yet possible (no node id); not an error.
    Waiting(&'static str),
    /// A real problem, shown as the tunnel's error and retried.
    Failed(String),
}

impl Supervisor {
    fn run(mut self) {
        log::info!(
            "frp tunnel to {} (frpc {}, config {})",
            self.server,
            self.frp.frpc_path.display(),
            self.config_path.display()
        );
        // Ticked every round: a round blocked (an admin API call past its timeout) is named.
        let stamp = crate::notify::watch("frp");
        loop {
            stamp.tick();
            if self.running.is_some() {
                self.watch();
            } else if Instant::now() >= self.next_start {
                self.try_start();
            }
            self.publish();
            if self.shutdown.wait_timeout(TICK) {
                break;
            }
        }
        if let Some(running) = self.running.take() {
            self.stop(running, "the agent is shutting down");
        }
    }

    /// What frpc's file should say now, with `password`; `Waiting` while the frp user is not
    /// known.
    fn wanted(&self, password: &str) -> Result<FrpcConfig, StartFailure> {
        let user = if self.platform {
            self.snapshot
                .node_id()
                .ok_or(StartFailure::Waiting(WAITING_FOR_NODE_ID))?
        } else {
            self.frp.user.clone().unwrap_or_default()
        };
        let api_proxy = resolve_api_proxy(&self.frp, self.snapshot.assigned_api_proxy().as_ref())
            .map_err(|e| StartFailure::Failed(e.to_string()))?;
        let ports: Vec<PublishedPort> = if self.frp.expose_container_ports {
            self.snapshot.published_ports().as_ref().clone()
        } else {
            Vec::new()
        };
        let (ports, refused) = frpc_config::without_api_port(ports, &api_proxy);
        let mut warnings = super::security_warnings(&self.frp, &api_proxy);
        warnings.extend(self.admin_port_taken.clone().map(|why| (why, true)));
        warnings.extend(refused.iter().map(|p| {
            (
                format!(
                    "proxy {} is not published: its remote port {}/tcp is the agent API's",
                    frpc_config::container_proxy_name(p),
                    p.remote_port
                ),
                true,
            )
        }));
        self.writer.set_warnings(warnings);
        Ok(FrpcConfig {
            server_addr: self.server_addr.clone(),
            server_port: self.frp.server_port,
            user,
            token: self.frp.token.clone(),
            tls_ca_file: self.frp.tls_ca_file.clone(),
            log_level: self.log_level,
            admin_port: self.frp.admin_port,
            admin_password: password.to_string(),
            api_local_port: self.api_local_port,
            api_proxy,
            publish_address: self.publish_address.clone(),
            ports,
        })
    }

    fn try_start(&mut self) {
        match self.spawn() {
            Ok(running) => {
                if self.started_once {
                    self.view.restarts += 1;
                }
                self.started_once = true;
                self.waiting_for = None;
                self.view.state = if self.view.restarts == 0 {
                    TunnelState::Starting
                } else {
                    TunnelState::Reconnecting
                };
                self.view.server = Some(self.server.clone());
                self.running = Some(running);
            }
            Err(StartFailure::Waiting(why)) => {
                self.waiting_for = Some(why);
                self.next_start = Instant::now() + Duration::from_millis(500);
            }
            Err(StartFailure::Failed(why)) => {
                let delay = self.backoff.next_delay();
                log::error!(
                    "frp tunnel: {why}; trying again in {}s",
                    delay.as_secs_f32()
                );
                self.waiting_for = None;
                self.view.state = TunnelState::Failed;
                self.view.last_error = Some(why);
                self.view.proxies.clear();
                self.next_start = Instant::now() + delay;
            }
        }
    }

    /// Writes the file and starts frpc on it.
    fn spawn(&self) -> Result<Running, StartFailure> {
        let password = random_password();
        let wanted = self.wanted(&password)?;
        self.write(&wanted).map_err(StartFailure::Failed)?;
        let path = &self.frp.frpc_path;
        let mut command = Command::new(path);
        command
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Supervised::spawn(command).map_err(|e| {
            StartFailure::Failed(match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "frpc not found at {} (frp.frpc_path): install frpc there or set the path",
                    path.display()
                ),
                std::io::ErrorKind::PermissionDenied => format!(
                    "frpc at {} (frp.frpc_path) is not executable",
                    path.display()
                ),
                _ => format!("cannot start frpc at {}: {e}", path.display()),
            })
        })?;
        let mut secrets = vec![wanted.token.clone(), password.clone()];
        secrets.extend(wanted.api_proxy.secret().map(str::to_string));
        let filter = OutputFilter::new(secrets);
        let scrub = filter.clone();
        let (events_tx, events) = crossbeam_channel::unbounded();
        let mut readers = Vec::new();
        if let Some(stdout) = child.take_stdout() {
            match filter
                .clone()
                .pipe(stdout, "frpc-stdout", events_tx.clone())
            {
                Ok(thread) => readers.push(thread),
                Err(e) => log::error!("cannot read frpc's output: {e}"),
            }
        }
        if let Some(stderr) = child.take_stderr() {
            match filter.pipe(stderr, "frpc-stderr", events_tx) {
                Ok(thread) => readers.push(thread),
                Err(e) => log::error!("cannot read frpc's errors: {e}"),
            }
        }
        log::info!(
            "frpc started (pid {}) as frp user {:?}: API proxy {} ({}), {} container proxy(ies)",
            child.id(),
            wanted.user,
            frpc_config::API_PROXY_NAME,
            wanted.api_proxy.kind(),
            wanted.ports.len()
        );
        let now = Instant::now();
        let pid = child.id();
        Ok(Running {
            child,
            started: now,
            admin: Arc::new(AdminClient::new(
                self.frp.admin_port,
                ADMIN_USER,
                &password,
                pid,
                Arc::clone(&self.holders),
            )),
            admin_call: None,
            written: wanted,
            events,
            readers,
            last_error_line: None,
            scrub,
            next_status: now + Duration::from_millis(500),
            change_pending_since: None,
            reload_not_before: None,
        })
    }

    fn write(&self, config: &FrpcConfig) -> Result<(), String> {
        let text = frpc_config::render(config).map_err(|e| e.to_string())?;
        frpc_config::write_atomically(&self.config_path, &text)
            .map_err(|e| format!("cannot write {}: {e}", self.config_path.display()))
    }

    /// One look at the running frpc: its output, its exit, its proxies, the wanted proxy set.
    fn watch(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        while let Ok(event) = running.events.try_recv() {
            match event {
                OutputEvent::LoggedIn => {
                    self.view.state = TunnelState::Connected;
                    running.next_status = Instant::now() + Duration::from_millis(200);
                }
                OutputEvent::LoginFailed(message) => {
                    self.view.state = TunnelState::Reconnecting;
                    self.view.last_error = Some(message);
                }
                OutputEvent::Error(message) => running.last_error_line = Some(message),
            }
        }
        match running.child.has_exited() {
            Ok(false) => {}
            Ok(true) | Err(_) => {
                self.exited(running);
                return;
            }
        }
        let now = Instant::now();
        if now >= running.next_status {
            running.next_status = now + STATUS_INTERVAL;
            match self.admin(&mut running, AdminClient::status) {
                Some(Ok(proxies)) => {
                    self.view.proxies = proxies;
                    self.admin_port_taken = None;
                }
                Some(Err(AdminError::NotFrpc(why))) => self.admin_port_taken = Some(why),
                Some(Err(e)) => {
                    // Whatever else went wrong, no other process holds the port now.
                    self.admin_port_taken = None;
                    log::debug!("frp tunnel: {e}");
                }
                None => {
                    self.running = Some(running);
                    return;
                }
            }
        }
        // Keep the proxy set in step, a burst of changes coalesced into one reload.
        let wanted = match self.wanted(&running.written.admin_password) {
            Ok(wanted) => wanted,
            Err(StartFailure::Waiting(_)) => {
                // The platform forgot the node: frpc keeps the old user until it registers.
                self.running = Some(running);
                return;
            }
            Err(StartFailure::Failed(why)) => {
                if self.view.last_error.as_deref() != Some(why.as_str()) {
                    log::error!("frp tunnel: {why}; keeping frpc's current proxies");
                    self.view.last_error = Some(why);
                }
                self.running = Some(running);
                return;
            }
        };
        if wanted == running.written {
            running.change_pending_since = None;
            self.running = Some(running);
            return;
        }
        let since = *running.change_pending_since.get_or_insert(now);
        if now.duration_since(since) < COALESCE
            || now.duration_since(running.started) < ADMIN_STARTUP
            || running.reload_not_before.is_some_and(|t| now < t)
        {
            self.running = Some(running);
            return;
        }
        running.change_pending_since = None;
        if wanted.user != running.written.user {
            self.restart_now(running, "the frp user (node id) changed".to_string());
            return;
        }
        if let Err(why) = self.write(&wanted) {
            log::error!("frp tunnel: {why}");
            self.view.last_error = Some(why);
            self.running = Some(running);
            return;
        }
        match self.admin(&mut running, AdminClient::reload) {
            None => self.running = Some(running),
            Some(Ok(())) => {
                log::info!(
                    "frpc reloaded: API proxy {}, {} container proxy(ies)",
                    wanted.api_proxy.kind(),
                    wanted.ports.len()
                );
                running.written = wanted;
                running.next_status = Instant::now() + Duration::from_millis(300);
                running.reload_not_before = None;
                self.admin_port_taken = None;
                self.running = Some(running);
            }
            Some(Err(AdminError::NotFrpc(why))) => {
                // Not frpc's fault, and a restart would not free the port: try again later.
                self.admin_port_taken = Some(why);
                running.change_pending_since = Some(now);
                running.reload_not_before = Some(now + STATUS_INTERVAL);
                self.running = Some(running);
            }
            Some(Err(e)) => {
                let why = running
                    .scrub
                    .scrub(&format!("reload failed ({e}); restarting frpc"));
                self.restart_now(running, why);
            }
        }
    }

    /// frpc exited on its own: restart after the backoff.
    fn exited(&mut self, mut running: Running) {
        let status = match running.child.kill() {
            Ok(status) => status.to_string(),
            Err(e) => format!("unknown status ({e})"),
        };
        for reader in running.readers.drain(..) {
            let _ = reader.join();
        }
        // Lines it printed last (why it exited) arrive before the pipes closed.
        while let Ok(event) = running.events.try_recv() {
            if let OutputEvent::Error(message) | OutputEvent::LoginFailed(message) = event {
                running.last_error_line = Some(message);
            }
        }
        if running.started.elapsed() >= STABLE {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        let mut why = format!("frpc exited ({status})");
        if let Some(line) = running.last_error_line.take() {
            why.push_str(": ");
            why.push_str(&line);
        }
        log::warn!("frp tunnel: {why}; restarting in {}s", delay.as_secs_f32());
        self.view.state = TunnelState::Reconnecting;
        self.view.last_error = Some(why);
        self.view.proxies.clear();
        self.next_start = Instant::now() + delay;
    }

    /// Stops frpc and starts it again at once (a failed reload, a new frp user).
    fn restart_now(&mut self, running: Running, why: String) {
        log::warn!("frp tunnel: {why}");
        self.stop(running, "restart");
        self.view.last_error = Some(why);
        self.view.proxies.clear();
        self.next_start = Instant::now();
        self.try_start();
    }

    /// One admin API call, on a thread of its own, waited for until it answers (within
    /// [`ADMIN_TIMEOUT`](super::admin::ADMIN_TIMEOUT)) or shutdown starts: `None` then, and
    /// the call is left to end once frpc is stopped.
    fn admin<T: Send + 'static>(
        &self,
        running: &mut Running,
        call: fn(&AdminClient) -> Result<T, AdminError>,
    ) -> Option<Result<T, AdminError>> {
        let client = Arc::clone(&running.admin);
        let (answer_tx, answer) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("frp-admin".into())
            .spawn(move || {
                let _ = answer_tx.send(call(&client));
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                return Some(Err(AdminError::Unreachable(format!(
                    "cannot start a thread for the call: {e}"
                ))))
            }
        };
        select! {
            recv(answer) -> answer => {
                let _ = thread.join();
                Some(answer.unwrap_or_else(|_| {
                    Err(AdminError::Unreachable("the call ended without an answer".into()))
                }))
            }
            recv(self.shutdown.receiver()) -> _ => {
                running.admin_call = Some(thread);
                None
            }
        }
    }

    /// SIGTERM, SIGKILL after [`STOP_GRACE`], reaped; its output read to the end.
    fn stop(&self, mut running: Running, why: &str) {
        match running.child.terminate(STOP_GRACE) {
            Ok(status) => log::info!("frpc stopped ({why}): {status}"),
            Err(e) => log::warn!("frpc stopped ({why}): cannot wait for it: {e}"),
        }
        for reader in running.readers.drain(..) {
            let _ = reader.join();
        }
        // With frpc gone its admin connection is closed: a call left running ends at once.
        if let Some(call) = running.admin_call.take() {
            let until = Instant::now() + ADMIN_CALL_END;
            while !call.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if call.is_finished() {
                let _ = call.join();
            } else {
                log::debug!("frp tunnel: an admin API call is still running; leaving it");
            }
        }
    }

    fn publish(&self) {
        let health = match self.view.state {
            TunnelState::Disabled => Health::Disabled("frp.server_addr is empty".into()),
            TunnelState::Starting => Health::Starting(self.waiting_for.map(str::to_string)),
            TunnelState::Connected => {
                let failing: Vec<String> = self
                    .view
                    .proxies
                    .iter()
                    .filter_map(|p| p.error.as_ref().map(|e| format!("proxy {}: {e}", p.name)))
                    .collect();
                if failing.is_empty() {
                    Health::Ok
                } else {
                    Health::Degraded(failing.join("; "))
                }
            }
            TunnelState::Reconnecting => Health::Degraded(format!(
                "reconnecting: {}",
                self.view
                    .last_error
                    .as_deref()
                    .unwrap_or("frpc is starting again")
            )),
            TunnelState::Failed => Health::Unavailable(
                self.view
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "frpc cannot run".into()),
            ),
        };
        let health = match (&self.admin_port_taken, health) {
            (Some(why), Health::Ok | Health::Starting(_)) => Health::Degraded(why.clone()),
            (_, health) => health,
        };
        self.writer.publish(self.view.clone(), health);
    }
}

/// A fresh admin API password: 32 letters and digits.
fn random_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = fastrand::Rng::new();
    (0..32)
        .map(|_| char::from(CHARS[rng.usize(..CHARS.len())]))
        .collect()
}
