//! One connection's state through its request cycle, and writing its output.

use super::ACCEPT_ERROR_LOG_EVERY;
use crate::http::chunked::ChunkedDecoder;
use crate::http::types::RequestHead;
use crate::http::{Body, HttpError, Lane, StatusCode};
use std::io::{ErrorKind, IoSlice, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub(super) enum Phase {
    Head,
    Body(Box<BodyState>),
    Dispatched,
    Flush { close: bool },
    Linger { until: Instant, drained: usize },
}

pub(super) struct BodyState {
    pub(super) head: RequestHead,
    pub(super) keep_alive: bool,
    pub(super) lane: Lane,
    pub(super) reading: BodyReading,
    /// Bytes of the body budget this request holds.
    pub(super) reserved: usize,
    pub(super) deadline: Instant,
}

pub(super) enum BodyReading {
    Exact(usize),
    Chunked(ChunkedDecoder),
}

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) generation: u64,
    pub(super) phase: Phase,
    /// Bytes read and not yet consumed: a head being received, a body, pipelined requests.
    pub(super) buf: Vec<u8>,
    /// Output not yet written: `out[out_pos..]`, then the body in `tail` from `tail_pos` (a
    /// cached body is sent from the cache itself, in the same `writev` as its head).
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    pub(super) tail: Option<Body>,
    pub(super) tail_pos: usize,
    /// The client shut its side.
    pub(super) eof: bool,
    /// When the connection became ready for its next request.
    pub(super) ready_since: Instant,
    /// When the first byte of the current head arrived.
    pub(super) first_byte: Option<Instant>,
    pub(super) write_deadline: Instant,
    /// The deadline as filed in `EventLoop::deadlines`.
    pub(super) deadline: Option<Instant>,
    /// The interest the poller holds for it (`None`: disarmed after an event).
    pub(super) armed: Option<(bool, bool)>,
    /// Registered one-shot (a request at a handler: no interest) rather than level-triggered.
    pub(super) oneshot: bool,
}

impl Conn {
    /// Output is waiting to be written.
    pub(super) fn writing(&self) -> bool {
        self.out_pos < self.out.len() || self.tail.is_some()
    }

    /// Queues `head` and then `body` (not copied) after what is already queued.
    pub(super) fn queue(&mut self, head: &[u8], body: Option<Body>) {
        if let Some(pending) = self.tail.take() {
            // Only one answer is pending at a time; should another follow, keep the order.
            self.out.extend_from_slice(&pending[self.tail_pos..]);
            self.tail_pos = 0;
        }
        self.out.extend_from_slice(head);
        self.tail = body.filter(|b| !b.is_empty());
    }
}

#[derive(Default)]
pub(super) struct ErrorLog {
    pub(super) last: Option<Instant>,
    pub(super) suppressed: u64,
}

impl ErrorLog {
    pub(super) fn report(&mut self, error: &std::io::Error) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < ACCEPT_ERROR_LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::warn!(
                "cannot accept an API connection: {error} ({} more since the last report)",
                self.suppressed
            );
        } else {
            log::warn!("cannot accept an API connection: {error}");
        }
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

pub(super) fn too_large(limit: usize) -> HttpError {
    HttpError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body is larger than {limit} bytes"),
    )
}

/// Writes what the socket takes now: the queued bytes and the body after them in one `writev`.
pub(super) fn flush(conn: &mut Conn, idle_timeout: Duration) -> std::io::Result<()> {
    while conn.writing() {
        let head = &conn.out[conn.out_pos..];
        let body = conn.tail.as_ref().map_or(&[][..], |b| &b[conn.tail_pos..]);
        let written = if head.is_empty() {
            (&conn.stream).write(body)
        } else if body.is_empty() {
            (&conn.stream).write(head)
        } else {
            (&conn.stream).write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
        };
        match written {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                let from_head = n.min(head.len());
                conn.out_pos += from_head;
                conn.tail_pos += n - from_head;
                if conn.tail.as_ref().is_some_and(|b| conn.tail_pos >= b.len()) {
                    conn.tail = None;
                    conn.tail_pos = 0;
                }
                conn.write_deadline = Instant::now() + idle_timeout;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if conn.out.capacity() > 64 * 1024 {
        conn.out = Vec::new();
    } else {
        conn.out.clear();
    }
    conn.out_pos = 0;
    Ok(())
}
