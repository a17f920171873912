//! Property tests (proptest) over every request body, path and query parameter of the API,
//! against one real agent on the real docker engine: whatever arrives, the agent answers (it
//! never panics or dies), never with a 5xx, and a 4xx creates nothing (docker has no container
//! with the agent's label that the agent does not list, and a refused create leaves the list as
//! it was). The few valid creates a strategy produces (201) are deleted at once.

mod common;

use common::docker::{ready, Scope, TEST_IMAGE};
use common::Agent;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Map, Value};

/// Strings a field might get: empty, odd characters, flag-like, long, path-like, unicode.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9-]{1,20}",
        "\\PC{0,40}",
        Just("--privileged".to_string()),
        Just("../etc".to_string()),
        Just("a b".to_string()),
        Just("x".repeat(300)),
        Just("NVIDIA_VISIBLE_DEVICES=all".to_string()),
        Just("=value".to_string()),
    ]
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|n| json!(n)),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn small_int() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..10).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(65536)),
        Just(json!(1.5)),
        Just(json!("1")),
    ]
}

/// A create body: each known field absent, well typed with odd values, or of any type; an
/// unknown field now and then. The image is never one docker would try to pull.
fn create_body() -> impl Strategy<Value = Value> {
    let image = prop_oneof![
        Just(json!(TEST_IMAGE)),
        Just(json!("")),
        Just(json!("Bad Image!")),
        Just(json!("--privileged")),
        Just(json!("a:b:c:d")),
        any_json(),
    ];
    let field = |s: BoxedStrategy<Value>| prop::option::of(prop_oneof![4 => s, 1 => any_json()]);
    (
        field(text().prop_map(Value::String).boxed()),
        field(image.boxed()),
        field(
            prop::collection::vec(small_int(), 0..4)
                .prop_map(Value::Array)
                .boxed(),
        ),
        field(small_int().boxed()),
        field(
            prop::collection::vec(
                (small_int(), small_int(), prop::option::of(text())).prop_map(
                    |(h, c, p)| json!({"host_port": h, "container_port": c, "protocol": p}),
                ),
                0..3,
            )
            .prop_map(Value::Array)
            .boxed(),
        ),
        field(
            prop::collection::vec(text().prop_map(Value::String), 0..3)
                .prop_map(Value::Array)
                .boxed(),
        ),
        field(
            prop::collection::vec(text().prop_map(Value::String), 0..3)
                .prop_map(Value::Array)
                .boxed(),
        ),
        (
            field(small_int().boxed()),
            field(any_json().boxed()),
            field(small_int().boxed()),
        ),
        prop::option::of(("[a-z]{1,8}", any_json())),
    )
        .prop_map(
            |(
                claim,
                image,
                gpu_ids,
                gpu_count,
                ports,
                env,
                command,
                (memory, cpus, shm),
                extra,
            )| {
                let mut body = Map::new();
                let mut put = |key: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        body.insert(key.to_string(), value);
                    }
                };
                put("claim_id", claim);
                put("image", image);
                put("gpu_ids", gpu_ids);
                put("gpu_count", gpu_count);
                put("port_mappings", ports);
                put("env_vars", env);
                put("command", command);
                put("memory_mb", memory);
                put("cpus", cpus);
                put("shm_size_mb", shm);
                if let Some((key, value)) = extra {
                    put(&key, Some(value));
                }
                Value::Object(body)
            },
        )
}

/// A path segment: plain, percent-encoded bytes, dots, or long.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._~-]{0,30}",
        prop::collection::vec(any::<u8>(), 0..12)
            .prop_map(|b| b.iter().map(|b| format!("%{b:02X}")).collect()),
        Just("..".to_string()),
        Just("%2e%2e".to_string()),
        Just("a".repeat(300)),
    ]
}

/// A query string: known and unknown keys, odd values and encodings.
fn query() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("tail".to_string()),
        Just("t%61il".to_string()),
        "[a-z]{0,6}"
    ];
    let value = prop_oneof![
        (-5i64..2_000_000).prop_map(|n| n.to_string()),
        "[a-zA-Z0-9%+.-]{0,12}",
        Just("%zz".to_string()),
        Just("99999999999999999999".to_string()),
    ];
    prop::collection::vec((key, prop::option::of(value)), 0..4).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// A request to some endpoint with random parts.
