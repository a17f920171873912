//! `GET /health`: liveness and each component's status, without authentication and without
//! secrets.

use crate::snapshot::Snapshot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Serialize)]
pub struct HealthDocument {
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_secs: u64,
    pub components: BTreeMap<&'static str, String>,
}

pub fn document(snapshot: &Snapshot, uptime: Duration) -> HealthDocument {
    HealthDocument {
        status: "ok",
        version: crate::VERSION,
        uptime_secs: uptime.as_secs(),
        components: snapshot.components(),
    }
}
