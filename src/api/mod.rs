//! The HTTP API server: oxhttp's listener thread plus one thread per connection, bounded by
//! `agent_api.max_connections`, each connection closed after `agent_api.idle_timeout_secs` of
//! silence (so a flood of idle connections is shed and the API recovers when they go).
//!
//! A request is handled in this order, all on the connection's thread: drain check (503 while
//! shutting down), body size check from `Content-Length` (413), bearer token for `/api/` (401),
//! route (404/405), bounded body read (413), then the endpoint. Endpoints read the published
//! [`Snapshot`], or (containers) send a typed request to the container runner and wait for its
//! reply; they never call NVML, sysinfo or docker themselves.
//!
//! Stopping: [`ApiServer::drain`] makes new requests answer 503 and waits for the in-flight ones
//! to finish. oxhttp has no way to close its listening socket, so the listener thread ends with
//! the process, which exits right after the drain.

pub mod auth;
pub mod containers;
pub mod error;
pub mod health;
pub mod routes;

use crate::api::error::ApiError;
use crate::api::routes::Endpoint;
use crate::docker::protocol::RunnerHandle;
use crate::state::Snapshot;
use oxhttp::model::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use oxhttp::model::{Body, HeaderValue, Request, Response, StatusCode};
use serde::Serialize;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the server needs from the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub auth_token: String,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// What every request handler can read.
pub struct ApiContext {
    pub settings: ApiSettings,
    pub snapshot: Arc<Snapshot>,
    pub started: Instant,
    /// The container runner; `None` answers the container endpoints with 503.
    pub runner: Option<RunnerHandle>,
    draining: AtomicBool,
    in_flight: AtomicUsize,
}

impl ApiContext {
    pub fn new(settings: ApiSettings, snapshot: Arc<Snapshot>) -> Self {
        ApiContext {
            settings,
            snapshot,
            started: Instant::now(),
            runner: None,
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Routes the container endpoints to `runner`.
    pub fn with_runner(mut self, runner: RunnerHandle) -> Self {
        self.runner = Some(runner);
        self
    }
}

/// Why the API could not start.
#[derive(Debug)]
pub struct ApiStartError {
    pub listen: SocketAddr,
    pub source: std::io::Error,
}

impl std::fmt::Display for ApiStartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot listen on {} (agent_api.listen_address): {}",
            self.listen, self.source
        )
    }
}

impl std::error::Error for ApiStartError {}

/// The running server.
pub struct ApiServer {
    context: Arc<ApiContext>,
    // Kept so the listener's handle lives as long as the server; see the module doc on stopping.
    _listener: oxhttp::ListeningServer,
}

impl ApiServer {
    pub fn start(context: Arc<ApiContext>) -> Result<ApiServer, ApiStartError> {
        let settings = context.settings.clone();
        let handler_context = Arc::clone(&context);
        let server = oxhttp::Server::new(move |request| handle(&handler_context, request))
            .bind(settings.listen)
            .with_global_timeout(settings.idle_timeout)
            .with_max_concurrent_connections(settings.max_connections);
        let listener = server.spawn().map_err(|source| ApiStartError {
            listen: settings.listen,
            source,
        })?;
        log::info!(
            "API listening on http://{} (max {} connections, idle timeout {}s)",
            settings.listen,
            settings.max_connections,
            settings.idle_timeout.as_secs()
        );
        Ok(ApiServer {
            context,
            _listener: listener,
        })
    }

