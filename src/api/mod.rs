//! The HTTP API: authentication, routes and JSON answers, served by the connection layer in
//! [`crate::http`] (one I/O thread, a fixed pool of handler threads; see there for connection
//! limits, deadlines and what a flood of connections can and cannot do).
//!
//! A request is decided in two steps. On the I/O thread, from the head alone and before any
//! body byte is read ([`ApiService::admit`]): a duplicate `Authorization` header (400), the
//! bearer token for `/api/` (401), the declared body size (413), the route (404/405). Only then
//! does the connection layer send `100 Continue` and read the body. On a handler thread
//! ([`ApiService::serve`]): the endpoint. Endpoints read the published [`Snapshot`], or
//! (containers) send a typed request to the container runner and wait for its reply; they never
//! call NVML, sysinfo or docker themselves. Health and metrics are cached JSON bytes (rebuilt
//! once per change of what they show; health also once per second for its uptime) answered on
//! the I/O thread itself, at admission ([`Admission::Answer`]: one token check and one route
//! lookup per request, and the cached bytes go to the socket without a copy), readiness by the
//! quick lane, the container
//! endpoints by the slow one, so a slow docker never delays `/health`.
//!
//! Stopping: [`ApiServer::drain`] closes the listening socket, lets requests at handlers finish
//! within the given time (new ones on open connections are not read), and joins the threads.

pub mod auth;
pub mod containers;
pub mod error;
pub mod gpus;
pub mod health;
pub mod openapi;
pub mod prometheus;
pub mod routes;

use crate::api::error::ApiError;
use crate::api::routes::Endpoint;
use crate::docker::protocol::RunnerHandle;
use crate::http::{
    Admission, BodyLength, HttpError, Lane, Method, Request, RequestHead, Response, StatusCode,
};
use crate::state::{Cached, Snapshot};
use crate::telemetry::gpu_health::XidHistory;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Largest request body accepted; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What the server needs from the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// Replaced by a configuration reload (token rotation without a restart).
    pub auth_token: crate::reload::LiveSecret,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Threads accepting and serving connections.
    pub io_threads: usize,
    /// `GET /metrics` needs the token (`prometheus.auth`).
    pub prometheus_auth: bool,
}

/// What every request handler can read.
pub struct ApiContext {
    pub settings: ApiSettings,
    pub snapshot: Arc<Snapshot>,
    pub started: Instant,
    /// When the agent started (wall clock, for `utopia_agent_start_time_seconds`).
    pub started_wall: SystemTime,
    /// This host's name (the `Hostname` label of GPU series).
    pub hostname: String,
    /// The container runner; `None` answers the container endpoints with 503.
    pub runner: Option<RunnerHandle>,
    /// The GPUs' Xid history (cleared by `POST /api/v1/gpus/{index}/health/reset`).
    pub xid_history: Option<XidHistory>,
    /// `/health`'s body, for (health generation, uptime in seconds): with the token (each
    /// component's reason) and without (states only).
    health_json: Cached<(u64, u64)>,
    health_json_public: Cached<(u64, u64)>,
}

impl ApiContext {
    pub fn new(settings: ApiSettings, snapshot: Arc<Snapshot>) -> Self {
        ApiContext {
            settings,
            snapshot,
            started: Instant::now(),
            started_wall: SystemTime::now(),
            hostname: hostname(),
            runner: None,
            xid_history: None,
            health_json: Cached::new(),
            health_json_public: Cached::new(),
        }
    }

    /// Lets the API clear GPUs' Xid history.
    pub fn with_xid_history(mut self, history: XidHistory) -> Self {
        self.xid_history = Some(history);
        self
    }

    /// Routes the container endpoints to `runner`.
    pub fn with_runner(mut self, runner: RunnerHandle) -> Self {
        self.runner = Some(runner);
        self
    }
}

/// This host's name (`gethostname`), or `localhost` when it has none.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
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
    server: crate::http::Server,
}

impl ApiServer {
    pub fn start(context: Arc<ApiContext>) -> Result<ApiServer, ApiStartError> {
        let settings = context.settings.clone();
        let mut config = crate::http::ServerConfig::new(
            settings.listen,
            settings.max_connections,
            settings.idle_timeout,
        );
        config.max_body_bytes = MAX_BODY_BYTES;
        config.io_threads = settings.io_threads;
        let service = Arc::new(ApiService {
            context: Arc::clone(&context),
        });
        let server =
            crate::http::Server::start(config, service).map_err(|source| ApiStartError {
                listen: settings.listen,
                source,
            })?;
        log::info!(
            "API listening on http://{} (max {} connections, idle timeout {}s, up to {} I/O threads)",
            server.local_addr(),
            server.max_connections(),
            settings.idle_timeout.as_secs(),
            settings.io_threads
        );
        Ok(ApiServer { server })
    }

    /// Stops accepting, lets in-flight requests finish for up to `timeout` and joins the
    /// threads; returns how many requests were still running when it gave up.
    pub fn drain(self, timeout: Duration) -> usize {
        self.server.shutdown(timeout)
    }
}

