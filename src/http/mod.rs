//! The API's HTTP/1.1 connection layer: a few I/O threads and pools of handler threads, no
//! thread or large buffer per connection, so no number of idle, half-sent or byte-dripping
//! connections can starve a real request.
//!
//! **The I/O threads** (`server/`, [`ServerConfig::io_threads`], at most 8 by default) share the
//! listening socket and hold every connection between them: each waits on its own readiness
//! poller (epoll, `poller.rs`), all watching the listener; the one that accepts a
//! connection keeps it or hands it to the thread holding the fewest, starting that thread if it
//! does not run (the first runs always; the others end after holding nothing for
//! `io_idle_end`, 10 s). Up to `io_threads` busy connections so each have a thread, as with a
//! thread per connection: none waits for a CPU behind another connection's requests, which is
//! what kept the 99th percentile at about 3 ms with two threads on a 2-core machine (a minimal
//! epoll server in C measured the same), and an idle agent runs one. Each reads request heads without blocking
//! into a per-connection buffer bounded by [`ServerConfig::max_head_bytes`], parses them
//! (`parse.rs`, with `httparse`), and enforces, per connection:
//! - an idle connection (no request begun) is closed quietly after `idle_timeout`;
//! - a request head must be complete within `head_timeout` of its first byte (a total deadline,
//!   not one per read: dripping a byte now and then does not extend it) and a body within
//!   `idle_timeout` of its head, or the answer is 408 and the connection closes;
//! - at `max_connections` (one count for all I/O threads) the connection idle the longest on the
//!   accepting thread is closed to make room (after one last non-blocking read, so a request
//!   already sent is served, not shed), else one whose client has not read its answer for 1 s,
//!   else one whose request body began arriving 1 s ago or more (a body announced and held
//!   back, or dripped); when none can go there, the new connection is handed to the next I/O
//!   thread to make room among its own, and when no thread can, it gets 503 at once.
//!   Accepting never stops.
//!
//! With a complete head it asks the [`Service`] to [`admit`](Service::admit) the request (the
//! API checks the token, the declared length and the route here, and answers a cached document
//! at once: [`Admission::Answer`]) before reading any body byte,
//! sends `100 Continue` only then, reads the body (`Content-Length`, or strictly decoded
//! `chunked`, at most [`ServerConfig::max_body_bytes`]), and sends the [`Request`] over a
//! bounded crossbeam channel to the handler pool of the lane the service chose ([`Lane`]).
//!
//! **Handler threads** (`pool.rs`) run [`Service::serve`], encode the [`Response`] and send the
//! bytes back to the I/O thread holding the connection through its channel, then wake its
//! poller. The I/O thread writes
//! them without blocking; a connection reads its next (pipelined) request only after its answer
//! is written, so answers go out in order and a connection holds at most one request. An answer
//! made on the I/O thread goes out in one `writev` of its encoded head and its body, a cached
//! body ([`Body::Shared`]) straight from the cache, not copied.
//!
//! Every call into the [`Service`], on any thread, goes through `guard.rs`: a panic in the
//! service's code (admission, a handler, or rendering a refusal) costs that one request a 500
//! (or the refusal's status, in plain text) and the connection's close, never a thread, and
//! never a slot left with a request that no answer comes back for.
//!
//! Sockets stay registered level-triggered while their interest does not change (reading a
//! head, writing an answer), so a keep-alive request costs a wait, a read and a write: no
//! re-arm. Only a connection whose request is at a handler is switched to one-shot with no
//! interest (a hang-up is then reported once, not again and again while the handler works).
//!
//! **Stopping**: [`Server::shutdown`] closes the listening socket at once, closes connections
//! that have no request at a handler, lets those that do get their answer (with
//! `Connection: close`) until the deadline, then ends the I/O threads and joins the handler
//! threads that finished (a handler blocked past the deadline is left to the process exit).

mod chunked;
mod guard;
pub mod limits;
mod parse;
mod poller;
mod pool;
pub mod query;
mod server;
mod types;

pub use server::{Server, ServerConfig, StartError, MAX_IO_THREADS};
pub use types::{Body, BodyLength, Headers, Method, Request, RequestHead, Response, StatusCode};

/// What a [`Service`] decides from a request's head.
#[derive(Debug)]
pub enum Admission {
    /// Read the body, then serve the request on this lane.
    Serve(Lane),
    /// Send this answer now, without reading any body byte (the connection then closes when a
    /// body was announced): a refusal, or a document already in memory, answered on the I/O
    /// thread with no hand-off and no second look at the request.
    Answer(Response),
}

/// Which handler threads serve a request: quick work never waits behind slow work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Answers already in memory as bytes (the cached health and metrics documents): served on
    /// the I/O thread itself, with no hand-off. Only for work that never blocks and takes
    /// microseconds.
    Inline,
    /// Answers from memory that take some building.
    Quick,
    /// Work that waits on another component (containers: docker).
    Slow,
}

/// What the connection layer serves.
pub trait Service: Send + Sync + 'static {
    /// Decides on a request from its head alone, on the I/O thread, before any body byte is
    /// read: a [`Lane`] to serve it, or the answer to send instead (the connection then closes
    /// when a body was announced). Must be quick and must not block.
    fn admit(&self, head: &RequestHead) -> Admission;

    /// Answers a complete request, on a handler thread.
    fn serve(&self, request: Request) -> Response;

    /// Renders an error the connection layer found itself (malformed request, 408, 431, 503).
    fn reject(&self, error: &HttpError) -> Response;
}

/// A request the connection layer refuses before any service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    /// A stable machine-readable code (`bad_request`, `header_too_large`, ...).
    pub code: &'static str,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for HttpError {}
