//! The I/O thread's loop: waits on the poller, accepts, sheds at capacity, collects the
//! handlers' answers, applies deadlines and files each connection's poller interest
//! (level-triggered while it wants to read or write, one-shot while a handler has its request).

use super::conn::{Conn, ErrorLog, Phase};
use super::{
    ServerConfig, ACCEPT_BATCH, ACCEPT_PAUSE, LISTENER, QUIET_TRIM, SHED_TRIES, WRITE_STALL,
};
use crate::http::pool::{self, Done, Job};
use crate::http::{HttpError, Service, StatusCode};
use crate::workers::WorkerPool;
use crossbeam_channel::Receiver;
use polling::{Event, Events, PollMode, Poller};
use std::collections::BTreeSet;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) struct EventLoop {
    pub(super) config: ServerConfig,
    pub(super) service: Arc<dyn Service>,
    pub(super) poller: Arc<Poller>,
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) stop_deadline: Arc<Mutex<Option<Instant>>>,
    pub(super) listener: Option<TcpListener>,
    pub(super) accept_paused_until: Option<Instant>,
    pub(super) stop_started: bool,
    pub(super) slots: Vec<Option<Conn>>,
    pub(super) free: Vec<usize>,
    pub(super) live: usize,
    pub(super) next_generation: u64,
    /// Every connection's next deadline, earliest first.
    pub(super) deadlines: BTreeSet<(Instant, usize)>,
    pub(super) quick: WorkerPool<Job>,
    pub(super) slow: WorkerPool<Job>,
    pub(super) done: Receiver<Done>,
    /// Requests sent to handlers and not answered yet.
    pub(super) in_flight: usize,
    pub(super) body_reserved: usize,
    pub(super) scratch: Vec<u8>,
    pub(super) accept_errors: ErrorLog,
    /// When the poller last reported anything.
    pub(super) last_activity: Instant,
    /// Answers were queued since the allocator last gave memory back.
    pub(super) served_since_trim: bool,
}

impl EventLoop {
    /// Runs until stopped; returns the number of requests still at handlers, and the handler
    /// pools for the caller to close and join.
    pub(super) fn run(mut self) -> (usize, [WorkerPool<Job>; 2]) {
        let mut events = Events::new();
        loop {
            if !self.stop_started && self.stopping.load(Ordering::SeqCst) {
                self.begin_stop();
            }
            let now = Instant::now();
            let stop_deadline = self.stop_deadline.lock().ok().and_then(|d| *d);
            if self.stop_started && (self.live == 0 || stop_deadline.is_none_or(|d| now >= d)) {
                break;
            }
            let mut wake = self.deadlines.first().map(|(t, _)| *t);
            let trim_at = self
                .served_since_trim
                .then_some(self.last_activity + QUIET_TRIM);
            for other in [
                self.accept_paused_until,
                stop_deadline.filter(|_| self.stop_started),
                trim_at,
            ]
            .into_iter()
            .flatten()
            {
                wake = Some(wake.map_or(other, |w| w.min(other)));
            }
            let timeout = wake.map(|w| w.saturating_duration_since(now));
            events.clear();
            if let Err(e) = self.poller.wait(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    log::error!("API poller failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                if event.key == LISTENER {
                    self.accept();
                } else {
                    self.on_event(event.key, event.readable);
                }
            }
            let answered = self.collect_done();
            let now = Instant::now();
            if !events.is_empty() || answered {
                self.last_activity = now;
            }
            self.expire(now);
            if self.served_since_trim && now >= self.last_activity + QUIET_TRIM {
                self.served_since_trim = false;
                give_back_free_memory();
            }
            if self.accept_paused_until.is_some_and(|t| now >= t) {
                self.accept_paused_until = None;
                if let Some(listener) = &self.listener {
                    let _ = self.poller.modify_with_mode(
                        listener,
                        Event::readable(LISTENER),
                        PollMode::Level,
                    );
                }
            }
        }
        for slot in 0..self.slots.len() {
            if let Some(conn) = self.slots[slot].take() {
                self.release(slot, conn);
            }
        }
        (self.in_flight, [self.quick, self.slow])
    }

    pub(super) fn begin_stop(&mut self) {
        self.stop_started = true;
        if let Some(listener) = self.listener.take() {
            let _ = self.poller.delete(&listener);
        }
        for slot in 0..self.slots.len() {
            let Some(conn) = self.slots[slot].take() else {
                continue;
            };
            match conn.phase {
                Phase::Dispatched | Phase::Flush { .. } => self.slots[slot] = Some(conn),
                Phase::Head | Phase::Body(_) | Phase::Linger { .. } => self.release(slot, conn),
            }
        }
    }

