//! The metrics document (`GET /api/v1/metrics`) and the heartbeat body built on it, both read
//! from the published [`Snapshot`].
//!
//! The field names of the original agent (`node_id`, `cpu_usage_percent`, `memory_usage_percent`,
//! and per GPU `id`, `temperature_c`, `memory_total_mb`, `memory_used_mb`, `name`,
//! `usage_percent`, `busy`) are a contract; everything else is added beside them.

use super::samples::{ContainerSummary, GpuAllocation, GpuSample, LoadAverage};
use super::Snapshot;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, Serialize)]
pub struct MetricsDocument {
    pub node_id: Option<String>,
    pub timestamp: String,
    pub cpu_usage_percent: Option<f64>,
    pub memory_usage_percent: Option<f64>,
    pub memory_total_mb: Option<u64>,
    pub memory_used_mb: Option<u64>,
    pub load_average: Option<LoadAverage>,
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuView>,
    /// Why `gpus` is empty when NVML is unavailable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_error: Option<String>,
}

/// One GPU as the API shows it: the sampler's figures plus who holds it.
#[derive(Debug, Serialize)]
pub struct GpuView {
    #[serde(flatten)]
    pub sample: GpuSample,
    /// True when compute processes run on it or a managed container holds it.
    pub busy: bool,
    /// The claim whose container holds this GPU; `null` when free.
    pub claim_id: Option<String>,
    /// The container holding this GPU; `null` when free.
    pub container_id: Option<String>,
}

impl GpuView {
    fn from_sample(sample: &GpuSample, allocation: Option<&GpuAllocation>) -> Self {
        GpuView {
            sample: sample.clone(),
            busy: sample.has_processes() || allocation.is_some(),
            claim_id: allocation.map(|a| a.claim_id.clone()),
            container_id: allocation.map(|a| a.container_id.clone()),
        }
    }
}

/// The body of `POST /api/v1/nodes/{node_id}/heartbeat`: the metrics document plus what the
/// platform needs to follow the node.
#[derive(Debug, Serialize)]
pub struct HeartbeatBody {
    #[serde(flatten)]
    pub metrics: MetricsDocument,
    pub agent_version: &'static str,
    pub uptime_secs: u64,
    pub containers: Vec<ContainerSummary>,
    /// The frp tunnel, as `GET /api/v1/tunnels` shows it.
    pub tunnel: super::TunnelView,
}

impl Snapshot {
    /// The metrics document as of now.
    pub fn metrics(&self) -> MetricsDocument {
        let system = self.system();
        let system = system.as_ref().as_ref();
        let gpus = self.gpus();
        let allocations = self.gpu_allocations();
        MetricsDocument {
            node_id: self.node_id(),
            timestamp: crate::timefmt::rfc3339(SystemTime::now()),
            cpu_usage_percent: system.and_then(|s| s.cpu_usage_percent),
            memory_usage_percent: system.map(|s| s.memory_usage_percent),
            memory_total_mb: system.map(|s| s.memory_total_mb),
            memory_used_mb: system.map(|s| s.memory_used_mb),
            load_average: system.and_then(|s| s.load_average),
            driver_version: gpus.driver_version.clone(),
            gpus: gpus
                .gpus
                .iter()
                .map(|g| GpuView::from_sample(g, allocations.get(&g.index)))
                .collect(),
            gpu_error: gpus.error(),
        }
    }

    /// The metrics document as JSON (and a final newline), serialised once per change to what it
    /// shows and then served as the same bytes; its `timestamp` is when it was built, at most
    /// one host sample old.
    pub fn metrics_json(&self) -> Result<Arc<[u8]>, serde_json::Error> {
        let generation = self.metrics_generation();
        self.metrics_json.get(generation, || {
            let mut bytes = serde_json::to_vec(&self.metrics())?;
            bytes.push(b'\n');
            Ok(bytes)
        })
    }

    /// The heartbeat body as of now, for an agent up for `uptime`.
    pub fn heartbeat(&self, uptime: Duration) -> HeartbeatBody {
        HeartbeatBody {
            metrics: self.metrics(),
            agent_version: crate::VERSION,
            uptime_secs: uptime.as_secs(),
            containers: self.containers_with_usage(),
            tunnel: self.tunnel().as_ref().clone(),
        }
    }

