//! Who uses each GPU: every NVML process is mapped to its docker container (through
//! [`cgroup`](super::cgroup)) and from there to the claim holding it (the container runner's
//! published list), and the GPU's isolation violations are found: a process of a claim on a
//! GPU that claim does not hold, or a process not of the claim holding the GPU (another
//! claim's, an unmanaged container's, the host's).

use crate::docker::ledger::short_id;
use crate::state::{ContainerSummary, GpuSample};
use std::collections::HashMap;

/// Fills each process's `container_id` and `claim_id`, and each GPU's `isolation_violations`.
/// `container_of` maps a PID to its container id (`None`: a host process).
pub fn attribute(
    gpus: &mut [GpuSample],
    containers: &[ContainerSummary],
    mut container_of: impl FnMut(u32) -> Option<String>,
) {
    let mut cache: HashMap<u32, Option<String>> = HashMap::new();
    for gpu in gpus.iter_mut() {
        let index = gpu.index;
        let holder = containers.iter().find(|c| c.gpu_ids.contains(&index));
        let mut violations = Vec::new();
        for process in gpu.processes.iter_mut().flatten() {
            let container_id = cache
                .entry(process.pid)
                .or_insert_with(|| container_of(process.pid))
                .clone();
            let managed = container_id
                .as_deref()
                .and_then(|id| containers.iter().find(|c| c.id == id));
            process.claim_id = match (&container_id, managed) {
                (None, _) => Some("host".to_string()),
                (Some(_), Some(c)) => Some(c.claim_id.clone()),
                (Some(_), None) => None,
            };
            process.container_id = container_id.clone();
            let held_by = holder
                .map(|h| format!(", held by claim {}", h.claim_id))
                .unwrap_or_default();
            match managed {
                Some(own) if !own.gpu_ids.contains(&index) => violations.push(format!(
                    "process {} of claim {} (container {}) uses GPU {index}, which its claim \
                     does not hold{held_by}",
                    process.pid,
                    own.claim_id,
                    short_id(&own.id)
                )),
                Some(_) => {}
                None => {
                    if let Some(holder) = holder {
                        let who = match &container_id {
                            None => "a host process".to_string(),
                            Some(id) => {
                                format!("container {} not managed by the agent", short_id(id))
                            }
                        };
                        violations.push(format!(
                            "process {} ({who}) uses GPU {index}, held by claim {}",
                            process.pid, holder.claim_id
                        ));
                    }
                }
            }
        }
        gpu.isolation_violations = violations;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::GpuProcess;

    fn process(pid: u32) -> GpuProcess {
        GpuProcess {
            pid,
            used_memory_mb: Some(100),
            kind: "compute",
            container_id: None,
            claim_id: None,
        }
    }

    fn container(id: &str, claim: &str, gpus: &[u32]) -> ContainerSummary {
        ContainerSummary {
            id: id.repeat(64 / id.len()),
            claim_id: claim.into(),
            state: "running".into(),
            gpu_ids: gpus.to_vec(),
            pid: None,
            usage: None,
        }
    }

    fn gpu(index: u32, pids: &[u32]) -> GpuSample {
        GpuSample {
            processes: Some(pids.iter().map(|p| process(*p)).collect()),
            ..GpuSample::empty(index)
        }
    }

    #[test]
    fn processes_map_to_claims_and_violations_are_named() {
        let containers = [
            container("a", "claim-a", &[0]),
            container("b", "claim-b", &[1]),
        ];
        // 10: claim-a's; 11: claim-b's; 12: host; 13: an unmanaged container.
        let of = |pid: u32| match pid {
            10 => Some("a".repeat(64)),
            11 => Some("b".repeat(64)),
            13 => Some("c".repeat(64)),
            _ => None,
        };
        let mut gpus = vec![gpu(0, &[10]), gpu(1, &[11, 10, 12, 13]), gpu(2, &[12])];
        attribute(&mut gpus, &containers, of);
        let p = &gpus[0].processes.as_ref().unwrap()[0];
        assert_eq!(p.claim_id.as_deref(), Some("claim-a"));
        assert_eq!(p.container_id, Some("a".repeat(64)));
        assert!(gpus[0].isolation_violations.is_empty());
        let on1 = gpus[1].processes.as_ref().unwrap();
        assert_eq!(on1[2].claim_id.as_deref(), Some("host"));
        assert_eq!(on1[2].container_id, None);
        assert_eq!(on1[3].claim_id, None, "unmanaged container");
        assert_eq!(
            gpus[1].isolation_violations,
            [
                "process 10 of claim claim-a (container aaaaaaaaaaaa) uses GPU 1, which its \
                 claim does not hold, held by claim claim-b",
                "process 12 (a host process) uses GPU 1, held by claim claim-b",
                "process 13 (container cccccccccccc not managed by the agent) uses GPU 1, held \
                 by claim claim-b",
            ]
        );
        // A host process on a GPU no claim holds is no violation.
        assert!(gpus[2].isolation_violations.is_empty());
    }
}
