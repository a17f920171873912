//! The table of managed containers, as plain data (no channels, no docker): what the runner
//! knows of each container, which ones have an operation in flight, and the rules that keep a
//! stale report from undoing a newer change.
//!
//! Every change bumps a generation counter. A report from docker (a reconcile's listing, a
//! refresh's inspect) carries the generation at which its docker command started; anything the
//! table learned since wins over it. Docker never reuses an id, so a container once removed is
//! remembered (the last [`REMOVED_MEMORY`] of them) and never brought back by a late report.
//! The [`GpuLedger`] is kept in step: a container entering the table is adopted by it, one
//! leaving releases what it held.

use crate::docker::container::ContainerView;
use crate::docker::ledger::{short_id, GpuLedger};
use crate::docker::protocol::ContainerError;
use crate::docker::spec::container_name;
use crate::state::{GpuReport, NvmlState};
use std::collections::{BTreeMap, BTreeSet};

/// How many removed container ids are remembered (far more than a node removes while one
/// docker command of a stale report can be in flight).
pub(crate) const REMOVED_MEMORY: usize = 4096;

struct Entry {
    view: ContainerView,
    /// The table's generation when this entry was last written.
    generation: u64,
}

/// The managed containers the runner knows.
#[derive(Default)]
pub(crate) struct ContainerTable {
    entries: BTreeMap<String, Entry>,
    /// Conflicts found when a container was adopted, kept as its warnings.
    adopt_warnings: BTreeMap<String, Vec<String>>,
    /// Containers with a stop/start/restart/delete in flight.
    busy: BTreeSet<String>,
    /// Recently removed containers (id → the generation of the removal).
    removed: BTreeMap<String, u64>,
    generation: u64,
}

/// The log line for a container that was running in `before` and is not in `after` (it exited,
/// was killed, or is being restarted by docker's restart policy), and whether it is a failure
/// (a code other than 0, or the OOM killer).
pub(crate) fn exit_report(before: &ContainerView, after: &ContainerView) -> Option<(bool, String)> {
    if before.state != "running" || after.state == "running" {
        return None;
    }
    if !matches!(after.state.as_str(), "exited" | "dead" | "restarting") {
        return None;
    }
    let code = after
        .exit_code
        .map_or_else(|| "unknown".to_string(), |c| c.to_string());
    let mut line = format!(
        "container {} of claim {} exited on its own with code {code}",
        short_id(&after.id),
        after.claim_id
    );
    if let Some(signal) = after
        .exit_code
        .filter(|c| (129..=159).contains(c))
        .map(|c| c - 128)
    {
        line.push_str(&format!(
            " (signal {signal}{})",
            if signal == 9 { ", SIGKILL" } else { "" }
        ));
    }
    if after.oom_killed {
        line.push_str("; the kernel's OOM killer ended it (memory limit reached)");
    }
    if after.state == "restarting" {
        line.push_str("; docker is restarting it (docker.restart_policy)");
    }
    Some((after.exit_code != Some(0) || after.oom_killed, line))
}

