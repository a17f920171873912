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

/// What a worker needs to run docker.
pub(crate) struct WorkerContext {
    pub(crate) cli: DockerCli,
    /// `docker.block_metadata`'s rules go through it.
    pub(crate) iptables: crate::docker::metadata_block::Iptables,
    pub(crate) settings: RunSettings,
}