/// A successful answer: status, a JSON (or, for logs, plain text) body, and extra header
/// fields (`Location` on 201).
pub struct Reply {
    pub status: StatusCode,
    pub body: ReplyBody,
    pub headers: Vec<(&'static str, String)>,
}

pub enum ReplyBody {
    Json(serde_json::Value),
    /// A JSON document already serialised (the cached health and metrics documents).
    JsonBytes(Arc<[u8]>),
    Text(String),
    /// Bytes of another type (the Prometheus exposition).
    Raw {
        content_type: &'static str,
        bytes: Vec<u8>,
    },
}

impl Reply {
    pub fn text(status: StatusCode, text: String) -> Reply {
        Reply {
            status,
            body: ReplyBody::Text(text),
            headers: Vec::new(),
        }
    }

    /// 200 with a JSON document already serialised.
    pub fn json_bytes(bytes: Arc<[u8]>) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: ReplyBody::JsonBytes(bytes),
            headers: Vec::new(),
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
            headers: Vec::new(),
        })
    }

    /// Adds a header field to the answer.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// The API as the connection layer sees it.
pub struct ApiService {
    context: Arc<ApiContext>,
}

impl crate::http::Service for ApiService {
    fn admit(&self, head: &RequestHead) -> Admission {
        // A GET or HEAD takes no body: one announced is not read (the connection closes after
        // the answer). Read, it held a connection slot and a share of the layer's body budget
        // (a chunked one the whole 1 MiB) until it came, and /health and /health/ready need no
        // token: 32 such requests held the whole budget, and the platform's container requests
        // got 503.
        let bodiless = matches!(head.method, Method::GET | Method::HEAD)
            && head.body_length != BodyLength::Empty;
        match admit(&self.context, head) {
            // Cached bytes, rebuilt at most once per change: answered on the I/O thread from
            // the head and the endpoint found here.
            Ok(endpoint @ (Endpoint::Health | Endpoint::Metrics | Endpoint::OpenApi)) => {
                Admission::Answer(answer(&self.context, head, &[], Ok(endpoint)))
            }
            Ok(endpoint) if bodiless => Admission::Answer(answer(
                &self.context,
                head,
                &[],
                Err(ApiError::bad_request(format!(
                    "{} {} takes no request body",
                    head.method,
                    endpoint.route().template
                ))),
            )),
            Ok(Endpoint::Ready | Endpoint::Prometheus | Endpoint::Tunnels) => {
                Admission::Serve(Lane::Quick)
            }
            Ok(_) => Admission::Serve(Lane::Slow),
            Err(error) => {
                log::debug!("{} {} -> {}", head.method, head.path, error.status.as_u16());
                let route = routes::route(&head.method, &head.path)
                    .map_or(routes::UNMATCHED, |e| e.route().template);
                self.context
                    .snapshot
                    .counters()
                    .api_request(route, error.status.as_u16());
                Admission::Answer(error_response(&error))
            }
        }
    }

    fn serve(&self, request: Request) -> Response {
        let endpoint = admit(&self.context, &request.head);
        answer(&self.context, &request.head, &request.body, endpoint)
    }

    fn reject(&self, error: &HttpError) -> Response {
        self.context
            .snapshot
            .counters()
            .api_request(routes::UNMATCHED, error.status.as_u16());
        error_response(&ApiError::new(
            error.status,
            error.code,
            error.message.clone(),
        ))
    }
}

/// What can be decided before the body is read, in this order: one `Authorization` header at
/// most, the token (so an unauthenticated caller learns nothing else, not even the size limit),
/// the declared size, the route.
fn admit(context: &ApiContext, head: &RequestHead) -> Result<Endpoint, ApiError> {
    let authorization = head.headers.get_single("authorization").map_err(|()| {
        ApiError::bad_request("more than one Authorization header; send exactly one")
    })?;
    if routes::requires_auth(&head.path, context.settings.prometheus_auth) {
        check_token(context, authorization)?;
    }
    if let BodyLength::Exact(length) = head.body_length {
        if length > MAX_BODY_BYTES as u64 {
            return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
        }
    }
    routes::route(&head.method, &head.path)
}

/// True when the request carries the API's token (on `/health`, which answers without one, it
/// unlocks the components' reasons; a wrong token is no token).
fn has_token(context: &ApiContext, head: &RequestHead) -> bool {
    let header = head.headers.get_single("authorization").ok().flatten();
    header.is_some() && check_token(context, header).is_ok()
}

/// Checks the `Authorization` header against `agent_api.auth_token` and the platform's
/// `api_token` (when registration gave one).
fn check_token(context: &ApiContext, header: Option<&[u8]>) -> Result<(), ApiError> {
    let platform_token = context.snapshot.platform_api_token();
    context
        .settings
        .auth_token
        .with(|local| match &platform_token {
            Some(token) => auth::check(header, &[local, token.as_str()]),
            None => auth::check(header, &[local]),
        })
}

