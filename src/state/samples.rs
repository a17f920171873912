//! What the samplers and the container runner publish: host and GPU samples, container
//! summaries and GPU allocations. Plain data; the samplers that fill them live in
//! [`crate::telemetry`], the runner in [`crate::docker`].

use super::health::Health;
use serde::Serialize;
use std::collections::BTreeMap;

/// One reading of the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SystemSample {
    /// `None` in the first sample: CPU usage needs two readings apart.
    pub cpu_usage_percent: Option<f64>,
    pub memory_usage_percent: f64,
    pub memory_total_mb: u64,
    pub memory_used_mb: u64,
    pub load_average: Option<LoadAverage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

/// Where NVML stands, as the API and health report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlState {
    /// The sampler has not finished its first attempt yet.
    Starting,
    Ok,
    /// NVML cannot be used; the text says why.
    Unavailable(String),
}

/// The GPUs as NVML last reported them.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuReport {
    pub state: NvmlState,
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuSample>,
}

impl GpuReport {
    pub fn starting() -> Self {
        GpuReport {
            state: NvmlState::Starting,
            driver_version: None,
            gpus: Vec::new(),
        }
    }

    pub fn unavailable(reason: String) -> Self {
        GpuReport {
            state: NvmlState::Unavailable(reason),
            driver_version: None,
            gpus: Vec::new(),
        }
    }

    /// The reason GPUs are missing from the report, if they are.
    pub fn error(&self) -> Option<String> {
        match &self.state {
            NvmlState::Ok => None,
            NvmlState::Starting => Some("GPU sampler is starting".to_string()),
            NvmlState::Unavailable(reason) => Some(reason.clone()),
        }
    }

    /// The GPU component's health: lost GPUs make it degraded.
    pub fn health(&self) -> Health {
        match &self.state {
            NvmlState::Starting => Health::Starting(None),
            NvmlState::Unavailable(reason) => Health::Unavailable(reason.clone()),
            NvmlState::Ok => {
                let lost: Vec<String> = self
                    .gpus
                    .iter()
                    .filter(|g| g.lost)
                    .map(|g| g.index.to_string())
                    .collect();
                if lost.is_empty() {
                    Health::Ok
                } else {
                    Health::Degraded(format!("GPU {} lost", lost.join(", ")))
                }
            }
        }
    }
}

/// One GPU. Every metric is `None` when NVML could not give it; `errors` says why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuSample {
    /// NVML index (`id` in the API, as in the original agent).
    #[serde(rename = "id")]
    pub index: u32,
    pub name: Option<String>,
    pub uuid: Option<String>,
    pub temperature_c: Option<u32>,
    pub memory_total_mb: Option<u64>,
    pub memory_used_mb: Option<u64>,
    pub memory_usage_percent: Option<f64>,
    pub usage_percent: Option<f64>,
    pub power_watts: Option<f64>,
    pub processes: Option<Vec<GpuProcess>>,
    /// The GPU fell off the bus or is otherwise inaccessible.
    pub lost: bool,
    /// Metric name → why it is missing.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory_mb: Option<u64>,
}

impl GpuSample {
    /// A GPU with no figures yet.
    pub fn empty(index: u32) -> Self {
        GpuSample {
            index,
            name: None,
            uuid: None,
            temperature_c: None,
            memory_total_mb: None,
            memory_used_mb: None,
            memory_usage_percent: None,
            usage_percent: None,
            power_watts: None,
            processes: None,
            lost: false,
            errors: BTreeMap::new(),
        }
    }

    /// True when compute processes run on it.
    pub fn has_processes(&self) -> bool {
        self.processes.as_ref().is_some_and(|p| !p.is_empty())
    }
}

/// A managed container in a few words (heartbeats carry this list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSummary {
    pub id: String,
    pub claim_id: String,
    pub state: String,
    pub gpu_ids: Vec<u32>,
}

/// Who holds a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuAllocation {
    pub claim_id: String,
    pub container_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Component;

    #[test]
    fn health_names_lost_gpus() {
        let mut lost = GpuSample::empty(1);
        lost.lost = true;
        let report = GpuReport {
            state: NvmlState::Ok,
            driver_version: None,
            gpus: vec![GpuSample::empty(0), lost],
        };
        assert_eq!(
            report.health().render(Component::Gpu),
            "degraded: GPU 1 lost"
        );
        assert_eq!(report.error(), None);
    }
}
