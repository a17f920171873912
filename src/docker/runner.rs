//! The `DockerRunner` thread: the one owner of the [`GpuLedger`] and of the
//! [`ContainerTable`], and the only code that starts docker commands (through its worker pools).
//! The protocol with the API is in [`protocol`](super::protocol), the one with the workers in
//! [`jobs`](super::jobs); GPUs are chosen by [`placement`](super::placement).
//!
//! - Owns: the ledger, the container table, the API's pending replies, and three worker pools
//!   running [`worker`](super::worker): `docker.workers` threads for creates (image pulls can
//!   take many minutes), as many for stops, deletes, reconciles and refreshes, and
//!   [`LOG_WORKERS`] for log reads, so neither pulls nor large logs ever hold up a delete. Each
//!   has a bounded queue; when it is full, or [`MAX_LOG_READS`] log reads are in progress,
//!   requests get 503 `docker_busy`.
//! - Receives: [`Request`]s from the API, [`Done`] reports from its workers, and
//!   [`ContainerEvent`]s from the events watcher (a container changed: inspect it again;
//!   removed: forget it).
//! - Sends: [`Work`] to its workers; the container summaries, the GPU allocations and the
//!   `docker` health (through its [`DockerWriter`]) after every change; each pending reply once
//!   its work is done.
//! - Reconciles: its first act is to rebuild the ledger from the labelled containers (`docker
//!   ps -a` + `docker container inspect`); until that succeeds every container request gets 503
//!   `docker_unavailable`, so no create is decided on an empty ledger (while health and metrics,
//!   which never wait on docker, are served even when the docker daemon hangs). The same full
//!   reconcile runs every `docker.reconcile_interval_secs` (every 2 s, or that interval if it is
//!   shorter, while docker is unreachable).
//! - Stops: on shutdown the runner, the workers (a docker command in flight is killed and
//!   reaped) and the events watcher end. Containers keep running: the agent's restart adopts
//!   them.

use crate::component::{self, StartError};
use crate::config::DockerSettings;
use crate::docker::cli::{DockerCli, DockerError, DockerTimeouts};
use crate::docker::container::ContainerView;
use crate::docker::events::{self, ContainerEvent};
use crate::docker::jobs::{Done, Ticket, Work, WorkerContext};
use crate::docker::ledger::{short_id, GpuLedger};
use crate::docker::network;
use crate::docker::placement::place;
use crate::docker::protocol::Action;
use crate::docker::protocol::{
    ContainerError, Deleted, DockerRunner, Reply, Request, RunnerHandle,
};
use crate::docker::spec::{container_name, join_ids, CreatePolicy, CreateSpec};
use crate::docker::table::ContainerTable;
use crate::docker::worker::{remove_stale_env_files, worker};
use crate::shutdown::Shutdown;
use crate::state::{ContainerSummary, DockerWriter, Health, PublishedPort, Snapshot};
use crossbeam_channel::{after, select, Receiver, Sender, TrySendError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Queue length of each worker pool.
const WORK_QUEUE: usize = 64;
/// Threads reading logs: a lane of their own, so log reads never hold up a stop or delete.
const LOG_WORKERS: usize = 2;
/// Log reads in progress (queued or running) at most; more get 503 `docker_busy`. Well under
/// the API's slow handler threads, so waiting log reads never keep a delete out of them.
const MAX_LOG_READS: usize = 6;
/// Reconcile period while docker is unreachable (or the reconcile interval, if shorter).
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);

enum DockerState {
    /// The first reconcile has not finished.
    Starting,
    Ok,
    Unavailable(String),
}

/// An API caller waiting for the outcome of queued work.
enum Pending {
    View(Reply<ContainerView>),
    Deleted(Reply<Deleted>),
    Logs(Reply<String>),
}

struct Runner {
    snapshot: Arc<Snapshot>,
    writer: DockerWriter,
    ledger: GpuLedger,
    table: ContainerTable,
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
    /// Log reads: a lane of their own, at most [`MAX_LOG_READS`] at once.
    logs: Sender<Work>,
    log_reads: usize,
    /// The replies of queued work, by ticket.
    pending: BTreeMap<Ticket, Pending>,
    next_ticket: Ticket,
    published_health: Option<Health>,
    /// What the last reconcile found wrong with the renters' network (`docker.network`).
    network_problem: Option<String>,
    /// Claims whose create timed out, until when docker is given to finish it: only a
    /// reconcile started after that decides their reservation.
    unknown_grace: BTreeMap<String, Instant>,
    /// How long that is: twice the docker deadline.
    unknown_grace_period: Duration,
    /// Claims given up while their create's outcome was unknown (and when): a container of
    /// theirs that turns up, even late, is removed.
    given_up: BTreeMap<String, Instant>,
    /// Creates in progress, by claim, as `GET` shows them (state `creating`).
    creating: BTreeMap<String, ContainerView>,
    /// Creates that did not succeed, by claim, with when: `GET` shows their error (state
    /// `failed`, or `unknown` after a timeout) for [`OUTCOME_MEMORY`].
    outcomes: BTreeMap<String, (ContainerView, Instant)>,
}