impl ContainerTable {
    /// The change counter; a report started now carries this.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Marks a moment: a report started from now on carries a later generation than any
    /// started before.
    pub(crate) fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        self.entries.contains_key(id)
    }

    /// True when `id` was removed (a report of it is stale, whenever it started).
    pub(crate) fn is_removed(&self, id: &str) -> bool {
        self.removed.contains_key(id)
    }

    /// Every container, in id order.
    pub(crate) fn views(&self) -> impl Iterator<Item = &ContainerView> {
        self.entries.values().map(|e| &e.view)
    }

    pub(crate) fn view(&self, key: &str) -> Result<&ContainerView, ContainerError> {
        self.entries
            .get(key)
            .map(|e| &e.view)
            .ok_or_else(|| ContainerError::NotFound(format!("no managed container {key:?}")))
    }

    /// The container that was given the GPU with this UUID, if any.
    pub(crate) fn holder_of_uuid(&self, uuid: &str) -> Option<&ContainerView> {
        self.views().find(|v| v.gpu_uuids.iter().any(|u| u == uuid))
    }

    /// Marks `key` busy; false when an operation on it is already in flight.
    pub(crate) fn begin_busy(&mut self, key: &str) -> bool {
        self.busy.insert(key.to_string())
    }

    pub(crate) fn end_busy(&mut self, key: &str) {
        self.busy.remove(key);
    }

    /// Records what docker says of a container now (adopting its GPUs and ports into the
    /// ledger the first time); a removed container stays removed.
    pub(crate) fn upsert(&mut self, view: ContainerView, ledger: &mut GpuLedger) {
        // Whoever inspected it did so before it went (docker never reuses an id).
        if self.removed.contains_key(&view.id) {
            return;
        }
        self.generation += 1;
        // A container that stopped while the agent was not stopping it: said once, at the
        // change (the next reports see it stopped already).
        if !self.busy.contains(&view.id) {
            if let Some(before) = self.entries.get(&view.id) {
                if let Some((error, line)) = exit_report(&before.view, &view) {
                    if error {
                        log::warn!("{line}");
                    } else {
                        log::info!("{line}");
                    }
                }
            }
        }
        if !ledger.holds_container(&view.id) {
            let conflicts =
                ledger.adopt(&view.claim_id, &view.id, &view.gpu_ids, &view.port_mappings);
            if !conflicts.is_empty() {
                let notes: Vec<String> = conflicts
                    .iter()
                    .map(|c| format!("conflict with another managed container: {c}"))
                    .collect();
                for note in &notes {
                    log::warn!("container {}: {note}", short_id(&view.id));
                }
                self.adopt_warnings.insert(view.id.clone(), notes);
            }
        }
        self.entries.insert(
            view.id.clone(),
            Entry {
                view,
                generation: self.generation,
            },
        );
    }

    /// The container is gone: drop it, release what it held, remember it as removed.
    pub(crate) fn forget(&mut self, id: &str, ledger: &mut GpuLedger) {
        self.generation += 1;
        self.entries.remove(id);
        ledger.remove_container(id);
        self.adopt_warnings.remove(id);
        self.removed.insert(id.to_string(), self.generation);
        if self.removed.len() > REMOVED_MEMORY {
            if let Some(oldest) = self
                .removed
                .iter()
                .min_by_key(|(_, g)| **g)
                .map(|(id, _)| id.clone())
            {
                self.removed.remove(&oldest);
            }
        }
    }

    /// Applies a refresh started at `generation`: the container as inspected then, or `None`
    /// when docker no longer had it. Ignored where the table has learned something newer.
    pub(crate) fn refresh(
        &mut self,
        id: &str,
        generation: u64,
        inspected: Option<ContainerView>,
        ledger: &mut GpuLedger,
    ) {
        let newer = self
            .entries
            .get(id)
            .is_some_and(|e| e.generation > generation);
        match inspected {
            Some(view) if !newer && !self.is_removed(id) => self.upsert(view, ledger),
            None if !newer => self.forget(id, ledger),
            _ => {}
        }
    }

    /// Makes the table match docker's list of managed containers as of `generation`: anything
    /// learned since is kept, and a busy container is not dropped under its operation.
    pub(crate) fn reconcile(
        &mut self,
        generation: u64,
        views: Vec<ContainerView>,
        ledger: &mut GpuLedger,
    ) {
        let seen: BTreeSet<String> = views.iter().map(|v| v.id.clone()).collect();
        for view in views {
            let newer = self
                .entries
                .get(&view.id)
                .is_some_and(|e| e.generation > generation);
            if !self.is_removed(&view.id) && !newer {
                self.upsert(view, ledger);
            }
        }
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(id, e)| {
                !seen.contains(*id) && e.generation <= generation && !self.busy.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            log::info!("container {} is gone (seen by reconcile)", short_id(&id));
            self.forget(&id, ledger);
        }
    }

    /// The full id of the managed container `id` names: its id, a unique id prefix of at least
    /// 12 characters, its name, or its claim id. An id naming several containers is a
    /// conflict naming them; a claim whose create is in flight is a conflict, not "not found".
    pub(crate) fn resolve(&self, id: &str, ledger: &GpuLedger) -> Result<String, ContainerError> {
        if self.entries.contains_key(id) {
            return Ok(id.to_string());
        }
        // A name, a claim id and an id prefix can each name a different container (claim
        // "utopia-x" and the container of claim "x"; a claim id that is also a hex prefix):
        // refuse to guess which one a stop or delete was meant for.
        let name = id.trim_start_matches('/');
        let is_prefix = id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let matches: Vec<&ContainerView> = self
            .views()
            .filter(|v| v.name == name || v.claim_id == id || (is_prefix && v.id.starts_with(id)))
            .collect();
        match matches.as_slice() {
            [one] => return Ok(one.id.clone()),
            [] => {}
            several => {
                let named: Vec<String> = several
                    .iter()
                    .map(|v| format!("{} (id {}, claim {})", v.name, short_id(&v.id), v.claim_id))
                    .collect();
                return Err(ContainerError::Conflict {
                    code: "ambiguous_id",
                    message: format!(
                        "{id} matches several managed containers (by id prefix, name or claim \
                         id): {}; give the full id",
                        named.join(", ")
                    ),
                });
            }
        }
        // Not a container yet, but its create is in flight: a 404 would tell the caller the
        // claim has no container when one is about to start and hold its GPUs.
        if let Some(pending) = ledger.holdings().iter().find(|h| {
            h.container_id.is_none() && (h.claim_id == id || container_name(&h.claim_id) == name)
        }) {
            if pending.unknown_since.is_some() {
                return Err(ContainerError::Conflict {
                    code: "operation_in_progress",
                    message: format!(
                        "the create of claim {} timed out (state unknown): docker may still have \
                         made its container; its GPUs and ports stay reserved until the next \
                         reconcile shows whether it exists{}",
                        pending.claim_id,
                        if pending.given_up {
                            " (given up: it will be removed)"
                        } else {
                            ""
                        }
                    ),
                });
            }
            return Err(ContainerError::Conflict {
                code: "operation_in_progress",
                message: format!(
                    "the container of claim {} is being created; try again once the create has \
                     answered",
                    pending.claim_id
                ),
            });
        }
        Err(ContainerError::NotFound(format!(
            "no managed container {id:?} (id, unique id prefix of at least 12, name or claim id)"
        )))
    }

    /// The view with the warnings known now: adopt conflicts, and GPUs whose UUID is no longer
    /// on this node (reported, never silently dropped: the container keeps its GPUs).
    pub(crate) fn decorate(&self, view: &ContainerView, report: &GpuReport) -> ContainerView {
        let mut view = view.clone();
        if let Some(notes) = self.adopt_warnings.get(&view.id) {
            view.warnings.extend(notes.iter().cloned());
        }
        if report.state == NvmlState::Ok {
            for (i, gpu) in view.gpu_ids.clone().iter().enumerate() {
                let Some(uuid) = view.gpu_uuids.get(i).filter(|u| !u.is_empty()) else {
                    continue;
                };
                let present = report
                    .gpus
                    .iter()
                    .any(|g| g.uuid.as_deref() == Some(uuid.as_str()));
                let same_index = report
                    .gpus
                    .iter()
                    .any(|g| g.index == *gpu && g.uuid.as_deref() == Some(uuid.as_str()));
                if !present {
                    view.warnings.push(format!(
                        "GPU {gpu} ({uuid}) assigned to this container is no longer present"
                    ));
                } else if !same_index {
                    view.warnings.push(format!(
                        "GPU {uuid} assigned as index {gpu} now has another index"
                    ));
                }
            }
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::fixtures::{view, A, B};

    fn table(views: Vec<ContainerView>) -> (ContainerTable, GpuLedger) {
        let mut table = ContainerTable::default();
        let mut ledger = GpuLedger::new(vec![]);
        table.reconcile(0, views, &mut ledger);
        (table, ledger)
    }

    #[test]
    fn an_exit_on_its_own_is_reported_with_its_claim_and_code() {
        let running = view(A, "claim-a", &[0], "running");
        let mut exited = view(A, "claim-a", &[0], "exited");
        exited.exit_code = Some(137);
        let (error, line) = exit_report(&running, &exited).unwrap();
        assert!(error);
        assert_eq!(
            line,
            "container aaaaaaaaaaaa of claim claim-a exited on its own with code 137 \
             (signal 9, SIGKILL)"
        );
        exited.exit_code = Some(0);
        assert_eq!(exit_report(&running, &exited).map(|r| r.0), Some(false));
        let mut restarting = view(A, "claim-a", &[0], "restarting");
        restarting.exit_code = Some(1);
        restarting.oom_killed = true;
        let (error, line) = exit_report(&running, &restarting).unwrap();
        assert!(
            error && line.contains("OOM") && line.contains("restarting it"),
            "{line}"
        );
        // Only the change is reported: stopped to stopped, or a start, says nothing.
        assert_eq!(exit_report(&exited, &exited), None);
        assert_eq!(exit_report(&exited, &running), None);
        assert_eq!(exit_report(&running, &running), None);
    }

    #[test]
    fn an_older_reconcile_neither_resurrects_nor_drops_newer_changes() {
        let (mut t, mut ledger) = table(vec![view(A, "a", &[0], "running")]);
        let started = t.generation();
        // After the reconcile started: A was deleted, B was created.
        t.forget(A, &mut ledger);
        t.upsert(view(B, "b", &[1], "running"), &mut ledger);
        // The reconcile's (older) listing still has A and not yet B.
        t.reconcile(started, vec![view(A, "a", &[0], "running")], &mut ledger);
        assert!(!t.contains(A), "deleted container came back");
        assert!(t.contains(B), "new container dropped");
        assert!(!ledger.allocations().contains_key(&0));
        // A later reconcile that no longer sees B removes it and frees its GPU.
        let now = t.generation();
        t.reconcile(now, vec![], &mut ledger);
        assert_eq!(t.len(), 0);
        assert!(ledger.allocations().is_empty());
    }

    #[test]
    fn a_stale_refresh_neither_resurrects_nor_overwrites() {
        let (mut t, mut ledger) = table(vec![view(A, "a", &[0], "running")]);
        let started = t.generation();
        t.upsert(view(A, "a", &[0], "exited"), &mut ledger);
        // Inspected before the newer change: ignored.
        t.refresh(A, started, Some(view(A, "a", &[0], "running")), &mut ledger);
        assert_eq!(t.view(A).unwrap().state, "exited");
        t.refresh(A, started, None, &mut ledger);
        assert!(
            t.contains(A),
            "an older `not found` dropped a newer container"
        );
        // Removed: no report brings it back, however recent.
        t.forget(A, &mut ledger);
        let now = t.generation();
        t.refresh(A, now, Some(view(A, "a", &[0], "running")), &mut ledger);
        assert!(!t.contains(A) && t.is_removed(A));
        assert!(ledger.holdings().is_empty());
    }

    #[test]
    fn a_busy_container_is_not_dropped_under_its_operation() {
        let (mut t, mut ledger) = table(vec![view(A, "a", &[], "running")]);
        assert!(t.begin_busy(A));
        assert!(!t.begin_busy(A), "one operation at a time");
        let now = t.generation();
        t.reconcile(now, vec![], &mut ledger);
        assert!(t.contains(A));
        t.end_busy(A);
        t.reconcile(now, vec![], &mut ledger);
        assert!(!t.contains(A));
    }

    #[test]
    fn ids_resolve_by_id_prefix_name_and_claim() {
        let (t, ledger) = table(vec![
            view(A, "a", &[], "running"),
            view(B, "b", &[], "running"),
        ]);
        for key in [A, &A[..13], "utopia-a", "/utopia-a", "a"] {
            assert_eq!(t.resolve(key, &ledger), Ok(A.to_string()), "{key}");
        }
        assert_eq!(t.resolve(&B[..13], &ledger), Ok(B.to_string()));
        // Both ids start with the same 12 characters; shorter than 12 is never a prefix.
        assert!(matches!(
            t.resolve(&A[..12], &ledger),
            Err(ContainerError::Conflict { code: "ambiguous_id", message }) if message.contains("several")
        ));
        assert!(t.resolve(&A[..11], &ledger).is_err());
        assert!(t.resolve("utopia-zzz", &ledger).is_err());
    }

    #[test]
    fn an_id_that_names_two_containers_is_refused_not_guessed() {
        // Claim "utopia-x"'s container, and claim "x"'s, whose name is "utopia-x"; and a claim
        // id that is also another container's id prefix.
        let (t, ledger) = table(vec![
            view(A, "utopia-x", &[], "running"),
            view(B, "x", &[], "running"),
            view(
                "bbbbbbbbbbbb3333333333333333333333333333333333333333333333333333",
                "aaaaaaaaaaaa2222",
                &[],
                "running",
            ),
        ]);
        for ambiguous in ["utopia-x", "aaaaaaaaaaaa2222"] {
            assert!(
                matches!(t.resolve(ambiguous, &ledger), Err(ContainerError::Conflict { code: "ambiguous_id", message }) if message.contains("several")),
                "{ambiguous}: {:?}",
                t.resolve(ambiguous, &ledger)
            );
        }
        assert_eq!(t.resolve("x", &ledger), Ok(B.to_string()));
        assert_eq!(t.resolve("utopia-utopia-x", &ledger), Ok(A.to_string()));
        assert_eq!(t.resolve(A, &ledger), Ok(A.to_string()));
    }

    #[test]
    fn an_ambiguous_id_is_409_naming_every_match() {
        // The caller can act on it: each match is named with its id and claim.
        let (t, ledger) = table(vec![
            view(A, "utopia-x", &[], "running"),
            view(B, "x", &[], "running"),
        ]);
        let Err(ContainerError::Conflict { code, message }) = t.resolve("utopia-x", &ledger) else {
            panic!("not a conflict");
        };
        assert_eq!(code, "ambiguous_id");
        for named in [
            "utopia-utopia-x (id aaaaaaaaaaaa, claim utopia-x)",
            "utopia-x (id aaaaaaaaaaaa, claim x)",
        ] {
            assert!(message.contains(named), "{named} not in {message}");
        }
    }
}
