//! The presence thread: keeps this node known to the central platform.
//!
//! It owns the [`PlatformClient`] and the node's identity files. Without a node id it registers
//! (`POST /api/v1/nodes/register`), once the identity file can be written, retrying with
//! exponential backoff and full jitter until the platform accepts, then writes the identity
//! atomically and publishes `node_id` (and the frp port the platform assigned) through its
//! [`PlatformWriter`]. It then sends a heartbeat every `heartbeat_interval_secs`, the first at a
//! random offset within the interval so that a fleet started together does not beat together.
//! A heartbeat answered 404 or 410 means the platform forgot the node: it unpublishes the id
//! and registers again, replacing the identity file, at once, unless the platform never
//! accepted a heartbeat of that id (its endpoints disagree): then it waits about
//! `backoff_max_ms` first, so that it does not add a node every interval.
//!
//! It receives nothing but the shutdown channel and reads the snapshot for the heartbeat body;
//! it sends only HTTP requests and publishes `node_id`, what registration granted (API token, API proxy) and the
//! platform's [`Health`] (rendered `registering: <last error>`, `ok`, `heartbeat failing:
//! <error>`).
//!
//! Stopping: every wait (backoff, heartbeat tick) is a wait on the shutdown channel, so it ends
//! at once; a request in flight is bounded by `request_timeout_secs`, and the agent's ordered
//! stop does not wait for it longer than its own deadline.

