//! The OpenAPI document (`GET /api/v1/openapi.json`) against the agent's real answers: each
//! answer's status must be documented for its operation, its content type must be the
//! documented one, its body must match the documented schema (checked by the small JSON Schema
//! checker below, which refuses keywords it does not know rather than ignore them), and the
//! documented headers (`Location`, `Allow`, `WWW-Authenticate`) must be there.
//!
//! Route coverage (a route the document lacks, or the reverse) is the unit test in
//! `src/api/openapi.rs`.

mod common;

use common::docker::{body, ready, wait_until, Scope};
use common::fake_nvml::write_knobs;
use common::{Agent, AgentOptions, HttpResponse};
use serde_json::{json, Value};
use std::time::Duration;

const EMBEDDED: &str = include_str!("../src/api/openapi.json");

fn document() -> Value {
    serde_json::from_str(EMBEDDED).expect("src/api/openapi.json parses")
}

/// Follows a local `$ref` (`#/components/...`).
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(target) => {
            let pointer = target.strip_prefix('#').expect("local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("{target} does not resolve")),
            )
        }
        None => value,
    }
}

/// Keywords that describe without constraining.
const ANNOTATIONS: &[&str] = &["description", "format", "default", "title", "examples"];

fn type_matches(name: &str, value: &Value) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        other => panic!("unknown JSON type {other:?} in the document"),
    }
}

/// Checks `value` against `schema`; pushes one line per mismatch (with its JSON path).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    let Some(map) = schema.as_object() else {
        panic!("{at}: schema is not an object: {schema}");
    };
    for (keyword, rule) in map {
        match keyword.as_str() {
            k if ANNOTATIONS.contains(&k) => {}
            "type" => {
                let ok = match rule {
                    Value::String(t) => type_matches(t, value),
                    Value::Array(ts) => ts.iter().any(|t| type_matches(t.as_str().unwrap(), value)),
                    _ => panic!("{at}: bad type {rule}"),
                };
                if !ok {
                    errors.push(format!("{at}: {value} is not of type {rule}"));
                }
            }
            "enum" => {
                if !rule.as_array().unwrap().contains(value) {
                    errors.push(format!("{at}: {value} is not one of {rule}"));
                }
            }
            "const" => {
                if rule != value {
                    errors.push(format!("{at}: {value} is not {rule}"));
                }
            }
            "properties" | "required" | "additionalProperties" => {
                let Some(object) = value.as_object() else {
                    continue;
                };
                match keyword.as_str() {
                    "properties" => {
                        for (name, sub) in rule.as_object().unwrap() {
                            if let Some(v) = object.get(name) {
                                check(doc, sub, v, &format!("{at}.{name}"), errors);
                            }
                        }
                    }
                    "required" => {
                        for name in rule.as_array().unwrap() {
                            let name = name.as_str().unwrap();
                            if !object.contains_key(name) {
                                errors.push(format!("{at}: required field {name} is missing"));
                            }
                        }
                    }
                    _ => {
                        let known = map.get("properties").and_then(Value::as_object);
                        for (name, v) in object {
                            if known.is_some_and(|k| k.contains_key(name)) {
                                continue;
                            }
                            match rule {
                                Value::Bool(false) => errors.push(format!(
                                    "{at}: field {name} is not in the document's schema"
                                )),
                                Value::Bool(true) => {}
                                sub => check(doc, sub, v, &format!("{at}.{name}"), errors),
                            }
                        }
                    }
                }
            }
            "items" => {
                if let Some(items) = value.as_array() {
                    for (i, v) in items.iter().enumerate() {
                        check(doc, rule, v, &format!("{at}[{i}]"), errors);
                    }
                }
            }
            "uniqueItems" => {
                if let (Some(items), true) = (value.as_array(), rule == &Value::Bool(true)) {
                    for (i, v) in items.iter().enumerate() {
                        if items[..i].contains(v) {
                            errors.push(format!("{at}: {v} is listed twice"));
                        }
                    }
                }
            }
            "oneOf" | "anyOf" => {
                let matching = rule
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|sub| {
                        let mut sub_errors = Vec::new();
                        check(doc, sub, value, at, &mut sub_errors);
                        sub_errors.is_empty()
                    })
                    .count();
                let ok = if keyword == "oneOf" {
                    matching == 1
                } else {
                    matching >= 1
                };
                if !ok {
                    errors.push(format!(
                        "{at}: {value} matches {matching} of the {keyword} schemas"
                    ));
                }
            }
            "minimum" | "maximum" | "exclusiveMinimum" => {
                if let (Some(v), Some(limit)) = (value.as_f64(), rule.as_f64()) {
                    let ok = match keyword.as_str() {
                        "minimum" => v >= limit,
                        "maximum" => v <= limit,
                        _ => v > limit,
                    };
                    if !ok {
                        errors.push(format!("{at}: {value} breaks {keyword} {rule}"));
                    }
                }
            }
            // Patterns constrain requests; answers are checked by the rules above.
            "pattern" => {}
            other => panic!("{at}: the test's schema checker does not know {other:?}; teach it"),
        }
    }
}

