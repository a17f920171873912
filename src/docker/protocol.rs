//! The container runner's contract: everything the API (and the agent) use of the
//! [`DockerRunner`](super::runner) thread.
//!
//! Protocol (one request at a time, each carrying its own reply `Sender`):
//! 1. An API handler validates the request into a typed [`Request`], sends it with a fresh
//!    bounded(1) reply channel through a [`RunnerHandle`], and waits with a timeout.
//! 2. The runner answers reads (list, inspect) from its table at once. For work that needs
//!    docker it decides first (a create *reserves* its claim, GPUs and host ports in the ledger;
//!    a stop marks the container busy), keeps the reply `Sender` as pending, queues plain-data
//!    work for a worker (see [`jobs`](super::jobs)) and goes back to its inbox: a slow image
//!    pull never holds up another request.
//! 3. A worker runs the docker commands (each with a deadline) and reports back; the runner
//!    updates the ledger and the table, publishes them, and answers the pending reply.
//!
//! Every failure is a [`ContainerError`], which the API maps to a status code.

use crate::docker::cli::{DockerError, DockerTimeouts};
use crate::docker::container::ContainerView;
use crate::docker::ledger::Conflict;
use crate::docker::spec::{CreatePolicy, CreateSpec, SpecError};
use crossbeam_channel::Sender;
use serde::Serialize;
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Why a container request failed; the API maps each to a status code.
#[derive(Debug, Clone, PartialEq)]
pub enum ContainerError {
    /// 400: the request is invalid.
    Invalid(SpecError),
    /// 404: no managed container answers to this id.
    NotFound(String),
    /// 409: a claim, GPU or host port is taken, or the container is busy.
    Conflict { code: &'static str, message: String },
    /// 503: docker cannot be used.
    DockerUnavailable(String),
    /// 503: NVML has not reported the GPUs.
    GpusUnavailable(String),
    /// 503: too much docker work queued.
    Busy(String),
    /// 504: no answer in time (the work may still complete).
    Timeout(String),
    /// 400: the image does not exist or may not be pulled.
    ImageNotFound(String),
    /// 502: the image could not be pulled (registry unreachable, ...).
    ImagePull(String),
    /// 502: docker refused or failed.
    Docker(DockerError),
}

impl fmt::Display for ContainerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerError::Invalid(e) => e.fmt(f),
            ContainerError::NotFound(m)
            | ContainerError::DockerUnavailable(m)
            | ContainerError::GpusUnavailable(m)
            | ContainerError::Busy(m)
            | ContainerError::Timeout(m)
            | ContainerError::ImageNotFound(m)
            | ContainerError::ImagePull(m) => f.write_str(m),
            ContainerError::Conflict { message, .. } => f.write_str(message),
            // Never docker's own text: it may quote a registry's answer, over several lines.
            ContainerError::Docker(e) => f.write_str(&e.summary()),
        }
    }
}

impl std::error::Error for ContainerError {}

impl From<DockerError> for ContainerError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Spawn { .. } | DockerError::Unreachable { .. } => {
                ContainerError::DockerUnavailable(e.summary())
            }
            DockerError::Timeout { .. } => ContainerError::Timeout(e.to_string()),
            DockerError::Cancelled { .. } => ContainerError::DockerUnavailable(e.to_string()),
            other => {
                // The answer carries only a classified line; docker's own text is logged here,
                // on one line, for the operator.
                log::warn!("{}", other.log_line());
                ContainerError::Docker(other)
            }
        }
    }
}

impl From<&Conflict> for ContainerError {
    fn from(conflict: &Conflict) -> Self {
        let code = match conflict {
            Conflict::ClaimTaken { .. } => "claim_in_use",
            Conflict::GpuHeld { .. } | Conflict::NotEnoughGpus { .. } => "gpu_in_use",
            Conflict::PortHeld { .. }
            | Conflict::PortReserved { .. }
            | Conflict::RemotePortHeld { .. } => "port_in_use",
        };
        ContainerError::Conflict {
            code,
            message: conflict.to_string(),
        }
    }
}