use super::client::{PlatformClient, RequestError};
use super::identity::{self, NodeId, RegistrationRecord};
use super::node_facts::RegistrationRequest;
use super::{heartbeat_path, REGISTER_PATH};
use crate::backoff::{random_offset, Backoff};
use crate::component::{self, StartError};
use crate::shutdown::Shutdown;
use crate::state::registration::{parse_port, quoted};
use crate::state::{
    ApiToken, Health, NvmlState, PlatformApiProxy, PlatformGrant, PlatformWriter, Snapshot,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How long the first registration waits for the GPU sampler's first report, so that the
/// platform learns the GPUs; NVML may hang, so not longer.
pub const GPU_REPORT_WAIT: Duration = Duration::from_secs(5);

/// What the thread needs from the configuration.
#[derive(Debug, Clone)]
pub struct PresenceSettings {
    pub identity_path: PathBuf,
    /// Zero: no heartbeats. A reload may change it (not to or from zero).
    pub heartbeat_interval: crate::reload::LiveDuration,
    pub backoff_initial: Duration,
    pub backoff_cap: Duration,
    pub api_listen_address: String,
}

/// Starts the thread; `known` is the node id read from the identity file, if any.
pub fn start(
    settings: PresenceSettings,
    client: PlatformClient,
    known: Option<NodeId>,
    snapshot: Arc<Snapshot>,
    writer: PlatformWriter,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    let presence = Presence {
        backoff: Backoff::new(settings.backoff_initial, settings.backoff_cap),
        settings,
        client,
        snapshot,
        writer,
        shutdown,
        started: Instant::now(),
        unsaved: None,
        stamp: None,
    };
    component::spawn("platform", move || {
        let mut presence = presence;
        presence.stamp = Some(crate::notify::watch("platform"));
        presence.run(known);
        log::debug!("platform thread stopped");
    })
}

struct Presence {
    settings: PresenceSettings,
    client: PlatformClient,
    snapshot: Arc<Snapshot>,
    writer: PlatformWriter,
    shutdown: Shutdown,
    started: Instant,
    backoff: Backoff,
    /// A registration whose files could not be written yet; retried before each heartbeat.
    unsaved: Option<RegistrationRecord>,
    /// Ticked while it waits and after each request (a request hung past the watchdog's
    /// deadline stops the petting).
    stamp: Option<crate::notify::LivenessStamp>,
}

impl Presence {
    /// Waits up to `timeout` for the shutdown (ticking the stamp); true once it has started.
    fn wait(&self, timeout: Duration) -> bool {
        match &self.stamp {
            Some(stamp) => stamp.wait(&self.shutdown, timeout),
            None => self.shutdown.wait_timeout(timeout),
        }
    }

    fn run(mut self, known: Option<NodeId>) {
        let from_file = known.is_some();
        let mut node_id = match known {
            Some(id) => id,
            None => match self.register() {
                Some(id) => id,
                None => return,
            },
        };
        let interval = self.settings.heartbeat_interval.get();
        if interval.is_zero() {
            log::info!("heartbeats are disabled (central_platform.heartbeat_interval_secs: 0)");
            // With no heartbeat to retry it before, a failed identity write is retried here.
            while self.unsaved.is_some() {
                let delay = self.backoff.next_delay();
                if self.wait(delay) {
                    return;
                }
                self.save_pending();
            }
            return;
        }
        // A fixed cadence from a random phase: a slow answer does not push later beats back.
        let mut next_beat = Instant::now() + random_offset(interval);
        let mut last_failure: Option<String> = None;
        // Whether the platform has accepted a heartbeat of this id (one read from the file is
        // taken as known to it). A 404 for an id it never accepted is not a forgotten node.
        let mut id_accepted = from_file;
        loop {
            if self.wait(next_beat.saturating_duration_since(Instant::now())) {
                return;
            }
            self.save_pending();
            let result = self.heartbeat(&node_id);
            let interval = self.settings.heartbeat_interval.get();
            next_beat += interval;
            let now = Instant::now();
            if next_beat <= now {
                // The request took longer than the interval: skip the beats it swallowed.
                next_beat = now + interval;
            }
            match result {
                Ok(()) => {
                    if last_failure.take().is_some() {
                        log::info!("heartbeats are accepted again");
                    }
                    id_accepted = true;
                    self.writer.set_health(Health::Ok);
                }
                Err(e) if e.is_node_unknown() && !id_accepted => {
                    // The id registration has just given is unknown to the heartbeat endpoint:
                    // registering again at once would add a node per interval, per agent, for
                    // as long as the platform is in that state. Waited like a rejected token.
                    let delay = self.backoff.delay_at_cap();
                    log::error!(
                        "the platform no longer knows node {node_id} ({e}), which it registered \
                         moments ago: its registration and heartbeat endpoints disagree (is \
                         central_platform.api_url right?); registering again in {}",
                        secs(delay)
                    );
                    self.writer.set_health(Health::Degraded(e.to_string()));
                    if self.wait(delay) {
                        return;
                    }
                    last_failure = None;
                    self.unpublish();
                    match self.register() {
                        Some(id) => node_id = id,
                        None => return,
                    }
                }
                Err(e) if e.is_node_unknown() => {
                    log::warn!(
                        "the platform no longer knows node {node_id} ({e}); registering again"
                    );
                    last_failure = None;
                    id_accepted = false;
                    self.unpublish();
                    match self.register() {
                        Some(id) => node_id = id,
                        None => return,
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    // Logged when it changes, not every interval: the status shows it meanwhile.
                    if last_failure.as_deref() != Some(message.as_str()) {
                        if e.is_auth_rejected() {
                            log::error!("heartbeat refused: {message}");
                        } else {
                            log::warn!(
                                "heartbeat failed: {message}; sending the next one in {}s",
                                interval.as_secs()
                            );
                        }
                    }
                    self.writer.set_health(Health::Degraded(message.clone()));
                    last_failure = Some(message);
                }
            }
        }
    }

    /// Registers until the platform accepts; `None` when shutdown came first.
    fn register(&mut self) -> Option<NodeId> {
        if self.wait_for_gpu_report() {
            return None;
        }
        self.backoff.reset();
        loop {
            // A node registered without a place for its id is registered again at every
            // restart: the file must be writable first.
            if let Err(e) = identity::check_writable(&self.settings.identity_path) {
                let delay = self.backoff.next_delay();
                log::error!(
                    "not registering: {e}; the node id could not be kept (checking again in {})",
                    secs(delay)
                );
                self.writer
                    .set_health(Health::Starting(Some(e.to_string())));
                if self.wait(delay) {
                    return None;
                }
                continue;
            }
            let request =
                RegistrationRequest::collect(&self.snapshot, &self.settings.api_listen_address);
            let result = self.client.post_json(REGISTER_PATH, &request, |body| {
                let registration = parse_registration(body)?;
                if self
                    .client
                    .is_bootstrap_token(registration.node_id.as_str())
                {
                    // Published in metrics, logged, written to disk: never the secret.
                    return Err("node_id rejected: it is the bootstrap token".to_string());
                }
                if registration
                    .grant
                    .api_token
                    .as_ref()
                    .is_some_and(|t| self.client.is_bootstrap_token(t.as_str()))
                {
                    // Every node holds the bootstrap token: as an API token it would open
                    // every node to every other.
                    return Err("api_token rejected: it is the bootstrap token".to_string());
                }
                Ok(registration)
            });
            match result {
                Ok(registration) => {
                    self.accept(&registration);
                    return Some(registration.node_id);
                }
                Err(e) => {
                    let delay = if e.is_auth_rejected() {
                        self.backoff.delay_at_cap()
                    } else {
                        self.backoff.next_delay()
                    };
                    if e.is_auth_rejected() {
                        log::error!("registration refused: {e}; retrying in {}", secs(delay));
                    } else {
                        log::warn!("registration failed: {e}; retrying in {}", secs(delay));
                    }
                    self.writer
                        .set_health(Health::Starting(Some(e.to_string())));
                    if self.wait(delay) {
                        return None;
                    }
                }
            }
        }
    }

    /// Persists and publishes a registration the platform accepted.
    fn accept(&mut self, registration: &Registration) {
        let grant = &registration.grant;
        let record = RegistrationRecord {
            node_id: registration.node_id.to_string(),
            api_remote_port: match &grant.api_proxy {
                Some(PlatformApiProxy::Tcp { remote_port }) => *remote_port,
                _ => None,
            },
            api_proxy: grant.api_proxy.clone(),
            api_token: grant.api_token.clone(),
            registered_at: crate::timefmt::rfc3339(SystemTime::now()),
        };
        match identity::save_registration(&self.settings.identity_path, &record) {
            Ok(()) => {
                self.unsaved = None;
                log::info!(
                    "registered with the platform as node {}{}; identity saved to {}",
                    registration.node_id,
                    describe_grant(grant),
                    self.settings.identity_path.display()
                );
            }
            Err(e) => {
                log::error!(
                    "registered as node {} but {e}; using the id meanwhile and retrying the \
                     write before each heartbeat (a restart before it succeeds registers again)",
                    registration.node_id
                );
                self.unsaved = Some(record);
            }
        }
        self.writer
            .registered(registration.node_id.to_string(), grant.clone());
    }

    /// The platform forgot the node: until it registers again, it is unregistered (`node_id`
    /// null, as before the first registration); the identity file keeps the old id until a
    /// new one replaces it.
    fn unpublish(&self) {
        self.writer.unregistered();
    }

    fn save_pending(&mut self) {
        if let Some(record) = &self.unsaved {
            match identity::save_registration(&self.settings.identity_path, record) {
                Ok(()) => {
                    log::info!(
                        "identity saved to {}",
                        self.settings.identity_path.display()
                    );
                    self.unsaved = None;
                }
                Err(e) => log::error!("{e}"),
            }
        }
    }

    fn heartbeat(&self, node_id: &NodeId) -> Result<(), RequestError> {
        let body = self.snapshot.heartbeat(self.started.elapsed());
        // The answer's body is not part of the protocol.
        let result = self
            .client
            .post_json(&heartbeat_path(node_id), &body, |_| Ok(()));
        self.snapshot.counters().heartbeat(result.is_ok());
        result
    }

    /// Waits (up to [`GPU_REPORT_WAIT`]) for the GPU sampler's first report; true on shutdown.
    fn wait_for_gpu_report(&self) -> bool {
        let deadline = Instant::now() + GPU_REPORT_WAIT;
        while self.snapshot.gpus().state == NvmlState::Starting && Instant::now() < deadline {
            if self.shutdown.wait_timeout(Duration::from_millis(50)) {
                return true;
            }
        }
        self.shutdown.is_triggered()
    }
}

/// A registration the platform accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub node_id: NodeId,
    /// The API token and API proxy it gave.
    pub grant: PlatformGrant,
}

/// Reads `{"node_id": "...", "api_token": "...", "frp": {"api_proxy": {...}}}` (the old
/// `"frp": {"api_remote_port": N}` means tcp on that port); anything else is an error (the
/// reason, which may quote the answer but never a token or secret) and nothing of it is kept.
pub fn parse_registration(body: &str) -> Result<Registration, String> {
    let value: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("not JSON ({e})"))?;
    let node_id = match value.get("node_id") {
        Some(serde_json::Value::String(id)) => NodeId::parse(id).map_err(|reason| {
            let shown: String = id.chars().take(64).collect();
            format!("node_id {shown:?} rejected: {reason}")
        })?,
        Some(other) => return Err(format!("node_id is not a string: {}", quoted(other))),
        None => return Err("no node_id".to_string()),
    };
    let api_token = match value.get("api_token") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(token)) => Some(ApiToken::parse(token)?),
        // Not quoted: it may be the token in another shape.
        Some(_) => return Err("api_token is not a string".to_string()),
    };
    let frp = match value.get("frp") {
        None | Some(serde_json::Value::Null) => None,
        Some(frp @ serde_json::Value::Object(_)) => Some(frp),
        Some(other) => return Err(format!("frp is not an object: {}", quoted(other))),
    };
    let api_remote_port = match frp.and_then(|frp| frp.get("api_remote_port")) {
        None | Some(serde_json::Value::Null) => None,
        Some(port) => Some(parse_port("frp.api_remote_port", port)?),
    };
    let api_proxy = match frp.and_then(|frp| frp.get("api_proxy")) {
        None | Some(serde_json::Value::Null) => None,
        Some(proxy) => Some(PlatformApiProxy::from_json(proxy)?),
    };
    let api_proxy = match (api_proxy, api_remote_port) {
        (None, port) => port.map(|port| PlatformApiProxy::Tcp {
            remote_port: Some(port),
        }),
        (Some(proxy), None) => Some(proxy),
        (Some(PlatformApiProxy::Tcp { remote_port }), Some(port))
            if remote_port.is_none_or(|p| p == port) =>
        {
            Some(PlatformApiProxy::Tcp {
                remote_port: Some(port),
            })
        }
        (Some(proxy), Some(port)) => {
            return Err(format!(
                "frp.api_remote_port {port} contradicts frp.api_proxy ({} {})",
                proxy.kind(),
                match proxy {
                    PlatformApiProxy::Tcp {
                        remote_port: Some(p),
                    } => format!("on port {p}"),
                    _ => "has no public port".to_string(),
                }
            ))
        }
    };
    Ok(Registration {
        node_id,
        grant: PlatformGrant {
            api_token,
            api_proxy,
        },
    })
}

