//! The agent's own counters: API requests by route and status, docker command durations,
//! heartbeats, NVML errors. Each component adds to its counters as it works; `GET /metrics`
//! reads them (with the rest of the snapshot) and never waits on a component to do so.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Upper bounds (seconds) of the docker command duration buckets: from `docker ps` (tens of
/// milliseconds) to an image pull (minutes).
pub const DOCKER_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// A latency histogram with the [`DOCKER_BUCKETS`] bounds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Observations at most each bound (not cumulative; the exposition sums them).
    pub buckets: [u64; DOCKER_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(slot) = DOCKER_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[slot] += 1;
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }
}

/// How heartbeats went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeartbeatCounts {
    pub accepted: u64,
    pub failed: u64,
    /// When the platform last accepted one (Unix seconds); 0 before the first.
    pub last_accepted_unix: u64,
}

/// The counters; one instance lives in the [`Snapshot`](super::Snapshot).
#[derive(Default)]
pub struct Counters {
    /// (route template, status code) → requests answered.
    api_requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// docker subcommand (`run`, `container inspect`) → durations.
    docker_commands: Mutex<BTreeMap<String, Histogram>>,
    nvml_errors: AtomicU64,
    heartbeats_accepted: AtomicU64,
    heartbeats_failed: AtomicU64,
    last_heartbeat_unix: AtomicU64,
}

impl Counters {
    /// One API request answered with `status`, on the route `route` (its template).
    pub fn api_request(&self, route: &'static str, status: u16) {
        let mut map = self.api_requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route, status)).or_insert(0) += 1;
    }

    /// The API request counts, by route and status.
    pub fn api_requests(&self) -> BTreeMap<(&'static str, u16), u64> {
        self.api_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One docker command (`command` being its subcommand words) that ran for `took`.
    pub fn docker_command(&self, command: &str, took: Duration) {
        let mut map = self
            .docker_commands
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match map.get_mut(command) {
            Some(histogram) => histogram.observe(took.as_secs_f64()),
            None => {
                let mut histogram = Histogram::default();
                histogram.observe(took.as_secs_f64());
                map.insert(command.to_string(), histogram);
            }
        }
    }

    /// The docker command durations, by subcommand.
    pub fn docker_commands(&self) -> BTreeMap<String, Histogram> {
        self.docker_commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `n` NVML calls failed (not counting metrics a GPU does not support).
    pub fn nvml_errors(&self, n: u64) {
        self.nvml_errors.fetch_add(n, Ordering::Relaxed);
    }

    pub fn nvml_error_count(&self) -> u64 {
        self.nvml_errors.load(Ordering::Relaxed)
    }

    /// A heartbeat was accepted (`true`) or failed.
    pub fn heartbeat(&self, accepted: bool) {
        if accepted {
            self.heartbeats_accepted.fetch_add(1, Ordering::Relaxed);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_heartbeat_unix.store(now, Ordering::Relaxed);
        } else {
            self.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn heartbeats(&self) -> HeartbeatCounts {
        HeartbeatCounts {
            accepted: self.heartbeats_accepted.load(Ordering::Relaxed),
            failed: self.heartbeats_failed.load(Ordering::Relaxed),
            last_accepted_unix: self.last_heartbeat_unix.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up() {
        let counters = Counters::default();
        counters.api_request("/health", 200);
        counters.api_request("/health", 200);
        counters.api_request("/api/v1/containers", 401);
        let requests = counters.api_requests();
        assert_eq!(requests[&("/health", 200)], 2);
        assert_eq!(requests[&("/api/v1/containers", 401)], 1);

        counters.docker_command("run", Duration::from_millis(300));
        counters.docker_command("run", Duration::from_secs(4000));
        let run = &counters.docker_commands()["run"];
        assert_eq!(run.count, 2);
        // 0.3 s falls in the 0.5 s bucket; 4000 s is past the last bound (only +Inf counts it).
        assert_eq!(run.buckets[3], 1);
        assert_eq!(run.buckets.iter().sum::<u64>(), 1);
        assert!((run.sum_seconds - 4000.3).abs() < 1e-6);

        counters.nvml_errors(3);
        assert_eq!(counters.nvml_error_count(), 3);
        counters.heartbeat(true);
        counters.heartbeat(false);
        let beats = counters.heartbeats();
        assert_eq!((beats.accepted, beats.failed), (1, 1));
        assert!(beats.last_accepted_unix > 1_600_000_000);
    }
}
