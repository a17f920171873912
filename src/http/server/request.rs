//! A connection's requests on the I/O thread: reading, parsing the head, admission, reading the
//! body, dispatching to a lane (or serving inline), and queueing the answer.

use super::conn::{flush, shrink_input, take_body, too_large, BodyReading, BodyState, Conn, Phase};
use super::event_loop::EventLoop;
use super::{LINGER, LINGER_BYTES, READ_PER_EVENT, SCRATCH};
use crate::http::chunked::{ChunkError, ChunkedDecoder};
use crate::http::parse::{self, HeadStatus, ParsedHead};
use crate::http::pool::{self, Job};
use crate::http::types::{BodyLength, Method, Request, Response};
use crate::http::{Admission, HttpError, Lane, StatusCode};
use crate::workers::SubmitError;
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::time::Instant;

/// Room for an answer's encoded head (status line and fields) without growing.
const HEAD_CAPACITY: usize = 256;

impl EventLoop {
    /// Reads what the connection's phase may take now; false when the connection failed.
    pub(super) fn read_into(&mut self, conn: &mut Conn) -> bool {
        let mut cap = match &conn.phase {
            Phase::Head => (self.config.max_head_bytes + 1).saturating_sub(conn.buf.len()),
            Phase::Body(body) => match body.reading {
                BodyReading::Exact(n) => {
                    (n + self.config.max_head_bytes).saturating_sub(conn.buf.len())
                }
                BodyReading::Chunked(_) => SCRATCH,
            },
            Phase::Linger { .. } => usize::MAX,
            Phase::Dispatched | Phase::Flush { .. } => 0,
        };
        if self.scratch.is_empty() {
            self.scratch = vec![0; SCRATCH];
        }
        let mut budget = READ_PER_EVENT;
        while cap > 0 && budget > 0 && !conn.eof {
            let want = cap.min(budget).min(self.scratch.len());
            match conn.stream.read(&mut self.scratch[..want]) {
                Ok(0) => conn.eof = true,
                Ok(n) => {
                    budget -= n;
                    if let Phase::Linger { drained, .. } = &mut conn.phase {
                        *drained += n;
                        if *drained > LINGER_BYTES {
                            return false;
                        }
                    } else {
                        if conn.buf.is_empty() && matches!(conn.phase, Phase::Head) {
                            conn.first_byte.get_or_insert_with(Instant::now);
                        }
                        conn.buf.extend_from_slice(&self.scratch[..n]);
                        cap -= n;
                    }
                    if n < want {
                        // A short read emptied the socket: no second read only to hear EAGAIN
                        // (the poller reports the connection again when more arrives).
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        true
    }

    /// Advances the connection as far as its buffers allow; false when it is to be closed.
    pub(super) fn step(&mut self, slot: usize, conn: &mut Conn) -> bool {
        loop {
            if conn.writing() && flush(conn, self.config.idle_timeout).is_err() {
                return false;
            }
            let writing = conn.writing();
            match conn.phase {
                Phase::Flush { close } => {
                    if writing {
                        return true;
                    }
                    if close && self.stop_started {
                        return false;
                    }
                    if close {
                        let _ = conn.stream.shutdown(Shutdown::Write);
                        conn.buf = Vec::new();
                        conn.phase = Phase::Linger {
                            until: Instant::now() + LINGER,
                            drained: 0,
                        };
                        return !conn.eof;
                    }
                    let now = Instant::now();
                    conn.phase = Phase::Head;
                    conn.ready_since = now;
                    conn.first_byte = (!conn.buf.is_empty()).then_some(now);
                    shrink_input(&mut conn.buf);
                }
                Phase::Linger { .. } => return !conn.eof,
                Phase::Dispatched => return true,
                Phase::Head => {
                    if self.stop_started {
                        return false;
                    }
                    if conn.buf.is_empty() {
                        return !conn.eof;
                    }
                    match parse::parse_head(&conn.buf, conn.peer, self.config.max_head_bytes) {
                        Ok(HeadStatus::Partial) => return !conn.eof,
                        Err(error) => self.fail(conn, &error),
                        Ok(HeadStatus::Complete(parsed)) => {
                            conn.buf.drain(..parsed.head_len);
                            conn.first_byte = None;
                            self.begin_request(conn, *parsed);
                        }
                    }
                }
                Phase::Body(ref mut body) => {
                    let complete = match &mut body.reading {
                        BodyReading::Exact(n) => Ok(conn.buf.len() >= *n),
                        BodyReading::Chunked(decoder) => match decoder.feed(&conn.buf) {
                            Ok(used) => {
                                conn.buf.drain(..used);
                                Ok(decoder.is_done())
                            }
                            Err(ChunkError::TooLarge) => Err(too_large(self.config.max_body_bytes)),
                            Err(ChunkError::Malformed(what)) => Err(HttpError::bad_request(
                                format!("malformed chunked body: {what}"),
                            )),
                        },
                    };
                    match complete {
                        Err(error) => self.fail(conn, &error),
                        Ok(false) => return !conn.eof,
                        Ok(true) => {
                            let Phase::Body(body) =
                                std::mem::replace(&mut conn.phase, Phase::Dispatched)
                            else {
                                unreachable!("matched Phase::Body above");
                            };
                            let BodyState {
                                head,
                                keep_alive,
                                lane,
                                reading,
                                reserved,
                                ..
                            } = *body;
                            self.unreserve_body(reserved);
                            let bytes = match reading {
                                BodyReading::Exact(n) => take_body(&mut conn.buf, n),
                                BodyReading::Chunked(decoder) => {
                                    shrink_input(&mut conn.buf);
                                    decoder.into_body()
                                }
                            };
                            let request = Request { head, body: bytes };
                            self.dispatch(slot, conn, request, keep_alive, lane);
                        }
                    }
                }
            }
        }
    }

    /// A complete head: ask the service, then read the body (or answer at once).
    pub(super) fn begin_request(&mut self, conn: &mut Conn, parsed: ParsedHead) {
        let ParsedHead {
            head,
            keep_alive,
            expect_continue,
            ..
        } = parsed;
        let has_body = head.body_length != BodyLength::Empty;
        let head_only = head.method == Method::HEAD;
        // The service is guarded (`http::guard`): a panic in it comes back as an answer.
        let lane = match self.service.admit(&head) {
            Admission::Serve(lane) => lane,
            Admission::Answer(response) => {
                // The body was not read: the connection cannot carry another request.
                self.respond(conn, response, head_only, keep_alive && !has_body);
                return;
            }
        };
        let max_body = self.config.max_body_bytes;
        let (reading, reserved) = match head.body_length {
            BodyLength::Empty => (BodyReading::Exact(0), 0),
            BodyLength::Exact(n) if n > max_body as u64 => {
                let response = self.service.reject(&too_large(max_body));
                self.respond(conn, response, head_only, false);
                return;
            }
            BodyLength::Exact(n) => (BodyReading::Exact(n as usize), n as usize),
            BodyLength::Chunked => (
                BodyReading::Chunked(ChunkedDecoder::new(max_body)),
                max_body,
            ),
        };
        if !self.reserve_body(reserved) {
            let response = self.service.reject(&HttpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_busy",
                "too many request bodies are being received at once; retry shortly",
            ));
            self.respond(conn, response, head_only, false);
            return;
        }
        if expect_continue && has_body && conn.buf.is_empty() {
            conn.queue(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(), None);
            conn.wrote(Instant::now(), self.config.idle_timeout);
        }
        conn.phase = Phase::Body(Box::new(BodyState {
            head,
            keep_alive,
            lane,
            reading,
            reserved,
            deadline: Instant::now() + self.config.idle_timeout,
        }));
    }

    pub(super) fn dispatch(
        &mut self,
        slot: usize,
        conn: &mut Conn,
        request: Request,
        keep_alive: bool,
        lane: Lane,
    ) {
        let head_only = request.head.method == Method::HEAD;
        if lane == Lane::Inline {
            let response = self.service.serve(request);
            self.respond(conn, response, head_only, keep_alive);
            return;
        }
        let job = Job {
            owner: self.index,
            slot,
            generation: conn.generation,
            request,
            keep_alive,
        };
        let lane = match lane {
            Lane::Inline | Lane::Quick => &self.lanes.quick,
            Lane::Slow => &self.lanes.slow,
        };
        match lane.submit(job) {
            Ok(()) => {
                conn.phase = Phase::Dispatched;
                self.in_flight += 1;
            }
            Err(refused) => {
                if let SubmitError::NoThread(_, e) = refused {
                    log::error!("cannot start an API handler thread: {e}");
                }
                let response = self.service.reject(&HttpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_busy",
                    "too many requests are waiting; retry shortly",
                ));
                self.respond(conn, response, head_only, false);
            }
        }
    }

    /// Answers from the I/O thread (refusals, inline answers); the connection closes unless
    /// `keep_alive`. The head is encoded into a buffer of its own and the body queued after it
    /// as it is (a cached body is not copied: both go out in one `writev`).
    pub(super) fn respond(
        &mut self,
        conn: &mut Conn,
        response: Response,
        head_only: bool,
        keep_alive: bool,
    ) {
        if let Phase::Body(body) = &conn.phase {
            self.unreserve_body(body.reserved);
        }
        let keep = keep_alive && !response.close && !self.stop_started;
        let mut head = Vec::with_capacity(HEAD_CAPACITY);
        pool::with_date(|date| response.encode_head(&mut head, keep, date));
        let send_body = !response.wire_body(head_only).is_empty();
        conn.queue(head, send_body.then_some(response.body));
        self.served_since_trim = true;
        conn.wrote(Instant::now(), self.config.idle_timeout);
        conn.phase = Phase::Flush { close: !keep };
        if !keep {
            conn.buf = Vec::new();
        }
    }

    pub(super) fn fail(&mut self, conn: &mut Conn, error: &HttpError) {
        log::debug!("API request from {} refused: {error}", conn.peer);
        let response = self.service.reject(error);
        self.respond(conn, response, false, false);
    }
}
