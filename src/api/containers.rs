//! `/api/v1/containers`: parses and validates each request into a typed [`Request`] for the
//! [`DockerRunner`](crate::docker::protocol::DockerRunner), sends it with its own reply channel through the
//! [`RunnerHandle`], waits (with a timeout) and maps the outcome to a status code.

use crate::api::error::ApiError;
use crate::api::{ApiContext, Reply};
use crate::docker::protocol::{Action, ContainerError, Request, RunnerHandle};
use crate::docker::spec;
use crate::http::StatusCode;
use std::time::Duration;

/// Lines of logs when `tail` is not given, and the most a request may ask for.
pub const DEFAULT_LOG_TAIL: u32 = 100;
pub const MAX_LOG_TAIL: u32 = 100_000;

/// How long a read (list, inspect) may wait for the runner.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl From<ContainerError> for ApiError {
    fn from(e: ContainerError) -> Self {
        let message = e.to_string();
        match e {
            ContainerError::Invalid(_) => ApiError::bad_request(message),
            ContainerError::NotFound(_) => ApiError::not_found(message),
            ContainerError::Conflict { code, .. } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            ContainerError::DockerUnavailable(_) => {
                ApiError::unavailable("docker_unavailable", message)
            }
            ContainerError::GpusUnavailable(_) => ApiError::unavailable("gpu_unavailable", message),
            ContainerError::Busy(_) => ApiError::unavailable("docker_busy", message),
            ContainerError::Timeout(_) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "docker_timeout", message)
            }
            ContainerError::ImageNotFound(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "image_not_found", message)
            }
            ContainerError::ImagePull(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "image_pull_failed", message)
            }
            ContainerError::Docker(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "docker_error", message)
            }
        }
    }
}

fn runner(context: &ApiContext) -> Result<&RunnerHandle, ApiError> {
    context.runner.as_ref().ok_or_else(|| {
        ApiError::unavailable("docker_unavailable", "the container runner is not running")
    })
}