/// The answer to a request for `endpoint` (as [`admit`] found it), counted and logged.
fn answer(
    context: &ApiContext,
    head: &RequestHead,
    body: &[u8],
    endpoint: Result<Endpoint, ApiError>,
) -> Response {
    let started = Instant::now();
    let route = endpoint
        .as_ref()
        .map_or(routes::UNMATCHED, |e| e.route().template);
    // A bug in a handler must cost one request, not a handler thread.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve(context, head, body, endpoint?)
    }))
    .unwrap_or_else(|_| Err(ApiError::internal("internal error; see the agent's log")));
    let response = match outcome {
        Ok(Reply {
            status,
            body,
            headers,
        }) => {
            let mut response = match body {
                ReplyBody::Json(body) => json_response(status, &body),
                ReplyBody::JsonBytes(bytes) => json_bytes_response(status, bytes),
                ReplyBody::Text(text) => text_response(status, text),
                ReplyBody::Raw {
                    content_type,
                    bytes,
                } => Response::new(status, bytes)
                    .with_header("Content-Type", content_type)
                    .with_header("Cache-Control", "no-store"),
            };
            response.headers.extend(
                headers
                    .into_iter()
                    .map(|(name, value)| (name, value.into())),
            );
            response
        }
        Err(error) => error_response(&error),
    };
    context
        .snapshot
        .counters()
        .api_request(route, response.status.as_u16());
    log::debug!(
        "{} {} -> {} in {} ms",
        head.method,
        head.path,
        response.status.as_u16(),
        started.elapsed().as_millis()
    );
    response
}

fn serve(
    context: &ApiContext,
    head: &RequestHead,
    body: &[u8],
    endpoint: Endpoint,
) -> Result<Reply, ApiError> {
    match endpoint {
        Endpoint::Health => {
            let uptime = context.started.elapsed();
            let key = (context.snapshot.health_generation(), uptime.as_secs());
            let detailed = has_token(context, head);
            let cache = if detailed {
                &context.health_json
            } else {
                &context.health_json_public
            };
            let bytes = cache
                .get(key, || {
                    let mut bytes =
                        serde_json::to_vec(&health::document(&context.snapshot, uptime, detailed))?;
                    bytes.push(b'\n');
                    Ok(bytes)
                })
                .map_err(encode_error)?;
            Ok(Reply::json_bytes(bytes))
        }
        Endpoint::Ready => {
            let document = health::ready(&context.snapshot, has_token(context, head));
            let status = if document.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            Reply::with_status(status, document)
        }
        Endpoint::Metrics => Ok(Reply::json_bytes(
            context.snapshot.metrics_json().map_err(encode_error)?,
        )),
        Endpoint::ListContainers => containers::list(context),
        Endpoint::CreateContainer => containers::create(context, body),
        Endpoint::GetContainer(id) => containers::get(context, &id),
        Endpoint::DeleteContainer(id) => containers::delete(context, &id),
        Endpoint::ContainerLogs(id) => containers::logs(context, &id, head.query.as_deref()),
        Endpoint::ContainerAction(id, action) => containers::act(context, &id, action),
        Endpoint::ResetGpuHealth(index) => gpus::reset_health(context, &index),
        Endpoint::Tunnels => Reply::ok(context.snapshot.tunnel().as_ref()),
        Endpoint::OpenApi => Ok(Reply::json_bytes(openapi::bytes())),
        Endpoint::Prometheus => {
            let identity = prometheus::Identity {
                hostname: &context.hostname,
                started: context.started_wall,
            };
            Ok(Reply {
                status: StatusCode::OK,
                body: ReplyBody::Raw {
                    content_type: prometheus::CONTENT_TYPE,
                    bytes: prometheus::render(&context.snapshot, &identity).into_bytes(),
                },
                headers: Vec::new(),
            })
        }
    }
}

fn encode_error(error: serde_json::Error) -> ApiError {
    ApiError::internal(format!("cannot encode the response: {error}"))
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut text = body.to_string();
    text.push('\n');
    json_bytes_response(status, text.into_bytes())
}

fn json_bytes_response(status: StatusCode, body: impl Into<crate::http::Body>) -> Response {
    Response::new(status, body)
        .with_header("Content-Type", "application/json")
        .with_header("Cache-Control", "no-store")
}

fn text_response(status: StatusCode, text: String) -> Response {
    Response::new(status, text.into_bytes())
        .with_header("Content-Type", "text/plain; charset=utf-8")
        .with_header("Cache-Control", "no-store")
}

fn error_response(error: &ApiError) -> Response {
    let mut response = json_response(error.status, &error.body());
    if error.status == StatusCode::UNAUTHORIZED {
        response = response.with_header("WWW-Authenticate", "Bearer");
    }
    if let Some(allow) = &error.allow {
        response = response.with_header("Allow", allow.clone());
    }
    if error.status == StatusCode::PAYLOAD_TOO_LARGE
        || error.status == StatusCode::SERVICE_UNAVAILABLE
    {
        // Do not keep a connection whose unread body or shutdown makes it useless.
        response.close = true;
    }
    response
}
