//! Method + path → the endpoint that serves it, or 404 / 405 (with `Allow`). HEAD is served
//! wherever GET is.

use crate::api::error::ApiError;
use crate::docker::protocol::Action;
use crate::http::Method;

/// Every endpoint of the API. Container ids are the raw `{id}` path segment (checked to be a
/// plain name; the runner resolves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Ready,
    Metrics,
    ListContainers,
    CreateContainer,
    GetContainer(String),
    DeleteContainer(String),
    ContainerLogs(String),
    ContainerAction(String, Action),
    /// `POST /api/v1/gpus/{index}/health/reset` (the index as given; checked by the handler).
    ResetGpuHealth(String),
    /// `GET /metrics`: the Prometheus text exposition.
    Prometheus,
    /// `GET /api/v1/tunnels`: the frp tunnel.
    Tunnels,
    /// `GET /api/v1/openapi.json`: the API's OpenAPI document.
    OpenApi,
}

/// One route of the API: its method and path template (OpenAPI's spelling, `{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub method: &'static str,
    pub template: &'static str,
}

const fn r(method: &'static str, template: &'static str) -> Route {
    Route { method, template }
}

/// Every route the API serves (HEAD aside, served wherever GET is); `GET /metrics` counts
/// requests by their template.
#[cfg(test)]
pub const ROUTES: &[Route] = &[
    r("GET", "/health"),
    r("GET", "/health/ready"),
    r("GET", "/metrics"),
    r("GET", "/api/v1/metrics"),
    r("GET", "/api/v1/containers"),
    r("POST", "/api/v1/containers"),
    r("GET", "/api/v1/containers/{id}"),
    r("DELETE", "/api/v1/containers/{id}"),
    r("GET", "/api/v1/containers/{id}/logs"),
    r("POST", "/api/v1/containers/{id}/stop"),
    r("POST", "/api/v1/containers/{id}/start"),
    r("POST", "/api/v1/containers/{id}/restart"),
    r("POST", "/api/v1/gpus/{index}/health/reset"),
    r("GET", "/api/v1/tunnels"),
    r("GET", "/api/v1/openapi.json"),
];

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

impl Endpoint {
    /// The route this endpoint serves (one of [`ROUTES`]).
    pub fn route(&self) -> Route {
        match self {
            Endpoint::Health => r("GET", "/health"),
            Endpoint::Ready => r("GET", "/health/ready"),
            Endpoint::Prometheus => r("GET", "/metrics"),
            Endpoint::Metrics => r("GET", "/api/v1/metrics"),
            Endpoint::ListContainers => r("GET", "/api/v1/containers"),
            Endpoint::CreateContainer => r("POST", "/api/v1/containers"),
            Endpoint::GetContainer(_) => r("GET", "/api/v1/containers/{id}"),
            Endpoint::DeleteContainer(_) => r("DELETE", "/api/v1/containers/{id}"),
            Endpoint::ContainerLogs(_) => r("GET", "/api/v1/containers/{id}/logs"),
            Endpoint::ContainerAction(_, Action::Stop) => r("POST", "/api/v1/containers/{id}/stop"),
            Endpoint::ContainerAction(_, Action::Start) => {
                r("POST", "/api/v1/containers/{id}/start")
            }
            Endpoint::ContainerAction(_, Action::Restart) => {
                r("POST", "/api/v1/containers/{id}/restart")
            }
            Endpoint::ResetGpuHealth(_) => r("POST", "/api/v1/gpus/{index}/health/reset"),
            Endpoint::Tunnels => r("GET", "/api/v1/tunnels"),
            Endpoint::OpenApi => r("GET", "/api/v1/openapi.json"),
        }
    }
}

/// A path the API knows, before the method is considered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Health,
    Ready,
    Metrics,
    Containers,
    Container(String),
    Logs(String),
    Action(String, Action),
    GpuHealthReset(String),
    Prometheus,
    Tunnels,
    OpenApi,
}

/// A container id, name or claim id as it may appear in a path.
fn valid_id_segment(segment: &str) -> bool {
    crate::names::is_name(segment, 128)
}

