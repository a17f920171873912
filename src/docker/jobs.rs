//! The runner↔worker protocol: the docker work the [`DockerRunner`](super::runner) queues for
//! its worker threads and the reports they send back. Plain data: the API's reply senders stay
//! with the runner (a [`Ticket`] names the pending reply a report answers), so a worker never
//! talks to a caller and this file imports neither the runner nor the worker.

use crate::config::RunSettings;
use crate::docker::cli::{DockerCli, DockerError};
use crate::docker::container::ContainerView;
use crate::docker::protocol::{Action, ContainerError};
use crate::docker::spec::CreateSpec;

/// Names the pending reply a [`Done`] answers.
pub(crate) type Ticket = u64;

/// Docker work a worker thread does.
pub(crate) enum Work {
    Create {
        ticket: Ticket,
        spec: Box<CreateSpec>,
        gpus: Vec<u32>,
        uuids: Vec<String>,
    },
    Act {
        ticket: Ticket,
        id: String,
        action: Action,
    },
    Delete {
        ticket: Ticket,
        view: Box<ContainerView>,
    },
    Logs {
        ticket: Ticket,
        id: String,
        tail: u32,
    },
    /// List and inspect every managed container, as of the runner's `generation`.
    Reconcile { generation: u64 },
    /// Inspect one container again (an event said it changed).
    Refresh { id: String, generation: u64 },
}

/// A worker's report.
pub(crate) enum Done {
    Created {
        ticket: Ticket,
        claim_id: String,
        result: Result<ContainerView, ContainerError>,
    },
    Acted {
        ticket: Ticket,
        id: String,
        result: Result<ContainerView, ContainerError>,
    },
    Deleted {
        ticket: Ticket,
        view: Box<ContainerView>,
        result: Result<(), ContainerError>,
    },
    Logs {
        ticket: Ticket,
        result: Result<String, ContainerError>,
    },
    /// A create in progress reached another step (`pulling image ...`, `starting container`),
    /// or its image pull advanced (`pull`).
    Progress {
        claim_id: String,
        status: String,
        pull: Option<crate::docker::pull_progress::PullProgress>,
    },
    Reconciled {
        generation: u64,
        result: Result<Vec<ContainerView>, DockerError>,
        /// What is wrong with the renters' network (`None`: nothing), see
        /// [`network::check`](super::network::check).
        network: Option<String>,
    },
    Refreshed {
        id: String,
        generation: u64,
        result: Result<Option<ContainerView>, DockerError>,
    },
}

/// What a job's report says should the worker panic while doing it (a bug): the same ticket
/// answered, so no caller waits for ever and no reservation stays behind. The work may have
/// been done in part: a create or an action is a `Timeout` (docker may have acted; the ledger
/// keeps the claim's GPUs until a reconcile shows what exists), a listing a failed one.
pub(crate) struct PanicReport(Done);

impl PanicReport {
    pub(crate) fn of(work: &Work) -> PanicReport {
        let failed = || {
            ContainerError::Timeout(
                "the docker worker failed (a bug; see the agent's log); docker may still have \
                 done it"
                    .to_string(),
            )
        };
        let docker = |command: &str| DockerError::BadOutput {
            command: command.to_string(),
            message: "the docker worker failed (a bug; see the agent's log)".to_string(),
        };
        PanicReport(match work {
            Work::Create { ticket, spec, .. } => Done::Created {
                ticket: *ticket,
                claim_id: spec.claim_id.clone(),
                result: Err(failed()),
            },
            Work::Act { ticket, id, .. } => Done::Acted {
                ticket: *ticket,
                id: id.clone(),
                result: Err(failed()),
            },
            Work::Delete { ticket, view } => Done::Deleted {
                ticket: *ticket,
                view: view.clone(),
                result: Err(failed()),
            },
            Work::Logs { ticket, .. } => Done::Logs {
                ticket: *ticket,
                result: Err(failed()),
            },
            Work::Reconcile { generation } => Done::Reconciled {
                generation: *generation,
                result: Err(docker("docker ps")),
                network: None,
            },
            Work::Refresh { id, generation } => Done::Refreshed {
                id: id.clone(),
                generation: *generation,
                result: Err(docker("docker inspect")),
            },
        })
    }

    pub(crate) fn into_done(self) -> Done {
        self.0
    }
}

/// What a worker needs to run docker.
pub(crate) struct WorkerContext {
    pub(crate) cli: DockerCli,
    /// `docker.block_metadata`'s rules go through it.
    pub(crate) iptables: crate::docker::metadata_block::Iptables,
    pub(crate) settings: RunSettings,
}
