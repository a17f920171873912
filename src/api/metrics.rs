//! `GET /api/v1/metrics`: the node's host and GPU figures, read from the published snapshot.
//!
//! The field names of the original agent (`node_id`, `cpu_usage_percent`, `memory_usage_percent`,
//! and per GPU `id`, `temperature_c`, `memory_total_mb`, `memory_used_mb`, `name`,
//! `usage_percent`, `busy`) are a contract; everything else is added beside them.

use crate::snapshot::{GpuAllocation, Snapshot};
use crate::telemetry::gpu::GpuSample;
use crate::telemetry::system::LoadAverage;
use serde::Serialize;
use std::time::SystemTime;

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

/// The metrics document as of now.
pub fn document(snapshot: &Snapshot) -> MetricsDocument {
    let system = snapshot.system.get();
    let system = system.as_ref().as_ref();
    let gpus = snapshot.gpus.get();
    let allocations = snapshot.gpu_allocations.get();
    MetricsDocument {
        node_id: snapshot.node_id.get().as_ref().clone(),
        timestamp: crate::timefmt::rfc3339(SystemTime::now()),
        cpu_usage_percent: system.map(|s| s.cpu_usage_percent),
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