impl Resource {
    fn from_path(path: &str) -> Option<Resource> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        match path {
            "/health" => return Some(Resource::Health),
            "/health/ready" => return Some(Resource::Ready),
            "/metrics" => return Some(Resource::Prometheus),
            "/api/v1/metrics" => return Some(Resource::Metrics),
            "/api/v1/containers" => return Some(Resource::Containers),
            "/api/v1/tunnels" => return Some(Resource::Tunnels),
            "/api/v1/openapi.json" => return Some(Resource::OpenApi),
            _ => {}
        }
        if let Some(rest) = path.strip_prefix("/api/v1/gpus/") {
            let index = rest.strip_suffix("/health/reset")?;
            return valid_id_segment(index).then(|| Resource::GpuHealthReset(index.to_string()));
        }
        let rest = path.strip_prefix("/api/v1/containers/")?;
        let mut parts = rest.split('/');
        let id = parts.next().filter(|id| valid_id_segment(id))?.to_string();
        let resource = match parts.next() {
            None => Resource::Container(id),
            Some("logs") => Resource::Logs(id),
            Some(word) => Resource::Action(id, Action::parse(word)?),
        };
        parts.next().is_none().then_some(resource)
    }

    fn allow(&self) -> &'static str {
        match self {
            Resource::Health
            | Resource::Ready
            | Resource::Metrics
            | Resource::Logs(_)
            | Resource::Prometheus
            | Resource::Tunnels
            | Resource::OpenApi => "GET",
            Resource::Containers => "GET, POST",
            Resource::Container(_) => "GET, DELETE",
            Resource::Action(..) | Resource::GpuHealthReset(_) => "POST",
        }
    }

    fn endpoint(self, method: &Method) -> Option<Endpoint> {
        // HEAD is GET without the body (the connection layer drops it).
        if *method == Method::HEAD {
            return self.endpoint(&Method::GET);
        }
        match (self, method) {
            (Resource::Health, &Method::GET) => Some(Endpoint::Health),
            (Resource::Ready, &Method::GET) => Some(Endpoint::Ready),
            (Resource::Metrics, &Method::GET) => Some(Endpoint::Metrics),
            (Resource::Prometheus, &Method::GET) => Some(Endpoint::Prometheus),
            (Resource::Tunnels, &Method::GET) => Some(Endpoint::Tunnels),
            (Resource::OpenApi, &Method::GET) => Some(Endpoint::OpenApi),
            (Resource::Containers, &Method::GET) => Some(Endpoint::ListContainers),
            (Resource::Containers, &Method::POST) => Some(Endpoint::CreateContainer),
            (Resource::Container(id), &Method::GET) => Some(Endpoint::GetContainer(id)),
            (Resource::Container(id), &Method::DELETE) => Some(Endpoint::DeleteContainer(id)),
            (Resource::Logs(id), &Method::GET) => Some(Endpoint::ContainerLogs(id)),
            (Resource::Action(id, action), &Method::POST) => {
                Some(Endpoint::ContainerAction(id, action))
            }
            (Resource::GpuHealthReset(index), &Method::POST) => {
                Some(Endpoint::ResetGpuHealth(index))
            }
            _ => None,
        }
    }
}

/// True for paths that need the bearer token (`/metrics` too, unless `prometheus.auth` is
/// false).
pub fn requires_auth(path: &str, prometheus_auth: bool) -> bool {
    if path == "/metrics" || path == "/metrics/" {
        return prometheus_auth;
    }
    path == "/api" || path.starts_with("/api/")
}