/// How long the outcome of a failed create stays visible.
const OUTCOME_MEMORY: Duration = Duration::from_secs(600);

/// How long a given-up claim is remembered.
const GIVEN_UP_MEMORY: Duration = Duration::from_secs(3600);

impl Runner {
    fn new(
        snapshot: Arc<Snapshot>,
        writer: DockerWriter,
        reserved_ports: Vec<u16>,
        reconcile_interval: Duration,
        jobs: Sender<Work>,
        creates: Sender<Work>,
        logs: Sender<Work>,
    ) -> Runner {
        Runner {
            snapshot,
            writer,
            ledger: GpuLedger::new(reserved_ports),
            table: ContainerTable::default(),
            docker: DockerState::Starting,
            ledger_ready: false,
            reconcile_in_flight: false,
            reconcile_interval,
            next_reconcile: Instant::now(),
            jobs,
            creates,
            logs,
            log_reads: 0,
            pending: BTreeMap::new(),
            next_ticket: 0,
            published_health: None,
            network_problem: None,
            unknown_grace: BTreeMap::new(),
            unknown_grace_period: Duration::from_secs(60),
            given_up: BTreeMap::new(),
            creating: BTreeMap::new(),
            outcomes: BTreeMap::new(),
        }
    }
}

/// Starts the worker pools, the events watcher and the runner thread, whose first work is the
/// ledger rebuild (an unreachable docker is not fatal: it is retried).
pub fn start(
    config: &DockerSettings,
    reserved_ports: Vec<u16>,
    snapshot: Arc<Snapshot>,
    writer: DockerWriter,
    shutdown: Shutdown,
) -> Result<DockerRunner, StartError> {
    let timeouts = DockerTimeouts::new(
        config.command_timeout,
        config.pull_timeout,
        config.stop_timeout,
    );
    let cli = DockerCli::new(
        config.binary.clone(),
        Arc::clone(&timeouts),
        shutdown.clone(),
    )
    .with_counters(Arc::clone(snapshot.counters()))
    .with_config_dir(config.config_dir.clone());
    let iptables = crate::docker::metadata_block::Iptables::new(
        "iptables".into(),
        config.command_timeout,
        shutdown.clone(),
    );
    let context = Arc::new(WorkerContext {
        cli,
        iptables,
        settings: config.run.clone(),
    });

    let (jobs, job_queue) = crossbeam_channel::bounded::<Work>(WORK_QUEUE);
    let (creates, create_queue) = crossbeam_channel::bounded::<Work>(WORK_QUEUE);
    let (logs, log_queue) = crossbeam_channel::bounded::<Work>(MAX_LOG_READS);
    let (done_tx, done) = crossbeam_channel::unbounded::<Done>();
    let (requests_tx, requests) = crossbeam_channel::bounded::<Request>(256);
    let (events_tx, events_rx) = crossbeam_channel::bounded::<ContainerEvent>(1024);

    let mut runner = Runner::new(
        snapshot,
        writer,
        reserved_ports,
        config.reconcile_interval,
        jobs,
        creates,
        logs,
    );
    runner.unknown_grace_period = config.command_timeout * 2;
    runner.publish();
    // The rebuild is the first work queued (`next_reconcile` is now); the watcher reports every
    // event since just before it.
    let events_since = events::now_nano();
    runner.start_reconcile();
    remove_stale_env_files(&std::env::temp_dir());
    crate::docker::pull_auth::remove_stale_pull_configs(&std::env::temp_dir());

    let mut threads = Vec::new();
    for (lane, queue, count) in [
        ("docker-worker", &job_queue, config.workers),
        ("docker-create", &create_queue, config.workers),
        ("docker-logs", &log_queue, LOG_WORKERS),
    ] {
        for n in 0..count {
            let context = Arc::clone(&context);
            let queue = queue.clone();
            let done_tx = done_tx.clone();
            let shutdown = shutdown.clone();
            let thread = component::spawn(format!("{lane}-{n}"), move || {
                worker(&context, &queue, &done_tx, &shutdown)
            })?;
            threads.push((lane, thread));
        }
    }
    let watcher = events::start(
        config.binary.clone(),
        config.config_dir.clone(),
        config.run.managed_label.clone(),
        events_since,
        events_tx,
        shutdown.clone(),
    )?;
    threads.push(("docker-events", watcher));
    let runner_thread = component::spawn("docker-runner", move || {
        runner.run(&requests, &done, &events_rx, &shutdown)
    })?;
    threads.push(("docker-runner", runner_thread));

    Ok(DockerRunner {
        handle: RunnerHandle {
            create_wait: config.create_wait,
            requests: requests_tx,
            timeouts,
            policy: Arc::new(CreatePolicy::for_host(
                &config.run.allowed_registries,
                config.run.host_port_range,
            )),
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
        let stamp = crate::notify::watch("docker-runner");
        let ticker = crossbeam_channel::tick(crate::notify::TICK);
        loop {
            stamp.tick();
            let wait = self
                .next_reconcile
                .saturating_duration_since(Instant::now());
            select! {
                recv(ticker) -> _ => {}
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

    /// Queues `work` on its lane.
    fn submit(&mut self, work: Work) -> Result<(), ContainerError> {
        let lane = match &work {
            Work::Create { .. } => &self.creates,
            Work::Logs { .. } => &self.logs,
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

    /// Queues the work `make` builds around a fresh ticket, keeping `reply` until it is done.
    fn submit_with_reply(
        &mut self,
        reply: Pending,
        make: impl FnOnce(Ticket) -> Work,
    ) -> Result<(), ContainerError> {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.submit(make(ticket))?;
        self.pending.insert(ticket, reply);
        Ok(())
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Create { spec, reply } => {
                if let Err(e) = self.begin_create(spec, reply.clone()) {
                    let _ = reply.send(Err(e));
                }
            }
            Request::List { reply } => {
                let result = self.docker_ready().map(|()| {
                    let mut views: Vec<ContainerView> =
                        self.table.views().map(|v| self.decorate(v)).collect();
                    views.sort_by(|a, b| (&a.created_at, &a.name).cmp(&(&b.created_at, &b.name)));
                    views
                });
                let _ = reply.send(result);
            }
            Request::Get { id, reply } => {
                let result = self.docker_ready().and_then(|()| {
                    match self.table.resolve(&id, &self.ledger) {
                        Ok(key) => self.table.view(&key).map(|view| self.decorate(view)),
                        Err(e) => self.create_view(&id).ok_or(e),
                    }
                });
                let _ = reply.send(result);
            }
            Request::Act { id, action, reply } => {
                let result = self.begin_busy(&id).and_then(|key| {
                    if action != Action::Stop {
                        if let Some(conflict) = self.ledger.gpu_taken_from(&key) {
                            self.table.end_busy(&key);
                            return Err(ContainerError::Conflict {
                                code: "gpu_in_use",
                                message: format!(
                                    "container {} is not started: {conflict}; delete it",
                                    short_id(&key)
                                ),
                            });
                        }
                    }
                    self.submit_with_reply(Pending::View(reply.clone()), |ticket| Work::Act {
                        ticket,
                        id: key.clone(),
                        action,
                    })
                    .inspect_err(|_| self.table.end_busy(&key))
                });
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                }
            }
            Request::Delete { id, reply } => {
                if let Some(deleted) = self.give_up_unknown(&id) {
                    let _ = reply.send(Ok(deleted));
                    return;
                }
                let result = self.begin_busy(&id).and_then(|key| {
                    let view = match self.table.view(&key) {
                        Ok(view) => Box::new(view.clone()),
                        Err(e) => {
                            self.table.end_busy(&key);
                            return Err(e);
                        }
                    };
                    self.submit_with_reply(Pending::Deleted(reply.clone()), |ticket| Work::Delete {
                        ticket,
                        view,
                    })
                    .inspect_err(|_| self.table.end_busy(&key))
                });
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                }
            }
            Request::Logs { id, tail, reply } => {
                let result = self
                    .docker_ready()
                    .and_then(|()| self.table.resolve(&id, &self.ledger))
                    .and_then(|key| {
                        if self.log_reads >= MAX_LOG_READS {
                            return Err(ContainerError::Busy(format!(
                                "{MAX_LOG_READS} log reads are already in progress; try again \
                                 shortly"
                            )));
                        }
                        self.submit_with_reply(Pending::Logs(reply.clone()), |ticket| Work::Logs {
                            ticket,
                            id: key,
                            tail,
                        })
                    });
                if result.is_ok() {
                    self.log_reads += 1;
                }
                if let Err(e) = result {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }

    /// Decides a create (GPUs exist and are free, everything it needs reserved in the ledger),
    /// then queues the docker work.
    fn begin_create(
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
    fn create_view(&mut self, id: &str) -> Option<ContainerView> {
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

    /// `DELETE` of a claim whose create timed out (state unknown): the claim is given up, so
    /// its container, if docker made it, is removed once a reconcile sees it; its reservation
    /// is kept until then. `None` when `id` names no such claim.
    fn give_up_unknown(&mut self, id: &str) -> Option<Deleted> {
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
                    && h.unknown_since.is_some()
                    && (h.claim_id == id || container_name(&h.claim_id) == name)
            })?
            .claim_id
            .clone();
        self.ledger.give_up(&claim_id);
        self.given_up.insert(claim_id.clone(), Instant::now());
        log::info!(
            "claim {claim_id} given up while its create's outcome is unknown: its container is \
             removed if it turns up"
        );
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
    fn remove_given_up(&mut self) {
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
                "container {} of given-up claim {} turned up after its create timed out; removing it",
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
    fn stop_usurpers(&mut self) {
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

    /// Resolves `id` and marks the container busy for a stop/start/restart/delete.
    fn begin_busy(&mut self, id: &str) -> Result<String, ContainerError> {
        self.docker_ready()?;
        let key = self.table.resolve(id, &self.ledger)?;
        if !self.table.begin_busy(&key) {
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

    fn answer_view(&mut self, ticket: Ticket, result: Result<ContainerView, ContainerError>) {
        if let Some(Pending::View(reply)) = self.pending.remove(&ticket) {
            let _ = reply.send(result);
        }
    }

    fn finish(&mut self, report: Done) {
        match report {
            Done::Created {
                ticket,
                claim_id,
                result,
            } => {
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
                        self.outcomes
                            .insert(claim_id.clone(), (shown, Instant::now()));
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
            Done::Acted { ticket, id, result } => {
                // Still busy while its result is recorded: a stop the agent made is not a
                // container that exited on its own.
                match &result {
                    Ok(view) => self.table.upsert(view.clone(), &mut self.ledger),
                    Err(ContainerError::NotFound(_)) => self.table.forget(&id, &mut self.ledger),
                    Err(e) => self.note_error(e),
                }
                self.table.end_busy(&id);
                self.publish();
                let result = result.map(|v| self.decorate(&v));
                self.answer_view(ticket, result);
            }
            Done::Deleted {
                ticket,
                view,
                result,
            } => {
                self.table.end_busy(&view.id);
                let result = match result {
                    Ok(()) => {
                        self.table.forget(&view.id, &mut self.ledger);
                        log::info!(
                            "container {} of claim {} deleted; GPUs [{}] free",
                            short_id(&view.id),
                            view.claim_id,
                            join_ids(&view.gpu_ids)
                        );
                        Ok(Deleted {
                            // Only those nobody else holds (a late container adopted over
                            // another's GPU frees nothing of theirs).
                            gpu_ids: self.ledger.free_of(&view.gpu_ids),
                            id: view.id,
                            name: view.name,
                            claim_id: view.claim_id,
                            deleted: true,
                        })
                    }
                    Err(e) => {
                        self.note_error(&e);
                        Err(e)
                    }
                };
                self.publish();
                if let Some(Pending::Deleted(reply)) = self.pending.remove(&ticket) {
                    let _ = reply.send(result);
                }
            }
            Done::Progress { claim_id, status } => {
                if let Some(shown) = self.creating.get_mut(&claim_id) {
                    shown.status = status;
                }
            }
            Done::Logs { ticket, result } => {
                self.log_reads = self.log_reads.saturating_sub(1);
                if let Err(e) = &result {
                    self.note_error(e);
                }
                if let Some(Pending::Logs(reply)) = self.pending.remove(&ticket) {
                    let _ = reply.send(result);
                }
            }
            Done::Reconciled {
                generation,
                result,
                network,
            } => {
                self.reconcile_in_flight = false;
                if result.is_ok() {
                    self.apply_network(network);
                }
                self.apply_reconcile(generation, result);
            }
            Done::Refreshed {
                id,
                generation,
                result,
            } => {
                match result {
                    Ok(inspected) => {
                        self.table
                            .refresh(&id, generation, inspected, &mut self.ledger);
                        self.remove_given_up();
                        if self.ledger_ready {
                            self.stop_usurpers();
                        }
                    }
                    Err(e) => self.note_error(&ContainerError::from(e)),
                }
                self.publish();
            }
        }
    }

    /// How soon a reconcile is retried while docker is unreachable.
    fn unavailable_retry(&self) -> Duration {
        UNAVAILABLE_RETRY.min(self.reconcile_interval)
    }

    /// Docker unreachable: remember why (health, 503s) and reconcile soon.
    fn note_error(&mut self, error: &ContainerError) {
        if let ContainerError::DockerUnavailable(why) = error {
            let retry = self.unavailable_retry();
            if !matches!(self.docker, DockerState::Unavailable(_)) {
                log::warn!(
                    "docker is unavailable (retrying every {} s): {why}",
                    retry.as_secs()
                );
            }
            self.docker = DockerState::Unavailable(why.clone());
            self.ledger_ready = false;
            self.next_reconcile = Instant::now() + retry;
            self.publish();
        }
    }

    fn on_event(&mut self, event: ContainerEvent) {
        if event.action == events::STREAM_ENDED {
            // The watcher logs the outage itself (once, then a reminder every few minutes).
            log::debug!("the docker events stream ended; checking docker now");
            self.start_reconcile();
        } else if event.action == "destroy" {
            let known = self.table.contains(&event.id);
            // Unknown too: a create or stop in flight may still report it.
            self.table.forget(&event.id, &mut self.ledger);
            if known {
                log::info!("container {} was removed", short_id(&event.id));
                self.publish();
            }
        } else if event_changes_state(&event.action) {
            let work = Work::Refresh {
                id: event.id,
                generation: self.table.generation(),
            };
            // A full queue drops the refresh; the periodic reconcile repairs the view.
            let _ = self.submit(work);
        }
    }

    fn start_reconcile(&mut self) {
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
    fn apply_network(&mut self, problem: Option<String>) {
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

    /// The view with its warnings, and its usage as the usage sampler last read it.
    fn decorate(&self, view: &ContainerView) -> ContainerView {
        let mut view = self.table.decorate(view, &self.snapshot.gpus());
        view.usage = self.snapshot.usage().get(&view.id).cloned();
        view
    }

    fn publish(&mut self) {
        let views: Vec<ContainerView> = self.table.views().map(|v| self.decorate(v)).collect();
        self.writer.publish(
            views
                .iter()
                .map(|v| ContainerSummary {
                    id: v.id.clone(),
                    claim_id: v.claim_id.clone(),
                    state: v.state.clone(),
                    gpu_ids: v.gpu_ids.clone(),
                    pid: v.pid,
                    usage: None,
                })
                .collect(),
            self.ledger.allocations(),
        );
        // What the frp tunnel publishes on frps: every managed container's ports.
        self.writer.publish_ports(
            views
                .iter()
                .flat_map(|v| {
                    v.port_mappings.iter().map(|m| PublishedPort {
                        claim_id: v.claim_id.clone(),
                        container_port: m.container_port,
                        protocol: m.protocol.as_str(),
                        host_port: m.host_port,
                        remote_port: m.remote_port,
                    })
                })
                .collect(),
        );
        let health = match &self.docker {
            DockerState::Starting => Health::Starting(None),
            DockerState::Unavailable(why) => Health::Unavailable(why.clone()),
            DockerState::Ok => {
                let mut problems: Vec<String> = views
                    .iter()
                    .filter(|v| !v.warnings.is_empty())
                    .map(|v| format!("{}: {}", v.name, v.warnings.join("; ")))
                    .collect();
                problems.extend(self.network_problem.clone());
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
    use crate::docker::fixtures::{spec, view, A, B};
    use crate::docker::protocol::Action;
    use crate::docker::spec::GpuRequest;
    use crate::state::{GpuReport, GpuSample, NvmlState, SampleWriter};

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
        let runner = Runner::new(
            Arc::clone(&snapshot.snapshot),
            writers.docker,
            vec![9200],
            Duration::from_secs(30),
            jobs.clone(),
            jobs.clone(),
            jobs,
        );
        (runner, queue, snapshot)
    }

    fn ask<T>(
        runner: &mut Runner,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Option<Result<T, ContainerError>> {
        ask_later(runner, make).try_recv().ok()
    }

    /// Sends a request; its answer arrives on the receiver once the work is done.
    fn ask_later<T>(
        runner: &mut Runner,
        make: impl FnOnce(Reply<T>) -> Request,
    ) -> Receiver<Result<T, ContainerError>> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        runner.handle(make(reply));
        answer
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
    fn create_reserves_before_docker_runs_and_releases_on_failure() {
        let (mut r, queue, snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![]));
        assert!(
            ask(&mut r, |reply| Request::Create {
                spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
                reply
            })
            .is_none(),
            "answered when the worker reports"
        );
        let Ok(Work::Create {
            ticket,
            gpus,
            uuids,
            ..
        }) = queue.try_recv()
        else {
            panic!("no create queued");
        };
        assert_eq!((gpus, uuids), (vec![0], vec!["GPU-0".to_string()]));
        // While docker works, the GPU, the claim and the port are taken.
        let second = ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("b", GpuRequest::Ids(vec![0]))),
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
            spec: Box::new(spec("a", GpuRequest::None)),
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
            spec: Box::new(spec("c", GpuRequest::None)),
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
            spec: Box::new(spec("d", GpuRequest::Ids(vec![5]))),
            reply,
        });
        assert!(matches!(unknown, Some(Err(ContainerError::Invalid(_)))));
        assert!(queue.try_recv().is_err(), "refused creates queue nothing");

        // Docker failed: everything is released.
        r.finish(Done::Created {
            ticket,
            claim_id: "a".into(),
            result: Err(ContainerError::Docker(DockerError::BadOutput {
                command: "docker run".into(),
                message: "boom".into(),
            })),
        });
        assert!(r.ledger.holdings().is_empty());
        // Docker succeeded: the container holds the GPU, published for metrics.
        let answer = ask_later(&mut r, |reply| Request::Create {
            spec: Box::new(spec("b", GpuRequest::Ids(vec![0]))),
            reply,
        });
        let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
            panic!("no create queued");
        };
        r.finish(Done::Created {
            ticket,
            claim_id: "b".into(),
            result: Ok(view(A, "b", &[0], "running")),
        });
        assert_eq!(answer.try_recv().unwrap().unwrap().id, A);
        assert_eq!(snapshot.gpu_allocations()[&0].claim_id, "b");
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
        let Ok(Work::Act { ticket, .. }) = queue.try_recv() else {
            panic!("no stop queued");
        };
        r.finish(Done::Acted {
            ticket,
            id: A.into(),
            result: Ok(view(A, "a", &[], "exited")),
        });
        assert_eq!(r.table.view(A).unwrap().state, "exited");
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
            spec: Box::new(spec("a", GpuRequest::None)),
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
        let now = r.table.generation();
        r.apply_reconcile(now, Ok(vec![]));
        r.finish(Done::Refreshed {
            id: A.into(),
            generation,
            result: Ok(Some(view(A, "a", &[0], "exited"))),
        });
        assert!(!r.table.contains(A), "removed container came back");
        assert!(
            snapshot.gpu_allocations().is_empty(),
            "GPU 0 held by a ghost"
        );
        // A reconcile listing taken before the removal does not bring it back either.
        r.apply_reconcile(generation, Ok(vec![view(A, "a", &[0], "exited")]));
        assert!(!r.table.contains(A));
        let again = ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
            reply,
        });
        assert!(again.is_none(), "the claim and GPU are free: {again:?}");
    }

    #[test]
    fn a_container_being_created_is_409_not_404() {
        let (mut r, queue, _snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![]));
        ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
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
            // Shown as being created (a create that answered 202 is followed here).
            let shown = get.unwrap().unwrap();
            assert_eq!((shown.state.as_str(), shown.id.as_str()), ("creating", ""));
            assert_eq!(shown.gpu_ids, vec![0]);
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
            spec: Box::new(spec("a", GpuRequest::Count(3))),
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
            spec: Box::new(spec("a", GpuRequest::Count(2))),
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
    fn a_gpu_is_held_by_its_uuid_too_when_indices_shifted() {
        let (mut r, queue, _snapshot) = runner();
        // Before a restart, this container was given the GPU that is GPU-0 now, then at
        // index 1 (a GPU in front of it fell off the bus, the indices moved up).
        let mut shifted = view(A, "old", &[1], "exited");
        shifted.gpu_uuids = vec!["GPU-0".into()];
        r.apply_reconcile(0, Ok(vec![shifted]));
        let by_index = ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("new", GpuRequest::Ids(vec![0]))),
            reply,
        });
        assert!(
            matches!(&by_index, Some(Err(ContainerError::Conflict { code: "gpu_in_use", message }))
                if message.contains("GPU-0") && message.contains("old")),
            "{by_index:?}"
        );
        let by_count = ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("new", GpuRequest::Count(1))),
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
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
            reply,
        });
        let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
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
            ticket,
            claim_id: "a".into(),
            result: Ok(view(A, "a", &[0], "running")),
        });
        assert!(!r.table.contains(A), "a removed container is listed");
        assert!(r.ledger.holdings().is_empty(), "{:?}", r.ledger.holdings());
        assert!(snapshot.gpu_allocations().is_empty());
        // Nor does a stop that inspected it just before it went.
        r.apply_reconcile(
            r.table.generation(),
            Ok(vec![view(B, "b", &[1], "running")]),
        );
        ask(&mut r, |reply| Request::Act {
            id: "b".into(),
            action: Action::Stop,
            reply,
        });
        let Ok(Work::Act { ticket, .. }) = queue.try_recv() else {
            panic!("no stop queued");
        };
        r.on_event(ContainerEvent {
            id: B.into(),
            action: "destroy".into(),
            time_nano: 0,
        });
        r.finish(Done::Acted {
            ticket,
            id: B.into(),
            result: Ok(view(B, "b", &[1], "exited")),
        });
        assert_eq!(r.table.len(), 0);
        assert!(r.ledger.holdings().is_empty());
    }

    #[test]
    fn an_unusable_renters_network_refuses_creates_and_degrades_health() {
        let (mut r, queue, snapshot) = runner();
        r.apply_network(Some(
            "docker network utopia-renters exists but was not created by the agent".into(),
        ));
        r.apply_reconcile(0, Ok(vec![]));
        let create = ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
            reply,
        });
        assert!(
            matches!(&create, Some(Err(ContainerError::DockerUnavailable(m))) if m.contains("not created by the agent")),
            "{create:?}"
        );
        assert!(queue.try_recv().is_err());
        assert!(r.ledger.holdings().is_empty());
        assert!(snapshot.health()["docker"].starts_with("degraded: docker network"));
        // Strangers on a good network are reported, creates go on.
        r.apply_network(Some(
            "docker network n is shared with containers the agent did not create: x".into(),
        ));
        r.publish();
        assert!(ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
            reply,
        })
        .is_none());
        assert!(snapshot.health()["docker"].contains("shared with containers"));
        r.apply_network(None);
        r.publish();
        assert_eq!(snapshot.health()["docker"], "ok");
    }

    fn timed_out() -> ContainerError {
        ContainerError::Timeout("`docker run` did not finish within 2s and was killed".into())
    }

    #[test]
    fn a_timed_out_create_keeps_its_gpu_until_a_reconcile_decides() {
        let (mut r, queue, snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![]));
        let answer = ask_later(&mut r, |reply| Request::Create {
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
            reply,
        });
        let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
            panic!("no create queued");
        };
        let before = r.table.generation();
        r.finish(Done::Created {
            ticket,
            claim_id: "a".into(),
            result: Err(timed_out()),
        });
        assert!(
            matches!(answer.try_recv(), Ok(Err(ContainerError::Timeout(m))) if m.contains("stay reserved"))
        );
        // GPU 0 is not handed to another claim.
        let second = ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("b", GpuRequest::Ids(vec![0]))),
            reply,
        });
        assert!(
            matches!(
                &second,
                Some(Err(ContainerError::Conflict {
                    code: "gpu_in_use",
                    ..
                }))
            ),
            "{second:?}"
        );
        let get = ask(&mut r, |reply| Request::Get {
            id: "a".into(),
            reply,
        });
        let shown = get.unwrap().unwrap();
        assert_eq!(shown.state, "unknown");
        assert!(
            shown
                .error
                .as_deref()
                .is_some_and(|e| e.contains("stay reserved")),
            "{shown:?}"
        );
        // A reconcile that started before the timeout decides nothing...
        r.apply_reconcile(before, Ok(vec![]));
        assert!(r.ledger.by_claim("a").is_some());
        // ...one started after it finds the container: adopted with what it reserved.
        let now = r.table.generation();
        r.apply_reconcile(now, Ok(vec![view(A, "a", &[0], "running")]));
        assert!(r.table.view(A).unwrap().warnings.is_empty());
        assert_eq!(snapshot.gpu_allocations()[&0].container_id, A);
        assert!(r.ledger.gpu_taken_from(A).is_none());
    }

    #[test]
    fn a_timed_out_create_that_made_nothing_is_released_and_a_given_up_one_removed() {
        let (mut r, queue, snapshot) = runner();
        r.unknown_grace_period = Duration::ZERO;
        r.apply_reconcile(0, Ok(vec![]));
        for claim in ["a", "b"] {
            let gpu = if claim == "a" { 0 } else { 1 };
            let mut create = spec(claim, GpuRequest::Ids(vec![gpu]));
            create.ports[0].host_port += gpu as u16;
            ask(&mut r, |reply| Request::Create {
                spec: Box::new(create),
                reply,
            });
            let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
                panic!("no create queued");
            };
            r.finish(Done::Created {
                ticket,
                claim_id: claim.into(),
                result: Err(timed_out()),
            });
        }
        // Claim b is given up: 202-style answer, nothing freed yet.
        let deleted = ask(&mut r, |reply| Request::Delete {
            id: "utopia-b".into(),
            reply,
        })
        .unwrap()
        .unwrap();
        assert!(!deleted.deleted && deleted.gpu_ids.is_empty());
        assert!(r.ledger.by_claim("b").is_some_and(|h| h.given_up));
        // A reconcile that started before the grace ended decides nothing.
        r.apply_reconcile(r.table.generation(), Ok(vec![]));
        assert!(r.ledger.by_claim("a").is_some());
        // The one started after it sees b's container (docker made it after all), not a's.
        r.start_reconcile();
        let Ok(Work::Reconcile { generation }) = queue.try_recv() else {
            panic!("no reconcile queued");
        };
        r.reconcile_in_flight = false;
        r.apply_reconcile(generation, Ok(vec![view(B, "b", &[1], "running")]));
        assert!(r.ledger.by_claim("a").is_none(), "a's GPU 0 is free again");
        let Ok(Work::Delete { ticket, view: gone }) = queue.try_recv() else {
            panic!("the given-up container is not removed");
        };
        assert_eq!(gone.id, B);
        r.finish(Done::Deleted {
            ticket,
            view: gone,
            result: Ok(()),
        });
        assert!(r.ledger.holdings().is_empty());
        assert!(snapshot.gpu_allocations().is_empty());
    }

    #[test]
    fn a_container_over_someone_elses_gpu_is_never_started_and_frees_nothing_of_theirs() {
        let (mut r, queue, snapshot) = runner();
        r.apply_reconcile(
            0,
            Ok(vec![
                view(A, "a", &[0], "running"),
                view(B, "late", &[0], "exited"),
            ]),
        );
        for action in [Action::Start, Action::Restart] {
            let start = ask(&mut r, |reply| Request::Act {
                id: B.into(),
                action,
                reply,
            });
            assert!(
                matches!(&start, Some(Err(ContainerError::Conflict { code: "gpu_in_use", message })) if message.contains("claim a")),
                "{start:?}"
            );
        }
        assert!(queue.try_recv().is_err(), "nothing started");
        // Deleting it frees nothing a holds.
        let answer = ask_later(&mut r, |reply| Request::Delete {
            id: B.into(),
            reply,
        });
        let Ok(Work::Delete { ticket, view }) = queue.try_recv() else {
            panic!("no delete queued");
        };
        r.finish(Done::Deleted {
            ticket,
            view,
            result: Ok(()),
        });
        let deleted = answer.try_recv().unwrap().unwrap();
        assert!(deleted.deleted && deleted.gpu_ids.is_empty(), "{deleted:?}");
        assert_eq!(snapshot.gpu_allocations()[&0].container_id, A);
    }

    #[test]
    fn a_late_container_over_a_gpu_given_to_another_is_stopped() {
        let (mut r, queue, _snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![view(A, "a", &[0], "running")]));
        // A create docker finished long after its reservation was released.
        r.apply_reconcile(
            r.table.generation(),
            Ok(vec![
                view(A, "a", &[0], "running"),
                view(B, "late", &[0], "running"),
            ]),
        );
        let Ok(Work::Act {
            id,
            action: Action::Stop,
            ..
        }) = queue.try_recv()
        else {
            panic!("the usurper is not stopped");
        };
        assert_eq!(id, B);
        assert!(queue.try_recv().is_err(), "the first holder is left alone");
    }

    #[test]
    fn log_reads_are_bounded_and_have_their_own_lane() {
        let (jobs, job_queue) = crossbeam_channel::bounded(WORK_QUEUE);
        let (logs, log_queue) = crossbeam_channel::bounded(MAX_LOG_READS);
        let (snapshot, writers) = crate::state::new();
        let mut r = Runner::new(
            snapshot,
            writers.docker,
            vec![],
            Duration::from_secs(30),
            jobs.clone(),
            jobs,
            logs,
        );
        r.apply_reconcile(0, Ok(vec![view(A, "a", &[], "running")]));
        for _ in 0..MAX_LOG_READS {
            assert!(ask(&mut r, |reply| Request::Logs {
                id: "a".into(),
                tail: 10,
                reply
            })
            .is_none());
        }
        let over = ask(&mut r, |reply| Request::Logs {
            id: "a".into(),
            tail: 10,
            reply,
        });
        assert!(
            matches!(over, Some(Err(ContainerError::Busy(_)))),
            "{over:?}"
        );
        // A delete is queued on its own lane meanwhile.
        assert!(ask(&mut r, |reply| Request::Delete {
            id: "a".into(),
            reply
        })
        .is_none());
        assert!(matches!(job_queue.try_recv(), Ok(Work::Delete { .. })));
        let Ok(Work::Logs { ticket, .. }) = log_queue.try_recv() else {
            panic!("no log read queued");
        };
        r.finish(Done::Logs {
            ticket,
            result: Ok(String::new()),
        });
        assert!(ask(&mut r, |reply| Request::Logs {
            id: "a".into(),
            tail: 10,
            reply
        })
        .is_none());
    }

    #[test]
    fn a_create_in_progress_shows_its_step_then_its_error() {
        let (mut r, queue, _snapshot) = runner();
        r.apply_reconcile(0, Ok(vec![]));
        ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
            reply,
        });
        let Ok(Work::Create { ticket, .. }) = queue.try_recv() else {
            panic!("no create queued");
        };
        r.finish(Done::Progress {
            claim_id: "a".into(),
            status: "pulling image busybox".into(),
        });
        let get = |r: &mut Runner| {
            ask(r, |reply| Request::Get {
                id: "utopia-a".into(),
                reply,
            })
            .unwrap()
            .unwrap()
        };
        let shown = get(&mut r);
        assert_eq!(
            (shown.state.as_str(), shown.status.as_str()),
            ("creating", "pulling image busybox")
        );
        r.finish(Done::Created {
            ticket,
            claim_id: "a".into(),
            result: Err(ContainerError::ImagePull("registry unreachable".into())),
        });
        let shown = get(&mut r);
        assert_eq!(shown.state, "failed");
        assert_eq!(shown.error.as_deref(), Some("registry unreachable"));
        assert!(r.ledger.holdings().is_empty());
        // A new create of the claim forgets the old outcome.
        ask(&mut r, |reply| Request::Create {
            spec: Box::new(spec("a", GpuRequest::Ids(vec![0]))),
            reply,
        });
        assert_eq!(get(&mut r).state, "creating");
    }
}
