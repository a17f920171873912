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

    /// The GPU component's health: degraded while a GPU is lost, failed or degraded, or while
    /// NVML queries fail at run time (a metric a GPU does not support is not a failure).
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
                let mut problems = Vec::new();
                if !lost.is_empty() {
                    problems.push(format!("GPU {} lost", lost.join(", ")));
                }
                for gpu in self.gpus.iter().filter(|g| !g.lost) {
                    if gpu.health != GpuHealth::Healthy {
                        problems.push(format!(
                            "GPU {} {}: {}",
                            gpu.index,
                            gpu.health.as_str(),
                            gpu.health_reasons.join("; ")
                        ));
                    }
                    if !gpu.failed_queries.is_empty() {
                        let failed: Vec<String> = gpu
                            .failed_queries
                            .iter()
                            .map(|q| {
                                let why = gpu.errors.get(q).map_or("", String::as_str);
                                format!("{q} ({why})")
                            })
                            .collect();
                        problems.push(format!(
                            "GPU {} NVML queries failing: {}",
                            gpu.index,
                            failed.join(", ")
                        ));
                    }
                }
                if problems.is_empty() {
                    Health::Ok
                } else {
                    Health::Degraded(problems.join("; "))
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
    /// `healthy`, `degraded` or `failed` (see the README's GPU health table).
    pub health: GpuHealth,
    /// Why the GPU is not healthy, one line each (`xid 79 at <time>: ...`).
    pub health_reasons: Vec<String>,
    /// The Xid errors seen on this GPU since its health was last reset (kept across restarts).
    pub xid_errors: Vec<XidView>,
    pub ecc_errors: EccCounts,
    /// Pages waiting to be retired at the next GPU reset (GPUs with page retirement).
    pub retired_pages_pending: Option<bool>,
    /// Row remapping (GPUs with row remapping instead of page retirement).
    pub remapped_rows: Option<RemappedRows>,
    /// Active clock throttle reasons (`hw_slowdown`, `sw_thermal_slowdown`, ...); empty when
    /// the clocks are not held back.
    pub throttle_reasons: Option<Vec<&'static str>>,
    pub pcie: PcieLink,
    pub fan_speed_percent: Option<u32>,
    pub clock_sm_mhz: Option<u32>,
    pub clock_memory_mhz: Option<u32>,
    pub power_limit_watts: Option<f64>,
    /// `P0` (most performance) to `P15`.
    pub performance_state: Option<String>,
    /// Processes on this GPU that should not be there: one of a claim that does not hold it,
    /// or one not of the claim that holds it (another claim's, the host's).
    pub isolation_violations: Vec<String>,
    /// Metric name → why it is missing.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<&'static str, String>,
    /// The metrics whose NVML query failed at run time (not merely unsupported).
    #[serde(skip)]
    pub failed_queries: Vec<&'static str>,
}

/// A GPU's health, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GpuHealth {
    #[default]
    Healthy,
    Degraded,
    Failed,
}

impl GpuHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            GpuHealth::Healthy => "healthy",
            GpuHealth::Degraded => "degraded",
            GpuHealth::Failed => "failed",
        }
    }
}

/// One Xid error as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XidView {
    pub xid: u64,
    /// When the agent received it (RFC 3339).
    pub at: String,
    /// What it does to the GPU's health: `failed`, `degraded`, or `none` (an application
    /// error, not a GPU fault).
    pub severity: &'static str,
    pub meaning: &'static str,
}

/// ECC error counts; each `null` where the GPU has no ECC or does not report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct EccCounts {
    /// Since the driver was loaded.
    pub volatile_corrected: Option<u64>,
    pub volatile_uncorrected: Option<u64>,
    /// Over the GPU's lifetime.
    pub aggregate_corrected: Option<u64>,
    pub aggregate_uncorrected: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RemappedRows {
    pub corrected: u32,
    pub uncorrected: u32,
    /// A remapping waits for the next GPU reset.
    pub pending: bool,
    /// A remapping failed: the GPU should be taken out of service.
    pub failed: bool,
}

