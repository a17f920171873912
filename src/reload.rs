//! SIGHUP: re-reads the config file (with the `PHOENIX_*` overrides the agent started with) and
//! applies what can change without a restart.
//!
//! The reload thread owns the running settings and waits for SIGHUP (signal-hook's iterator;
//! [`ReloadThread::stop`] closes it). On each: `RELOADING=1` to systemd, then the file is
//! loaded through the same path as at start ([`Config::load_with`]) and validated as a whole;
//! an invalid file is logged and nothing changes. A valid one is compared with the running
//! settings key by key (the file model's dotted keys, so a key added to the config is covered
//! without touching this module): the keys in [`LIVE_KEYS`] are applied through the shared
//! handles in [`LiveSettings`] (the API's token, the heartbeat and GPU sampling periods, the
//! docker deadlines, the log level), every other changed key is logged as needing a restart and
//! left as it runs. Then `READY=1`. Secrets are never logged: only key names.
//!
//! The environment is the one the agent started with: a process's environment cannot change
//! under it, and the agent removes the `PHOENIX_*` variables once read, so they are kept here
//! to be applied again.

use crate::config::{Config, ConfigError, Settings, ENV_OVERRIDES};
use crate::docker::cli::DockerTimeouts;
use crate::notify::Notifier;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// A period that another thread may change while it runs (read at each use).
#[derive(Debug, Clone)]
pub struct LiveDuration(Arc<AtomicU64>);

impl LiveDuration {
    pub fn new(value: Duration) -> LiveDuration {
        let live = LiveDuration(Arc::new(AtomicU64::new(0)));
        live.set(value);
        live
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    pub fn set(&self, value: Duration) {
        let millis = u64::try_from(value.as_millis()).unwrap_or(u64::MAX);
        self.0.store(millis, Ordering::Relaxed);
    }
}

impl From<Duration> for LiveDuration {
    fn from(value: Duration) -> Self {
        LiveDuration::new(value)
    }
}

/// A secret that can be replaced while it is read (the API's bearer token).
#[derive(Clone)]
pub struct LiveSecret(Arc<RwLock<String>>);

impl LiveSecret {
    pub fn new(value: String) -> LiveSecret {
        LiveSecret(Arc::new(RwLock::new(value)))
    }

    /// Runs `f` on the current value (no copy of the secret is made).
    pub fn with<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        match self.0.read() {
            Ok(guard) => f(&guard),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    pub fn set(&self, value: String) {
        match self.0.write() {
            Ok(mut guard) => *guard = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

impl std::fmt::Debug for LiveSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveSecret(<redacted>)")
    }
}

/// The handles through which a reload reaches the running components.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub auth_token: LiveSecret,
    pub heartbeat_interval: LiveDuration,
    pub gpu_sample_interval: LiveDuration,
    pub docker_timeouts: Option<Arc<DockerTimeouts>>,
}

impl LiveSettings {
    pub fn new(settings: &Settings) -> LiveSettings {
        LiveSettings {
            auth_token: LiveSecret::new(settings.api.auth_token.clone()),
            heartbeat_interval: LiveDuration::new(settings.platform.heartbeat_interval),
            gpu_sample_interval: LiveDuration::new(settings.gpu.sample_interval),
            docker_timeouts: None,
        }
    }
}

/// The config keys a reload applies while the agent runs; any other changed key needs a
/// restart.
pub const LIVE_KEYS: &[&str] = &[
    "log_level",
    "agent_api.auth_token",
    "central_platform.heartbeat_interval_secs",
    "gpu.sample_interval_ms",
    "docker.command_timeout_secs",
    "docker.pull_timeout_secs",
    "docker.stop_timeout_secs",
];

/// What a valid file changes: keys applied now, keys left until a restart.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub live: Vec<String>,
    pub restart: Vec<String>,
}

/// The file model as dotted key → value (lists are one value).
fn flatten(settings: &Settings) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    let key = if prefix.is_empty() {
                        key
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&key, value, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other);
            }
        }
    }
    let mut out = BTreeMap::new();
    // The file model is plain data: it always serialises.
    if let Ok(value) = serde_json::to_value(settings.file_model()) {
        walk("", value, &mut out);
    }
    out
}

