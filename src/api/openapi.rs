//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the whole API, written by hand in
//! `src/api/openapi.json` and embedded in the binary. The unit tests below hold it to the routes
//! `src/api/routes.rs` serves (both ways) and check that it is well formed; `tests/openapi.rs`
//! checks the agent's real answers against its schemas.
//!
//! Adding a route: add it in `routes.rs`, then its operation under `paths` in `openapi.json`
//! (the coverage test's message says what is missing), then a check of a real answer in
//! `tests/openapi.rs`.

use std::sync::{Arc, OnceLock};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

/// The document's bytes, shared by every answer.
pub fn bytes() -> Arc<[u8]> {
    static BYTES: OnceLock<Arc<[u8]>> = OnceLock::new();
    Arc::clone(BYTES.get_or_init(|| Arc::from(DOCUMENT.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::routes::{Route, ROUTES};
    use serde_json::Value;
    use std::collections::BTreeSet;

    const METHODS: &[&str] = &["get", "put", "post", "delete", "options", "head", "patch"];

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("src/api/openapi.json is not valid JSON")
    }

    /// Every `r("METHOD", "/template")` in `src/api/routes.rs`: the route table and each
    /// endpoint's route, so a route added in either place is seen here.
    fn routes_in_source() -> BTreeSet<(String, String)> {
        let source = include_str!("routes.rs");
        let mut found = BTreeSet::new();
        let mut rest = source;
        while let Some(at) = rest.find("r(\"") {
            let before = rest[..at].chars().next_back();
            let after = &rest[at + 3..];
            rest = after;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let Some((method, tail)) = after.split_once('"') else {
                continue;
            };
            let Some(tail) = tail.trim_start().strip_prefix(',') else {
                continue;
            };
            let Some(tail) = tail.trim_start().strip_prefix('"') else {
                continue;
            };
            let Some((template, _)) = tail.split_once('"') else {
                continue;
            };
            found.insert((method.to_string(), template.to_string()));
        }
        found
    }

    fn routes_served() -> BTreeSet<(String, String)> {
        let mut routes = routes_in_source();
        routes.extend(
            ROUTES
                .iter()
                .map(|Route { method, template }| (method.to_string(), template.to_string())),
        );
        routes
    }

    fn routes_documented(doc: &Value) -> BTreeSet<(String, String)> {
        let paths = doc["paths"].as_object().expect("the document has no paths");
        let mut routes = BTreeSet::new();
        for (template, item) in paths {
            let item = item.as_object().expect("a path item is an object");
            for method in item.keys().filter(|k| METHODS.contains(&k.as_str())) {
                routes.insert((method.to_ascii_uppercase(), template.clone()));
            }
        }
        routes
    }

    #[test]
    fn the_route_table_is_read_from_the_source() {
        let found = routes_in_source();
        for route in ROUTES {
            assert!(
                found.contains(&(route.method.to_string(), route.template.to_string())),
                "{route:?} not found in routes.rs by the scanner"
            );
        }
    }

    #[test]
    fn every_served_route_is_documented() {
        let documented = routes_documented(&document());
        let mut missing = Vec::new();
        for (method, template) in routes_served() {
            if !documented.contains(&(method.clone(), template.clone())) {
                let lower = method.to_ascii_lowercase();
                missing.push(format!(
                    "{method} {template} is served (src/api/routes.rs) but src/api/openapi.json \
                     does not describe it. Add to \"paths\" -> \"{template}\" the operation\n  \
                     \"{lower}\": {{\"operationId\": \"...\", \"summary\": \"...\", \
                     \"parameters\": [ /* each {{...}} of the path, and query parameters */ ], \
                     \"requestBody\": /* if it takes a body */, \"responses\": {{\"200\": \
                     {{\"description\": \"...\", \"content\": {{\"application/json\": \
                     {{\"schema\": {{\"$ref\": \"#/components/schemas/<Name>\"}}}}}}}}, \
                     \"400\": {{\"$ref\": \"#/components/responses/BadRequest\"}}, \"401\": \
                     {{\"$ref\": \"#/components/responses/Unauthorized\"}}, ... , \"default\": \
                     {{\"$ref\": \"#/components/responses/Error\"}}}}}}\n  with the body's \
                     schema under \"components\" -> \"schemas\" (every field, \"required\", \
                     \"additionalProperties\": false), then check a real answer against it in \
                     tests/openapi.rs"
                ));
            }
        }
        assert!(missing.is_empty(), "\n{}\n", missing.join("\n\n"));
    }

    #[test]
    fn every_documented_route_is_served() {
        let served = routes_served();
        let extra: Vec<String> = routes_documented(&document())
            .into_iter()
            .filter(|route| !served.contains(route))
            .map(|(method, template)| {
                format!(
                    "src/api/openapi.json describes {method} {template}, which src/api/routes.rs \
                     does not serve: remove \"{}\" from \"paths\" -> \"{template}\" (or add the \
                     route to routes.rs: ROUTES and Endpoint::route)",
                    method.to_ascii_lowercase()
                )
            })
            .collect();
        assert!(extra.is_empty(), "\n{}\n", extra.join("\n"));
    }

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(target)) => out.push(target),
                        _ => refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_document_is_well_formed() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], crate::VERSION, "info.version");
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
            "bearer"
        );
        let mut targets = Vec::new();
        refs(&doc, &mut targets);
        assert!(!targets.is_empty());
        for target in targets {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("{target}: only local references"));
            assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
        }
        let mut operation_ids = BTreeSet::new();
        for (template, item) in doc["paths"].as_object().expect("paths") {
            let path_params = item["parameters"].as_array().cloned().unwrap_or_default();
            for (method, operation) in item.as_object().expect("path item") {
                if !METHODS.contains(&method.as_str()) {
                    continue;
                }
                let id = operation["operationId"].as_str().expect("operationId");
                assert!(operation_ids.insert(id.to_string()), "{id} twice");
                let responses = operation["responses"].as_object().expect("responses");
                assert!(
                    responses.keys().any(|k| k.starts_with('2')),
                    "{method} {template}: no success response"
                );
                let public = ["/health", "/health/ready"].contains(&template.as_str());
                let security = operation.get("security").unwrap_or(&doc["security"]);
                assert_eq!(
                    security.as_array().is_some_and(|s| s.is_empty()),
                    public,
                    "{method} {template}: security must match routes::requires_auth"
                );
                assert_eq!(
                    crate::api::routes::requires_auth(template, true),
                    !public,
                    "{template}"
                );
                let mut params = path_params.clone();
                params.extend(
                    operation["parameters"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
                for segment in template.split('/') {
                    if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                    {
                        assert!(
                            params.iter().any(|p| p["name"] == name
                                && p["in"] == "path"
                                && p["required"] == true),
                            "{method} {template}: path parameter {name} is not declared"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn served_bytes_are_the_document() {
        assert_eq!(&*bytes(), DOCUMENT.as_bytes());
    }
}
