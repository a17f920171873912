//! On-demand worker threads: a bounded queue of jobs served by at most `max` threads, started
//! only when a job waits and no thread is free, and ending after `idle_exit` without work. An
//! idle agent so holds none of them (each thread costs its touched stack, ~30 KiB of resident
//! memory), while a burst gets the same number of threads, the same queue bound and the same
//! back-pressure (a full queue refuses the job at once) as a fixed pool.
//!
//! - Owns: the queue's receiving side, the threads' count and join handles.
//! - Receives: jobs through [`WorkerPool::submit`] (from the one thread that owns the pool).
//! - Runs: the pool's handler on each job, on a worker thread; the handler says whether the
//!   thread goes on ([`ControlFlow::Continue`]) or the pool is finished (`Break`: its output
//!   channel is closed; no thread is started any more).
//! - Stops: dropping the pool's sender ([`WorkerPool::join`], or dropping the pool) lets every
//!   thread finish the jobs already queued and end; with a [`Shutdown`] given, threads end as
//!   soon as it fires (queued jobs are dropped). [`WorkerPool::join`] joins them all, including
//!   those that ended on their own.
//!
//! Threads are counted under one mutex, as `live` (started, not ended) and `idle` (waiting for
//! a job). A thread is started whenever more jobs are queued than threads are idle, checked
//! both when a job is queued and when a thread takes one, so a job never waits for a thread
//! while fewer than `max` run. An idle thread that times out ends only if the queue is empty,
//! checked under the same mutex, so a job queued meanwhile is never left without a thread.

use crate::shutdown::Shutdown;
use crossbeam_channel::{select, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a pool is sized.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    /// Threads are named `{name}-{n}`, `n` the lowest number no live thread has.
    pub name: String,
    /// Threads at most.
    pub max: usize,
    /// Jobs that may wait for a thread; past it [`WorkerPool::submit`] refuses them.
    pub queue: usize,
    /// How long a thread waits for work before it ends.
    pub idle_exit: Duration,
}

/// Why a job was not queued; the job comes back.
#[derive(Debug)]
pub enum SubmitError<J> {
    /// `queue` jobs are already waiting.
    Full(J),
    /// The pool is stopping or its handler has finished.
    Closed(J),
    /// No thread runs and none could be started.
    NoThread(J, std::io::Error),
}

/// The pool, owned by the thread that submits its jobs. Jobs wait boxed: a bounded channel
/// allocates and writes all its slots up front, and the API's request jobs are ~200 bytes
/// (two lanes of 256 slots held 106 KiB of the idle agent's heap; boxed, 8 KiB).
pub struct WorkerPool<J: Send + 'static> {
    sender: Option<Sender<Box<J>>>,
    shared: Arc<Shared<J>>,
}

type Handler<J> = Box<dyn Fn(J) -> ControlFlow<()> + Send + Sync>;

struct Shared<J: Send + 'static> {
    name: String,
    max: usize,
    idle_exit: Duration,
    queue: Receiver<Box<J>>,
    stop: Option<Shutdown>,
    handler: Handler<J>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    live: usize,
    idle: usize,
    /// The handler answered `Break`: no thread is started any more.
    finished: bool,
    /// Which names `{name}-{n}` live threads hold.
    taken: Vec<bool>,
    threads: Vec<JoinHandle<()>>,
    /// Threads started since the pool was made.
    started: u64,
}