/// The documented response of `method template` for `status` (or `default`).
fn response_doc<'a>(doc: &'a Value, method: &str, template: &str, status: u16) -> &'a Value {
    let operation = &doc["paths"][template][method.to_ascii_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not in the document"
    );
    let responses = &operation["responses"];
    let response = responses
        .get(status.to_string())
        .or_else(|| responses.get("default"))
        .unwrap_or_else(|| panic!("{method} {template}: status {status} is not documented"));
    resolve(doc, response)
}

/// Holds a real answer to the document; returns the body as JSON (`Null` for text).
fn conforms(doc: &Value, method: &str, template: &str, response: &HttpResponse) -> Value {
    let documented = response_doc(doc, method, template, response.status);
    let content_type = response.header("Content-Type").unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let content = documented["content"].as_object().unwrap_or_else(|| {
        panic!(
            "{method} {template} {}: the document gives no content",
            response.status
        )
    });
    let media = content.get(essence).unwrap_or_else(|| {
        panic!(
            "{method} {template} {}: content type {content_type:?} is not documented ({:?})",
            response.status,
            content.keys().collect::<Vec<_>>()
        )
    });
    if let Some(headers) = documented["headers"].as_object() {
        for name in headers.keys() {
            assert!(
                response.header(name).is_some(),
                "{method} {template} {}: documented header {name} is missing",
                response.status
            );
        }
    }
    let value = if essence == "application/json" {
        response.json()
    } else {
        Value::String(response.text())
    };
    let mut errors = Vec::new();
    check(doc, &media["schema"], &value, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {template} {} does not match the document:\n{}\nbody: {}",
        response.status,
        errors.join("\n"),
        response.text()
    );
    value
}

/// An error answer of a path the document has no operation for: the shared error shape.
fn is_error_document(doc: &Value, response: &HttpResponse) {
    let mut errors = Vec::new();
    check(
        doc,
        &json!({"$ref": "#/components/schemas/Error"}),
        &response.json(),
        "$",
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:?}: {}", response.text());
}