/// `POST /api/v1/containers`: 201 with the container when it is up within
/// `docker.create_wait_secs`, else 202 with the claim's resource (state `creating`).
pub fn create(context: &ApiContext, body: &[u8]) -> Result<Reply, ApiError> {
    let mut spec = spec::parse_create(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let runner = runner(context)?;
    runner
        .policy()
        .check(&spec)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    runner.policy().apply_defaults(&mut spec);
    let claim_id = spec.claim_id.clone();
    let answered = runner.call_within(runner.create_wait(), |reply| Request::Create {
        spec: Box::new(spec),
        reply,
    })?;
    if let Some(mut view) = answered {
        view.fill_endpoints(&context.snapshot.tunnel().proxies);
        let location = format!("/api/v1/containers/{}", view.id);
        return Ok(Reply::with_status(StatusCode::CREATED, view)?.with_header("Location", location));
    }
    // Not up within `docker.create_wait_secs` (an image pull): the create goes on; the claim's
    // resource shows it (state `creating`, then the container or the error).
    let id = claim_id.clone();
    let mut view = runner.call(READ_TIMEOUT, |reply| Request::Get { id, reply })?;
    view.fill_endpoints(&context.snapshot.tunnel().proxies);
    let location = format!("/api/v1/containers/{claim_id}");
    Ok(Reply::with_status(StatusCode::ACCEPTED, view)?.with_header("Location", location))
}

/// `GET /api/v1/containers`.
pub fn list(context: &ApiContext) -> Result<Reply, ApiError> {
    let mut views = runner(context)?.call(READ_TIMEOUT, |reply| Request::List { reply })?;
    let tunnel = context.snapshot.tunnel();
    for view in &mut views {
        view.fill_endpoints(&tunnel.proxies);
    }
    Reply::ok(views)
}

/// `GET /api/v1/containers/{id}`.
pub fn get(context: &ApiContext, id: &str) -> Result<Reply, ApiError> {
    let id = id.to_string();
    let mut view = runner(context)?.call(READ_TIMEOUT, |reply| Request::Get { id, reply })?;
    view.fill_endpoints(&context.snapshot.tunnel().proxies);
    Reply::ok(view)
}

/// `DELETE /api/v1/containers/{id}`: stop, remove, free the GPUs; 202 for a claim whose create
/// timed out (given up: its container is removed if docker made it).
pub fn delete(context: &ApiContext, id: &str) -> Result<Reply, ApiError> {
    let runner = runner(context)?;
    let id = id.to_string();
    let deleted = runner.call(runner.action_timeout(), |reply| Request::Delete {
        id,
        reply,
    })?;
    if deleted.deleted {
        Reply::ok(deleted)
    } else {
        // A claim whose create timed out: given up, its container removed if it turns up.
        Reply::with_status(StatusCode::ACCEPTED, deleted)
    }
}

/// `POST /api/v1/containers/{id}/start|stop|restart`.
pub fn act(context: &ApiContext, id: &str, action: Action) -> Result<Reply, ApiError> {
    let runner = runner(context)?;
    let id = id.to_string();
    let mut view = runner.call(runner.action_timeout(), |reply| Request::Act {
        id,
        action,
        reply,
    })?;
    view.fill_endpoints(&context.snapshot.tunnel().proxies);
    Reply::ok(view)
}

/// `GET /api/v1/containers/{id}/logs?tail=N`: the last N lines, stdout and stderr, as text.
pub fn logs(context: &ApiContext, id: &str, query: Option<&str>) -> Result<Reply, ApiError> {
    let tail = parse_tail(query)?;
    let runner = runner(context)?;
    let id = id.to_string();
    let text = runner.call(runner.action_timeout(), |reply| Request::Logs {
        id,
        tail,
        reply,
    })?;
    Ok(Reply::text(StatusCode::OK, text))
}

fn parse_tail(query: Option<&str>) -> Result<u32, ApiError> {
    let mut tail = DEFAULT_LOG_TAIL;
    let pairs = crate::http::query::parse_query(query.unwrap_or(""))
        .map_err(|e| ApiError::bad_request(format!("bad query string: {e}")))?;
    for (key, value) in pairs {
        match key.as_str() {
            "tail" => {
                // Digits only: `u32::from_str` would also take `+5`.
                tail = Some(&value)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|n| *n <= MAX_LOG_TAIL)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "tail={value:?} is not a number of lines between 0 and {MAX_LOG_TAIL}"
                        ))
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {other:?}; only tail is accepted"
                )))
            }
        }
    }
    Ok(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_parameter() {
        assert_eq!(parse_tail(None), Ok(DEFAULT_LOG_TAIL));
        assert_eq!(parse_tail(Some("tail=5")), Ok(5));
        assert_eq!(parse_tail(Some("tail=0")), Ok(0));
        assert_eq!(parse_tail(Some("tail=%31")), Ok(1));
        assert_eq!(parse_tail(Some("t%61il=%32%30")), Ok(20));
        for bad in [
            "tail=-1",
            "tail=x",
            "tail=",
            "tail=100001",
            "since=1",
            "tail=1&x=2",
            "tail=%",
            "tail=%2",
            "tail=%2B1",
        ] {
            let e = parse_tail(Some(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn errors_map_to_statuses() {
        let cases = [
            (
                ContainerError::NotFound("x".into()),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                ContainerError::Conflict {
                    code: "gpu_in_use",
                    message: "GPU 0 is held".into(),
                },
                StatusCode::CONFLICT,
                "gpu_in_use",
            ),
            (
                ContainerError::DockerUnavailable("down".into()),
                StatusCode::SERVICE_UNAVAILABLE,
                "docker_unavailable",
            ),
            (
                ContainerError::Timeout("slow".into()),
                StatusCode::GATEWAY_TIMEOUT,
                "docker_timeout",
            ),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!((api.status, api.code), (status, code));
        }
    }
}