impl<J: Send + 'static> WorkerPool<J> {
    /// A pool with no thread yet; `stop`, when given, ends its threads at once when it fires.
    pub fn new(
        spec: PoolSpec,
        stop: Option<Shutdown>,
        handler: impl Fn(J) -> ControlFlow<()> + Send + Sync + 'static,
    ) -> WorkerPool<J> {
        let (sender, queue) = crossbeam_channel::bounded(spec.queue);
        let max = spec.max.max(1);
        WorkerPool {
            sender: Some(sender),
            shared: Arc::new(Shared {
                name: spec.name,
                max,
                idle_exit: spec.idle_exit,
                queue,
                stop,
                handler: Box::new(handler),
                state: Mutex::new(State {
                    taken: vec![false; max],
                    ..State::default()
                }),
            }),
        }
    }

    /// Queues `job`, starting a thread for it if none is free and fewer than `max` run.
    pub fn submit(&self, job: J) -> Result<(), SubmitError<J>> {
        let Some(sender) = &self.sender else {
            return Err(SubmitError::Closed(job));
        };
        let mut state = self.shared.lock();
        if state.finished {
            return Err(SubmitError::Closed(job));
        }
        match sender.try_send(Box::new(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => return Err(SubmitError::Full(*job)),
            Err(TrySendError::Disconnected(job)) => return Err(SubmitError::Closed(*job)),
        }
        if let Err(e) = self.shared.grow(&mut state) {
            if state.live == 0 {
                // Nobody would ever take it. Only a failed start leaves jobs queued with no
                // thread, and each such job is taken back here, so this one is the only one.
                if let Ok(job) = self.shared.queue.try_recv() {
                    return Err(SubmitError::NoThread(*job, e));
                }
            } else {
                log::warn!(
                    "cannot start another {} thread ({e}); the {} running take the work",
                    self.shared.name,
                    state.live
                );
            }
        }
        Ok(())
    }

    /// Threads running now.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.shared.lock().live
    }

    /// Threads started since the pool was made.
    #[cfg(test)]
    pub fn started(&self) -> u64 {
        self.shared.lock().started
    }

    /// Closes the queue (threads finish the jobs queued, unless the pool's [`Shutdown`] has
    /// fired) and joins every thread that ends before `deadline` (no deadline: waits for all);
    /// returns how many were still running at the deadline (they are left to end on their own).
    pub fn join(mut self, deadline: Option<Instant>) -> usize {
        self.sender = None;
        let mut left = 0;
        loop {
            // A thread may start another before it ends: join until no handle is left.
            let threads = std::mem::take(&mut self.shared.lock().threads);
            if threads.is_empty() {
                return left;
            }
            for thread in threads {
                while deadline.is_some_and(|d| Instant::now() < d) && !thread.is_finished() {
                    std::thread::sleep(Duration::from_millis(2));
                }
                if deadline.is_some() && !thread.is_finished() {
                    left += 1;
                    continue;
                }
                if thread.join().is_err() {
                    log::error!("a {} thread had panicked", self.shared.name);
                }
            }
        }
    }
}

/// Where an owner queues its jobs: a [`WorkerPool`], or in unit tests a plain channel the test
/// reads.
pub trait JobQueue<J>: Send {
    fn submit(&self, job: J) -> Result<(), SubmitError<J>>;

    /// Closes the queue and joins its threads (see [`WorkerPool::join`]).
    fn join(self: Box<Self>, deadline: Option<Instant>) -> usize;
}

impl<J: Send + 'static> JobQueue<J> for WorkerPool<J> {
    fn submit(&self, job: J) -> Result<(), SubmitError<J>> {
        WorkerPool::submit(self, job)
    }

    fn join(self: Box<Self>, deadline: Option<Instant>) -> usize {
        WorkerPool::join(*self, deadline)
    }
}

#[cfg(test)]
impl<J: Send + 'static> JobQueue<J> for Sender<J> {
    fn submit(&self, job: J) -> Result<(), SubmitError<J>> {
        self.try_send(job).map_err(|e| match e {
            TrySendError::Full(job) => SubmitError::Full(job),
            TrySendError::Disconnected(job) => SubmitError::Closed(job),
        })
    }

    fn join(self: Box<Self>, _: Option<Instant>) -> usize {
        0
    }
}

