//! GPU placement: which GPUs a create gets, decided from the request, the GPUs NVML reports,
//! the container table and the ledger, with no docker and no channels. The chosen GPUs (and the
//! claim and host ports) are reserved in the ledger before any docker command runs, so two
//! creates can never be given the same GPU.

use crate::docker::ledger::{short_id, GpuLedger};
use crate::docker::protocol::ContainerError;
use crate::docker::spec::{check_visible_devices, join_ids, CreateSpec, GpuRequest, SpecError};
use crate::docker::table::ContainerTable;
use crate::state::{GpuHealth, GpuReport, GpuSample, NvmlState};

/// The GPUs a create was given (indices, and the UUIDs NVML reports for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub gpus: Vec<u32>,
    pub uuids: Vec<String>,
}

/// Checks that the GPUs `spec` asks for exist and are free (by index and by UUID), and
/// reserves them with its claim and host ports in `ledger`; on error nothing stays reserved.
pub(crate) fn place(
    spec: &CreateSpec,
    report: &GpuReport,
    table: &ContainerTable,
    ledger: &mut GpuLedger,
) -> Result<Placement, ContainerError> {
    let wants_gpus = spec.gpus != GpuRequest::None;
    if wants_gpus && report.state != NvmlState::Ok {
        return Err(ContainerError::GpusUnavailable(format!(
            "GPUs cannot be assigned: {}",
            report.error().unwrap_or_default()
        )));
    }
    if let GpuRequest::Ids(ids) = &spec.gpus {
        let known: Vec<u32> = report.gpus.iter().map(|g| g.index).collect();
        for id in ids {
            match report.gpus.iter().find(|g| g.index == *id) {
                None => {
                    return Err(ContainerError::Invalid(SpecError {
                        field: "gpu_ids".into(),
                        message: format!(
                            "GPU {id} does not exist on this node (GPUs: {})",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                join_ids(&known)
                            }
                        ),
                    }))
                }
                Some(gpu) if gpu.lost => {
                    return Err(ContainerError::Conflict {
                        code: "gpu_lost",
                        message: format!("GPU {id} is lost (fell off the bus)"),
                    })
                }
                Some(gpu) if gpu.health == GpuHealth::Failed => {
                    return Err(ContainerError::Conflict {
                        code: "gpu_unhealthy",
                        message: format!("GPU {id} has failed: {}", gpu.health_reasons.join("; ")),
                    })
                }
                Some(_) => {}
            }
        }
    }
    // A GPU is held by its UUID as well as by its index: after a GPU fell off the bus and the
    // node restarted, indices shift, and a container's labels may name by its old index a GPU
    // that now has another one.
    let uuid_holder = |index: u32| {
        let uuid = report
            .gpus
            .iter()
            .find(|g| g.index == index)
            .and_then(|g| g.uuid.as_deref())
            .filter(|u| !u.is_empty())?;
        table
            .holder_of_uuid(uuid)
            .map(|holder| (uuid.to_string(), holder))
    };
    if let GpuRequest::Ids(ids) = &spec.gpus {
        for id in ids {
            if let Some((uuid, holder)) = uuid_holder(*id) {
                return Err(ContainerError::Conflict {
                    code: "gpu_in_use",
                    message: format!(
                        "GPU {id} ({uuid}) is held by claim {} (container {}), which was given \
                         it as GPU {}",
                        holder.claim_id,
                        short_id(&holder.id),
                        holder
                            .gpu_uuids
                            .iter()
                            .position(|u| *u == uuid)
                            .and_then(|i| holder.gpu_ids.get(i))
                            .map_or_else(|| "?".to_string(), u32::to_string)
                    ),
                });
            }
        }
    }
    let usable: Vec<u32> = report
        .gpus
        .iter()
        .filter(|g| !g.lost)
        .map(|g| g.index)
        .collect();
    // Failed GPUs are never picked for a count (degraded ones still are: they work).
    let failed: Vec<&GpuSample> = report
        .gpus
        .iter()
        .filter(|g| !g.lost && g.health == GpuHealth::Failed)
        .collect();
    let healthy: Vec<u32> = usable
        .iter()
        .copied()
        .filter(|i| !failed.iter().any(|g| g.index == *i))
        .collect();
    if let GpuRequest::Count(wanted) = spec.gpus {
        // Never satisfiable here, whoever holds what: not a conflict to wait out.
        if wanted as usize > usable.len() {
            return Err(ContainerError::Invalid(SpecError {
                field: "gpu_count".into(),
                message: format!(
                    "{wanted} GPU(s) asked for; this node has {} usable",
                    usable.len()
                ),
            }));
        }
        // Satisfiable once a failed GPU is repaired (and its health reset).
        if wanted as usize > healthy.len() {
            let why: Vec<String> = failed
                .iter()
                .map(|g| format!("GPU {} failed: {}", g.index, g.health_reasons.join("; ")))
                .collect();
            return Err(ContainerError::Conflict {
                code: "gpu_unhealthy",
                message: format!(
                    "{wanted} GPU(s) asked for but only {} healthy ({})",
                    healthy.len(),
                    why.join("; ")
                ),
            });
        }
    }
    let pickable: Vec<u32> = healthy
        .iter()
        .copied()
        .filter(|i| uuid_holder(*i).is_none())
        .collect();
    let gpus = ledger
        .reserve(&spec.claim_id, &spec.gpus, &spec.ports, &pickable)
        .map_err(|c| ContainerError::from(&c))?;
    if let Err(e) = check_visible_devices(spec, &gpus) {
        ledger.release_pending(&spec.claim_id);
        return Err(ContainerError::Invalid(e));
    }
    let uuids = gpus
        .iter()
        .map(|i| {
            report
                .gpus
                .iter()
                .find(|g| g.index == *i)
                .and_then(|g| g.uuid.clone())
                .unwrap_or_default()
        })
        .collect();
    Ok(Placement { gpus, uuids })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::fixtures::{spec, view, A};
    use crate::state::GpuSample;

    fn report(count: u32, lost: &[u32]) -> GpuReport {
        GpuReport {
            state: NvmlState::Ok,
            driver_version: None,
            gpus: (0..count)
                .map(|index| GpuSample {
                    uuid: Some(format!("GPU-{index}")),
                    lost: lost.contains(&index),
                    ..GpuSample::empty(index)
                })
                .collect(),
        }
    }

    /// Places a create of `claim` asking for `request` on `table` and `ledger`.
    fn try_place(
        table: &ContainerTable,
        ledger: &mut GpuLedger,
        claim: &str,
        request: GpuRequest,
        report: &GpuReport,
    ) -> Result<Placement, ContainerError> {
        place(&spec(claim, request), report, table, ledger)
    }

    fn code(result: Result<Placement, ContainerError>) -> &'static str {
        match result {
            Err(ContainerError::Conflict { code, .. }) => code,
            Err(ContainerError::GpusUnavailable(_)) => "gpus_unavailable",
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_count_gets_free_usable_gpus_and_reserves_them() {
        let mut table = ContainerTable::default();
        let mut ledger = GpuLedger::new(vec![]);
        // GPU 0 is held by a container; GPU 1 is lost.
        table.upsert(view(A, "old", &[0], "running"), &mut ledger);
        let nodes = report(3, &[1]);
        let placed = try_place(&table, &mut ledger, "new", GpuRequest::Count(1), &nodes);
        assert_eq!(
            placed.unwrap(),
            Placement {
                gpus: vec![2],
                uuids: vec!["GPU-2".into()]
            }
        );
        assert_eq!(ledger.by_claim("new").unwrap().gpus, vec![2]);
        // Nothing left: a conflict, and nothing more reserved.
        let third = try_place(&table, &mut ledger, "third", GpuRequest::Count(1), &nodes);
        assert_eq!(code(third), "gpu_in_use");
        assert!(ledger.by_claim("third").is_none());
    }

    #[test]
    fn a_failed_gpu_is_refused_by_id_and_never_picked_for_a_count() {
        let table = ContainerTable::default();
        let mut ledger = GpuLedger::new(vec![]);
        let mut nodes = report(3, &[]);
        nodes.gpus[1].health = GpuHealth::Failed;
        nodes.gpus[1].health_reasons = vec!["xid 79 at t: GPU has fallen off the bus".into()];
        nodes.gpus[2].health = GpuHealth::Degraded;
        let refused = try_place(&table, &mut ledger, "a", GpuRequest::Ids(vec![1]), &nodes);
        match refused {
            Err(ContainerError::Conflict { code, message }) => {
                assert_eq!(code, "gpu_unhealthy");
                assert!(message.contains("xid 79"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A count skips the failed GPU; a degraded one is still given out.
        let placed = try_place(&table, &mut ledger, "b", GpuRequest::Count(2), &nodes);
        assert_eq!(placed.unwrap().gpus, vec![0, 2]);
        // Three are asked for, two are healthy: a conflict naming why, nothing reserved.
        let mut fresh = GpuLedger::new(vec![]);
        let three = try_place(&table, &mut fresh, "c", GpuRequest::Count(3), &nodes);
        assert_eq!(code(three), "gpu_unhealthy");
        assert!(fresh.holdings().is_empty());
    }

    #[test]
    fn gpus_are_refused_while_nvml_is_unavailable_or_lost() {
        let table = ContainerTable::default();
        let mut ledger = GpuLedger::new(vec![]);
        let no_nvml = GpuReport::unavailable("no driver".into());
        let ids = |ids: &[u32]| GpuRequest::Ids(ids.to_vec());
        let refused = try_place(&table, &mut ledger, "a", ids(&[0]), &no_nvml);
        assert_eq!(code(refused), "gpus_unavailable");
        let lost = try_place(&table, &mut ledger, "a", ids(&[1]), &report(2, &[1]));
        assert_eq!(code(lost), "gpu_lost");
        // Without GPUs, NVML does not matter.
        assert!(try_place(&table, &mut ledger, "a", GpuRequest::None, &no_nvml).is_ok());
        assert!(ledger.holdings().iter().all(|h| h.gpus.is_empty()));
    }
}
