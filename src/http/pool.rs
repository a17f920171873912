//! The handler threads: one on-demand [`WorkerPool`] per [`Lane`] (at most `count` threads,
//! started when a request waits and none is free, ending after [`IDLE_EXIT`] without work), each
//! thread taking [`Job`]s from its lane's bounded queue, running [`Service::serve`] (a panic
//! anywhere costs that request a 500, not the thread nor the connection's slot), encoding the
//! answer and sending the bytes back to the I/O thread that owns the connection as a [`Done`]
//! (through that thread's [`Route`]), then waking its poller. The threads end when the lane's
//! queue is closed ([`WorkerPool::join`]) and empty; while the server stops, queued jobs are
//! answered 503 without being served.

use crate::http::poller::Poller;
use crate::http::types::{Request, Response};
use crate::http::{guard, HttpError, Service, StatusCode};
use crate::workers::{PoolSpec, WorkerPool};
use crossbeam_channel::Sender;
use std::cell::RefCell;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a handler thread waits for a request before it ends.
pub const IDLE_EXIT: Duration = Duration::from_secs(30);

/// A request for a handler thread.
pub struct Job {
    /// The I/O thread that owns the connection (an index into the routes given to [`start`]).
    pub owner: usize,
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

/// How an answer gets back to one I/O thread: its channel of answers and its poller to wake.
pub struct Route {
    pub done: Sender<Done>,
    pub poller: Arc<Poller>,
}

/// The pool of lane `name`: at most `count` threads, `queue` requests waiting; the answer to a
/// job goes back through `routes[job.owner]`.
pub fn start(
    name: &str,
    count: usize,
    queue: usize,
    routes: Arc<[Route]>,
    service: Arc<dyn Service>,
    stopping: Arc<AtomicBool>,
) -> WorkerPool<Job> {
    let spec = PoolSpec {
        name: name.to_string(),
        max: count,
        queue,
        idle_exit: IDLE_EXIT,
    };
    WorkerPool::new(spec, None, move |job: Job| {
        let Some(route) = routes.get(job.owner) else {
            log::error!(
                "an API request came from I/O thread {}, which does not exist",
                job.owner
            );
            return ControlFlow::Continue(());
        };
        let (slot, generation) = (job.slot, job.generation);
        // The service's calls cannot panic (the server guards them); should encoding the
        // answer, the request still gets one: a connection whose request never came back
        // would hold its slot for ever (it has no deadline while at a handler).
        let finished = catch_unwind(AssertUnwindSafe(|| run(&*service, job, &stopping)))
            .unwrap_or_else(|_| {
                log::error!("encoding an API answer panicked; the request is answered 500");
                Done {
                    slot,
                    generation,
                    bytes: encode(&guard::plain(&guard::internal()), false, false),
                    close: true,
                }
            });
        // An I/O thread that has ended (the server stops) drops the answer with its connection.
        if route.done.send(finished).is_ok() {
            if let Err(e) = route.poller.notify() {
                log::error!("cannot wake the API's I/O thread: {e}");
            }
        }
        ControlFlow::Continue(())
    })
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
        service.serve(job.request)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Admission, Headers, Lane, Method, RequestHead};
    use crossbeam_channel::Receiver;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    /// Answers 200, panics on `/panic`, waits for the gate on `/wait`.
    struct TestService {
        running: AtomicUsize,
        gate: Receiver<()>,
    }

    impl Service for TestService {
        fn admit(&self, _: &RequestHead) -> Admission {
            Admission::Serve(Lane::Slow)
        }

        fn serve(&self, request: Request) -> Response {
            self.running.fetch_add(1, Ordering::SeqCst);
            match request.head.path.as_str() {
                "/panic" => panic!("a handler bug"),
                "/wait" => {
                    let _ = self.gate.recv();
                }
                _ => {}
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            Response::new(StatusCode::OK, b"ok".to_vec())
        }

        fn reject(&self, error: &HttpError) -> Response {
            Response::new(error.status, error.code.as_bytes().to_vec())
        }
    }

    fn job(path: &str) -> Job {
        Job {
            owner: 0,
            slot: 0,
            generation: 0,
            request: Request {
                head: RequestHead {
                    method: Method::GET,
                    path: path.into(),
                    query: None,
                    minor_version: 1,
                    headers: Headers::default(),
                    body_length: crate::http::BodyLength::Empty,
                    peer: "127.0.0.1:1".parse().unwrap(),
                },
                body: Vec::new(),
            },
            keep_alive: true,
        }
    }

    fn lane(
        count: usize,
    ) -> (
        WorkerPool<Job>,
        Receiver<Done>,
        Arc<TestService>,
        Sender<()>,
    ) {
        let (gate_tx, gate) = crossbeam_channel::bounded(0);
        let service = Arc::new(TestService {
            running: AtomicUsize::new(0),
            gate,
        });
        let (done_tx, done) = crossbeam_channel::unbounded();
        let routes: Arc<[Route]> = Arc::new([Route {
            done: done_tx,
            poller: Arc::new(Poller::new().unwrap()),
        }]);
        let pool = start(
            "test-slow",
            count,
            16,
            routes,
            Arc::clone(&service) as Arc<dyn Service>,
            Arc::new(AtomicBool::new(false)),
        );
        (pool, done, service, gate_tx)
    }

    fn status(done: &Receiver<Done>) -> String {
        let done = done.recv_timeout(Duration::from_secs(10)).unwrap();
        String::from_utf8_lossy(&done.bytes[..12]).into_owned()
    }

    #[test]
    fn a_panicking_handler_answers_500_and_the_lane_goes_on() {
        let (pool, done, _service, _gate) = lane(1);
        assert!(pool.submit(job("/panic")).is_ok());
        assert_eq!(status(&done), "HTTP/1.1 500");
        assert!(pool.submit(job("/")).is_ok());
        assert_eq!(status(&done), "HTTP/1.1 200");
        assert_eq!(pool.started(), 1, "the panic did not cost the thread");
        assert_eq!(pool.join(None), 0);
    }

    #[test]
    fn a_lane_runs_at_most_its_threads_and_answers_every_queued_request() {
        let (pool, done, service, gate) = lane(3);
        for _ in 0..8 {
            assert!(pool.submit(job("/wait")).is_ok());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while service.running.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "three handlers never ran");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(service.running.load(Ordering::SeqCst), 3);
        assert_eq!(pool.live(), 3);
        drop(gate);
        for _ in 0..8 {
            assert_eq!(status(&done), "HTTP/1.1 200");
        }
        assert_eq!(pool.join(None), 0);
    }
}