#[test]
fn the_checker_rejects_what_the_document_does_not_allow() {
    let doc = document();
    let gpu = json!({"$ref": "#/components/schemas/Gpu"});
    let mut errors = Vec::new();
    check(&doc, &gpu, &json!({"id": -1, "extra": 1}), "$", &mut errors);
    let text = errors.join("\n");
    assert!(text.contains("$.id: -1 breaks minimum"), "{text}");
    assert!(
        text.contains("field extra is not in the document"),
        "{text}"
    );
    assert!(text.contains("required field uuid is missing"), "{text}");
    let mut errors = Vec::new();
    let usage = json!({"$ref": "#/components/schemas/Container/properties/usage"});
    check(&doc, &usage, &json!(3), "$", &mut errors);
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn the_agent_serves_the_embedded_document_and_its_answers_match_it() {
    let doc = document();
    let knob_dir = tempfile::tempdir().expect("temp dir");
    let knobs = knob_dir.path().join("knobs");
    write_knobs(&knobs, "");
    let agent = Agent::start_with(
        |_| {},
        AgentOptions {
            env: vec![(
                "FAKE_NVML_KNOB_FILE".into(),
                knobs.to_string_lossy().into_owned(),
            )],
            ..AgentOptions::default()
        },
    );

    // The document itself: served with the token only, byte for byte the embedded one.
    let served = agent.get("/api/v1/openapi.json");
    assert_eq!(served.status, 200);
    assert_eq!(served.text(), EMBEDDED);
    conforms(&doc, "GET", "/api/v1/openapi.json", &served);
    let anonymous = agent.request("GET", "/api/v1/openapi.json", &[], b"");
    assert_eq!(anonymous.status, 401);
    conforms(&doc, "GET", "/api/v1/openapi.json", &anonymous);

    let health = agent.request("GET", "/health", &[], b"");
    assert_eq!(health.status, 200);
    conforms(&doc, "GET", "/health", &health);
    let ready = agent.request("GET", "/health/ready", &[], b"");
    conforms(&doc, "GET", "/health/ready", &ready);
    let tunnels = agent.get("/api/v1/tunnels");
    assert_eq!(tunnels.status, 200, "{}", tunnels.text());
    conforms(&doc, "GET", "/api/v1/tunnels", &tunnels);

    // An Xid on GPU 1 so that xid_errors, health_reasons and the reset have content.
    write_knobs(&knobs, "xid_events = 1:79\n");
    let failed = wait_until(Duration::from_secs(10), || {
        agent.get("/api/v1/metrics").json()["gpus"][1]["health"] == "failed"
    });
    assert!(failed, "GPU 1 never failed; log:\n{}", agent.log());
    let metrics = conforms(
        &doc,
        "GET",
        "/api/v1/metrics",
        &agent.get("/api/v1/metrics"),
    );
    assert!(!metrics["gpus"].as_array().unwrap().is_empty(), "{metrics}");
    assert_eq!(metrics["gpus"][1]["xid_errors"][0]["xid"], 79);

    let prometheus = agent.get("/metrics");
    assert_eq!(prometheus.status, 200);
    assert_eq!(
        prometheus.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    conforms(&doc, "GET", "/metrics", &prometheus);
    conforms(
        &doc,
        "GET",
        "/metrics",
        &agent.request("GET", "/metrics", &[], b""),
    );

    let reset_template = "/api/v1/gpus/{index}/health/reset";
    let reset = agent.api("POST", "/api/v1/gpus/1/health/reset", b"");
    assert_eq!(reset.status, 200, "{}", reset.text());
    let reset = conforms(&doc, "POST", reset_template, &reset);
    assert_eq!(reset["cleared_xid_errors"], 1);
    for (path, status) in [
        ("/api/v1/gpus/x/health/reset", 400),
        ("/api/v1/gpus/99/health/reset", 404),
    ] {
        let r = agent.api("POST", path, b"");
        assert_eq!(r.status, status, "{path}: {}", r.text());
        conforms(&doc, "POST", reset_template, &r);
    }

    // Errors: a bad create, a bad query, a wrong token; an unknown path and a wrong method
    // (no operation to hold them to) in the shared error shape, 405 with Allow.
    let bad = agent.api(
        "POST",
        "/api/v1/containers",
        br#"{"claim_id":"a","privileged":true}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    conforms(&doc, "POST", "/api/v1/containers", &bad);
    let bad_tail = agent.get("/api/v1/containers/x/logs?tail=-1");
    assert_eq!(bad_tail.status, 400);
    conforms(&doc, "GET", "/api/v1/containers/{id}/logs", &bad_tail);
    let wrong_token = agent.request(
        "GET",
        "/api/v1/metrics",
        &[("Authorization", "Bearer wrong-token-0123456789")],
        b"",
    );
    assert_eq!(wrong_token.status, 401);
    conforms(&doc, "GET", "/api/v1/metrics", &wrong_token);
    let unknown = agent.get("/api/v1/nothing");
    assert_eq!(unknown.status, 404);
    is_error_document(&doc, &unknown);
    let wrong_method = agent.api("PUT", "/api/v1/metrics", b"");
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("Allow"), Some("GET"));
    is_error_document(&doc, &wrong_method);
    assert!(
        doc["paths"]["/api/v1/metrics"].get("put").is_none(),
        "PUT is not an operation of /api/v1/metrics"
    );
}

#[test]
fn container_answers_match_the_document() {
    if !ready("container_answers_match_the_document") {
        return;
    }
    let doc = document();
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let containers = "/api/v1/containers";
    let one = "/api/v1/containers/{id}";

    let claim = scope.claim("schema");
    let create_body = body(&claim, &[0], "echo hello; sleep 600");
    let created = agent.post_json(containers, &create_body);
    assert_eq!(created.status, 201, "{}\n{}", created.text(), agent.log());
    let view = conforms(&doc, "POST", containers, &created);
    let id = view["id"].as_str().unwrap().to_string();

    let again = agent.post_json(containers, &create_body);
    assert_eq!(again.status, 409, "{}", again.text());
    conforms(&doc, "POST", containers, &again);

    // Usage appears within a few seconds; the list must match with and without it.
    let list = agent.get(containers);
    assert_eq!(list.status, 200);
    conforms(&doc, "GET", containers, &list);
    let sampled = wait_until(Duration::from_secs(10), || {
        !agent.get(&format!("{containers}/{id}")).json()["usage"].is_null()
    });
    assert!(sampled, "no usage reading; log:\n{}", agent.log());
    let got = agent.get(&format!("{containers}/{id}"));
    conforms(&doc, "GET", one, &got);
    conforms(&doc, "GET", containers, &agent.get(containers));

    let logs = agent.get(&format!("{containers}/{claim}/logs?tail=5"));
    assert_eq!(logs.status, 200);
    assert!(logs.text().contains("hello"), "{}", logs.text());
    conforms(&doc, "GET", "/api/v1/containers/{id}/logs", &logs);

    for action in ["stop", "start", "restart"] {
        let r = agent.api("POST", &format!("{containers}/{claim}/{action}"), b"");
        assert_eq!(r.status, 200, "{action}: {}", r.text());
        conforms(
            &doc,
            "POST",
            &format!("/api/v1/containers/{{id}}/{action}"),
            &r,
        );
    }
    let stopped = agent.api("POST", &format!("{containers}/{claim}/stop"), b"");
    let stopped = conforms(&doc, "POST", "/api/v1/containers/{id}/stop", &stopped);
    assert_eq!(stopped["state"], "exited", "{stopped}");
    conforms(&doc, "GET", one, &agent.get(&format!("{containers}/{id}")));

    let deleted = agent.api("DELETE", &format!("{containers}/{id}"), b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let deleted = conforms(&doc, "DELETE", one, &deleted);
    assert_eq!(deleted["deleted"], true);
    let gone = agent.get(&format!("{containers}/{id}"));
    assert_eq!(gone.status, 404);
    conforms(&doc, "GET", one, &gone);
    let gone = agent.api("DELETE", &format!("{containers}/{id}"), b"");
    conforms(&doc, "DELETE", one, &gone);
}
