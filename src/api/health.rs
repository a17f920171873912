//! `GET /health`: liveness and each component's status; `GET /health/ready`: whether the node
//! can do its work (200) or not yet (503), for load balancers and the platform. Both without
//! authentication; without the API's token they show each component's state alone (`ok`,
//! `degraded`, `unavailable`, ...): the reasons name claims, containers and excerpts of the
//! platform's answers, and need the token.

use crate::state::{SamplerRun, Snapshot};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct HealthDocument {
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub components: BTreeMap<&'static str, String>,
    /// What an operator should know about how the node is secured (the frp tunnel's API proxy
    /// on tcp, frps's certificate not verified); only with the token, absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// How long each sampler's last reading took (a slow NVML shows here first).
    pub samplers: BTreeMap<&'static str, SamplerRun>,
}

/// `/health`'s body; `detailed`: with each component's reason (the caller sent the token).
pub fn document(snapshot: &Snapshot, uptime: Duration, detailed: bool) -> HealthDocument {
    HealthDocument {
        status: snapshot.overall_status(),
        version: crate::VERSION,
        uptime_secs: uptime.as_secs(),
        components: components(snapshot, detailed),
        warnings: if detailed {
            snapshot
                .tunnel_warnings()
                .iter()
                .map(|w| format!("frp: {w}"))
                .collect()
        } else {
            Vec::new()
        },
        samplers: snapshot.samplers(),
    }
}

fn components(snapshot: &Snapshot, detailed: bool) -> BTreeMap<&'static str, String> {
    let mut components = snapshot.health();
    if !detailed {
        for value in components.values_mut() {
            *value = state_only(value).to_string();
        }
    }
    components
}

/// The state of a rendered component health, without its reason: `degraded: GPU 1 ...` →
/// `degraded`, `disabled (no NVML)` → `disabled`, `heartbeat failing: 502 ...` →
/// `heartbeat failing`.
pub fn state_only(rendered: &str) -> &str {
    let cut = [rendered.find(": "), rendered.find(" (")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(rendered.len());
    &rendered[..cut]
}

/// A `component: state: reason` line of `waiting_for` without its reason.
fn waiting_line(line: String) -> String {
    match line.split_once(": ") {
        Some((component, rest)) => format!("{component}: {}", state_only(rest)),
        None => line,
    }
}

/// `GET /health/ready`'s body; the status code says the same (200 ready, 503 not).
#[derive(Debug, Serialize)]
pub struct ReadyDocument {
    pub ready: bool,
    /// One `component: state` line for each component that keeps the node from working.
    pub waiting_for: Vec<String>,
    pub components: BTreeMap<&'static str, String>,
}

/// `/health/ready`'s body; `detailed` as for [`document`].
pub fn ready(snapshot: &Snapshot, detailed: bool) -> ReadyDocument {
    let mut waiting_for = snapshot.not_ready();
    if !detailed {
        waiting_for = waiting_for.into_iter().map(waiting_line).collect();
    }
    ReadyDocument {
        ready: waiting_for.is_empty(),
        waiting_for,
        components: components(snapshot, detailed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_token_only_states_are_shown() {
        assert_eq!(state_only("ok"), "ok");
        assert_eq!(state_only("starting"), "starting");
        assert_eq!(
            state_only("degraded: utopia-c1: GPU 1 (GPU-1) gone; claim c1"),
            "degraded"
        );
        assert_eq!(state_only("unavailable: docker (x): y"), "unavailable");
        assert_eq!(state_only("disabled (gpu.enabled: false)"), "disabled");
        assert_eq!(
            state_only("heartbeat failing: 502 {\"secret\": 1}"),
            "heartbeat failing"
        );
        assert_eq!(
            waiting_line("docker: unavailable: cannot reach /var/run/docker.sock".into()),
            "docker: unavailable"
        );
        assert_eq!(
            waiting_line("platform: registering".into()),
            "platform: registering"
        );
    }
}