/// `POST /api/v1/containers/{id}/<action>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
}

impl Action {
    pub fn parse(word: &str) -> Option<Action> {
        match word {
            "start" => Some(Action::Start),
            "stop" => Some(Action::Stop),
            "restart" => Some(Action::Restart),
            _ => None,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
        }
    }
}

/// What `DELETE` answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deleted {
    /// The removed container's id; `null` in the JSON for a claim that had no container (given
    /// up while being created, or a failed create forgotten).
    #[serde(serialize_with = "crate::docker::container::id_or_null")]
    pub id: String,
    pub name: String,
    pub claim_id: String,
    pub deleted: bool,
    /// The GPUs the container held, now free.
    pub gpu_ids: Vec<u32>,
}

pub type Reply<T> = Sender<Result<T, ContainerError>>;

/// A request to the runner, with its reply `Sender`.
pub enum Request {
    Create {
        spec: Box<CreateSpec>,
        reply: Reply<ContainerView>,
    },
    List {
        reply: Reply<Vec<ContainerView>>,
    },
    Get {
        id: String,
        reply: Reply<ContainerView>,
    },
    Act {
        id: String,
        action: Action,
        reply: Reply<ContainerView>,
    },
    Delete {
        id: String,
        reply: Reply<Deleted>,
    },
    Logs {
        id: String,
        tail: u32,
        reply: Reply<String>,
    },
}

/// The API's way to the runner: sends a request and waits, with a timeout, for its reply.
#[derive(Clone)]
pub struct RunnerHandle {
    /// `docker.create_wait_secs`.
    pub(super) create_wait: Duration,
    pub(super) requests: Sender<Request>,
    pub(super) timeouts: Arc<DockerTimeouts>,
    pub(super) policy: Arc<CreatePolicy>,
}

impl RunnerHandle {
    /// The docker deadlines the CLI reads at each command (a reload changes them).
    pub fn timeouts(&self) -> Arc<DockerTimeouts> {
        Arc::clone(&self.timeouts)
    }

    /// What this host allows a create (registries, host ports, CPUs, memory): checked by the
    /// API before the request reaches the runner.
    pub fn policy(&self) -> &CreatePolicy {
        &self.policy
    }

    /// How long a stop, start, restart, delete or logs may take.
    pub fn action_timeout(&self) -> Duration {
        self.timeouts.action_total()
    }

    /// How long a create's answer waits for the container (then 202).
    pub fn create_wait(&self) -> Duration {
        self.create_wait
    }

    /// Like [`RunnerHandle::call`], but `Ok(None)` when no answer came within `timeout`: the
    /// work goes on (a create answered 202).
    pub fn call_within<T>(
        &self,
        timeout: Duration,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<Option<T>, ContainerError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.requests
            .send_timeout(make(reply), Duration::from_secs(5))
            .map_err(|_| {
                ContainerError::DockerUnavailable("the container runner is not running".into())
            })?;
        match answer.recv_timeout(timeout) {
            Ok(result) => result.map(Some),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(
                ContainerError::DockerUnavailable("the container runner stopped".into()),
            ),
        }
    }

    /// Sends the request built by `make` around a fresh reply channel and waits up to
    /// `timeout` for the answer.
    pub fn call<T>(
        &self,
        timeout: Duration,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, ContainerError> {
        self.call_within(timeout, make)?.ok_or_else(|| {
            ContainerError::Timeout(format!(
                "no answer from docker within {}s; the operation may still complete (check \
                 GET /api/v1/containers)",
                timeout.as_secs()
            ))
        })
    }
}

/// The started runner: its handle for the API and its threads for the agent to join.
pub struct DockerRunner {
    pub handle: RunnerHandle,
    pub threads: Vec<(&'static str, JoinHandle<()>)>,
}
