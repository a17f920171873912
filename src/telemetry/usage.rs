//! The usage sampler thread: what each managed container (each claim) uses, read from its
//! cgroup files (v1 or v2) and its network namespace every [`INTERVAL`], joined with the GPU
//! processes the GPU sampler attributed to it. Never `docker stats`, and never on a request
//! path: the API and the heartbeat read what it publishes.
//!
//! - Owns: the previous CPU reading of each container (CPU cores are a difference).
//! - Receives: nothing; reads the managed containers (with their init PIDs) and the GPU report
//!   from the `Snapshot`.
//! - Sends: container id → usage, through its `UsageWriter`.
//! - Stops: when the shutdown channel closes (checked between readings).

use crate::component::{self, StartError};
use crate::shutdown::Shutdown;
use crate::state::{ClaimGpuUsage, ClaimUsage, ContainerSummary, GpuReport, Snapshot, UsageWriter};
use crate::telemetry::cgroup::CgroupRoots;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// How often the containers' cgroups are read.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// Starts the usage sampler thread.
pub fn start(
    snapshot: Arc<Snapshot>,
    writer: UsageWriter,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    component::spawn("usage-sampler", move || {
        let mut sampler = UsageSampler::new("/proc".into(), "/sys/fs/cgroup".into());
        let stamp = crate::notify::watch("usage-sampler");
        loop {
            let usage = sampler.sample(&snapshot.containers(), &snapshot.gpus());
            writer.publish(usage);
            if stamp.wait(&shutdown, INTERVAL) {
                break;
            }
        }
        log::debug!("usage-sampler stopped");
    })
}

/// Reads containers' usage; keeps each one's previous CPU reading.
pub struct UsageSampler {
    proc_root: PathBuf,
    sys_root: PathBuf,
    previous: HashMap<String, (Instant, u64)>,
}

impl UsageSampler {
    pub fn new(proc_root: PathBuf, sys_root: PathBuf) -> Self {
        UsageSampler {
            proc_root,
            sys_root,
            previous: HashMap::new(),
        }
    }

    /// Container id → usage, for every running managed container whose cgroup can be read.
    pub fn sample(
        &mut self,
        containers: &[ContainerSummary],
        gpus: &GpuReport,
    ) -> BTreeMap<String, ClaimUsage> {
        let roots = CgroupRoots {
            proc_root: &self.proc_root,
            sys_root: &self.sys_root,
        };
        let sampled_at = crate::timefmt::rfc3339(SystemTime::now());
        let mut usage = BTreeMap::new();
        for container in containers {
            let Some(counters) = container.pid.and_then(|pid| roots.counters(pid)) else {
                continue;
            };
            let now = Instant::now();
            let cpu_cores = match (self.previous.get(&container.id), counters.cpu_ns) {
                (Some((then, before)), Some(after)) if after >= *before => {
                    let elapsed = now.duration_since(*then).as_nanos() as f64;
                    (elapsed > 0.0)
                        .then(|| ((after - before) as f64 / elapsed * 100.0).round() / 100.0)
                }
                _ => None,
            };
            if let Some(cpu) = counters.cpu_ns {
                self.previous.insert(container.id.clone(), (now, cpu));
            }
            let (gpu_memory_mb, per_gpu) = gpu_usage(container, gpus);
            usage.insert(
                container.id.clone(),
                ClaimUsage {
                    sampled_at: sampled_at.clone(),
                    cpu_cores,
                    memory_bytes: counters.memory_bytes,
                    memory_limit_bytes: counters.memory_limit_bytes,
                    gpu_memory_mb,
                    gpus: per_gpu,
                    network_rx_bytes: counters.network.map(|(rx, _)| rx),
                    network_tx_bytes: counters.network.map(|(_, tx)| tx),
                },
            );
        }
        self.previous.retain(|id, _| usage.contains_key(id));
        usage
    }
}