    /// Answers new requests with 503 and waits up to `timeout` for in-flight ones; returns how
    /// many were still running when it gave up.
    pub fn drain(&self, timeout: Duration) -> usize {
        self.context.draining.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.context.in_flight.load(Ordering::SeqCst);
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A successful answer: status and a JSON (or, for logs, plain text) body.
pub struct Reply {
    pub status: StatusCode,
    pub body: ReplyBody,
}

pub enum ReplyBody {
    Json(serde_json::Value),
    Text(String),
}

impl Reply {
    pub fn text(status: StatusCode, text: String) -> Reply {
        Reply {
            status,
            body: ReplyBody::Text(text),
        }
    }

    pub fn ok(body: impl Serialize) -> Result<Reply, ApiError> {
        Reply::with_status(StatusCode::OK, body)
    }

    pub fn with_status(status: StatusCode, body: impl Serialize) -> Result<Reply, ApiError> {
        let body = serde_json::to_value(body)
            .map_err(|e| ApiError::internal(format!("cannot encode the response: {e}")))?;
        Ok(Reply {
            status,
            body: ReplyBody::Json(body),
        })
    }
}

fn handle(context: &ApiContext, request: &mut Request<Body>) -> Response<Body> {
    let _in_flight = InFlight::enter(&context.in_flight);
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let outcome = if context.draining.load(Ordering::SeqCst) {
        Err(ApiError::unavailable(
            "shutting_down",
            "the agent is shutting down",
        ))
    } else {
        // A bug in a handler must cost one request, not the connection thread's silence.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serve(context, request)))
            .unwrap_or_else(|_| Err(ApiError::internal("internal error; see the agent's log")))
    };
    let response = match outcome {
        Ok(Reply {
            status,
            body: ReplyBody::Json(body),
        }) => json_response(status, &body),
        Ok(Reply {
            status,
            body: ReplyBody::Text(text),
        }) => text_response(status, text),
        Err(error) => error_response(&error),
    };
    log::debug!(
        "{method} {path} -> {} in {} ms",
        response.status().as_u16(),
        started.elapsed().as_millis()
    );
    response
}

fn serve(context: &ApiContext, request: &mut Request<Body>) -> Result<Reply, ApiError> {
    if let Some(length) = request.body().len() {
        if length > MAX_BODY_BYTES as u64 {
            return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
        }
    }
    let path = request.uri().path().to_string();
    if routes::requires_auth(&path) {
        let header = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        auth::check(header, &context.settings.auth_token)?;
    }
    let endpoint = routes::route(request.method(), &path)?;
    let body = read_body(request.body_mut())?;
    match endpoint {
        Endpoint::Health => Reply::ok(health::document(
            &context.snapshot,
            context.started.elapsed(),
        )),
        Endpoint::Ready => {
            let document = health::ready(&context.snapshot);
            let status = if document.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Reply::with_status(status, document)
        }
        Endpoint::Metrics => Reply::ok(context.snapshot.metrics()),
        Endpoint::ListContainers => containers::list(context),
        Endpoint::CreateContainer => containers::create(context, &body),
        Endpoint::GetContainer(id) => containers::get(context, &id),
        Endpoint::DeleteContainer(id) => containers::delete(context, &id),
        Endpoint::ContainerLogs(id) => containers::logs(context, &id, request.uri().query()),
        Endpoint::ContainerAction(id, action) => containers::act(context, &id, action),
    }
}

/// Reads the whole body, refusing more than [`MAX_BODY_BYTES`] (chunked bodies have no length).
fn read_body(body: &mut Body) -> Result<Vec<u8>, ApiError> {
    let mut buffer = Vec::new();
    body.take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut buffer)
        .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
    if buffer.len() > MAX_BODY_BYTES {
        return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
    }
    Ok(buffer)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut text = body.to_string();
    text.push('\n');
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn text_response(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = json_response(error.status, &error.body());
    let headers = response.headers_mut();
    if error.status == StatusCode::UNAUTHORIZED {
        headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(allow) = &error.allow {
        if let Ok(value) = allow.parse() {
            headers.insert(ALLOW, value);
        }
    }
    if error.status == StatusCode::PAYLOAD_TOO_LARGE
        || error.status == StatusCode::SERVICE_UNAVAILABLE
    {
        // Do not keep a connection whose unread body or shutdown makes it useless.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
