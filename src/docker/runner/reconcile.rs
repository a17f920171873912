//! The runner's reconciles: when one starts (and which timed-out creates it decides), and how
//! its result rebuilds the table and the ledger.

use super::{DockerState, Runner};
use crate::docker::cli::DockerError;
use crate::docker::container::ContainerView;
use crate::docker::jobs::Work;
use crate::docker::protocol::ContainerError;
use std::time::Instant;

impl Runner {
    pub(super) fn start_reconcile(&mut self) {
        let interval = match self.docker {
            DockerState::Ok => self.reconcile_interval,
            DockerState::Starting | DockerState::Unavailable(_) => self.unavailable_retry(),
        };
        self.next_reconcile = Instant::now() + interval;
        if self.reconcile_in_flight {
            return;
        }
        // Timed-out creates whose grace has passed: this reconcile decides them.
        let now = Instant::now();
        let due: Vec<String> = self
            .unknown_grace
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(claim, _)| claim.clone())
            .collect();
        for claim in due {
            self.unknown_grace.remove(&claim);
            let since = self.table.bump();
            self.ledger.mark_unknown(&claim, since);
        }
        let work = Work::Reconcile {
            generation: self.table.generation(),
        };
        if self.submit(work).is_ok() {
            self.reconcile_in_flight = true;
        }
    }

    /// Records what a reconcile found of the renters' network (published with the health).
    pub(super) fn apply_network(&mut self, problem: Option<String>) {
        if problem != self.network_problem {
            match &problem {
                Some(p) => log::warn!("{p}"),
                None if self.network_problem.is_some() => {
                    log::info!("the renters' docker network is usable again")
                }
                None => {}
            }
        }
        self.network_problem = problem;
    }

    /// Makes the table and the ledger match docker's list of managed containers, as of when the
    /// reconcile started (`generation`): anything the runner learned since is kept.
    pub(super) fn apply_reconcile(
        &mut self,
        generation: u64,
        result: Result<Vec<ContainerView>, DockerError>,
    ) {
        let views = match result {
            Ok(views) => views,
            Err(e) => {
                // Before the first rebuild nothing can be served: say why (health, 503s) rather
                // than "starting" for ever.
                if e.is_unavailable()
                    || matches!(e, DockerError::Timeout { .. })
                    || !self.ledger_ready
                {
                    self.note_error(&ContainerError::DockerUnavailable(e.to_string()));
                } else {
                    log::warn!("reconcile failed: {e}");
                }
                self.next_reconcile = Instant::now() + self.unavailable_retry();
                self.publish();
                return;
            }
        };
        let was_ready = self.ledger_ready;
        self.table.reconcile(generation, views, &mut self.ledger);
        for claim in self.ledger.settle_unknown(generation) {
            if let Some((shown, _)) = self.outcomes.get_mut(&claim) {
                shown.state = "failed".into();
                shown.error = Some(
                    "the create timed out and docker made no container (seen by a reconcile)"
                        .into(),
                );
            }
            log::info!(
                "the timed-out create of claim {claim} made no container (reconcile); its GPUs \
                 and ports are free"
            );
        }
        self.remove_given_up();
        if was_ready {
            self.stop_usurpers();
        }
        if !matches!(self.docker, DockerState::Ok) || !self.ledger_ready {
            log::info!(
                "docker reachable; ledger rebuilt from {} managed container(s)",
                self.table.len()
            );
        }
        self.docker = DockerState::Ok;
        self.ledger_ready = true;
        self.next_reconcile = Instant::now() + self.reconcile_interval;
        self.publish();
    }
}
