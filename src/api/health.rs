//! `GET /health`: liveness and each component's status, without authentication and without
//! secrets.

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
        status: "ok",
        version: crate::VERSION,
        uptime_secs: uptime.as_secs(),
        components: snapshot.health(),
        samplers: snapshot.samplers(),
    }
}
