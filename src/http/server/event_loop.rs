//! An I/O thread's loop: waits on its poller, accepts (every I/O thread watches the listener),
//! places each new connection on the I/O thread holding the fewest (starting it if it does not
//! run), ends when it is not the first and has held nothing for a while, sheds at capacity (here, or
//! on another thread through a hand-off), collects the handlers' answers, applies deadlines and
//! files each connection's poller interest (level-triggered while it wants to read or write,
//! one-shot while a handler has its request).

use super::conn::{Conn, Phase};
use super::{
    start_io_thread, Handoff, Lanes, Life, ServerConfig, Shared, ACCEPT_BATCH, ACCEPT_PAUSE,
    LISTENER, QUIET_TRIM, SHED_TRIES, SLOW_BODY, WRITE_STALL,
};
use crate::http::poller::{Event, Events, PollMode, Poller};
use crate::http::pool::{self, Done};
use crate::http::{HttpError, Service, StatusCode};
use crossbeam_channel::Receiver;
use std::collections::BTreeSet;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) struct EventLoop {
    /// This thread's place in `shared.io`.
    pub(super) index: usize,
    pub(super) config: ServerConfig,
    pub(super) service: Arc<dyn Service>,
    pub(super) shared: Arc<Shared>,
    pub(super) lanes: Arc<Lanes>,
    pub(super) poller: Arc<Poller>,
    pub(super) listener: Option<Arc<TcpListener>>,
    /// Connections handed over by the other I/O threads.
    pub(super) inbox: Receiver<Handoff>,
    pub(super) accept_paused_until: Option<Instant>,
    pub(super) stop_started: bool,
    pub(super) slots: Vec<Option<Conn>>,
    pub(super) free: Vec<usize>,
    /// Connections this thread holds.
    pub(super) live: usize,
    pub(super) next_generation: u64,
    /// Every connection's next deadline, earliest first.
    pub(super) deadlines: BTreeSet<(Instant, usize)>,
    pub(super) done: Receiver<Done>,
    /// Requests sent to handlers and not answered yet.
    pub(super) in_flight: usize,
    /// Read buffer, allocated on the first read (an I/O thread that never serves holds none).
    pub(super) scratch: Vec<u8>,
    /// The poller's event buffer, allocated by the starting thread: an I/O thread that never
    /// serves allocates nothing (and so gets no malloc arena of its own).
    pub(super) events: Option<Events>,
    /// When the poller last reported anything.
    pub(super) last_activity: Instant,
    /// Answers were queued since the allocator last gave memory back.
    pub(super) served_since_trim: bool,
}

