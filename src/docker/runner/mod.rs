//! The `DockerRunner` thread: the one owner of the [`GpuLedger`] and of the
//! [`ContainerTable`], and the only code that starts docker commands (through its worker pools).
//! The protocol with the API is in [`protocol`](super::protocol), the one with the workers in
//! [`jobs`](super::jobs); GPUs are chosen by [`placement`](super::placement).
//!
//! - Owns: the ledger, the container table, the API's pending replies, and three on-demand
//!   worker pools ([`WorkerPool`]) running [`worker`](super::worker): up to `docker.workers`
//!   threads for creates (image pulls can take many minutes), as many for stops, deletes,
//!   reconciles and refreshes, and [`LOG_WORKERS`] for log reads, so neither pulls nor large
//!   logs ever hold up a delete. A pool's threads start when work waits and none is free, and
//!   end after [`WORKER_IDLE_EXIT`] without work. Each has a bounded queue; when it is full, or
//!   [`MAX_LOG_READS`] log reads are in progress, requests get 503 `docker_busy`.
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
//!   reaped) and the events watcher end; the runner joins its workers before it ends. Containers keep running: the agent's restart adopts
//!   them.
//!
//! Its parts: [`creating`] (creates, their outcomes, timed-out and given-up claims),
//! [`reconcile`] (rebuilding the table and the ledger from docker), [`publish`] (what the rest of
//! the agent sees).

use crate::component::{self, StartError};
use crate::config::DockerSettings;
use crate::docker::cli::{DockerCli, DockerTimeouts};
use crate::docker::container::ContainerView;
use crate::docker::events::{self, ContainerEvent};
use crate::docker::jobs::{Done, PanicReport, Ticket, Work, WorkerContext};
use crate::docker::ledger::{short_id, GpuLedger};
use crate::docker::protocol::Action;
use crate::docker::protocol::{
    ContainerError, Deleted, DockerRunner, Reply, Request, RunnerHandle,
};
use crate::docker::spec::{join_ids, CreatePolicy};
use crate::docker::table::ContainerTable;
use crate::docker::worker::{execute, remove_stale_env_files};
use crate::shutdown::Shutdown;
use crate::state::{DockerWriter, Health, Snapshot};
use crate::workers::{JobQueue, PoolSpec, SubmitError, WorkerPool};
use crossbeam_channel::{after, select, Receiver};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod creating;
mod publish;
mod reconcile;

/// Queue length of each worker pool.
const WORK_QUEUE: usize = 64;
/// Threads reading logs: a lane of their own, so log reads never hold up a stop or delete.
const LOG_WORKERS: usize = 2;
/// Log reads in progress (queued or running) at most; more get 503 `docker_busy`. Well under
/// the API's slow handler threads, so waiting log reads never keep a delete out of them.
const MAX_LOG_READS: usize = 6;
/// How long a worker thread waits for work before it ends (the periodic reconcile, every
/// `docker.reconcile_interval_secs`, 30 s by default, starts one again).
const WORKER_IDLE_EXIT: Duration = Duration::from_secs(10);
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
    jobs: Box<dyn JobQueue<Work>>,
    /// Creates, with their image pulls: a lane of their own, so that pulls that take all their
    /// workers never hold up a delete.
    creates: Box<dyn JobQueue<Work>>,
    /// Log reads: a lane of their own, at most [`MAX_LOG_READS`] at once.
    logs: Box<dyn JobQueue<Work>>,
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
    /// Containers with a refresh in flight, and whether another was asked for meanwhile (see
    /// [`Runner::refresh`]).
    refreshing: BTreeMap<String, bool>,
    /// Creates that did not succeed, by claim, with when: `GET` shows their error (state
    /// `failed`, or `unknown` after a timeout) for [`OUTCOME_MEMORY`].
    outcomes: BTreeMap<String, (ContainerView, Instant)>,
}

