//! One connection's state through its request cycle, and writing its output.

use super::ACCEPT_ERROR_LOG_EVERY;
use crate::http::chunked::ChunkedDecoder;
use crate::http::types::RequestHead;
use crate::http::{HttpError, Lane, StatusCode};
use std::io::{ErrorKind, Write};
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
    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
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

/// Writes what the socket takes now.
pub(super) fn flush(conn: &mut Conn, idle_timeout: Duration) -> std::io::Result<()> {
    while conn.out_pos < conn.out.len() {
        match (&conn.stream).write(&conn.out[conn.out_pos..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                conn.out_pos += n;
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