/// The keys whose value differs between `running` and `new`, sorted into live and restart.
pub fn changes(running: &Settings, new: &Settings) -> Changes {
    let old = flatten(running);
    let new_keys = flatten(new);
    let mut changes = Changes::default();
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new_keys.keys()).collect();
    for key in keys {
        if old.get(key) == new_keys.get(key) {
            continue;
        }
        // Heartbeats switched on or off start or end a loop: that is a restart.
        let toggles_heartbeats = key == "central_platform.heartbeat_interval_secs"
            && running.platform.heartbeat_interval.is_zero()
                != new.platform.heartbeat_interval.is_zero();
        if LIVE_KEYS.contains(&key.as_str()) && !toggles_heartbeats {
            changes.live.push(key.clone());
        } else {
            changes.restart.push(key.clone());
        }
    }
    changes
}

/// The environment overrides as they were at start (before they were removed).
pub fn captured_env() -> BTreeMap<String, String> {
    ENV_OVERRIDES
        .iter()
        .filter_map(|o| Some((o.name.to_string(), std::env::var(o.name).ok()?)))
        .collect()
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub struct ReloadError(pub ConfigError);

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "configuration reload rejected, the running configuration stays: {}",
            self.0
        )
    }
}

impl std::error::Error for ReloadError {}

/// Loads, compares and applies; owned by the reload thread.
pub struct Reloader {
    path: PathBuf,
    env: BTreeMap<String, String>,
    running: Settings,
    live: LiveSettings,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        env: BTreeMap<String, String>,
        running: Settings,
        live: LiveSettings,
    ) -> Reloader {
        Reloader {
            path,
            env,
            running,
            live,
        }
    }

    /// One reload: the changes applied and those left for a restart, or why nothing changed.
    pub fn reload(&mut self) -> Result<Changes, ReloadError> {
        let (new, warnings) = Config::load_with(&self.path, |name| self.env.get(name).cloned())
            .map_err(ReloadError)?;
        for warning in &warnings {
            log::warn!("{warning}");
        }
        let changes = changes(&self.running, &new);
        for key in &changes.restart {
            log::warn!("config key {key} changed: it needs a restart to take effect (the running value stays)");
        }
        for key in &changes.live {
            self.apply(key, &new);
            log::info!("config key {key} changed: applied");
        }
        if changes.live.is_empty() && changes.restart.is_empty() {
            log::info!(
                "configuration reloaded from {}: no change",
                self.path.display()
            );
        }
        Ok(changes)
    }

    fn apply(&mut self, key: &str, new: &Settings) {
        let running = &mut self.running;
        match key {
            "log_level" => {
                crate::logging::set_level(new.log_level);
                running.log_level = new.log_level;
            }
            "agent_api.auth_token" => {
                self.live.auth_token.set(new.api.auth_token.clone());
                running.api.auth_token.clone_from(&new.api.auth_token);
            }
            "central_platform.heartbeat_interval_secs" => {
                self.live
                    .heartbeat_interval
                    .set(new.platform.heartbeat_interval);
                running.platform.heartbeat_interval = new.platform.heartbeat_interval;
            }
            "gpu.sample_interval_ms" => {
                self.live.gpu_sample_interval.set(new.gpu.sample_interval);
                running.gpu.sample_interval = new.gpu.sample_interval;
            }
            "docker.command_timeout_secs"
            | "docker.pull_timeout_secs"
            | "docker.stop_timeout_secs" => {
                running.docker.command_timeout = new.docker.command_timeout;
                running.docker.pull_timeout = new.docker.pull_timeout;
                running.docker.stop_timeout = new.docker.stop_timeout;
                if let Some(timeouts) = &self.live.docker_timeouts {
                    timeouts.set(
                        running.docker.command_timeout,
                        running.docker.pull_timeout,
                        running.docker.stop_timeout,
                    );
                }
            }
            _ => return,
        }
        running.set_file_key(key, new);
    }
}

/// The thread that turns SIGHUP into a reload.
pub struct ReloadThread {
    handle: signal_hook::iterator::Handle,
    thread: JoinHandle<()>,
}

