//! One connection's state through its request cycle, and writing its output.

use super::{ACCEPT_ERROR_LOG_EVERY, ANSWER_WRITE_TOTAL};
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
    /// When output was last queued or written: how long a connection that is writing has
    /// made no progress (a client that does not read), to pick one to shed at capacity.
    pub(super) last_write: Instant,
    /// When the output now waiting began to be queued (nothing was waiting before): the
    /// answers' total write deadline counts from here, however slowly the client reads.
    pub(super) answer_since: Instant,
    /// The deadline as filed in `EventLoop::deadlines`.
    pub(super) deadline: Option<Instant>,
    /// The interest the poller holds for it (`None`: disarmed after an event).
    pub(super) armed: Option<(bool, bool)>,
    /// Registered one-shot (a request at a handler: no interest) rather than level-triggered.
    pub(super) oneshot: bool,
}

impl Conn {
    /// A connection just accepted: reading its first head, watched for reads (level-triggered).
    pub(super) fn accepted(
        stream: TcpStream,
        peer: SocketAddr,
        generation: u64,
        now: Instant,
    ) -> Conn {
        Conn {
            stream,
            peer,
            generation,
            phase: Phase::Head,
            buf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            tail: None,
            tail_pos: 0,
            eof: false,
            ready_since: now,
            first_byte: None,
            write_deadline: now,
            last_write: now,
            answer_since: now,
            deadline: None,
            armed: Some((true, false)),
            oneshot: false,
        }
    }

    /// Output is waiting to be written.
    pub(super) fn writing(&self) -> bool {
        self.out_pos < self.out.len() || self.tail.is_some()
    }

    /// Queues encoded bytes (an answer, or its head) and then `body` (not copied) after what
    /// is already queued. The bytes become the output buffer when nothing is waiting (no
    /// copy), else they are appended.
    pub(super) fn queue(&mut self, bytes: Vec<u8>, body: Option<Body>) {
        if !self.writing() {
            self.answer_since = Instant::now();
        }
        if let Some(pending) = self.tail.take() {
            // Only one answer is pending at a time; should another follow, keep the order.
            self.out.extend_from_slice(&pending[self.tail_pos..]);
            self.tail_pos = 0;
        }
        if self.out_pos >= self.out.len() {
            self.out = bytes;
            self.out_pos = 0;
        } else {
            self.out.extend_from_slice(&bytes);
        }
        self.tail = body.filter(|b| !b.is_empty());
    }