impl<J: Send + 'static> Shared<J> {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned count is still the right count.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.stop.as_ref().is_some_and(Shutdown::is_triggered)
    }

    /// Starts threads while more jobs wait than threads are idle (and fewer than `max` run).
    fn grow(self: &Arc<Self>, state: &mut State) -> std::io::Result<()> {
        while !state.finished
            && state.live < self.max
            && state.idle < self.queue.len()
            && !self.stopping()
        {
            // Ended threads' handles are joined here (they have ended: no wait).
            let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut state.threads)
                .into_iter()
                .partition(JoinHandle::is_finished);
            state.threads = running;
            for thread in ended {
                if thread.join().is_err() {
                    log::error!("a {} thread had panicked", self.name);
                }
            }
            let index = state.taken.iter().position(|t| !t).unwrap_or(state.live);
            let shared = Arc::clone(self);
            let thread = std::thread::Builder::new()
                .name(format!("{}-{index}", self.name))
                .spawn(move || shared.work(index))?;
            if let Some(slot) = state.taken.get_mut(index) {
                *slot = true;
            }
            state.threads.push(thread);
            state.live += 1;
            state.idle += 1;
            state.started += 1;
        }
        Ok(())
    }

    /// One thread's loop; it was counted live and idle when it was started.
    fn work(self: Arc<Self>, index: usize) {
        let mut me = Counted {
            shared: &self,
            index,
            idle: true,
            counted: true,
        };
        loop {
            let job = match self.next() {
                Next::Job(job) => job,
                Next::End => return,
                Next::Idle => {
                    let mut state = self.lock();
                    if self.queue.is_empty() {
                        me.leave(&mut state);
                        return;
                    }
                    continue;
                }
            };
            {
                let mut state = self.lock();
                state.idle -= 1;
                me.idle = false;
                // More may be waiting behind this job; best effort (another thread or the
                // next submit tries again).
                if let Err(e) = self.grow(&mut state) {
                    log::warn!("cannot start another {} thread: {e}", self.name);
                }
            }
            if (self.handler)(job).is_break() {
                self.lock().finished = true;
                return;
            }
            self.lock().idle += 1;
            me.idle = true;
        }
    }

    fn next(&self) -> Next<J> {
        // `select!` picks at random among ready channels: a fired shutdown comes first.
        if self.stopping() {
            return Next::End;
        }
        match &self.stop {
            Some(stop) => select! {
                recv(self.queue) -> job => job.map_or(Next::End, |job| Next::Job(*job)),
                recv(stop.receiver()) -> _ => Next::End,
                default(self.idle_exit) => Next::Idle,
            },
            None => match self.queue.recv_timeout(self.idle_exit) {
                Ok(job) => Next::Job(*job),
                Err(RecvTimeoutError::Timeout) => Next::Idle,
                Err(RecvTimeoutError::Disconnected) => Next::End,
            },
        }
    }
}

enum Next<J> {
    Job(J),
    Idle,
    End,
}

/// A thread's place in the counts, given back however the thread ends (a panicking handler
/// included).
struct Counted<'a, J: Send + 'static> {
    shared: &'a Arc<Shared<J>>,
    index: usize,
    idle: bool,
    counted: bool,
}

impl<J: Send + 'static> Counted<'_, J> {
    fn leave(&mut self, state: &mut State) {
        if !self.counted {
            return;
        }
        self.counted = false;
        state.live -= 1;
        if self.idle {
            state.idle -= 1;
        }
        if let Some(slot) = state.taken.get_mut(self.index) {
            *slot = false;
        }
    }
}

impl<J: Send + 'static> Drop for Counted<'_, J> {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let shared = self.shared;
        let mut state = shared.lock();
        self.leave(&mut state);
        // A thread that ended with jobs still queued (a panic) may have been the last one.
        if let Err(e) = shared.grow(&mut state) {
            log::warn!("cannot start another {} thread: {e}", shared.name);
        }
    }
}

#[cfg(test)]
mod tests;
