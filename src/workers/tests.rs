//! The pool's unit tests (test-only, under `#[cfg(test)]` in workers.rs).

use super::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

fn spec(max: usize, queue: usize, idle_exit: Duration) -> PoolSpec {
    PoolSpec {
        name: "test-pool".into(),
        max,
        queue,
        idle_exit,
    }
}

/// Polls `check` until it holds, at most 10 s.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Counts jobs running at once (and the most ever), blocking each until `gate` closes.
struct Load {
    running: AtomicUsize,
    peak: AtomicUsize,
    done: AtomicUsize,
    names: Mutex<BTreeSet<String>>,
}

fn load_pool(
    max: usize,
    queue: usize,
    idle_exit: Duration,
) -> (WorkerPool<()>, Arc<Load>, Sender<()>) {
    let load = Arc::new(Load {
        running: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        names: Mutex::new(BTreeSet::new()),
    });
    let (gate_tx, gate) = crossbeam_channel::bounded::<()>(0);
    let seen = Arc::clone(&load);
    let pool = WorkerPool::new(spec(max, queue, idle_exit), None, move |()| {
        let now = seen.running.fetch_add(1, Ordering::SeqCst) + 1;
        seen.peak.fetch_max(now, Ordering::SeqCst);
        if let Some(name) = std::thread::current().name() {
            seen.names.lock().unwrap().insert(name.to_string());
        }
        // Blocks until the test drops the gate's sender.
        let _ = gate.recv();
        seen.running.fetch_sub(1, Ordering::SeqCst);
        seen.done.fetch_add(1, Ordering::SeqCst);
        ControlFlow::Continue(())
    });
    (pool, load, gate_tx)
}

