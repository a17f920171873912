//! The `DockerRunner` thread: the one owner of the [`GpuLedger`] and of the table of managed
//! containers, and the only code that starts docker commands (through its worker pools).
//!
//! Protocol (one request at a time, each carrying its own reply `Sender`):
//! 1. An API handler validates the request into a typed [`Request`], sends it with a fresh
//!    bounded(1) reply channel through a [`RunnerHandle`], and waits with a timeout.
//! 2. The runner answers reads (list, inspect) from its table at once. For work that needs
//!    docker it decides first (a create *reserves* its claim, GPUs and host ports in the ledger;
//!    a stop marks the container busy), then queues a [`Work`] item for a worker and goes back
//!    to its inbox: a slow image pull never holds up another request.
//! 3. A worker runs the docker commands (each with a deadline) and sends a [`Done`] back; the
//!    runner updates the ledger and the table, publishes them, and replies to the handler.
//!
//! - Owns: the ledger, the container table, and two worker pools of `docker.workers` threads
//!   each running [`worker`](super::worker): one for creates (image pulls can take many
//!   minutes), one for everything else, so pulls never hold up a delete or a reconcile. Each has
//!   a bounded queue; when it is full, requests get 503 `docker_busy`.
//! - Receives: [`Request`]s from the API, [`Done`]s from its workers, [`ContainerEvent`]s from
//!   the events watcher (a container changed: inspect it again; removed: forget it).
//! - Sends: the container summaries, the GPU allocations and the `docker` health (through its
//!   [`DockerWriter`]) after every change.
//! - Reconciles: its first act is to rebuild the ledger from the labelled containers (`docker
//!   ps -a` + `docker container inspect`); until that succeeds every container request gets 503
//!   `docker_unavailable`, so no create is decided on an empty ledger (while health and metrics,
//!   which never wait on docker, are served even when the docker daemon hangs). The same full
//!   reconcile runs every `docker.reconcile_interval_secs` (every 2 s while docker is
//!   unreachable).
//! - Stops: on shutdown the runner, the workers (a docker command in flight is killed and
//!   reaped) and the events watcher end. Containers keep running: the agent's restart adopts
//!   them.

use crate::config::{DockerSettings, RunSettings};
use crate::docker::cli::{DockerCli, DockerError};
use crate::docker::container::ContainerView;
use crate::docker::events::{self, ContainerEvent};
use crate::docker::ledger::{short_id, Conflict, GpuLedger};
use crate::docker::spec::{check_visible_devices, join_ids, CreateSpec, GpuRequest, SpecError};
use crate::docker::worker::{remove_stale_env_files, worker};
use crate::shutdown::Shutdown;
use crate::state::{ContainerSummary, DockerWriter, Health, NvmlState, Snapshot};
use crossbeam_channel::{after, select, Receiver, Sender, TrySendError};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Queue length of each worker pool.
const WORK_QUEUE: usize = 64;
/// Reconcile period while docker is unreachable.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);
/// How many removed container ids the runner remembers (far more than a node removes while one
/// docker command of a stale report can be in flight).
const REMOVED_MEMORY: usize = 4096;

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
            ContainerError::Docker(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ContainerError {}

impl From<DockerError> for ContainerError {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Spawn { .. } | DockerError::Unreachable { .. } => {
                ContainerError::DockerUnavailable(e.to_string())
            }
            DockerError::Timeout { .. } => ContainerError::Timeout(e.to_string()),
            DockerError::Cancelled { .. } => ContainerError::DockerUnavailable(e.to_string()),
            other => ContainerError::Docker(other),
        }
    }
}

fn conflict_error(conflict: &Conflict) -> ContainerError {
    let code = match conflict {
        Conflict::ClaimTaken { .. } => "claim_in_use",
        Conflict::GpuHeld { .. } | Conflict::NotEnoughGpus { .. } => "gpu_in_use",
        Conflict::PortHeld { .. } | Conflict::PortReserved { .. } => "port_in_use",
    };
    ContainerError::Conflict {
        code,
        message: conflict.to_string(),
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

    pub(super) fn word(self) -> &'static str {
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
    pub id: String,
    pub name: String,
    pub claim_id: String,
    pub deleted: bool,
    /// The GPUs the container held, now free.
    pub gpu_ids: Vec<u32>,
}

pub(super) type Reply<T> = Sender<Result<T, ContainerError>>;

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
    requests: Sender<Request>,
    /// How long a create may take in all (pull, run, inspect).
    pub create_timeout: Duration,
    /// How long a stop, start, restart, delete or logs may take.
    pub action_timeout: Duration,
}

impl RunnerHandle {
    /// Sends the request built by `make` around a fresh reply channel and waits up to
    /// `timeout` for the answer.
    pub fn call<T>(
        &self,
        timeout: Duration,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Result<T, ContainerError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.requests
            .send_timeout(make(reply), Duration::from_secs(5))
            .map_err(|_| {
                ContainerError::DockerUnavailable("the container runner is not running".into())
            })?;
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(ContainerError::Timeout(format!(
                    "no answer from docker within {}s; the operation may still complete (check \
                     GET /api/v1/containers)",
                    timeout.as_secs()
                )))
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(
                ContainerError::DockerUnavailable("the container runner stopped".into()),
            ),
        }
    }
}

/// Docker work a worker thread does.
pub(super) enum Work {
    Create {
        spec: Box<CreateSpec>,
        gpus: Vec<u32>,
        uuids: Vec<String>,
        reply: Reply<ContainerView>,
    },
    Act {
        id: String,
        action: Action,
        reply: Reply<ContainerView>,
    },
    Delete {
        view: Box<ContainerView>,
        reply: Reply<Deleted>,
    },
    Logs {
        id: String,
        tail: u32,
        reply: Reply<String>,
    },
    Reconcile {
        generation: u64,
    },
    Refresh {
        id: String,
        generation: u64,
    },
}