impl ReloadThread {
    pub fn start(mut reloader: Reloader, notifier: Arc<Notifier>) -> std::io::Result<ReloadThread> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    log::info!("SIGHUP received: reloading {}", reloader.path.display());
                    notifier.reloading();
                    let status = match reloader.reload() {
                        Ok(changes) if changes.restart.is_empty() => {
                            "ready; configuration reloaded".to_string()
                        }
                        Ok(changes) => format!(
                            "ready; configuration reloaded, restart to apply: {}",
                            changes.restart.join(", ")
                        ),
                        Err(error) => {
                            log::error!("{error}");
                            format!("ready; configuration reload rejected: {}", error.0)
                        }
                    };
                    notifier.ready(&status);
                }
            })?;
        Ok(ReloadThread { handle, thread })
    }

    /// Closes the signal iterator and joins the thread.
    pub fn stop(self) {
        self.handle.close();
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Settings {
        let mut config = Config::parse(yaml).expect("yaml");
        if config.agent_api.auth_token.is_empty() {
            config.agent_api.auth_token = "token-0123456789abcdef".to_string();
        }
        config.validate().expect("valid").settings
    }

    #[test]
    fn live_and_restart_keys_are_told_apart() {
        let old = settings("log_level: info\n");
        let new = settings(
            "log_level: debug\nagent_api:\n  auth_token: other-token-0123456789\n  listen_address: 127.0.0.1:9300\ngpu:\n  sample_interval_ms: 500\ndocker:\n  pull_timeout_secs: 60\n  workers: 2\n  block_metadata: true\n",
        );
        let c = changes(&old, &new);
        assert_eq!(
            c.live,
            [
                "agent_api.auth_token",
                "docker.pull_timeout_secs",
                "gpu.sample_interval_ms",
                "log_level"
            ]
        );
        // docker.block_metadata: switching the rules on or off waits for the next start.
        assert_eq!(
            c.restart,
            [
                "agent_api.listen_address",
                "docker.block_metadata",
                "docker.workers"
            ]
        );
        assert_eq!(changes(&old, &old), Changes::default());
    }

    #[test]
    fn heartbeats_switched_off_need_a_restart() {
        let old = settings("central_platform:\n  heartbeat_interval_secs: 30\n");
        let off = settings("central_platform:\n  heartbeat_interval_secs: 0\n");
        let faster = settings("central_platform:\n  heartbeat_interval_secs: 5\n");
        assert_eq!(
            changes(&old, &off).restart,
            ["central_platform.heartbeat_interval_secs"]
        );
        assert_eq!(
            changes(&old, &faster).live,
            ["central_platform.heartbeat_interval_secs"]
        );
    }

    #[test]
    fn a_reload_applies_live_keys_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        let write = |text: &str| std::fs::write(&path, text).unwrap();
        write("agent_api:\n  auth_token: first-token-0123456789\n");
        let (running, _) = Config::load_with(&path, |_| None).unwrap();
        let live = LiveSettings::new(&running);
        let mut reloader = Reloader::new(path.clone(), BTreeMap::new(), running, live.clone());

        write("agent_api:\n  auth_token: second-token-0123456789\n  max_connections: 7\ngpu:\n  sample_interval_ms: 750\n");
        let c = reloader.reload().unwrap();
        assert_eq!(c.live, ["agent_api.auth_token", "gpu.sample_interval_ms"]);
        assert_eq!(c.restart, ["agent_api.max_connections"]);
        assert!(live.auth_token.with(|t| t == "second-token-0123456789"));
        assert_eq!(live.gpu_sample_interval.get(), Duration::from_millis(750));
        // The same file again: the live keys are now the running ones, the restart key still
        // differs.
        let c = reloader.reload().unwrap();
        assert!(c.live.is_empty(), "{c:?}");
        assert_eq!(c.restart, ["agent_api.max_connections"]);

        // An invalid file changes nothing.
        write("agent_api:\n  auth_token: short\ngpu:\n  sample_interval_ms: 100\n");
        assert!(reloader.reload().is_err());
        assert!(live.auth_token.with(|t| t == "second-token-0123456789"));
        assert_eq!(live.gpu_sample_interval.get(), Duration::from_millis(750));
    }

    #[test]
    fn the_captured_environment_is_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "agent_api:\n  auth_token: file-token-0123456789\n").unwrap();
        let env: BTreeMap<String, String> = [(
            "PHOENIX_AUTH_TOKEN".to_string(),
            "env-token-0123456789".to_string(),
        )]
        .into();
        let (running, _) = Config::load_with(&path, |n| env.get(n).cloned()).unwrap();
        let live = LiveSettings::new(&running);
        let mut reloader = Reloader::new(path, env, running, live.clone());
        assert_eq!(reloader.reload().unwrap(), Changes::default());
        assert!(live.auth_token.with(|t| t == "env-token-0123456789"));
    }
}