impl EventLoop {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        index: usize,
        config: ServerConfig,
        service: Arc<dyn Service>,
        shared: Arc<Shared>,
        lanes: Arc<Lanes>,
        listener: Arc<TcpListener>,
        inbox: Receiver<Handoff>,
        done: Receiver<Done>,
    ) -> EventLoop {
        EventLoop {
            index,
            config,
            service,
            poller: Arc::clone(&shared.io[index].poller),
            shared,
            lanes,
            listener: Some(listener),
            inbox,
            accept_paused_until: None,
            stop_started: false,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            next_generation: 0,
            deadlines: BTreeSet::new(),
            done,
            in_flight: 0,
            scratch: Vec::new(),
            events: Some(Events::new()),
            last_activity: Instant::now(),
            served_since_trim: false,
        }
    }

    /// Runs until stopped; returns the number of requests still at handlers.
    pub(super) fn run(mut self) -> usize {
        let mut events = self.events.take().unwrap_or_default();
        loop {
            if !self.stop_started && self.shared.stopping.load(Ordering::SeqCst) {
                self.begin_stop();
            }
            let now = Instant::now();
            // Set before `stopping`: read only once stopping (no lock per wake-up otherwise).
            let stop_deadline = if self.stop_started {
                self.shared.stop_deadline.lock().ok().and_then(|d| *d)
            } else {
                None
            };
            if self.stop_started && (self.live == 0 || stop_deadline.is_none_or(|d| now >= d)) {
                break;
            }
            let mut wake = self.deadlines.first().map(|(t, _)| *t);
            let trim_at = self
                .served_since_trim
                .then_some(self.last_activity + QUIET_TRIM);
            for other in [
                self.accept_paused_until,
                stop_deadline,
                trim_at,
                self.end_at(),
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
            let handed = self.take_handoffs();
            let answered = self.collect_done();
            let now = Instant::now();
            if !events.is_empty() || answered || handed {
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
                    let _ =
                        self.poller
                            .modify(listener, Event::readable(LISTENER), PollMode::Level);
                }
            }
            if self.end_at().is_some_and(|t| now >= t) {
                let shared = Arc::clone(&self.shared);
                let io = &shared.io[self.index];
                let mut life = io.life();
                // Nothing was placed here meanwhile (placing raises `assigned` under this lock).
                if io.assigned.load(Ordering::SeqCst) == 0 && self.inbox.is_empty() {
                    io.running.store(false, Ordering::SeqCst);
                    life.parked = Some((self.inbox, self.done));
                    return self.in_flight;
                }
            }
        }
        for slot in 0..self.slots.len() {
            if let Some(conn) = self.slots[slot].take() {
                self.release(slot, conn);
            }
        }
        // Hand-offs that came too late: the server stops.
        self.take_handoffs();
        if let Some(listener) = self.listener.take() {
            let _ = self.poller.delete(&*listener);
        }
        self.in_flight
    }

    pub(super) fn begin_stop(&mut self) {
        self.stop_started = true;
        // The listening socket closes when the last I/O thread lets go of it (each does so
        // here, woken by the stop).
        if let Some(listener) = self.listener.take() {
            let _ = self.poller.delete(&*listener);
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
                Ok((stream, peer)) => self.admit_connection(stream, peer),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.shared
                        .accept_errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .report(&e);
                    let out_of_resources = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if out_of_resources {
                        // Free a descriptor by shedding an idle connection; with none to shed,
                        // wait a moment instead of spinning on a listener that stays readable.
                        if self.shed_one() {
                            // The room made is not taken by a new connection here.
                            self.uncount();
                        } else {
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
                .modify(&**listener, Event::none(LISTENER), PollMode::Level);
            self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        }
    }

    /// A connection just accepted: counted under the cap and placed on the I/O thread holding
    /// the fewest, or at capacity given the room of a shed connection (see `make_room`).
    fn admit_connection(&mut self, stream: TcpStream, peer: SocketAddr) {
        let cap = self.config.max_connections;
        let counted = self
            .shared
            .live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok();
        if counted {
            self.place(stream, peer);
        } else {
            self.make_room(stream, peer, 0);
        }
    }

    /// When this thread ends, if it is not the first and holds nothing: once it has held
    /// nothing for `io_idle_end`.
    fn end_at(&self) -> Option<Instant> {
        (self.index != 0 && !self.stop_started && self.live == 0 && self.in_flight == 0)
            .then_some(self.last_activity + self.config.io_idle_end)
    }

    /// Holds a counted connection here, or hands it to the I/O thread holding fewer (among
    /// equals one that runs), starting that thread if it does not run.
    fn place(&mut self, stream: TcpStream, peer: SocketAddr) {
        let shared = Arc::clone(&self.shared);
        let io = &shared.io;
        let held = |t: usize| io[t].assigned.load(Ordering::Relaxed);
        let mine = held(self.index);
        let least = (0..io.len())
            .filter(|&t| t != self.index)
            .min_by_key(|&t| (held(t), !io[t].running.load(Ordering::Relaxed)))
            .filter(|&t| held(t) < mine);
        let Some(target) = least else {
            return self.keep(stream, peer);
        };
        let mut life = io[target].life();
        if !io[target].running.load(Ordering::SeqCst) {
            // A thread that cannot start was logged once, when it could not (and is not tried
            // again: its channels went with the failed start).
            if self.start(target, &mut life).is_err() {
                drop(life);
                return self.keep(stream, peer);
            }
        }
        // Counted for the target now, so the next connection sees it there.
        io[target].assigned.fetch_add(1, Ordering::SeqCst);
        match io[target].hand(Handoff::Place(stream, peer)) {
            Ok(()) => {
                let _ = io[target].poller.notify();
            }
            Err(handoff) => {
                io[target].assigned.fetch_sub(1, Ordering::SeqCst);
                drop(life);
                if let Handoff::Place(stream, peer) = handoff {
                    self.keep(stream, peer);
                }
            }
        }
    }

    /// Holds a counted connection on this thread.
    fn keep(&mut self, stream: TcpStream, peer: SocketAddr) {
        self.shared.io[self.index]
            .assigned
            .fetch_add(1, Ordering::Relaxed);
        self.add_connection(stream, peer);
    }

    /// Starts I/O thread `target` (not running; `life` is its locked state).
    fn start(&self, target: usize, life: &mut Life) -> std::io::Result<()> {
        let Some(listener) = &self.listener else {
            return Err(std::io::Error::other("the API is stopping"));
        };
        start_io_thread(&self.shared, target, life, |inbox, done| {
            EventLoop::new(
                target,
                self.config.clone(),
                Arc::clone(&self.service),
                Arc::clone(&self.shared),
                Arc::clone(&self.lanes),
                Arc::clone(listener),
                inbox,
                done,
            )
        })
    }

    /// At capacity: shed a connection here to make room for this one; failing that, hand it to
    /// the next I/O thread that has not tried yet (the idle connections may all be there); the
    /// last one answers 503 at once.
    fn make_room(&mut self, stream: TcpStream, peer: SocketAddr, tried: u64) {
        let tried = tried | (1 << self.index);
        if self.shed_one() {
            // The shed connection's place in the counts passes to this one.
            self.add_connection(stream, peer);
            return;
        }
        // Threads that do not run hold nothing to shed.
        let shared = Arc::clone(&self.shared);
        let io = &shared.io;
        let mut handoff = Handoff::MakeRoom {
            stream,
            peer,
            tried,
        };
        for target in (1..io.len())
            .map(|k| (self.index + k) % io.len())
            .filter(|&t| tried & (1 << t) == 0)
        {
            // Under its lock, so it cannot end with the connection in its inbox.
            let _life = io[target].life();
            if !io[target].running.load(Ordering::SeqCst) {
                continue;
            }
            match io[target].hand(handoff) {
                Ok(()) => {
                    let _ = io[target].poller.notify();
                    return;
                }
                Err(h) => handoff = h,
            }
        }
        let (Handoff::MakeRoom { stream, .. } | Handoff::Place(stream, _)) = handoff;
        self.refuse_busy(stream);
    }

    /// Every connection holds a request in progress: say so at once rather than queue.
    fn refuse_busy(&self, stream: TcpStream) {
        let response = self.service.reject(&HttpError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_busy",
            "the API has no free connection; retry shortly",
        ));
        let _ = stream.set_nonblocking(true);
        let _ = (&stream).write(&pool::encode(&response, false, false));
        let _ = stream.shutdown(Shutdown::Write);
    }

    /// Connections the other I/O threads handed over; true when there were any.
    fn take_handoffs(&mut self) -> bool {
        let mut any = false;
        while let Ok(handoff) = self.inbox.try_recv() {
            any = true;
            match handoff {
                Handoff::Place(stream, peer) => {
                    if self.stop_started {
                        self.shared.io[self.index]
                            .assigned
                            .fetch_sub(1, Ordering::Relaxed);
                        self.shared.live.fetch_sub(1, Ordering::SeqCst);
                        drop(stream);
                    } else {
                        self.add_connection(stream, peer);
                    }
                }
                Handoff::MakeRoom {
                    stream,
                    peer,
                    tried,
                } => {
                    if !self.stop_started {
                        self.make_room(stream, peer, tried);
                    }
                }
            }
        }
        any
    }

    /// Holds a connection counted in `shared.live` and in this thread's `assigned`.
    fn add_connection(&mut self, stream: TcpStream, peer: SocketAddr) {
        let unwatched = stream.set_nonblocking(true).err();
        let _ = stream.set_nodelay(true);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let added = match unwatched {
            Some(e) => Err(e),
            None => self
                .poller
                .add(&stream, Event::readable(slot), PollMode::Level),
        };
        if let Err(e) = added {
            log::warn!("cannot watch an API connection from {peer}: {e}");
            self.free.push(slot);
            self.uncount();
            return;
        }
        self.next_generation += 1;
        let now = Instant::now();
        let mut conn = Conn::accepted(stream, peer, self.next_generation, now);
        self.live += 1;
        self.rearm(slot, &mut conn);
        self.slots[slot] = Some(conn);
    }

    /// A connection of this thread's is gone: out of both counts.
    fn uncount(&self) {
        self.shared.io[self.index]
            .assigned
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// Closes the connection nearest its deadline among those of this thread with no request
    /// in progress, after one last read (a request it already sent is served instead); with
    /// none, the one writing an answer that has made no progress the longest, if for
    /// [`WRITE_STALL`] at least (a client that does not read); with none, the one receiving a
    /// body for the longest, if for [`SLOW_BODY`] at least (a client that announced a body and
    /// holds it back). Its place in the counts (the cap's and this thread's) passes to the
    /// caller. False when every connection here is busy with a request at a handler, an
    /// answer still moving or a body begun less than [`SLOW_BODY`] ago.
    pub(super) fn shed_one(&mut self) -> bool {
        self.shed_idle() || self.shed_stalled_writer() || self.shed_slow_body()
    }

    /// Anyone may send `GET /health` with a `Content-Length` and then send nothing, or a byte
    /// now and then: such connections are neither idle nor writing, and with every slot held
    /// so a newcomer got 503 until the body deadline. A body the API takes is small and sent
    /// at once; one still arriving after [`SLOW_BODY`] gives way at capacity.
    fn shed_slow_body(&mut self) -> bool {
        let idle_timeout = self.config.idle_timeout;
        let Some(begun_before) = Instant::now().checked_sub(SLOW_BODY) else {
            return false;
        };
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, conn)| match &conn.as_ref()?.phase {
                Phase::Body(body) => Some((slot, body.deadline)),
                _ => None,
            })
            .filter(|(_, deadline)| {
                deadline
                    .checked_sub(idle_timeout)
                    .is_some_and(|begun| begun <= begun_before)
            })
            .min_by_key(|(_, deadline)| *deadline)
            .map(|(slot, _)| slot);
        self.shed_slot(oldest, "whose request body is slow to come")
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
        self.shed_slot(oldest, "that does not read its answer")
    }

    /// Closes the connection in `slot`, if any, to make room (its place in the counts passes
    /// to the caller); `why` completes "closing an API connection from PEER ...".
    fn shed_slot(&mut self, slot: Option<usize>, why: &str) -> bool {
        let Some((slot, conn)) = slot.and_then(|slot| Some((slot, self.slots[slot].take()?)))
        else {
            return false;
        };
        log::debug!(
            "closing an API connection from {} {why}, to make room",
            conn.peer
        );
        self.close(slot, conn);
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
                self.close(slot, conn);
                return true;
            }
            let alive = self.read_into(&mut conn) && self.step(slot, &mut conn);
            if !alive || matches!(conn.phase, Phase::Head) {
                log::debug!(
                    "closing an idle API connection from {} to make room",
                    conn.peer
                );
                self.close(slot, conn);
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
            match self
                .poller
                .modify(&conn.stream, Event::new(slot, wanted.0, wanted.1), mode)
            {
                Ok(()) => {
                    conn.armed = Some(wanted);
                    conn.oneshot = oneshot;
                }
                Err(e) => log::warn!("cannot watch the API connection from {}: {e}", conn.peer),
            }
        }
    }

    /// Closes a connection and takes it out of the counts.
    pub(super) fn release(&mut self, slot: usize, conn: Conn) {
        self.close(slot, conn);
        self.uncount();
    }

    /// Closes a connection, leaving its place in the counts to the caller (a shed connection's
    /// to the new one).
    fn close(&mut self, slot: usize, conn: Conn) {
        let _ = self.poller.delete(&conn.stream);
        if let Some(old) = conn.deadline {
            self.deadlines.remove(&(old, slot));
        }
        if let Phase::Body(body) = &conn.phase {
            self.unreserve_body(body.reserved);
        }
        self.live -= 1;
        self.free.push(slot);
        drop(conn);
    }

    /// Reserves `bytes` of the body budget all threads share; false when it is spent.
    pub(super) fn reserve_body(&self, bytes: usize) -> bool {
        let budget = self.config.body_budget_bytes;
        self.shared
            .body_reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                n.checked_add(bytes).filter(|&total| total <= budget)
            })
            .is_ok()
    }

    pub(super) fn unreserve_body(&self, bytes: usize) {
        let _ = self
            .shared
            .body_reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(bytes))
            });
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