fn endpoint_request() -> impl Strategy<Value = (String, String)> {
    let method = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("DELETE"),
        Just("PUT"),
        Just("PATCH"),
        Just("HEAD"),
        Just("OPTIONS"),
    ];
    let action = prop_oneof![
        Just("start".to_string()),
        Just("stop".to_string()),
        Just("restart".to_string()),
        Just("logs".to_string()),
        segment(),
    ];
    let path = prop_oneof![
        segment().prop_map(|id| format!("/api/v1/containers/{id}")),
        (segment(), action.clone()).prop_map(|(id, a)| format!("/api/v1/containers/{id}/{a}")),
        (segment(), query()).prop_map(|(id, q)| format!("/api/v1/containers/{id}/logs?{q}")),
        (segment(), query()).prop_map(|(s, q)| format!("/api/v1/{s}?{q}")),
        (segment(), segment()).prop_map(|(a, b)| format!("/api/v1/gpus/{a}/health/{b}")),
        segment().prop_map(|i| format!("/api/v1/gpus/{i}/health/reset")),
        query().prop_map(|q| format!("/api/v1/metrics?{q}")),
        query().prop_map(|q| format!("/api/v1/containers?{q}")),
        prop::collection::vec(segment(), 0..5).prop_map(|s| format!("/{}", s.join("/"))),
    ];
    (method, path).prop_map(|(m, p)| (m.to_string(), p))
}

/// The agent and its docker scope, shared by the properties of one test.
struct Target {
    agent: Agent,
    scope: Scope,
}

impl Target {
    fn start() -> Target {
        let scope = Scope::new();
        let agent = scope.agent(|_| {});
        Target { agent, scope }
    }

    fn listed(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .agent
            .containers()
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    }

    /// The agent answers, and what docker has under its label is what it lists.
    fn consistent(&self) -> Result<(), TestCaseError> {
        let health = self.agent.get("/health");
        prop_assert_eq!(health.status, 200, "the agent still answers");
        prop_assert_eq!(
            self.scope.docker_ids(),
            self.listed(),
            "docker = the agent's list"
        );
        Ok(())
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn any_create_body_is_answered_below_500_and_a_refusal_creates_nothing() {
    if !ready("bad_input create bodies") {
        return;
    }
    let target = Target::start();
    let result = runner(96).run(&create_body(), |body| {
        let before = target.listed();
        let raw = serde_json::to_vec(&body).unwrap_or_default();
        let response = target.agent.api("POST", "/api/v1/containers", &raw);
        prop_assert!(
            response.status < 500,
            "POST {body} -> {} {}",
            response.status,
            response.text()
        );
        if response.status == 201 {
            let id = response.json()["id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let deleted = target
                .agent
                .api("DELETE", &format!("/api/v1/containers/{id}"), b"");
            prop_assert_eq!(deleted.status, 200, "{}", deleted.text());
        } else {
            prop_assert!(
                (400..500).contains(&response.status),
                "{body} -> {}",
                response.status
            );
            prop_assert_eq!(
                target.listed(),
                before,
                "a {} created nothing",
                response.status
            );
        }
        Ok(())
    });
    target.consistent().unwrap();
    if let Err(failure) = result {
        panic!("{failure}\nagent log:\n{}", target.agent.log());
    }
}

#[test]
fn any_bytes_as_a_create_body_are_refused_with_a_4xx() {
    if !ready("bad_input raw bodies") {
        return;
    }
    let target = Target::start();
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        "\\PC{0,200}".prop_map(String::into_bytes),
        any_json().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
    ];
    let result = runner(128).run(&bytes, |raw| {
        let response = target.agent.api("POST", "/api/v1/containers", &raw);
        prop_assert!(
            (400..500).contains(&response.status),
            "{:?} -> {} {}",
            String::from_utf8_lossy(&raw),
            response.status,
            response.text()
        );
        prop_assert!(target.listed().is_empty(), "nothing created");
        Ok(())
    });
    target.consistent().unwrap();
    if let Err(failure) = result {
        panic!("{failure}\nagent log:\n{}", target.agent.log());
    }
}

#[test]
fn any_path_query_and_method_is_answered_below_500_and_creates_nothing() {
    if !ready("bad_input paths") {
        return;
    }
    let target = Target::start();
    let body = prop_oneof![
        Just(Vec::new()),
        Just(b"{}".to_vec()),
        Just(b"{\"x\":1}".to_vec())
    ];
    let result = runner(256).run(&(endpoint_request(), body), |((method, path), body)| {
        let response = target.agent.api(&method, &path, &body);
        prop_assert!(
            response.status < 500,
            "{method} {path} -> {} {}",
            response.status,
            response.text()
        );
        prop_assert!(
            target.listed().is_empty(),
            "{method} {path} created nothing"
        );
        Ok(())
    });
    target.consistent().unwrap();
    if let Err(failure) = result {
        panic!("{failure}\nagent log:\n{}", target.agent.log());
    }
}
