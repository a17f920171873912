//! `GET /health`: liveness and each component's status; `GET /health/ready`: whether the node
//! can do its work (200) or not yet (503), for load balancers and the platform. Both without
//! authentication and without secrets.

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
    /// How long each sampler's last reading took (a slow NVML shows here first).
    pub samplers: BTreeMap<&'static str, SamplerRun>,
}

pub fn document(snapshot: &Snapshot, uptime: Duration) -> HealthDocument {
    HealthDocument {
        status: snapshot.overall_status(),
        version: crate::VERSION,
        uptime_secs: uptime.as_secs(),
        components: snapshot.health(),
        samplers: snapshot.samplers(),
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

pub fn ready(snapshot: &Snapshot) -> ReadyDocument {
    let waiting_for = snapshot.not_ready();
    ReadyDocument {
        ready: waiting_for.is_empty(),
        waiting_for,
        components: snapshot.health(),
    }
}