    pub(super) fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.add_connection(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.accept_errors.report(&e);
                    let out_of_resources = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if out_of_resources {
                        // Free a descriptor by shedding an idle connection; with none to shed,
                        // wait a moment instead of spinning on a listener that stays readable.
                        if !self.shed_one() {
                            self.pause_accepting();
                        }
                        return;
                    }
                }
            }
        }
    }

    pub(super) fn pause_accepting(&mut self) {
        if let Some(listener) = &self.listener {
            let _ = self
                .poller
                .modify_with_mode(listener, Event::none(LISTENER), PollMode::Level);
            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        }
    }

    pub(super) fn add_connection(&mut self, stream: TcpStream, peer: SocketAddr) {
        if self.live >= self.config.max_connections && !self.shed_one() {
            // Every slot holds a request in progress: say so at once rather than queue.
            let response = self.service.reject(&HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "the API has no free connection; retry shortly",
            ));
            let _ = stream.set_nonblocking(true);
            let _ = (&stream).write(&pool::encode(&response, false, false));
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        // SAFETY: every connection is deleted from the poller in `release` before it is dropped.
        let added = unsafe {
            self.poller
                .add_with_mode(&stream, Event::readable(slot), PollMode::Level)
        };
        if let Err(e) = added {
            log::warn!("cannot watch an API connection from {peer}: {e}");
            self.free.push(slot);
            return;
        }
        self.next_generation += 1;
        let now = Instant::now();
        let mut conn = Conn::accepted(stream, peer, self.next_generation, now);
        self.live += 1;
        self.rearm(slot, &mut conn);
        self.slots[slot] = Some(conn);
    }

    /// Closes the connection nearest its deadline among those with no request in progress,
    /// after one last read (a request it already sent is served instead); with none, the one
    /// writing an answer that has made no progress the longest, if for [`WRITE_STALL`] at least
    /// (a client that does not read). False when every connection is busy with a request or
    /// with an answer still moving.
    pub(super) fn shed_one(&mut self) -> bool {
        self.shed_idle() || self.shed_stalled_writer()
    }

    fn shed_stalled_writer(&mut self) -> bool {
        let Some(stalled_before) = Instant::now().checked_sub(WRITE_STALL) else {
            return false;
        };
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, conn)| Some((slot, conn.as_ref()?)))
            .filter(|(_, conn)| matches!(conn.phase, Phase::Flush { .. }) && conn.writing())
            .filter(|(_, conn)| conn.last_write <= stalled_before)
            .min_by_key(|(_, conn)| conn.last_write)
            .map(|(slot, _)| slot);
        let Some(conn) = oldest.and_then(|slot| Some((slot, self.slots[slot].take()?))) else {
            return false;
        };
        log::debug!(
            "closing an API connection from {} that does not read its answer, to make room",
            conn.1.peer
        );
        self.release(conn.0, conn.1);
        true
    }

    fn shed_idle(&mut self) -> bool {
        let candidates: Vec<usize> = self
            .deadlines
            .iter()
            .map(|(_, slot)| *slot)
            .filter(|slot| {
                matches!(
                    self.slots[*slot].as_ref().map(|c| &c.phase),
                    Some(Phase::Head | Phase::Linger { .. })
                )
            })
            .take(SHED_TRIES)
            .collect();
        for slot in candidates {
            let Some(mut conn) = self.slots[slot].take() else {
                continue;
            };
            if matches!(conn.phase, Phase::Linger { .. }) {
                self.release(slot, conn);
                return true;
            }
            let alive = self.read_into(&mut conn) && self.step(slot, &mut conn);
            if !alive || matches!(conn.phase, Phase::Head) {
                log::debug!(
                    "closing an idle API connection from {} to make room",
                    conn.peer
                );
                self.release(slot, conn);
                return true;
            }
            self.settle(slot, conn, true);
        }
        false
    }

    pub(super) fn on_event(&mut self, slot: usize, readable: bool) {
        let Some(mut conn) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        // A one-shot registration was disarmed when the poller reported the event; a
        // level-triggered one stays as it is.
        if conn.oneshot {
            conn.armed = None;
        }
        let mut alive = true;
        if readable {
            alive = self.read_into(&mut conn);
        }
        if alive {
            alive = self.step(slot, &mut conn);
        }
        self.settle(slot, conn, alive);
    }

    /// Answers from the handler threads; true when there were any.
    pub(super) fn collect_done(&mut self) -> bool {
        let mut any = false;
        while let Ok(done) = self.done.try_recv() {
            any = true;
            self.in_flight = self.in_flight.saturating_sub(1);
            let Some(mut conn) = self.slots.get_mut(done.slot).and_then(Option::take) else {
                continue;
            };
            if conn.generation != done.generation || !matches!(conn.phase, Phase::Dispatched) {
                self.slots[done.slot] = Some(conn);
                continue;
            }
            conn.queue(done.bytes, None);
            self.served_since_trim = true;
            conn.wrote(Instant::now(), self.config.idle_timeout);
            conn.phase = Phase::Flush { close: done.close };
            let alive = self.step(done.slot, &mut conn);
            self.settle(done.slot, conn, alive);
        }
        any
    }

    pub(super) fn expire(&mut self, now: Instant) {
        while let Some(&(when, slot)) = self.deadlines.first() {
            if when > now {
                return;
            }
            self.deadlines.pop_first();
            let Some(mut conn) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            conn.deadline = None;
            let alive = match conn.phase {
                // Idle (or only blank lines): close quietly, no unprompted answer.
                Phase::Head if conn.buf.iter().all(|b| matches!(b, b'\r' | b'\n')) => false,
                Phase::Head | Phase::Body(_) => {
                    let (part, limit) = match conn.phase {
                        Phase::Head => ("head", self.config.head_timeout),
                        _ => ("body", self.config.idle_timeout),
                    };
                    let error = HttpError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!(
                            "the request {part} did not arrive within {} s",
                            limit.as_secs_f64()
                        ),
                    );
                    self.fail(&mut conn, &error);
                    self.step(slot, &mut conn)
                }
                Phase::Dispatched => true,
                // A client that does not read its answer, or a finished linger.
                Phase::Flush { .. } | Phase::Linger { .. } => false,
            };
            self.settle(slot, conn, alive);
        }
    }

    pub(super) fn settle(&mut self, slot: usize, mut conn: Conn, alive: bool) {
        if alive {
            self.rearm(slot, &mut conn);
            self.slots[slot] = Some(conn);
        } else {
            self.release(slot, conn);
        }
    }

    /// Files the connection's deadline and poller interest for its phase.
    pub(super) fn rearm(&mut self, slot: usize, conn: &mut Conn) {
        let writing = conn.writing();
        let (read, deadline) = match &conn.phase {
            Phase::Head => (
                true,
                Some(match conn.first_byte {
                    Some(first) => first + self.config.head_timeout,
                    None => conn.ready_since + self.config.idle_timeout,
                }),
            ),
            Phase::Body(body) => (true, Some(body.deadline)),
            Phase::Dispatched => (false, None),
            Phase::Flush { .. } => (false, Some(conn.write_deadline)),
            Phase::Linger { until, .. } => (true, Some(*until)),
        };
        let deadline = match (deadline, writing) {
            (Some(d), true) => Some(d.min(conn.write_deadline)),
            (None, true) => Some(conn.write_deadline),
            (d, false) => d,
        };
        if conn.deadline != deadline {
            if let Some(old) = conn.deadline {
                self.deadlines.remove(&(old, slot));
            }
            if let Some(new) = deadline {
                self.deadlines.insert((new, slot));
            }
            conn.deadline = deadline;
        }
        let wanted = (read, writing);
        // Level-triggered while the connection wants something (no re-arm per request). One
        // that wants nothing (its request is at a handler) is registered one-shot with no
        // interest, and stays disarmed once it reported: a hang-up is reported whatever the
        // interest, and level-triggered it would be reported again and again while the handler
        // works.
        let change = match conn.armed {
            Some(current) => current != wanted,
            None => wanted != (false, false),
        };
        if change {
            let oneshot = wanted == (false, false);
            let mode = if oneshot {
                PollMode::Oneshot
            } else {
                PollMode::Level
            };
            match self.poller.modify_with_mode(
                &conn.stream,
                Event::new(slot, wanted.0, wanted.1),
                mode,
            ) {
                Ok(()) => {
                    conn.armed = Some(wanted);
                    conn.oneshot = oneshot;
                }
                Err(e) => log::warn!("cannot watch the API connection from {}: {e}", conn.peer),
            }
        }
    }

    pub(super) fn release(&mut self, slot: usize, conn: Conn) {
        let _ = self.poller.delete(&conn.stream);
        if let Some(old) = conn.deadline {
            self.deadlines.remove(&(old, slot));
        }
        if let Phase::Body(body) = &conn.phase {
            self.body_reserved = self.body_reserved.saturating_sub(body.reserved);
        }
        self.live -= 1;
        self.free.push(slot);
        drop(conn);
    }
}

/// Asks the allocator to give the kernel back the free pages of every arena. Serving requests
/// frees what it allocated, but glibc keeps freed blocks that are not at the top of an arena
/// (the answers of a burst of requests, freed in another order than allocated): without this
/// the resident size keeps the burst's high-water mark. Called once the API is quiet, so it
/// costs one pass over the free lists per burst, not per request.
fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
