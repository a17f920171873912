//! The runner's creates: deciding one (placement, reservation, the `creating` view `GET`
//! shows), recording its outcome (kept for `GET` when it failed), and the claims whose create
//! timed out: given up by a `DELETE`, their late containers removed, and containers over a GPU
//! someone else holds stopped.

use super::{Pending, Runner};
use crate::docker::cli::DockerError;
use crate::docker::container::ContainerView;
use crate::docker::jobs::{Ticket, Work};
use crate::docker::ledger::short_id;
use crate::docker::network;
use crate::docker::placement::place;
use crate::docker::protocol::{Action, ContainerError, Deleted, Reply};
use crate::docker::spec::{container_name, CreateSpec};
use std::time::{Duration, Instant};

/// How long the outcome of a failed create stays visible.
const OUTCOME_MEMORY: Duration = Duration::from_secs(600);

/// How many failed creates are remembered at most (the oldest goes first): a burst of failing
/// creates must not hold memory for [`OUTCOME_MEMORY`].
pub(super) const MAX_OUTCOMES: usize = 256;

/// How long a given-up claim is remembered.
const GIVEN_UP_MEMORY: Duration = Duration::from_secs(3600);

impl Runner {
    /// Decides a create (GPUs exist and are free, everything it needs reserved in the ledger),
    /// then queues the docker work.
    pub(super) fn begin_create(
        &mut self,
        spec: Box<CreateSpec>,
        reply: Reply<ContainerView>,
    ) -> Result<(), ContainerError> {
        self.docker_ready()?;
        if let Some(problem) = self
            .network_problem
            .as_ref()
            .filter(|p| network::blocks_creates(p))
        {
            return Err(ContainerError::DockerUnavailable(format!(
                "no container can be created until the renters' network is usable: {problem}"
            )));
        }
        let report = self.snapshot.gpus();
        let placement = place(&spec, &report, &self.table, &mut self.ledger)?;
        // A new create of a given-up claim: its container is wanted again.
        self.given_up.remove(&spec.claim_id);
        self.outcomes.remove(&spec.claim_id);
        let claim_id = spec.claim_id.clone();
        let shown = ContainerView {
            id: String::new(),
            name: spec.container_name(),
            claim_id: claim_id.clone(),
            image: spec.image.clone(),
            state: "creating".into(),
            status: "waiting for a docker worker".into(),
            exit_code: None,
            oom_killed: false,
            gpu_ids: placement.gpus.clone(),
            gpu_uuids: placement.uuids.clone(),
            port_mappings: spec.ports.clone(),
            endpoints: Vec::new(),
            created_at: None,
            started_at: None,
            finished_at: None,
            warnings: Vec::new(),
            usage: None,
            error: None,
            pull: None,
            pid: None,
        };
        self.creating.insert(claim_id.clone(), shown);
        let queued = self.submit_with_reply(Pending::View(reply), |ticket| Work::Create {
            ticket,
            spec,
            gpus: placement.gpus,
            uuids: placement.uuids,
        });
        if queued.is_err() {
            self.ledger.release_pending(&claim_id);
            self.creating.remove(&claim_id);
        }
        queued
    }

    /// The create in progress, or the failed create, that `id` (a claim id or container name)
    /// names, as `GET` shows it.
    pub(super) fn create_view(&mut self, id: &str) -> Option<ContainerView> {
        self.outcomes
            .retain(|_, (_, since)| since.elapsed() < OUTCOME_MEMORY);
        let name = id.trim_start_matches('/');
        let named = |v: &ContainerView| v.claim_id == id || v.name == name;
        self.creating
            .values()
            .find(|v| named(v))
            .or_else(|| self.outcomes.values().map(|(v, _)| v).find(|v| named(v)))
            .cloned()
    }

    /// Keeps a failed create's view for `GET`: for [`OUTCOME_MEMORY`], the newest
    /// [`MAX_OUTCOMES`] at most.
    fn remember_outcome(&mut self, claim_id: String, shown: ContainerView) {
        self.outcomes
            .retain(|_, (_, since)| since.elapsed() < OUTCOME_MEMORY);
        while self.outcomes.len() >= MAX_OUTCOMES {
            let Some(oldest) = self
                .outcomes
                .iter()
                .min_by_key(|(_, (_, since))| *since)
                .map(|(claim, _)| claim.clone())
            else {
                break;
            };
            self.outcomes.remove(&oldest);
        }
        self.outcomes.insert(claim_id, (shown, Instant::now()));
    }