/// The GPU memory of the container's processes (over every GPU), and each GPU it holds.
fn gpu_usage(
    container: &ContainerSummary,
    report: &GpuReport,
) -> (Option<u64>, Vec<ClaimGpuUsage>) {
    let mine = |gpu: &crate::state::GpuSample| -> Option<u64> {
        let processes = gpu.processes.as_ref()?;
        let used: Vec<Option<u64>> = processes
            .iter()
            .filter(|p| p.container_id.as_deref() == Some(container.id.as_str()))
            .map(|p| p.used_memory_mb)
            .collect();
        Some(used.iter().flatten().sum())
    };
    let total = report
        .gpus
        .iter()
        .filter_map(mine)
        .fold(None, |sum: Option<u64>, mb| Some(sum.unwrap_or(0) + mb));
    let per_gpu = container
        .gpu_ids
        .iter()
        .map(|id| {
            let gpu = report.gpus.iter().find(|g| g.index == *id);
            ClaimGpuUsage {
                id: *id,
                usage_percent: gpu.and_then(|g| g.usage_percent),
                memory_used_mb: gpu.and_then(mine),
            }
        })
        .collect();
    (total, per_gpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{GpuProcess, GpuSample, NvmlState};

    const ID: &str = "0bcbff5e82f8c083000e345c46cec4f44176f3c54bf9925e214355b06461cf8b";

    fn write(root: &std::path::Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn cpu_is_a_difference_and_gpu_figures_come_from_its_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_root, sys_root) = (dir.path().join("proc"), dir.path().join("sys"));
        write(&proc_root, "9/cgroup", &format!("0::/docker/{ID}\n"));
        write(
            &sys_root,
            &format!("docker/{ID}/cpu.stat"),
            "usage_usec 1000000\n",
        );
        write(&sys_root, &format!("docker/{ID}/memory.current"), "1000\n");
        let container = ContainerSummary {
            id: ID.into(),
            claim_id: "claim-1".into(),
            state: "running".into(),
            gpu_ids: vec![1],
            pid: Some(9),
            usage: None,
        };
        let stopped = ContainerSummary {
            id: "other".into(),
            pid: None,
            ..container.clone()
        };
        let process = |pid, container: &str, mb| GpuProcess {
            pid,
            used_memory_mb: Some(mb),
            kind: "compute",
            container_id: Some(container.into()),
            claim_id: None,
        };
        let mut gpu1 = GpuSample::empty(1);
        gpu1.usage_percent = Some(40.0);
        gpu1.processes = Some(vec![process(10, ID, 300), process(11, "x", 5)]);
        let mut gpu0 = GpuSample::empty(0);
        gpu0.processes = Some(vec![process(12, ID, 100)]);
        let report = GpuReport {
            state: NvmlState::Ok,
            driver_version: None,
            gpus: vec![gpu0, gpu1],
        };
        let mut sampler = UsageSampler::new(proc_root, sys_root.clone());
        let first = sampler.sample(&[container.clone(), stopped.clone()], &report);
        assert_eq!(first.len(), 1, "a container that is not running has none");
        let usage = &first[ID];
        assert_eq!(
            usage.cpu_cores, None,
            "the first reading has nothing to compare"
        );
        assert_eq!(usage.memory_bytes, Some(1000));
        assert_eq!(usage.gpu_memory_mb, Some(400), "its processes on every GPU");
        assert_eq!(
            usage.gpus,
            [ClaimGpuUsage {
                id: 1,
                usage_percent: Some(40.0),
                memory_used_mb: Some(300)
            }]
        );
        std::thread::sleep(Duration::from_millis(100));
        // 0.1 s of CPU time in about 0.1 s: about one core.
        write(
            &sys_root,
            &format!("docker/{ID}/cpu.stat"),
            "usage_usec 1100000\n",
        );
        let second = sampler.sample(&[container], &report);
        let cores = second[ID].cpu_cores.unwrap();
        assert!(cores > 0.5 && cores <= 1.0, "{cores}");
    }
}
