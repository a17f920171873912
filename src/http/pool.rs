//! The handler threads: a fixed number per [`Lane`], each taking [`Job`]s from its lane's bounded
//! channel, running [`Service::serve`] (a panic costs that request a 500, not the thread),
//! encoding the answer and sending the bytes back to the I/O thread as a [`Done`], then waking
//! the poller. A thread ends when its lane's channel is closed (the I/O thread dropped the
//! sender) and empty; while the server stops, queued jobs are answered 503 without being served.

use crate::http::types::{Request, Response};
use crate::http::{HttpError, Service, StatusCode};
use crossbeam_channel::{Receiver, Sender};
use polling::Poller;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

/// A request for a handler thread.
pub struct Job {
    pub slot: usize,
    pub generation: u64,
    pub request: Request,
    /// The client asked to keep the connection.
    pub keep_alive: bool,
}

/// An encoded answer for the connection in `slot`, if it is still the same connection.
pub struct Done {
    pub slot: usize,
    pub generation: u64,
    pub bytes: Vec<u8>,
    pub close: bool,
}

/// Starts `count` threads named `name` serving `jobs`.
pub fn spawn(
    name: &str,
    count: usize,
    jobs: &Receiver<Job>,
    done: &Sender<Done>,
    service: &Arc<dyn Service>,
    poller: &Arc<Poller>,
    stopping: &Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    (0..count)
        .map(|i| {
            let jobs = jobs.clone();
            let done = done.clone();
            let service = Arc::clone(service);
            let poller = Arc::clone(poller);
            let stopping = Arc::clone(stopping);
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    for job in jobs.iter() {
                        let finished = run(&*service, job, &stopping);
                        if done.send(finished).is_err() {
                            break;
                        }
                        if let Err(e) = poller.notify() {
                            log::error!("cannot wake the API's I/O thread: {e}");
                        }
                    }
                })
        })
        .collect()
}

fn run(service: &dyn Service, job: Job, stopping: &AtomicBool) -> Done {
    let head_only = job.request.head.method == crate::http::Method::HEAD;
    let response = if stopping.load(Ordering::SeqCst) {
        service.reject(&HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the agent is shutting down",
        ))
    } else {
        let request = job.request;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| service.serve(request)))
            .unwrap_or_else(|_| {
                service.reject(&HttpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; see the agent's log",
                ))
            })
    };
    let close = !job.keep_alive || response.close || stopping.load(Ordering::SeqCst);
    Done {
        slot: job.slot,
        generation: job.generation,
        bytes: encode(&response, head_only, !close),
        close,
    }
}

pub fn encode(response: &Response, head_only: bool, keep_alive: bool) -> Vec<u8> {
    with_date(|date| response.encode(head_only, keep_alive, date))
}

/// Runs `f` with the `Date` field's value for now, formatted at most once a second per thread.
pub fn with_date<T>(f: impl FnOnce(&str) -> T) -> T {
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            *cached = (secs, crate::timefmt::http_date(now));
        }
        f(&cached.1)
    })
}