/// A worker's report.
pub(super) enum Done {
    Created {
        claim_id: String,
        result: Result<ContainerView, ContainerError>,
        reply: Reply<ContainerView>,
    },
    Acted {
        id: String,
        result: Result<ContainerView, ContainerError>,
        reply: Reply<ContainerView>,
    },
    Deleted {
        view: Box<ContainerView>,
        result: Result<(), ContainerError>,
        reply: Reply<Deleted>,
    },
    Logs {
        result: Result<String, ContainerError>,
        reply: Reply<String>,
    },
    Reconciled {
        generation: u64,
        result: Result<Vec<ContainerView>, DockerError>,
    },
    Refreshed {
        id: String,
        generation: u64,
        result: Result<Option<ContainerView>, DockerError>,
    },
}

/// Why the runner could not start.
#[derive(Debug)]
pub struct RunnerStartError(pub String);

impl fmt::Display for RunnerStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot start the container runner: {}", self.0)
    }
}

impl std::error::Error for RunnerStartError {}

/// The started runner: its handle for the API and its threads for the agent to join.
pub struct DockerRunner {
    pub handle: RunnerHandle,
    pub threads: Vec<(&'static str, JoinHandle<()>)>,
}

/// What a worker needs to run docker.
pub(super) struct WorkerContext {
    pub(super) cli: DockerCli,
    pub(super) settings: RunSettings,
}

struct Entry {
    view: ContainerView,
    /// The runner's change counter when this entry was last written.
    generation: u64,
}

enum DockerState {
    /// The first reconcile has not finished.
    Starting,
    Ok,
    Unavailable(String),
}

struct Runner {
    snapshot: Arc<Snapshot>,
    writer: DockerWriter,
    ledger: GpuLedger,
    containers: BTreeMap<String, Entry>,
    /// Conflicts found when a container was adopted, kept as its warnings.
    adopt_warnings: BTreeMap<String, Vec<String>>,
    /// Containers with a stop/start/restart/delete in flight.
    busy: BTreeSet<String>,
    /// Recently removed containers (id → the generation of the removal). Docker never reuses an
    /// id, so any later report of one of these (a refresh or reconcile that inspected it just
    /// before it went) is stale and must not bring it back.
    removed: BTreeMap<String, u64>,
    generation: u64,
    docker: DockerState,
    /// True once a full reconcile has rebuilt the ledger; creates wait for it.
    ledger_ready: bool,
    reconcile_in_flight: bool,
    reconcile_interval: Duration,
    next_reconcile: Instant,
    /// Short docker work (stop, delete, logs, reconcile, refresh).
    jobs: Sender<Work>,
    /// Creates, with their image pulls: a lane of their own, so that pulls that take all their
    /// workers never hold up a delete.
    creates: Sender<Work>,
    published_health: Option<Health>,
}

/// Starts the worker pools, the events watcher and the runner thread, whose first work is the
/// ledger rebuild (an unreachable docker is not fatal: it is retried).
pub fn start(
    config: &DockerSettings,
    reserved_ports: Vec<u16>,
    snapshot: Arc<Snapshot>,
    writer: DockerWriter,
    shutdown: Shutdown,
) -> Result<DockerRunner, RunnerStartError> {
    let command_timeout = config.command_timeout;
    let stop_timeout = config.stop_timeout;
    let pull_timeout = config.pull_timeout;
    let cli = DockerCli::new(
        config.binary.clone(),
        command_timeout,
        pull_timeout,
        stop_timeout,
        shutdown.clone(),
    );
    let context = Arc::new(WorkerContext {
        cli,
        settings: config.run.clone(),
    });

    let (jobs, job_queue) = crossbeam_channel::bounded::<Work>(WORK_QUEUE);
    let (creates, create_queue) = crossbeam_channel::bounded::<Work>(WORK_QUEUE);
    let (done_tx, done) = crossbeam_channel::unbounded::<Done>();
    let (requests_tx, requests) = crossbeam_channel::bounded::<Request>(256);
    let (events_tx, events_rx) = crossbeam_channel::bounded::<ContainerEvent>(1024);

    let mut runner = Runner {
        snapshot: Arc::clone(&snapshot),
        writer,
        ledger: GpuLedger::new(reserved_ports),
        containers: BTreeMap::new(),
        adopt_warnings: BTreeMap::new(),
        busy: BTreeSet::new(),
        removed: BTreeMap::new(),
        generation: 0,
        docker: DockerState::Starting,
        ledger_ready: false,
        reconcile_in_flight: false,
        reconcile_interval: config.reconcile_interval,
        next_reconcile: Instant::now(),
        jobs,
        creates,
        published_health: None,
    };
    runner.publish();
    // The rebuild is the first work queued (`next_reconcile` is now); the watcher reports every
    // event since just before it.
    let events_since = events::now_nano();
    runner.start_reconcile();
    remove_stale_env_files(&std::env::temp_dir());

    let mut threads = Vec::new();
    for (lane, queue) in [
        ("docker-worker", &job_queue),
        ("docker-create", &create_queue),
    ] {
        for n in 0..config.workers {
            let context = Arc::clone(&context);
            let queue = queue.clone();
            let done_tx = done_tx.clone();
            let shutdown = shutdown.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{lane}-{n}"))
                .spawn(move || worker(&context, &queue, &done_tx, &shutdown))
                .map_err(|e| RunnerStartError(format!("cannot start a worker thread: {e}")))?;
            threads.push((lane, thread));
        }
    }
    let watcher = events::start(
        config.binary.clone(),
        config.run.managed_label.clone(),
        events_since,
        events_tx,
        shutdown.clone(),
    )
    .map_err(|e| RunnerStartError(format!("cannot start the events watcher: {e}")))?;
    threads.push(("docker-events", watcher));
    let runner_thread = std::thread::Builder::new()
        .name("docker-runner".into())
        .spawn(move || runner.run(&requests, &done, &events_rx, &shutdown))
        .map_err(|e| RunnerStartError(format!("cannot start the runner thread: {e}")))?;
    threads.push(("docker-runner", runner_thread));

    let slack = Duration::from_secs(5);
    Ok(DockerRunner {
        handle: RunnerHandle {
            requests: requests_tx,
            create_timeout: pull_timeout + command_timeout * 4 + slack,
            action_timeout: command_timeout * 3 + stop_timeout + slack,
        },
        threads,
    })
}

/// Events that change what `docker container inspect` says.
fn event_changes_state(action: &str) -> bool {
    matches!(
        action,
        "create"
            | "start"
            | "restart"
            | "die"
            | "kill"
            | "oom"
            | "stop"
            | "pause"
            | "unpause"
            | "rename"
            | "update"
    )
}

impl Runner {
    fn run(
        mut self,
        requests: &Receiver<Request>,
        done: &Receiver<Done>,
        events: &Receiver<ContainerEvent>,
        shutdown: &Shutdown,
    ) {
        loop {
            let wait = self
                .next_reconcile
                .saturating_duration_since(Instant::now());
            select! {
                recv(requests) -> request => match request {
                    Ok(request) => self.handle(request),
                    Err(_) => return,
                },
                recv(done) -> report => match report {
                    Ok(report) => self.finish(report),
                    Err(_) => return,
                },
                recv(events) -> event => match event {
                    Ok(event) => self.on_event(event),
                    Err(_) => return,
                },
                recv(after(wait)) -> _ => self.start_reconcile(),
                recv(shutdown.receiver()) -> _ => return,
            }
        }
    }