#[test]
fn no_thread_runs_before_the_first_job() {
    let (pool, _, _gate) = load_pool(4, 8, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(pool.live(), 0);
    assert_eq!(pool.started(), 0);
}

#[test]
fn grows_to_its_limit_under_load_and_never_beyond() {
    let (pool, load, gate) = load_pool(3, 64, Duration::from_secs(30));
    for _ in 0..20 {
        pool.submit(()).unwrap();
    }
    eventually("three jobs running", || {
        load.running.load(Ordering::SeqCst) == 3
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(pool.live(), 3);
    assert_eq!(load.peak.load(Ordering::SeqCst), 3);
    drop(gate);
    eventually("all jobs done", || load.done.load(Ordering::SeqCst) == 20);
    assert_eq!(load.peak.load(Ordering::SeqCst), 3);
    assert_eq!(pool.started(), 3);
    let names = load.names.lock().unwrap().clone();
    let expected: BTreeSet<String> = (0..3).map(|n| format!("test-pool-{n}")).collect();
    assert_eq!(names, expected);
    assert_eq!(pool.join(None), 0);
}

#[test]
fn jobs_one_after_another_need_one_thread() {
    let done = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&done);
    let pool = WorkerPool::new(spec(8, 8, Duration::from_secs(30)), None, move |()| {
        count.fetch_add(1, Ordering::SeqCst);
        ControlFlow::Continue(())
    });
    for n in 1..=20 {
        pool.submit(()).unwrap();
        eventually("the job done", || done.load(Ordering::SeqCst) == n);
        // The thread counts itself idle again just after the job.
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(pool.started(), 1);
    assert_eq!(pool.live(), 1);
    pool.join(None);
}

#[test]
fn a_full_queue_refuses_the_job() {
    let (pool, load, gate) = load_pool(1, 2, Duration::from_secs(30));
    pool.submit(()).unwrap();
    eventually("the first job running", || {
        load.running.load(Ordering::SeqCst) == 1
    });
    pool.submit(()).unwrap();
    pool.submit(()).unwrap();
    assert!(matches!(pool.submit(()), Err(SubmitError::Full(()))));
    assert_eq!(pool.live(), 1);
    drop(gate);
    eventually("the three jobs done", || {
        load.done.load(Ordering::SeqCst) == 3
    });
    pool.join(None);
}

#[test]
fn idle_threads_end_and_come_back_for_new_work() {
    let (pool, load, gate) = load_pool(4, 16, Duration::from_millis(50));
    for _ in 0..8 {
        pool.submit(()).unwrap();
    }
    eventually("four running", || pool.live() == 4);
    drop(gate);
    eventually("all done", || load.done.load(Ordering::SeqCst) == 8);
    eventually("every thread ended", || pool.live() == 0);
    // The gate is closed now, so a new job runs straight through on a new thread.
    pool.submit(()).unwrap();
    eventually("the new job done", || load.done.load(Ordering::SeqCst) == 9);
    assert_eq!(pool.started(), 5);
    assert_eq!(pool.join(None), 0);
}

#[test]
fn no_job_is_stranded_while_threads_come_and_go() {
    // Threads time out after 1 ms, so they end and start all the time while jobs arrive.
    let done = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&done);
    let pool = WorkerPool::new(
        spec(4, 1024, Duration::from_millis(1)),
        None,
        move |n: u32| {
            if n.is_multiple_of(64) {
                std::thread::sleep(Duration::from_micros(200));
            }
            count.fetch_add(1, Ordering::SeqCst);
            ControlFlow::Continue(())
        },
    );
    let mut sent = 0;
    for n in 0..20_000u32 {
        match pool.submit(n) {
            Ok(()) => sent += 1,
            Err(SubmitError::Full(_)) => std::thread::yield_now(),
            Err(e) => panic!("unexpected {e:?}"),
        }
        if n.is_multiple_of(500) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    eventually("every queued job done", || {
        done.load(Ordering::SeqCst) == sent
    });
    assert_eq!(pool.join(None), 0);
}

#[test]
fn join_runs_the_queued_jobs_and_joins_every_thread() {
    let (pool, load, gate) = load_pool(2, 16, Duration::from_secs(30));
    for _ in 0..10 {
        pool.submit(()).unwrap();
    }
    eventually("two running", || load.running.load(Ordering::SeqCst) == 2);
    let names = Arc::clone(&load);
    let joiner = std::thread::spawn(move || pool.join(None));
    std::thread::sleep(Duration::from_millis(20));
    assert!(!joiner.is_finished(), "join waits for the running jobs");
    drop(gate);
    assert_eq!(joiner.join().unwrap(), 0);
    assert_eq!(names.done.load(Ordering::SeqCst), 10);
    assert_eq!(names.running.load(Ordering::SeqCst), 0);
}

#[test]
fn join_gives_up_at_its_deadline() {
    let (pool, load, gate) = load_pool(2, 16, Duration::from_secs(30));
    pool.submit(()).unwrap();
    eventually("one running", || load.running.load(Ordering::SeqCst) == 1);
    let started = Instant::now();
    assert_eq!(
        pool.join(Some(Instant::now() + Duration::from_millis(50))),
        1
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(gate);
}

#[test]
fn shutdown_ends_the_threads_at_once_and_drops_the_queue() {
    let (trigger, shutdown) = crate::shutdown::channel();
    let running = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (entered, count) = (Arc::clone(&running), Arc::clone(&done));
    let (gate_tx, gate) = crossbeam_channel::bounded::<()>(0);
    let pool = WorkerPool::new(
        spec(2, 16, Duration::from_secs(30)),
        Some(shutdown),
        move |()| {
            entered.fetch_add(1, Ordering::SeqCst);
            let _ = gate.recv();
            count.fetch_add(1, Ordering::SeqCst);
            ControlFlow::Continue(())
        },
    );
    for _ in 0..10 {
        pool.submit(()).unwrap();
    }
    eventually("two jobs running", || running.load(Ordering::SeqCst) == 2);
    trigger.fire();
    drop(gate_tx);
    assert_eq!(pool.join(None), 0);
    assert_eq!(done.load(Ordering::SeqCst), 2, "queued jobs are dropped");
    assert_eq!(running.load(Ordering::SeqCst), 2);
}

#[test]
fn a_panicking_job_costs_its_thread_not_the_queue() {
    let done = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&done);
    let pool = WorkerPool::new(spec(1, 16, Duration::from_secs(30)), None, move |n: u32| {
        if n == 0 {
            std::thread::sleep(Duration::from_millis(20));
            panic!("job 0 fails");
        }
        count.fetch_add(1, Ordering::SeqCst);
        ControlFlow::Continue(())
    });
    for n in 0..5 {
        pool.submit(n).unwrap();
    }
    eventually("the other jobs done on a new thread", || {
        done.load(Ordering::SeqCst) == 4
    });
    assert_eq!(pool.started(), 2);
    assert_eq!(pool.live(), 1);
    assert_eq!(pool.join(None), 0);
}

#[test]
fn a_finished_handler_closes_the_pool() {
    let pool = WorkerPool::new(spec(2, 16, Duration::from_secs(30)), None, |stop: bool| {
        if stop {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    pool.submit(true).unwrap();
    eventually("the pool finished", || {
        matches!(pool.submit(false), Err(SubmitError::Closed(false)))
    });
    assert_eq!(pool.join(None), 0);
}