/// Resolves a request to its endpoint.
pub fn route(method: &Method, path: &str) -> Result<Endpoint, ApiError> {
    let resource = Resource::from_path(path)
        .ok_or_else(|| ApiError::not_found(format!("no endpoint at {path}")))?;
    let allow = resource.allow();
    resource
        .endpoint(method)
        .ok_or_else(|| ApiError::method_not_allowed(method.as_str(), path, allow))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::StatusCode;

    #[test]
    fn known_paths() {
        assert_eq!(route(&Method::GET, "/health"), Ok(Endpoint::Health));
        assert_eq!(route(&Method::GET, "/health/ready"), Ok(Endpoint::Ready));
        assert!(!requires_auth("/health/ready", true));
        assert_eq!(
            route(&Method::GET, "/api/v1/metrics"),
            Ok(Endpoint::Metrics)
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/metrics/"),
            Ok(Endpoint::Metrics)
        );
    }

    #[test]
    fn head_goes_wherever_get_does() {
        assert_eq!(route(&Method::HEAD, "/health"), Ok(Endpoint::Health));
        assert_eq!(
            route(&Method::HEAD, "/api/v1/containers/abc/logs"),
            Ok(Endpoint::ContainerLogs("abc".into()))
        );
        let e = route(&Method::HEAD, "/api/v1/containers/abc/stop").unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn unknown_path_is_404_and_wrong_method_405() {
        assert_eq!(
            route(&Method::GET, "/nope").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&Method::GET, "/").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
        let e = route(&Method::POST, "/api/v1/metrics").unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.allow.as_deref(), Some("GET"));
    }

    #[test]
    fn container_paths() {
        assert_eq!(
            route(&Method::GET, "/api/v1/containers"),
            Ok(Endpoint::ListContainers)
        );
        assert_eq!(
            route(&Method::POST, "/api/v1/containers/"),
            Ok(Endpoint::CreateContainer)
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/containers/claim-1"),
            Ok(Endpoint::GetContainer("claim-1".into()))
        );
        assert_eq!(
            route(&Method::DELETE, "/api/v1/containers/abc"),
            Ok(Endpoint::DeleteContainer("abc".into()))
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/containers/abc/logs"),
            Ok(Endpoint::ContainerLogs("abc".into()))
        );
        for (word, action) in [
            ("stop", Action::Stop),
            ("start", Action::Start),
            ("restart", Action::Restart),
        ] {
            assert_eq!(
                route(&Method::POST, &format!("/api/v1/containers/abc/{word}")),
                Ok(Endpoint::ContainerAction("abc".into(), action))
            );
        }
    }

    #[test]
    fn container_paths_404_and_405() {
        for path in [
            "/api/v1/containers/abc/kill",
            "/api/v1/containers/abc/logs/x",
            "/api/v1/containers//logs",
            "/api/v1/containers/a%20b",
            "/api/v1/containers/..%2f",
            "/api/v1/containers/a b",
        ] {
            let e = route(&Method::GET, path).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{path}");
        }
        for (method, path, allow) in [
            (Method::PUT, "/api/v1/containers", "GET, POST"),
            (Method::POST, "/api/v1/containers/abc", "GET, DELETE"),
            (Method::GET, "/api/v1/containers/abc/stop", "POST"),
            (Method::DELETE, "/api/v1/containers/abc/logs", "GET"),
        ] {
            let e = route(&method, path).unwrap_err();
            assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(e.allow.as_deref(), Some(allow));
        }
    }

    #[test]
    fn gpu_health_reset_path() {
        assert_eq!(
            route(&Method::POST, "/api/v1/gpus/1/health/reset"),
            Ok(Endpoint::ResetGpuHealth("1".into()))
        );
        let e = route(&Method::GET, "/api/v1/gpus/1/health/reset").unwrap_err();
        assert_eq!(e.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(e.allow.as_deref(), Some("POST"));
        for path in [
            "/api/v1/gpus/1/health",
            "/api/v1/gpus//health/reset",
            "/api/v1/gpus/1/2/health/reset",
            "/api/v1/gpus/1/health/reset/x",
        ] {
            let e = route(&Method::POST, path).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[test]
    fn auth_scope() {
        assert!(requires_auth("/api/v1/metrics", false));
        assert!(requires_auth("/api/anything", true));
        assert!(requires_auth("/api", true));
        assert!(!requires_auth("/health", true));
        assert!(!requires_auth("/apix", true));
        assert!(requires_auth("/metrics", true));
        assert!(!requires_auth("/metrics", false));
    }

    /// A request path for a template, with a sample value in each `{...}`.
    fn sample_path(template: &str) -> String {
        template.replace("{id}", "claim-1").replace("{index}", "0")
    }

    #[test]
    fn every_route_in_the_table_is_served_by_the_endpoint_that_names_it() {
        for route in ROUTES {
            let method = Method::from_token(route.method);
            let endpoint = super::route(&method, &sample_path(route.template))
                .unwrap_or_else(|e| panic!("{route:?} is not served: {}", e.message));
            assert_eq!(endpoint.route(), *route);
        }
        let mut sorted = ROUTES.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ROUTES.len(), "a route is listed twice");
    }

    #[test]
    fn every_endpoint_names_a_route_in_the_table() {
        let id = || "x".to_string();
        for endpoint in [
            Endpoint::Health,
            Endpoint::Ready,
            Endpoint::Metrics,
            Endpoint::Prometheus,
            Endpoint::ListContainers,
            Endpoint::CreateContainer,
            Endpoint::GetContainer(id()),
            Endpoint::DeleteContainer(id()),
            Endpoint::ContainerLogs(id()),
            Endpoint::ContainerAction(id(), Action::Stop),
            Endpoint::ContainerAction(id(), Action::Start),
            Endpoint::ContainerAction(id(), Action::Restart),
            Endpoint::ResetGpuHealth(id()),
            Endpoint::Tunnels,
            Endpoint::OpenApi,
        ] {
            assert!(ROUTES.contains(&endpoint.route()), "{endpoint:?}");
        }
    }
}