/// The PCIe link now and at most; each `null` where not reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct PcieLink {
    pub generation: Option<u32>,
    pub max_generation: Option<u32>,
    pub width: Option<u32>,
    pub max_width: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProcess {
    pub pid: u32,
    pub used_memory_mb: Option<u64>,
    /// `compute` or `graphics`.
    pub kind: &'static str,
    /// The docker container it runs in (from `/proc/<pid>/cgroup`); `null` on the host.
    pub container_id: Option<String>,
    /// The claim of that container, `host` for a process outside any container, `null` for a
    /// container the agent does not manage.
    pub claim_id: Option<String>,
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
            health: GpuHealth::Healthy,
            health_reasons: Vec::new(),
            xid_errors: Vec::new(),
            ecc_errors: EccCounts::default(),
            retired_pages_pending: None,
            remapped_rows: None,
            throttle_reasons: None,
            pcie: PcieLink::default(),
            fan_speed_percent: None,
            clock_sm_mhz: None,
            clock_memory_mhz: None,
            power_limit_watts: None,
            performance_state: None,
            isolation_violations: Vec::new(),
            errors: BTreeMap::new(),
            failed_queries: Vec::new(),
        }
    }

    /// True when compute processes run on it.
    pub fn has_processes(&self) -> bool {
        self.processes.as_ref().is_some_and(|p| !p.is_empty())
    }
}

/// A managed container in a few words (heartbeats carry this list).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContainerSummary {
    pub id: String,
    pub claim_id: String,
    pub state: String,
    pub gpu_ids: Vec<u32>,
    /// Its init process on the host (where its cgroup is read); `None` when not running.
    #[serde(skip)]
    pub pid: Option<u32>,
    /// What it uses (filled in the heartbeat from the usage sampler); `null` until sampled.
    pub usage: Option<ClaimUsage>,
}

/// What one claim's container uses, as the usage sampler last read it from its cgroup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClaimUsage {
    /// When it was read (RFC 3339).
    pub sampled_at: String,
    /// CPU cores used on average since the previous reading (`null` on the first).
    pub cpu_cores: Option<f64>,
    /// Memory its cgroup is charged for (page cache included, as the cgroup counts it).
    pub memory_bytes: Option<u64>,
    /// `null` when unlimited.
    pub memory_limit_bytes: Option<u64>,
    /// GPU memory used by its processes, over all GPUs (`null` when NVML gives no figure).
    pub gpu_memory_mb: Option<u64>,
    /// Each GPU it holds: the GPU's utilisation and the memory its processes use there.
    pub gpus: Vec<ClaimGpuUsage>,
    /// Bytes on every interface but `lo` of its network namespace, since it started.
    pub network_rx_bytes: Option<u64>,
    pub network_tx_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClaimGpuUsage {
    pub id: u32,
    pub usage_percent: Option<f64>,
    pub memory_used_mb: Option<u64>,
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

    #[test]
    fn health_names_failed_gpus_and_failing_queries_but_not_unsupported_ones() {
        let mut failed = GpuSample::empty(0);
        failed.health = GpuHealth::Failed;
        failed.health_reasons = vec!["row remapping failed".into()];
        let mut unsupported = GpuSample::empty(1);
        unsupported.errors.insert(
            "fan_speed_percent",
            "not supported by this GPU or driver".into(),
        );
        let report = GpuReport {
            state: NvmlState::Ok,
            driver_version: None,
            gpus: vec![failed, unsupported.clone()],
        };
        assert_eq!(
            report.health().render(Component::Gpu),
            "degraded: GPU 0 failed: row remapping failed"
        );
        let mut failing = unsupported;
        failing.failed_queries.push("ecc_errors");
        failing.errors.insert("ecc_errors", "Unknown Error".into());
        let report = GpuReport {
            state: NvmlState::Ok,
            driver_version: None,
            gpus: vec![GpuSample::empty(0), failing],
        };
        assert_eq!(
            report.health().render(Component::Gpu),
            "degraded: GPU 1 NVML queries failing: ecc_errors (Unknown Error)"
        );
    }
}