    /// Every create in progress and every failed create still remembered, as `GET` of its
    /// claim shows it; the list shows them with the containers. An outcome whose claim has a
    /// container after all (a timed-out create docker finished) is left out: `GET` shows the
    /// container.
    pub(super) fn create_views(&mut self) -> Vec<ContainerView> {
        self.outcomes
            .retain(|_, (_, since)| since.elapsed() < OUTCOME_MEMORY);
        let mut views: Vec<ContainerView> = self.creating.values().cloned().collect();
        views.extend(
            self.outcomes
                .values()
                .map(|(v, _)| v)
                .filter(|v| {
                    !self.creating.contains_key(&v.claim_id)
                        && !self.table.views().any(|c| c.claim_id == v.claim_id)
                })
                .cloned(),
        );
        views
    }

    /// `DELETE` of a claim whose create failed (shown as `failed` for a while, with no container
    /// and nothing reserved): its outcome is forgotten, so `GET` and the list no longer show it.
    /// `None` when `id` names a container, a create in progress or no failed create.
    pub(super) fn forget_failed(&mut self, id: &str) -> Option<Deleted> {
        if self.table.resolve(id, &self.ledger).is_ok() {
            return None;
        }
        let failed = self.create_view(id).filter(|v| v.state == "failed")?;
        self.outcomes.remove(&failed.claim_id);
        log::info!("claim {}: its failed create is forgotten", failed.claim_id);
        Some(Deleted {
            id: String::new(),
            name: failed.name,
            claim_id: failed.claim_id,
            deleted: true,
            gpu_ids: Vec::new(),
        })
    }

    /// `DELETE` of a claim whose create is in progress (a pull can take many minutes) or timed
    /// out (state unknown): the claim is given up, so its container, if docker makes it, is
    /// removed as soon as the create ends or a reconcile sees it; its reservation is kept until
    /// then. `None` when `id` names no such claim.
    pub(super) fn give_up_unknown(&mut self, id: &str) -> Option<Deleted> {
        self.docker_ready().ok()?;
        if self.table.resolve(id, &self.ledger).is_ok() {
            return None;
        }
        let name = id.trim_start_matches('/');
        let claim_id = self
            .ledger
            .holdings()
            .iter()
            .find(|h| {
                h.container_id.is_none()
                    && (h.unknown_since.is_some() || self.creating.contains_key(&h.claim_id))
                    && (h.claim_id == id || container_name(&h.claim_id) == name)
            })?
            .claim_id
            .clone();
        self.ledger.give_up(&claim_id);
        self.given_up.insert(claim_id.clone(), Instant::now());
        let when = if self.creating.contains_key(&claim_id) {
            "while it is being created"
        } else {
            "while its create's outcome is unknown"
        };
        log::info!("claim {claim_id} given up {when}: its container is removed if it turns up");
        Some(Deleted {
            id: String::new(),
            name: container_name(&claim_id),
            claim_id,
            deleted: false,
            gpu_ids: Vec::new(),
        })
    }

    /// Queues the removal of every container of a given-up claim that turned up (even after
    /// its reservation was released).
    pub(super) fn remove_given_up(&mut self) {
        self.given_up
            .retain(|_, since| since.elapsed() < GIVEN_UP_MEMORY);
        let mut ids = self.ledger.given_up_containers();
        ids.extend(
            self.table
                .views()
                .filter(|v| self.given_up.contains_key(&v.claim_id))
                .map(|v| v.id.clone()),
        );
        ids.sort();
        ids.dedup();
        for id in ids {
            let Ok(view) = self.table.view(&id).map(|v| Box::new(v.clone())) else {
                continue;
            };
            if !self.table.begin_busy(&id) {
                continue;
            }
            log::warn!(
                "container {} of given-up claim {} turned up after the claim was deleted; removing it",
                short_id(&id),
                view.claim_id
            );
            // Nobody waits for this answer.
            let (reply, _) = crossbeam_channel::bounded(1);
            if self
                .submit_with_reply(Pending::Deleted(reply), |ticket| Work::Delete {
                    ticket,
                    view,
                })
                .is_err()
            {
                // Tried again after the next reconcile.
                self.table.end_busy(&id);
            }
        }
    }