    /// The managed containers, each with its last usage reading.
    pub fn containers_with_usage(&self) -> Vec<ContainerSummary> {
        let usage = self.usage();
        self.containers()
            .iter()
            .map(|c| ContainerSummary {
                usage: usage.get(&c.id).cloned(),
                ..c.clone()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::state::{
        self, ContainerSummary, GpuAllocation, GpuReport, GpuSample, Health, NvmlState,
    };
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn heartbeat_body_is_the_metrics_document_plus_node_state() {
        let (snapshot, writers) = state::new();
        writers
            .platform
            .registered("node-1".into(), Default::default());
        writers.docker.publish(
            vec![ContainerSummary {
                id: "c1".into(),
                claim_id: "claim-1".into(),
                state: "running".into(),
                gpu_ids: vec![0],
                pid: None,
                usage: None,
            }],
            BTreeMap::new(),
        );
        writers.usage.publish(BTreeMap::from([(
            "c1".to_string(),
            state::ClaimUsage {
                sampled_at: "t".into(),
                cpu_cores: Some(1.5),
                memory_bytes: Some(1024),
                memory_limit_bytes: None,
                gpu_memory_mb: Some(300),
                gpus: Vec::new(),
                network_rx_bytes: None,
                network_tx_bytes: None,
            },
        )]));
        let body = snapshot.heartbeat(Duration::from_secs(5));
        let json = serde_json::to_value(&body).unwrap();
        assert_eq!(json["containers"][0]["usage"]["cpu_cores"], 1.5);
        assert_eq!(json["containers"][0]["usage"]["gpu_memory_mb"], 300);
        assert!(json["containers"][0].get("pid").is_none(), "internal");
        assert_eq!(json["node_id"], "node-1");
        assert_eq!(json["agent_version"], crate::VERSION);
        assert_eq!(json["uptime_secs"], 5);
        assert_eq!(json["containers"][0]["claim_id"], "claim-1");
        assert_eq!(json["containers"][0]["gpu_ids"][0], 0);
        assert!(json["gpus"].is_array());
        assert!(json.get("timestamp").is_some());
    }

    #[test]
    fn the_metrics_bytes_are_built_once_per_change() {
        let (snapshot, writers) = state::new();
        let first = snapshot.metrics_json().unwrap();
        let again = snapshot.metrics_json().unwrap();
        assert!(
            std::sync::Arc::ptr_eq(&first, &again),
            "served from the cache"
        );
        assert!(first.ends_with(b"\n"));
        let json: serde_json::Value = serde_json::from_slice(&first).unwrap();
        assert!(json["gpus"].as_array().unwrap().is_empty());

        writers.gpu.publish(
            GpuReport {
                state: NvmlState::Ok,
                driver_version: Some("550.1".into()),
                gpus: vec![GpuSample::empty(0)],
            },
            Health::Ok,
            Duration::ZERO,
        );
        let after_sample = snapshot.metrics_json().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&after_sample).unwrap();
        assert_eq!(json["gpus"][0]["id"], 0, "a new sample is served at once");
        assert_eq!(json["driver_version"], "550.1");

        writers.docker.publish(
            Vec::new(),
            BTreeMap::from([(
                0,
                GpuAllocation {
                    claim_id: "claim-9".into(),
                    container_id: "c9".into(),
                },
            )]),
        );
        let after_allocation = snapshot.metrics_json().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&after_allocation).unwrap();
        assert_eq!(json["gpus"][0]["claim_id"], "claim-9");

        writers
            .platform
            .registered("node-7".into(), Default::default());
        let json: serde_json::Value =
            serde_json::from_slice(&snapshot.metrics_json().unwrap()).unwrap();
        assert_eq!(json["node_id"], "node-7");
        // A health change alone does not rebuild the metrics document.
        let cached = snapshot.metrics_json().unwrap();
        writers.api.set(Health::Ok);
        assert!(std::sync::Arc::ptr_eq(
            &cached,
            &snapshot.metrics_json().unwrap()
        ));
    }

    #[test]
    fn gpus_show_who_holds_them() {
        let (snapshot, writers) = state::new();
        let mut busy = GpuSample::empty(2);
        busy.processes = Some(Vec::new());
        writers.gpu.publish(
            GpuReport {
                state: NvmlState::Ok,
                driver_version: Some("550.1".into()),
                gpus: vec![GpuSample::empty(0), GpuSample::empty(1), busy],
            },
            Health::Ok,
            Duration::ZERO,
        );
        let allocations = BTreeMap::from([(
            1,
            GpuAllocation {
                claim_id: "claim-1".into(),
                container_id: "c1".into(),
            },
        )]);
        writers.docker.publish(Vec::new(), allocations);
        let json = serde_json::to_value(snapshot.metrics()).unwrap();
        assert_eq!(json["driver_version"], "550.1");
        assert_eq!(json["gpus"][0]["busy"], false);
        assert_eq!(json["gpus"][1]["busy"], true);
        assert_eq!(json["gpus"][1]["claim_id"], "claim-1");
        assert_eq!(json["gpus"][1]["container_id"], "c1");
        assert_eq!(json["gpus"][2]["busy"], false, "no process runs on it");
        assert!(json.get("gpu_error").is_none());
        assert!(json["cpu_usage_percent"].is_null(), "no system sample yet");
    }
}