    /// Records progress (output queued or written) at `now`: the write deadline is `idle_timeout`
    /// from now, but never later than [`ANSWER_WRITE_TOTAL`] (or `idle_timeout` when longer)
    /// after the waiting output began, so a client reading a trickle cannot hold it for long.
    pub(super) fn wrote(&mut self, now: Instant, idle_timeout: Duration) {
        self.last_write = now;
        self.write_deadline =
            (now + idle_timeout).min(self.answer_since + ANSWER_WRITE_TOTAL.max(idle_timeout));
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
                conn.wrote(Instant::now(), idle_timeout);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    // Every answer arrives in its own buffer (see `queue`): keeping the last one would only
    // hold memory between requests (up to the largest answer, per connection).
    conn.out = Vec::new();
    conn.out_pos = 0;
    Ok(())
}

/// Input capacity a connection keeps between requests; a bigger buffer (a big head or body
/// went through it) is given back.
pub(super) const KEEP_INPUT: usize = 4096;

/// Takes the first `n` bytes of `buf` (a request body) without copying them when they are all
/// there is; what follows (pipelined requests) stays in `buf`, in a buffer of its own size.
pub(super) fn take_body(buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    let rest = buf.split_off(n.min(buf.len()));
    let body = std::mem::replace(buf, rest);
    shrink_input(buf);
    body
}

/// Gives back the input buffer's capacity beyond [`KEEP_INPUT`] (keeping its bytes).
pub(super) fn shrink_input(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_INPUT {
        if buf.is_empty() {
            *buf = Vec::new();
        } else {
            *buf = buf.as_slice().to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connection whose peer is the returned stream.
    fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let now = Instant::now();
        let mut conn = Conn::accepted(server, peer, 1, now);
        conn.phase = Phase::Dispatched;
        conn.armed = None;
        (conn, client)
    }

    #[test]
    fn an_answer_is_queued_without_a_copy_and_its_buffer_freed_once_written() {
        let (mut conn, mut client) = pair();
        // Smaller than any "big buffer" threshold: no answer's buffer outlives its writing.
        let answer = vec![b'x'; 32 * 1024];
        let pointer = answer.as_ptr();
        conn.queue(answer, None);
        assert_eq!(conn.out.as_ptr(), pointer, "the answer was copied");
        conn.queue(b"tail".to_vec(), None);
        assert_eq!(conn.out.len(), 32 * 1024 + 4, "a second answer is appended");
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = [0u8; 8192];
            while got.len() < 32 * 1024 + 4 {
                let n = client.read(&mut chunk).unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&chunk[..n]);
            }
            got
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !conn.out.is_empty() {
            flush(&mut conn, Duration::from_secs(5)).unwrap();
            assert!(Instant::now() < deadline, "the answer was not written");
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = reader.join().unwrap();
        assert!(got.ends_with(b"xtail"));
        assert_eq!(
            conn.out.capacity(),
            0,
            "the written answer's buffer was kept"
        );
        assert_eq!(conn.out_pos, 0);
    }

    /// Reads `len` bytes from `client` on a thread.
    fn read_all(mut client: TcpStream, len: usize) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = [0u8; 8192];
            while got.len() < len {
                let n = client.read(&mut chunk).unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&chunk[..n]);
            }
            got
        })
    }

    #[test]
    fn a_shared_body_goes_out_after_its_head_from_the_cache_across_partial_writes() {
        let (mut conn, client) = pair();
        // Larger than a socket buffer takes at once: the writes are cut short and resumed.
        let cached: std::sync::Arc<[u8]> = (0..32_000_000u32).map(|i| i as u8).collect();
        conn.queue(b"HEAD1".to_vec(), Some(Body::Shared(cached.clone())));
        assert!(conn.writing());
        flush(&mut conn, Duration::from_secs(5)).unwrap();
        assert!(
            conn.writing(),
            "32 MB went out in one write; the test proves nothing"
        );
        // Another answer queued while the body is pending keeps the order.
        conn.queue(b"HEAD2".to_vec(), Some(Body::Owned(b"two".to_vec())));
        let total = 5 + cached.len() + 5 + 3;
        let reader = read_all(client, total);
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.writing() {
            flush(&mut conn, Duration::from_secs(5)).unwrap();
            assert!(Instant::now() < deadline, "the answers were not written");
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = reader.join().unwrap();
        assert_eq!(got.len(), total);
        assert_eq!(&got[..5], b"HEAD1");
        assert!(got[5..5 + cached.len()] == *cached);
        assert_eq!(&got[5 + cached.len()..], b"HEAD2two");
        assert!(conn.tail.is_none());
        assert_eq!(
            (conn.out.capacity(), conn.out_pos, conn.tail_pos),
            (0, 0, 0)
        );
        // An empty body is no body.
        conn.queue(b"H".to_vec(), Some(Body::Owned(Vec::new())));
        assert!(conn.tail.is_none());
    }

    #[test]
    fn a_body_is_taken_without_a_copy_and_a_big_input_buffer_is_given_back() {
        let mut buf = vec![7u8; 600 * 1024];
        let pointer = buf.as_ptr();
        let body = take_body(&mut buf, 600 * 1024);
        assert_eq!(body.len(), 600 * 1024);
        assert_eq!(body.as_ptr(), pointer, "the body was copied");
        assert_eq!(buf.capacity(), 0);

        // A pipelined request after the body stays, in a buffer of its own size.
        let mut buf = vec![1u8; 600 * 1024];
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let body = take_body(&mut buf, 600 * 1024);
        assert_eq!(body, vec![1u8; 600 * 1024]);
        assert_eq!(buf, b"GET / HTTP/1.1\r\n\r\n");
        assert!(
            buf.capacity() <= KEEP_INPUT,
            "kept {} bytes",
            buf.capacity()
        );
    }

    #[test]
    fn the_input_buffer_keeps_at_most_its_bound_between_requests() {
        let mut buf = Vec::with_capacity(1 << 20);
        buf.extend_from_slice(b"GET /h");
        shrink_input(&mut buf);
        assert_eq!(buf, b"GET /h");
        assert!(
            buf.capacity() <= KEEP_INPUT,
            "kept {} bytes",
            buf.capacity()
        );

        let mut empty: Vec<u8> = Vec::with_capacity(64 * 1024);
        shrink_input(&mut empty);
        assert_eq!(empty.capacity(), 0);

        // A small buffer is left alone (no reallocation per request).
        let mut small = Vec::with_capacity(512);
        small.extend_from_slice(b"GET");
        let pointer = small.as_ptr();
        shrink_input(&mut small);
        assert_eq!(small.as_ptr(), pointer);
    }
}
