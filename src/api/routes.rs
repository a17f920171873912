//! Method + path → the endpoint that serves it, or 404 / 405 (with `Allow`).

use crate::api::error::ApiError;
use oxhttp::model::Method;

/// Every endpoint of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Health,
    Metrics,
}

/// A path the API knows, before the method is considered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resource {
    Health,
    Metrics,
}

impl Resource {
    fn from_path(path: &str) -> Option<Resource> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        match path {
            "/health" => Some(Resource::Health),
            "/api/v1/metrics" => Some(Resource::Metrics),
            _ => None,
        }
    }

    fn allow(&self) -> &'static str {
        match self {
            Resource::Health | Resource::Metrics => "GET",
        }
    }

    fn endpoint(self, method: &Method) -> Option<Endpoint> {
        match (self, method) {
            (Resource::Health, &Method::GET) => Some(Endpoint::Health),
            (Resource::Metrics, &Method::GET) => Some(Endpoint::Metrics),
            _ => None,
        }
    }
}

/// True for paths that need the bearer token.
pub fn requires_auth(path: &str) -> bool {
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
    use oxhttp::model::StatusCode;

    #[test]
    fn known_paths() {
        assert_eq!(route(&Method::GET, "/health"), Ok(Endpoint::Health));
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
    fn auth_scope() {
        assert!(requires_auth("/api/v1/metrics"));
        assert!(requires_auth("/api/anything"));
        assert!(requires_auth("/api"));
        assert!(!requires_auth("/health"));
        assert!(!requires_auth("/apix"));
    }
}