impl Runner {
    fn new(
        snapshot: Arc<Snapshot>,
        writer: DockerWriter,
        reserved_ports: Vec<u16>,
        reconcile_interval: Duration,
        jobs: impl JobQueue<Work> + 'static,
        creates: impl JobQueue<Work> + 'static,
        logs: impl JobQueue<Work> + 'static,
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
            jobs: Box::new(jobs),
            creates: Box::new(creates),
            logs: Box::new(logs),
            log_reads: 0,
            pending: BTreeMap::new(),
            next_ticket: 0,
            published_health: None,
            network_problem: None,
            unknown_grace: BTreeMap::new(),
            unknown_grace_period: Duration::from_secs(60),
            given_up: BTreeMap::new(),
            creating: BTreeMap::new(),
            refreshing: BTreeMap::new(),
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

    let (done_tx, done) = crossbeam_channel::unbounded::<Done>();
    let lane = |name: &str, max: usize, queue: usize| {
        let context = Arc::clone(&context);
        let done_tx = done_tx.clone();
        let spec = PoolSpec {
            name: name.to_string(),
            max,
            queue,
            idle_exit: WORKER_IDLE_EXIT,
        };
        WorkerPool::new(spec, Some(shutdown.clone()), move |work| {
            if done_tx
                .send(run_job(work, |work| execute(&context, work, &done_tx)))
                .is_err()
            {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
    };
    let jobs = lane("docker-worker", config.workers, WORK_QUEUE);
    let creates = lane("docker-create", config.workers, WORK_QUEUE);
    let logs = lane("docker-logs", LOG_WORKERS, MAX_LOG_READS);
    drop(done_tx);
    let (requests_tx, requests) = crossbeam_channel::bounded::<Request>(256);
    // Boxed: a bounded channel allocates and writes every slot up front (1,024 events by
    // value held 90 KiB of the idle agent's heap; boxed, 16 KiB).
    let (events_tx, events_rx) = crossbeam_channel::bounded::<Box<ContainerEvent>>(1024);

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
                config.run.default_memory,
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

/// Runs one job; a panic (a bug) still reports its ticket (see [`PanicReport`]) instead of
/// leaving its caller waiting and its reservation held.
fn run_job(work: Work, execute: impl FnOnce(Work) -> Done) -> Done {
    let on_panic = PanicReport::of(&work);
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(work))).unwrap_or_else(|_| {
        log::error!("a docker worker panicked; its job is answered as failed");
        on_panic.into_done()
    })
}

impl Runner {
    /// Serves until shutdown (or its channels close), then joins the workers.
    fn run(
        mut self,
        requests: &Receiver<Request>,
        done: &Receiver<Done>,
        events: &Receiver<Box<ContainerEvent>>,
        shutdown: &Shutdown,
    ) {
        self.serve(requests, done, events, shutdown);
        // The workers end at shutdown (a docker command in flight is killed); the agent gives
        // the whole stop this long.
        let deadline = Instant::now() + crate::agent::STOP_DEADLINE;
        let left: usize = [self.jobs, self.creates, self.logs]
            .into_iter()
            .map(|lane| lane.join(Some(deadline)))
            .sum();
        if left > 0 {
            log::warn!("{left} docker worker(s) did not stop in time; leaving them");
        }
    }

    fn serve(
        &mut self,
        requests: &Receiver<Request>,
        done: &Receiver<Done>,
        events: &Receiver<Box<ContainerEvent>>,
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
                    Ok(event) => self.on_event(*event),
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
        match lane.submit(work) {
            Ok(()) => Ok(()),
            Err(SubmitError::Full(_)) => Err(ContainerError::Busy(format!(
                "{WORK_QUEUE} docker operations are already queued; try again shortly"
            ))),
            Err(SubmitError::Closed(_)) => Err(ContainerError::DockerUnavailable(
                "the docker workers have stopped".into(),
            )),
            Err(SubmitError::NoThread(_, e)) => Err(ContainerError::Busy(format!(
                "cannot start a docker worker thread ({e}); try again shortly"
            ))),
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
                    // Creates in progress and failed ones, as `GET` of their claim shows them.
                    views.extend(self.create_views());
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
                if let Some(deleted) = self
                    .give_up_unknown(&id)
                    .or_else(|| self.forget_failed(&id))
                {
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
                self.finish_create(ticket, claim_id, result);
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
            Done::Progress {
                claim_id,
                status,
                pull,
            } => {
                if let Some(shown) = self.creating.get_mut(&claim_id) {
                    shown.status = status;
                    shown.pull = pull;
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
                if self.refreshing.remove(&id) == Some(true) {
                    self.refresh(id);
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
            // The container a create in flight is making (its `create` and `start` events come
            // before `docker run` returns): the create's answer records it, and the refresh
            // queued then reads it from docker. One queued now would be older than that answer
            // and thrown away, its docker command wasted.
            if !self.table.contains(&event.id)
                && self.creating.values().any(|v| v.name == event.name)
            {
                return;
            }
            self.refresh(event.id);
        }
    }

    /// Reads container `id` from docker again. One refresh per container at a time: one asked
    /// for while another is in flight runs once that one is applied. Two at once could finish
    /// in either order, and the first applied makes the other look stale (the table learned
    /// something since it started): a refresh queued at a create's answer that read `running`
    /// and was applied last kept a container killed meanwhile shown running, its `die`
    /// event's refresh (which read `exited`) thrown away. A full queue drops the refresh; the
    /// next event or the periodic reconcile repairs the view.
    fn refresh(&mut self, id: String) {
        if let Some(again) = self.refreshing.get_mut(&id) {
            *again = true;
            return;
        }
        let work = Work::Refresh {
            id: id.clone(),
            generation: self.table.generation(),
        };
        if self.submit(work).is_ok() {
            self.refreshing.insert(id, false);
        }
    }
}
#[cfg(test)]
mod tests;