    fn docker_ready(&self) -> Result<(), ContainerError> {
        match &self.docker {
            DockerState::Starting => Err(ContainerError::DockerUnavailable(
                "the agent is still rebuilding its GPU ledger from docker".into(),
            )),
            DockerState::Unavailable(why) => Err(ContainerError::DockerUnavailable(format!(
                "docker is unavailable: {why}"
            ))),
            DockerState::Ok if !self.ledger_ready => Err(ContainerError::DockerUnavailable(
                "the GPU ledger has not been rebuilt from docker yet".into(),
            )),
            DockerState::Ok => Ok(()),
        }
    }

    fn submit(&mut self, work: Work) -> Result<(), ContainerError> {
        let lane = match work {
            Work::Create { .. } => &self.creates,
            _ => &self.jobs,
        };
        match lane.try_send(work) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ContainerError::Busy(format!(
                "{WORK_QUEUE} docker operations are already queued; try again shortly"
            ))),
            Err(TrySendError::Disconnected(_)) => Err(ContainerError::DockerUnavailable(
                "the docker workers have stopped".into(),
            )),
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Create { spec, reply } => {
                let result = self.begin_create(spec, reply.clone());
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                }
            }
            Request::List { reply } => {
                let result = self.docker_ready().map(|()| {
                    let mut views: Vec<ContainerView> = self
                        .containers
                        .values()
                        .map(|e| self.decorate(&e.view))
                        .collect();
                    views.sort_by(|a, b| (&a.created_at, &a.name).cmp(&(&b.created_at, &b.name)));
                    views
                });
                let _ = reply.send(result);
            }
            Request::Get { id, reply } => {
                let result = self
                    .docker_ready()
                    .and_then(|()| self.resolve(&id))
                    .and_then(|key| self.view_of(&key))
                    .map(|view| self.decorate(view));
                let _ = reply.send(result);
            }
            Request::Act { id, action, reply } => {
                let result = self.begin_busy(&id).and_then(|key| {
                    self.submit(Work::Act {
                        id: key.clone(),
                        action,
                        reply: reply.clone(),
                    })
                    .inspect_err(|_| {
                        self.busy.remove(&key);
                    })
                });
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                }
            }
            Request::Delete { id, reply } => {
                let result = self.begin_busy(&id).and_then(|key| {
                    let view = match self.view_of(&key) {
                        Ok(view) => Box::new(view.clone()),
                        Err(e) => {
                            self.busy.remove(&key);
                            return Err(e);
                        }
                    };
                    self.submit(Work::Delete {
                        view,
                        reply: reply.clone(),
                    })
                    .inspect_err(|_| {
                        self.busy.remove(&key);
                    })
                });
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                }
            }
            Request::Logs { id, tail, reply } => {
                let result = self
                    .docker_ready()
                    .and_then(|()| self.resolve(&id))
                    .and_then(|key| {
                        self.submit(Work::Logs {
                            id: key,
                            tail,
                            reply: reply.clone(),
                        })
                    });
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Decides a create: GPUs exist, ledger reservation, then queues the docker work.
    fn begin_create(
        &mut self,
        spec: Box<CreateSpec>,
        reply: Reply<ContainerView>,
    ) -> Result<(), ContainerError> {
        self.docker_ready()?;
        let report = self.snapshot.gpus();
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
                    Some(_) => {}
                }
            }
        }
        // A GPU is held by its UUID as well as by its index: after a GPU fell off the bus and
        // the node restarted, indices shift, and a container's labels may name by its old index
        // a GPU that now has another one.
        let uuid_holder = |index: u32| {
            let uuid = report
                .gpus
                .iter()
                .find(|g| g.index == index)
                .and_then(|g| g.uuid.as_deref())
                .filter(|u| !u.is_empty())?;
            self.containers
                .values()
                .find(|e| e.view.gpu_uuids.iter().any(|u| u == uuid))
                .map(|e| (uuid.to_string(), &e.view))
        };
        if let GpuRequest::Ids(ids) = &spec.gpus {
            for id in ids {
                if let Some((uuid, holder)) = uuid_holder(*id) {
                    return Err(ContainerError::Conflict {
                        code: "gpu_in_use",
                        message: format!(
                            "GPU {id} ({uuid}) is held by claim {} (container {}), which was \
                             given it as GPU {}",
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
        }
        let pickable: Vec<u32> = usable
            .iter()
            .copied()
            .filter(|i| uuid_holder(*i).is_none())
            .collect();
        let gpus = self
            .ledger
            .reserve(&spec.claim_id, &spec.gpus, &spec.ports, &pickable)
            .map_err(|c| conflict_error(&c))?;
        if let Err(e) = check_visible_devices(&spec, &gpus) {
            self.ledger.release_pending(&spec.claim_id);
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
        let claim_id = spec.claim_id.clone();
        self.submit(Work::Create {
            spec,
            gpus,
            uuids,
            reply,
        })
        .inspect_err(|_| self.ledger.release_pending(&claim_id))
    }

    /// Resolves `id` and marks the container busy for a stop/start/restart/delete.
    fn begin_busy(&mut self, id: &str) -> Result<String, ContainerError> {
        self.docker_ready()?;
        let key = self.resolve(id)?;
        if !self.busy.insert(key.clone()) {
            return Err(ContainerError::Conflict {
                code: "operation_in_progress",
                message: format!(
                    "another operation on container {} is in progress",
                    short_id(&key)
                ),
            });
        }
        Ok(key)
    }

    fn view_of(&self, key: &str) -> Result<&ContainerView, ContainerError> {
        self.containers
            .get(key)
            .map(|e| &e.view)
            .ok_or_else(|| ContainerError::NotFound(format!("no managed container {key:?}")))
    }

    /// The full id of the managed container `id` names: its id, a unique id prefix of at least
    /// 12 characters, its name, or its claim id. A claim whose create is in flight is a
    /// conflict, not "not found".
    fn resolve(&self, id: &str) -> Result<String, ContainerError> {
        if self.containers.contains_key(id) {
            return Ok(id.to_string());
        }
        // A name, a claim id and an id prefix can each name a different container (claim
        // "utopia-x" and the container of claim "x"; a claim id that is also a hex prefix):
        // refuse to guess which one a stop or delete was meant for.
        let name = id.trim_start_matches('/');
        let is_prefix = id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let matches: Vec<&String> = self
            .containers
            .iter()
            .filter(|(key, e)| {
                e.view.name == name || e.view.claim_id == id || (is_prefix && key.starts_with(id))
            })
            .map(|(key, _)| key)
            .collect();
        match matches.as_slice() {
            [one] => return Ok((*one).clone()),
            [] => {}
            _ => {
                return Err(ContainerError::NotFound(format!(
                    "{id} matches several managed containers (by id prefix, name or claim id); \
                     give the full id"
                )))
            }
        }
        // Not a container yet, but its create is in flight: a 404 would tell the caller the
        // claim has no container when one is about to start and hold its GPUs.
        if let Some(pending) = self.ledger.holdings().iter().find(|h| {
            h.container_id.is_none()
                && (h.claim_id == id || crate::docker::spec::container_name(&h.claim_id) == name)
        }) {
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

    fn finish(&mut self, report: Done) {
        match report {
            Done::Created {
                claim_id,
                result,
                reply,
            } => {
                let result = match result {
                    Ok(view) if self.removed.contains_key(&view.id) => {
                        self.ledger.release_pending(&claim_id);
                        Err(ContainerError::Docker(DockerError::BadOutput {
                            command: "docker run".into(),
                            message: format!(
                                "container {} was removed right after it was created",
                                view.id
                            ),
                        }))
                    }
                    Ok(view) => {
                        self.ledger.bind(&claim_id, &view.id);
                        self.upsert(view.clone());
                        log::info!(
                            "container {} created for claim {claim_id}",
                            short_id(&view.id)
                        );
                        Ok(self.decorate(&view))
                    }
                    Err(e) => {
                        log::warn!("create for claim {claim_id} failed: {e}");
                        self.ledger.release_pending(&claim_id);
                        self.note_error(&e);
                        Err(e)
                    }
                };
                self.publish();
                let _ = reply.send(result);
            }
            Done::Acted { id, result, reply } => {
                self.busy.remove(&id);
                match &result {
                    Ok(view) => self.upsert(view.clone()),
                    Err(ContainerError::NotFound(_)) => self.forget(&id),
                    Err(e) => self.note_error(e),
                }
                self.publish();
                let _ = reply.send(result.map(|v| self.decorate(&v)));
            }
            Done::Deleted {
                view,
                result,
                reply,
            } => {
                self.busy.remove(&view.id);
                let result = match result {
                    Ok(()) => {
                        self.forget(&view.id);
                        log::info!(
                            "container {} of claim {} deleted; GPUs [{}] free",
                            short_id(&view.id),
                            view.claim_id,
                            join_ids(&view.gpu_ids)
                        );
                        Ok(Deleted {
                            id: view.id,
                            name: view.name,
                            claim_id: view.claim_id,
                            deleted: true,
                            gpu_ids: view.gpu_ids,
                        })
                    }
                    Err(e) => {
                        self.note_error(&e);
                        Err(e)
                    }
                };
                self.publish();
                let _ = reply.send(result);
            }
            Done::Logs { result, reply } => {
                if let Err(e) = &result {
                    self.note_error(e);
                }
                let _ = reply.send(result);
            }
            Done::Reconciled { generation, result } => {
                self.reconcile_in_flight = false;
                self.apply_reconcile(generation, result);
            }
            Done::Refreshed {
                id,
                generation,
                result,
            } => {
                let newer = self
                    .containers
                    .get(&id)
                    .is_some_and(|e| e.generation > generation);
                let removed = self.removed.contains_key(&id);
                match result {
                    Ok(Some(view)) if !newer && !removed => self.upsert(view),
                    Ok(None) if !newer => self.forget(&id),
                    Ok(_) => {}
                    Err(e) => self.note_error(&ContainerError::from(e)),
                }
                self.publish();
            }
        }
    }

    /// Docker unreachable: remember why (health, 503s) and reconcile soon.
    fn note_error(&mut self, error: &ContainerError) {
        if let ContainerError::DockerUnavailable(why) = error {
            if !matches!(self.docker, DockerState::Unavailable(_)) {
                log::warn!("docker is unavailable (retrying every 2 s): {why}");
            }
            self.docker = DockerState::Unavailable(why.clone());
            self.ledger_ready = false;
            self.next_reconcile = Instant::now() + UNAVAILABLE_RETRY;
            self.publish();
        }
    }

    fn on_event(&mut self, event: ContainerEvent) {
        if event.action == "destroy" {
            let known = self.containers.contains_key(&event.id);
            // Unknown too: a create or stop in flight may still report it.
            self.forget(&event.id);
            if known {
                log::info!("container {} was removed", short_id(&event.id));
                self.publish();
            }
        } else if event_changes_state(&event.action) {
            let work = Work::Refresh {
                id: event.id,
                generation: self.generation,
            };
            // A full queue drops the refresh; the periodic reconcile repairs the view.
            let _ = self.submit(work);
        }
    }

    fn start_reconcile(&mut self) {
        let interval = match self.docker {
            DockerState::Ok => self.reconcile_interval,
            DockerState::Starting | DockerState::Unavailable(_) => {
                UNAVAILABLE_RETRY.min(self.reconcile_interval)
            }
        };
        self.next_reconcile = Instant::now() + interval;
        if self.reconcile_in_flight {
            return;
        }
        let work = Work::Reconcile {
            generation: self.generation,
        };
        if self.submit(work).is_ok() {
            self.reconcile_in_flight = true;
        }
    }

    /// Makes the table and the ledger match docker's list of managed containers, as of when the
    /// reconcile started (`generation`): anything the runner learned since is kept.
    fn apply_reconcile(
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
                self.next_reconcile =
                    Instant::now() + UNAVAILABLE_RETRY.min(self.reconcile_interval);
                self.publish();
                return;
            }
        };
        let seen: BTreeSet<String> = views.iter().map(|v| v.id.clone()).collect();
        for view in views {
            let removed = self.removed.contains_key(&view.id);
            let newer = self
                .containers
                .get(&view.id)
                .is_some_and(|e| e.generation > generation);
            if !removed && !newer {
                self.upsert(view);
            }
        }
        let gone: Vec<String> = self
            .containers
            .iter()
            .filter(|(id, e)| {
                !seen.contains(*id) && e.generation <= generation && !self.busy.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            log::info!("container {} is gone (seen by reconcile)", short_id(&id));
            self.forget(&id);
        }
        if !matches!(self.docker, DockerState::Ok) || !self.ledger_ready {
            log::info!(
                "docker reachable; ledger rebuilt from {} managed container(s)",
                self.containers.len()
            );
        }
        self.docker = DockerState::Ok;
        self.ledger_ready = true;
        self.next_reconcile = Instant::now() + self.reconcile_interval;
        self.publish();
    }

    fn upsert(&mut self, view: ContainerView) {
        // Whoever inspected it did so before it went (docker never reuses an id).
        if self.removed.contains_key(&view.id) {
            return;
        }
        self.generation += 1;
        if !self.ledger.holds_container(&view.id) {
            let conflicts =
                self.ledger
                    .adopt(&view.claim_id, &view.id, &view.gpu_ids, &view.port_mappings);
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
        self.containers.insert(
            view.id.clone(),
            Entry {
                view,
                generation: self.generation,
            },
        );
    }

    fn forget(&mut self, id: &str) {
        self.generation += 1;
        self.containers.remove(id);
        self.ledger.remove_container(id);
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

    /// The view with the warnings known now: adopt conflicts, and GPUs whose UUID is no longer
    /// on this node (reported, never silently dropped: the container keeps its GPUs).
    fn decorate(&self, view: &ContainerView) -> ContainerView {
        let mut view = view.clone();
        if let Some(notes) = self.adopt_warnings.get(&view.id) {
            view.warnings.extend(notes.iter().cloned());
        }
        let report = self.snapshot.gpus();
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

    fn publish(&mut self) {
        let views: Vec<ContainerView> = self
            .containers
            .values()
            .map(|e| self.decorate(&e.view))
            .collect();
        self.writer.publish(
            views
                .iter()
                .map(|v| ContainerSummary {
                    id: v.id.clone(),
                    claim_id: v.claim_id.clone(),
                    state: v.state.clone(),
                    gpu_ids: v.gpu_ids.clone(),
                })
                .collect(),
            self.ledger.allocations(),
        );
        let health = match &self.docker {
            DockerState::Starting => Health::Starting(None),
            DockerState::Unavailable(why) => Health::Unavailable(why.clone()),
            DockerState::Ok => {
                let problems: Vec<String> = views
                    .iter()
                    .filter(|v| !v.warnings.is_empty())
                    .map(|v| format!("{}: {}", v.name, v.warnings.join("; ")))
                    .collect();
                if problems.is_empty() {
                    Health::Ok
                } else {
                    Health::Degraded(problems.join(" | "))
                }
            }
        };
        if self.published_health.as_ref() != Some(&health) {
            self.writer.set_health(health.clone());
            self.published_health = Some(health);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::spec::{PortMapping, Protocol};
    use crate::state::{GpuReport, GpuSample, SampleWriter};

    /// The runner's view of the published state, with the GPU sampler's writer beside it.
    struct Published {
        snapshot: Arc<Snapshot>,
        gpu: SampleWriter<GpuReport>,
    }

    impl Published {
        fn set_gpus(&self, report: GpuReport) {
            let health = report.health();
            self.gpu.publish(report, health, Duration::ZERO);
        }
    }

    impl std::ops::Deref for Published {
        type Target = Snapshot;
        fn deref(&self) -> &Snapshot {
            &self.snapshot
        }
    }

    fn gpu(index: u32) -> GpuSample {
        GpuSample {
            name: Some("Fake".into()),
            uuid: Some(format!("GPU-{index}")),
            ..GpuSample::empty(index)
        }
    }

    fn gpus(count: u32) -> GpuReport {
        GpuReport {
            state: NvmlState::Ok,
            driver_version: None,
            gpus: (0..count).map(gpu).collect(),
        }
    }

    fn runner() -> (Runner, Receiver<Work>, Published) {
        let (jobs, queue) = crossbeam_channel::bounded(WORK_QUEUE);
        let (snapshot, writers) = crate::state::new();
        let snapshot = Published {
            snapshot,
            gpu: writers.gpu,
        };
        snapshot.set_gpus(gpus(2));
        let runner = Runner {
            snapshot: Arc::clone(&snapshot.snapshot),
            writer: writers.docker,
            ledger: GpuLedger::new(vec![9200]),
            containers: BTreeMap::new(),
            adopt_warnings: BTreeMap::new(),
            busy: BTreeSet::new(),
            removed: BTreeMap::new(),
            generation: 0,
            docker: DockerState::Starting,
            ledger_ready: false,
            reconcile_in_flight: false,
            reconcile_interval: Duration::from_secs(30),
            next_reconcile: Instant::now(),
            creates: jobs.clone(),
            jobs,
            published_health: None,
        };
        (runner, queue, snapshot)
    }

    fn view(id: &str, claim: &str, gpu_ids: &[u32], state: &str) -> ContainerView {
        ContainerView {
            id: id.into(),
            name: format!("utopia-{claim}"),
            claim_id: claim.into(),
            image: "busybox".into(),
            state: state.into(),
            status: state.into(),
            exit_code: None,
            oom_killed: false,
            gpu_ids: gpu_ids.to_vec(),
            gpu_uuids: gpu_ids.iter().map(|g| format!("GPU-{g}")).collect(),
            port_mappings: vec![],
            created_at: None,
            started_at: None,
            finished_at: None,
            warnings: vec![],
        }
    }

    const A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
    const B: &str = "aaaaaaaaaaaa2222222222222222222222222222222222222222222222222222";

    fn spec(claim: &str, gpus: GpuRequest) -> Box<CreateSpec> {
        Box::new(CreateSpec {
            claim_id: claim.into(),
            image: "busybox".into(),
            gpus,
            ports: vec![PortMapping {
                host_port: 8000,
                container_port: 80,
                protocol: Protocol::Tcp,
            }],
            env: vec![],
            command: vec![],
            memory_mb: None,
            cpus: None,
            shm_size_mb: None,
            requested_visible_devices: None,
        })
    }

    fn ask<T>(
        runner: &mut Runner,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Option<Result<T, ContainerError>> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        runner.handle(make(reply));
        answer.try_recv().ok()
    }

    #[test]
    fn rebuild_publishes_containers_allocations_and_health() {
        let (mut r, _queue, snapshot) = runner();
        assert!(matches!(
            ask(&mut r, |reply| Request::List { reply }),
            Some(Err(ContainerError::DockerUnavailable(_)))
        ));
        r.apply_reconcile(
            0,
            Ok(vec![
                view(A, "a", &[1], "running"),
                view(B, "b", &[], "exited"),
            ]),
        );
        let summaries = snapshot.containers();
        assert_eq!(summaries.len(), 2);
        assert_eq!(summaries[0].claim_id, "a");
        assert_eq!(summaries[0].gpu_ids, vec![1]);
        assert_eq!(summaries[1].state, "exited");
        let allocations = snapshot.gpu_allocations();
        assert_eq!(allocations.len(), 1);
        assert_eq!(allocations[&1].container_id, A);
        assert_eq!(snapshot.health()["docker"], "ok");
        let list = ask(&mut r, |reply| Request::List { reply })
            .unwrap()
            .unwrap();
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn an_older_reconcile_neither_resurrects_nor_drops_newer_changes() {
        let (mut r, _queue, _snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![view(A, "a", &[0], "running")]));
        let started = r.generation;
        // After the reconcile started: A was deleted, B was created.
        r.forget(A);
        r.upsert(view(B, "b", &[1], "running"));
        // The reconcile's (older) listing still has A and not yet B.
        r.apply_reconcile(started, Ok(vec![view(A, "a", &[0], "running")]));
        assert!(!r.containers.contains_key(A), "deleted container came back");
        assert!(r.containers.contains_key(B), "new container dropped");
        assert!(!r.ledger.allocations().contains_key(&0));
        // A later reconcile that no longer sees B removes it and frees its GPU.
        let now = r.generation;
        r.apply_reconcile(now, Ok(vec![]));
        assert!(r.containers.is_empty());
        assert!(r.ledger.allocations().is_empty());
    }

    #[test]
    fn create_reserves_before_docker_runs_and_releases_on_failure() {
        let (mut r, queue, snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![]));
        assert!(
            ask(&mut r, |reply| Request::Create {
                spec: spec("a", GpuRequest::Ids(vec![0])),
                reply
            })
            .is_none(),
            "answered when the worker reports"
        );
        let Ok(Work::Create {
            gpus, uuids, reply, ..
        }) = queue.try_recv()
        else {
            panic!("no create queued");
        };
        assert_eq!((gpus, uuids), (vec![0], vec!["GPU-0".to_string()]));
        // While docker works, the GPU, the claim and the port are taken.
        let second = ask(&mut r, |reply| Request::Create {
            spec: spec("b", GpuRequest::Ids(vec![0])),
            reply,
        });
        assert!(matches!(
            second,
            Some(Err(ContainerError::Conflict {
                code: "gpu_in_use",
                ..
            }))
        ));
        let same_claim = ask(&mut r, |reply| Request::Create {
            spec: spec("a", GpuRequest::None),
            reply,
        });
        assert!(matches!(
            same_claim,
            Some(Err(ContainerError::Conflict {
                code: "claim_in_use",
                ..
            }))
        ));
        let port = ask(&mut r, |reply| Request::Create {
            spec: spec("c", GpuRequest::None),
            reply,
        });
        assert!(matches!(
            port,
            Some(Err(ContainerError::Conflict {
                code: "port_in_use",
                ..
            }))
        ));
        let unknown = ask(&mut r, |reply| Request::Create {
            spec: spec("d", GpuRequest::Ids(vec![5])),
            reply,
        });
        assert!(matches!(unknown, Some(Err(ContainerError::Invalid(_)))));
        assert!(queue.try_recv().is_err(), "refused creates queue nothing");

        // Docker failed: everything is released.
        r.finish(Done::Created {
            claim_id: "a".into(),
            result: Err(ContainerError::Docker(DockerError::BadOutput {
                command: "docker run".into(),
                message: "boom".into(),
            })),
            reply: reply.clone(),
        });
        assert!(r.ledger.holdings().is_empty());
        // Docker succeeded: the container holds the GPU, published for metrics.
        ask(&mut r, |reply| Request::Create {
            spec: spec("b", GpuRequest::Ids(vec![0])),
            reply,
        });
        let Ok(Work::Create { reply, .. }) = queue.try_recv() else {
            panic!("no create queued");
        };
        let (answer_tx, answer) = crossbeam_channel::bounded(1);
        drop(reply);
        r.finish(Done::Created {
            claim_id: "b".into(),
            result: Ok(view(A, "b", &[0], "running")),
            reply: answer_tx,
        });
        assert_eq!(answer.try_recv().unwrap().unwrap().id, A);
        assert_eq!(snapshot.gpu_allocations()[&0].claim_id, "b");
    }

    #[test]
    fn ids_resolve_by_id_prefix_name_and_claim() {
        let (mut r, _queue, _snapshot) = runner();
        r.apply_reconcile(
            0,
            Ok(vec![
                view(A, "a", &[], "running"),
                view(B, "b", &[], "running"),
            ]),
        );
        for key in [A, &A[..13], "utopia-a", "/utopia-a", "a"] {
            assert_eq!(r.resolve(key), Ok(A.to_string()), "{key}");
        }
        assert_eq!(r.resolve(&B[..13]), Ok(B.to_string()));
        // Both ids start with the same 12 characters; shorter than 12 is never a prefix.
        assert!(
            matches!(r.resolve(&A[..12]), Err(ContainerError::NotFound(m)) if m.contains("several"))
        );
        assert!(r.resolve(&A[..11]).is_err());
        assert!(r.resolve("utopia-zzz").is_err());
    }

    #[test]
    fn one_operation_at_a_time_per_container() {
        let (mut r, queue, _snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![view(A, "a", &[], "running")]));
        assert!(ask(&mut r, |reply| Request::Act {
            id: "a".into(),
            action: Action::Stop,
            reply
        })
        .is_none());
        let again = ask(&mut r, |reply| Request::Delete {
            id: A.into(),
            reply,
        });
        assert!(matches!(
            again,
            Some(Err(ContainerError::Conflict {
                code: "operation_in_progress",
                ..
            }))
        ));
        let Ok(Work::Act { reply, .. }) = queue.try_recv() else {
            panic!("no stop queued");
        };
        r.finish(Done::Acted {
            id: A.into(),
            result: Ok(view(A, "a", &[], "exited")),
            reply,
        });
        assert_eq!(r.containers[A].view.state, "exited");
        assert!(ask(&mut r, |reply| Request::Delete {
            id: A.into(),
            reply
        })
        .is_none());
    }

    #[test]
    fn unreachable_docker_and_missing_gpus_are_reported() {
        let (mut r, _queue, snapshot) = runner();
        r.apply_reconcile(
            0,
            Err(DockerError::Unreachable {
                message: "Cannot connect to the Docker daemon".into(),
            }),
        );
        assert!(snapshot.health()["docker"].starts_with("unavailable: "));
        let create = ask(&mut r, |reply| Request::Create {
            spec: spec("a", GpuRequest::None),
            reply,
        });
        assert!(matches!(
            create,
            Some(Err(ContainerError::DockerUnavailable(_)))
        ));

        // Back, with a container whose GPU 1 is no longer on the node.
        snapshot.set_gpus(gpus(1));
        r.apply_reconcile(0, Ok(vec![view(A, "a", &[1], "running")]));
        let health = snapshot.health()["docker"].clone();
        assert!(
            health.starts_with("degraded: utopia-a: GPU 1 (GPU-1)"),
            "{health}"
        );
        let shown = ask(&mut r, |reply| Request::Get {
            id: "a".into(),
            reply,
        })
        .unwrap()
        .unwrap();
        assert_eq!(shown.warnings.len(), 1);
        assert_eq!(snapshot.gpu_allocations()[&1].container_id, A, "still held");
    }

    #[test]
    fn a_stale_refresh_or_reconcile_never_brings_back_a_removed_container() {
        let (mut r, queue, snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![view(A, "a", &[0], "running")]));
        // `die` event: a refresh is queued; its inspect still sees the container...
        r.on_event(ContainerEvent {
            id: A.into(),
            action: "die".into(),
            time_nano: 0,
        });
        let Ok(Work::Refresh { generation, .. }) = queue.try_recv() else {
            panic!("no refresh queued");
        };
        // ...but `destroy` is handled before the refresh reports, and a reconcile that started
        // after the removal has run meanwhile.
        r.on_event(ContainerEvent {
            id: A.into(),
            action: "destroy".into(),
            time_nano: 0,
        });
        let now = r.generation;
        r.apply_reconcile(now, Ok(vec![]));
        r.finish(Done::Refreshed {
            id: A.into(),
            generation,
            result: Ok(Some(view(A, "a", &[0], "exited"))),
        });
        assert!(!r.containers.contains_key(A), "removed container came back");
        assert!(
            snapshot.gpu_allocations().is_empty(),
            "GPU 0 held by a ghost"
        );
        // A reconcile listing taken before the removal does not bring it back either.
        r.apply_reconcile(generation, Ok(vec![view(A, "a", &[0], "exited")]));
        assert!(!r.containers.contains_key(A));
        let again = ask(&mut r, |reply| Request::Create {
            spec: spec("a", GpuRequest::Ids(vec![0])),
            reply,
        });
        assert!(again.is_none(), "the claim and GPU are free: {again:?}");
    }

    #[test]
    fn a_container_being_created_is_409_not_404() {
        let (mut r, queue, _snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![]));
        ask(&mut r, |reply| Request::Create {
            spec: spec("a", GpuRequest::Ids(vec![0])),
            reply,
        });
        let Ok(Work::Create { .. }) = queue.try_recv() else {
            panic!("no create queued");
        };
        // A delete answered 404 here would let the platform believe the claim is gone while
        // its container is about to start and hold GPU 0.
        for id in ["a", "utopia-a"] {
            let delete = ask(&mut r, |reply| Request::Delete {
                id: id.into(),
                reply,
            });
            assert!(
                matches!(&delete, Some(Err(ContainerError::Conflict { code: "operation_in_progress", message }))
                    if message.contains("being created")),
                "{id}: {delete:?}"
            );
            let stop = ask(&mut r, |reply| Request::Act {
                id: id.into(),
                action: Action::Stop,
                reply,
            });
            assert!(
                matches!(stop, Some(Err(ContainerError::Conflict { .. }))),
                "{id}"
            );
            let get = ask(&mut r, |reply| Request::Get {
                id: id.into(),
                reply,
            });
            assert!(
                matches!(get, Some(Err(ContainerError::Conflict { .. }))),
                "{id}"
            );
        }
        assert!(
            queue.try_recv().is_err(),
            "nothing queued for the refused requests"
        );
        assert!(matches!(
            ask(&mut r, |reply| Request::Delete {
                id: "b".into(),
                reply
            }),
            Some(Err(ContainerError::NotFound(_)))
        ));
    }

    #[test]
    fn a_rebuild_that_fails_says_why() {
        let (mut r, _queue, snapshot) = runner();
        r.apply_reconcile(
            0,
            Err(DockerError::BadOutput {
                command: "docker container inspect".into(),
                message: "expected a string at line 1 column 9".into(),
            }),
        );
        let health = snapshot.health()["docker"].clone();
        assert!(
            health.starts_with("unavailable: ") && health.contains("column 9"),
            "{health}"
        );
        let list = ask(&mut r, |reply| Request::List { reply });
        assert!(
            matches!(&list, Some(Err(ContainerError::DockerUnavailable(m))) if m.contains("column 9")),
            "{list:?}"
        );
        // Once rebuilt, a later failed reconcile keeps serving from the ledger.
        r.apply_reconcile(0, Ok(vec![]));
        r.apply_reconcile(
            0,
            Err(DockerError::BadOutput {
                command: "docker container inspect".into(),
                message: "garbage".into(),
            }),
        );
        assert_eq!(snapshot.health()["docker"], "ok");
        assert!(matches!(
            ask(&mut r, |reply| Request::List { reply }),
            Some(Ok(_))
        ));
    }

    #[test]
    fn a_gpu_count_larger_than_the_node_is_400_not_409() {
        let (mut r, queue, _snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![]));
        let r3 = ask(&mut r, |reply| Request::Create {
            spec: spec("a", GpuRequest::Count(3)),
            reply,
        });
        assert!(
            matches!(&r3, Some(Err(ContainerError::Invalid(e))) if e.field == "gpu_count"),
            "{r3:?}"
        );
        assert!(queue.try_recv().is_err());
        assert!(r.ledger.holdings().is_empty());
        // Two exist: more than are free is a conflict (a holder may go away).
        r.apply_reconcile(0, Ok(vec![view(A, "b", &[1], "running")]));
        let r2 = ask(&mut r, |reply| Request::Create {
            spec: spec("a", GpuRequest::Count(2)),
            reply,
        });
        assert!(
            matches!(
                r2,
                Some(Err(ContainerError::Conflict {
                    code: "gpu_in_use",
                    ..
                }))
            ),
            "{r2:?}"
        );
    }

    #[test]
    fn an_id_that_names_two_containers_is_refused_not_guessed() {
        let (mut r, _queue, _snapshot) = runner();
        // Claim "utopia-x"'s container, and claim "x"'s, whose name is "utopia-x"; and a claim
        // id that is also another container's id prefix.
        r.apply_reconcile(
            0,
            Ok(vec![
                view(A, "utopia-x", &[], "running"),
                view(B, "x", &[], "running"),
                view(
                    "bbbbbbbbbbbb3333333333333333333333333333333333333333333333333333",
                    "aaaaaaaaaaaa2222",
                    &[],
                    "running",
                ),
            ]),
        );
        for ambiguous in ["utopia-x", "aaaaaaaaaaaa2222"] {
            assert!(
                matches!(r.resolve(ambiguous), Err(ContainerError::NotFound(m)) if m.contains("several")),
                "{ambiguous}: {:?}",
                r.resolve(ambiguous)
            );
        }
        assert_eq!(r.resolve("x"), Ok(B.to_string()));
        assert_eq!(r.resolve("utopia-utopia-x"), Ok(A.to_string()));
        assert_eq!(r.resolve(A), Ok(A.to_string()));
    }

    #[test]
    fn a_gpu_is_held_by_its_uuid_too_when_indices_shifted() {
        let (mut r, queue, _snapshot) = runner();
        // Before a restart, this container was given the GPU that is GPU-0 now, then at
        // index 1 (a GPU in front of it fell off the bus, the indices moved up).
        let mut shifted = view(A, "old", &[1], "exited");
        shifted.gpu_uuids = vec!["GPU-0".into()];
        r.apply_reconcile(0, Ok(vec![shifted]));
        let by_index = ask(&mut r, |reply| Request::Create {
            spec: spec("new", GpuRequest::Ids(vec![0])),
            reply,
        });
        assert!(
            matches!(&by_index, Some(Err(ContainerError::Conflict { code: "gpu_in_use", message }))
                if message.contains("GPU-0") && message.contains("old")),
            "{by_index:?}"
        );
        let by_count = ask(&mut r, |reply| Request::Create {
            spec: spec("new", GpuRequest::Count(1)),
            reply,
        });
        assert!(
            matches!(
                by_count,
                Some(Err(ContainerError::Conflict {
                    code: "gpu_in_use",
                    ..
                }))
            ),
            "{by_count:?}"
        );
        assert!(queue.try_recv().is_err(), "nothing was created");
        assert!(r.ledger.by_claim("new").is_none());
    }

    #[test]
    fn a_container_removed_before_its_create_reports_holds_nothing() {
        let (mut r, queue, snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![]));
        ask(&mut r, |reply| Request::Create {
            spec: spec("a", GpuRequest::Ids(vec![0])),
            reply,
        });
        let Ok(Work::Create { reply, .. }) = queue.try_recv() else {
            panic!("no create queued");
        };
        // `docker rm -f` right after `docker run`: its destroy event arrives before the
        // worker's report.
        r.on_event(ContainerEvent {
            id: A.into(),
            action: "destroy".into(),
            time_nano: 0,
        });
        r.finish(Done::Created {
            claim_id: "a".into(),
            result: Ok(view(A, "a", &[0], "running")),
            reply,
        });
        assert!(
            !r.containers.contains_key(A),
            "a removed container is listed"
        );
        assert!(r.ledger.holdings().is_empty(), "{:?}", r.ledger.holdings());
        assert!(snapshot.gpu_allocations().is_empty());
        // Nor does a stop that inspected it just before it went.
        r.apply_reconcile(r.generation, Ok(vec![view(B, "b", &[1], "running")]));
        ask(&mut r, |reply| Request::Act {
            id: "b".into(),
            action: Action::Stop,
            reply,
        });
        let Ok(Work::Act { reply, .. }) = queue.try_recv() else {
            panic!("no stop queued");
        };
        r.on_event(ContainerEvent {
            id: B.into(),
            action: "destroy".into(),
            time_nano: 0,
        });
        r.finish(Done::Acted {
            id: B.into(),
            result: Ok(view(B, "b", &[1], "exited")),
            reply,
        });
        assert!(r.containers.is_empty());
        assert!(r.ledger.holdings().is_empty());
    }
}