/// What the platform granted, for the registration's log line: never the token or secret.
pub fn describe_grant(grant: &PlatformGrant) -> String {
    let mut text = String::new();
    if grant.api_token.is_some() {
        text.push_str(" (with an API token for the platform");
    } else {
        text.push_str(" (no API token for the platform");
    }
    match &grant.api_proxy {
        Some(PlatformApiProxy::Tcp {
            remote_port: Some(port),
        }) => text.push_str(&format!(", API proxy tcp on frps port {port})")),
        Some(PlatformApiProxy::Tcp { remote_port: None }) => text.push_str(", API proxy tcp)"),
        Some(PlatformApiProxy::Stcp { allow_users, .. }) => text.push_str(&format!(
            ", API proxy stcp for {})",
            if allow_users.is_empty() {
                "its own frp user".to_string()
            } else {
                allow_users.join(", ")
            }
        )),
        None => text.push(')'),
    }
    text
}

/// A delay for a log line: `0.4s`, `12s`.
fn secs(delay: Duration) -> String {
    if delay < Duration::from_secs(10) {
        format!("{:.1}s", delay.as_secs_f64())
    } else {
        format!("{}s", delay.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registration_answers_are_checked() {
        let ok = parse_registration(r#"{"node_id":"node-1"}"#).unwrap();
        assert_eq!(ok.node_id.as_str(), "node-1");
        assert_eq!(ok.grant, PlatformGrant::default());
        let tcp = |port| {
            Some(PlatformApiProxy::Tcp {
                remote_port: Some(port),
            })
        };
        let with_port =
            parse_registration(r#"{"node_id":"n","frp":{"api_remote_port":7001}}"#).unwrap();
        assert_eq!(with_port.grant.api_proxy, tcp(7001));
        let both = parse_registration(
            r#"{"node_id":"n","frp":{"api_remote_port":7001,"api_proxy":{"type":"tcp"}}}"#,
        )
        .unwrap();
        assert_eq!(both.grant.api_proxy, tcp(7001));
        let full = parse_registration(
            &json!({
                "node_id": "n",
                "api_token": "platform-token-0123456789",
                "frp": {"api_proxy": {
                    "type": "stcp", "secret_key": "k3y", "allow_users": ["platform"]
                }},
            })
            .to_string(),
        )
        .unwrap();
        assert_eq!(
            full.grant.api_token.as_ref().map(ApiToken::as_str),
            Some("platform-token-0123456789")
        );
        assert_eq!(
            full.grant.api_proxy,
            Some(PlatformApiProxy::Stcp {
                secret_key: "k3y".into(),
                allow_users: vec!["platform".into()],
            })
        );
        for (bad, says) in [
            (
                json!({"node_id": "n", "api_token": 5}),
                "api_token is not a string",
            ),
            (
                json!({"node_id": "n", "api_token": "short"}),
                "characters long",
            ),
            (
                json!({"node_id": "n", "api_token": "a b c d e f g h i j"}),
                "printable",
            ),
            (json!({"node_id": "n", "frp": 7001}), "frp is not an object"),
            (
                json!({"node_id": "n", "frp": {"api_proxy": {"type": "stcp"}}}),
                "no secret_key",
            ),
            (
                json!({"node_id": "n", "frp": {"api_remote_port": 7001,
                    "api_proxy": {"type": "tcp", "remote_port": 7002}}}),
                "contradicts",
            ),
            (
                json!({"node_id": "n", "frp": {"api_remote_port": 7001,
                    "api_proxy": {"type": "stcp", "secret_key": "k"}}}),
                "contradicts",
            ),
        ] {
            let e = parse_registration(&bad.to_string()).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"node_id":12}"#,
            r#"{"node_id":""}"#,
            r#"{"node_id":"../etc/passwd"}"#,
            r#"{"node_id":"a b"}"#,
            r#"{"node_id":"n","frp":{"api_remote_port":70000}}"#,
            r#"{"node_id":"n","frp":{"api_remote_port":0}}"#,
        ] {
            assert!(parse_registration(bad).is_err(), "{bad}");
        }
        let long = format!(r#"{{"node_id":"{}"}}"#, "x".repeat(129));
        assert!(parse_registration(&long).is_err());
    }

    #[test]
    fn rejected_values_are_quoted_short() {
        // The reason goes into the log and /health at every retry: a platform answering with
        // a 60 KiB value must not make 60 KiB log lines.
        let big = "y".repeat(60_000);
        for body in [
            json!({ "node_id": { "nested": big } }),
            json!({ "node_id": "n", "frp": { "api_remote_port": big } }),
            json!({ "node_id": [big] }),
        ] {
            let reason = parse_registration(&body.to_string()).unwrap_err();
            assert!(reason.len() < 200, "{} bytes: {reason:.300}", reason.len());
        }
    }

    #[test]
    fn tokens_and_secrets_stay_out_of_reasons_and_log_lines() {
        for body in [
            json!({"node_id": "n", "api_token": "SECRET with space here"}),
            json!({"node_id": "n", "api_token": "SECRET"}),
            json!({"node_id": "n", "api_token": ["SECRET-0123456789abcdef"]}),
            json!({"node_id": "n", "frp": {"api_proxy": {"type": "stcp", "secret_key": "SECRET {{"}}}),
        ] {
            let reason = parse_registration(&body.to_string()).unwrap_err();
            assert!(!reason.contains("SECRET"), "{reason}");
        }
        let grant = PlatformGrant {
            api_token: Some(ApiToken::parse("SECRET-0123456789abcdef").unwrap()),
            api_proxy: Some(PlatformApiProxy::Stcp {
                secret_key: "SECRET".into(),
                allow_users: vec!["platform".into()],
            }),
        };
        let line = describe_grant(&grant);
        assert!(!line.contains("SECRET"), "{line}");
        assert!(line.contains("stcp for platform"), "{line}");
    }
}