    /// Stops every running container that turned up over a GPU another claim held first (a
    /// create docker finished after the agent had given its GPUs to someone else): two renters
    /// never run on one GPU. Its start is refused (409) until it is deleted.
    pub(super) fn stop_usurpers(&mut self) {
        let usurpers: Vec<(String, String)> = self
            .table
            .views()
            .filter(|v| v.state == "running" || v.state == "restarting")
            .filter_map(|v| {
                self.ledger
                    .gpu_taken_from(&v.id)
                    .map(|c| (v.id.clone(), c.to_string()))
            })
            .collect();
        for (id, conflict) in usurpers {
            if !self.table.begin_busy(&id) {
                continue;
            }
            log::warn!(
                "stopping container {}: it runs on a GPU held by another claim ({conflict})",
                short_id(&id)
            );
            let (reply, _) = crossbeam_channel::bounded(1);
            let key = id.clone();
            if self
                .submit_with_reply(Pending::View(reply), |ticket| Work::Act {
                    ticket,
                    id: key,
                    action: Action::Stop,
                })
                .is_err()
            {
                self.table.end_busy(&id);
            }
        }
    }

    /// Records a create's outcome: the container bound to its claim, or its error kept for
    /// `GET` (and its reservation released, or kept while the outcome is unknown); then answers
    /// the caller.
    pub(super) fn finish_create(
        &mut self,
        ticket: Ticket,
        claim_id: String,
        result: Result<ContainerView, ContainerError>,
    ) {
        if let Some(mut shown) = self.creating.remove(&claim_id) {
            if let Err(e) = &result {
                let (state, error) = match e {
                    ContainerError::Timeout(why) => (
                        "unknown",
                        format!(
                            "{why}; its GPUs and ports stay reserved until a reconcile \
                             shows whether docker made the container"
                        ),
                    ),
                    other => ("failed", other.to_string()),
                };
                shown.state = state.into();
                shown.status = "create failed".into();
                shown.error = Some(error);
                self.remember_outcome(claim_id.clone(), shown);
            }
        }
        let result = match result {
            Ok(view) if self.table.is_removed(&view.id) => {
                self.ledger.release_pending(&claim_id);
                Err(ContainerError::Docker(DockerError::BadOutput {
                    command: "docker run".into(),
                    message: format!(
                        "container {} was removed right after it was created",
                        short_id(&view.id)
                    ),
                }))
            }
            Ok(view) => {
                self.ledger.bind(&claim_id, &view.id);
                self.table.upsert(view.clone(), &mut self.ledger);
                log::info!(
                    "container {} created for claim {claim_id}",
                    short_id(&view.id)
                );
                if self.given_up.contains_key(&claim_id) {
                    // Deleted while it was being created: it goes at once.
                    self.remove_given_up();
                } else {
                    // The answer is what `docker run` and the agent knew; docker's times and
                    // pid (and a change since, such as a command that exited at once) are read
                    // now, by a refresh not older than that answer.
                    self.refresh(view.id.clone());
                }
                Ok(self.decorate(&view))
            }
            Err(ContainerError::Timeout(why)) => {
                // Docker may still make the container: nothing is freed until a
                // reconcile started after this shows whether it exists.
                // Settled by a reconcile started once docker had time to finish.
                self.ledger.mark_unknown(&claim_id, u64::MAX);
                self.unknown_grace
                    .insert(claim_id.clone(), Instant::now() + self.unknown_grace_period);
                log::warn!(
                    "create for claim {claim_id} timed out; its GPUs and ports stay \
                     reserved (state unknown) until a reconcile shows whether docker made \
                     the container: {why}"
                );
                Err(ContainerError::Timeout(format!(
                    "{why}; docker may still create the container: its GPUs and ports \
                     stay reserved (state unknown) until the next reconcile shows whether \
                     it exists"
                )))
            }
            Err(e) => {
                log::warn!("create for claim {claim_id} failed: {e}");
                self.ledger.release_pending(&claim_id);
                self.note_error(&e);
                Err(e)
            }
        };
        self.publish();
        self.answer_view(ticket, result);
    }
}
