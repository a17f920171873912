//! `/api/v1/metrics` against the fake NVML library: the field contract, partial failures, NVML
//! unavailable or late, an old driver without the v2 memory call, and a slow NVML that must
//! never slow the API.

mod common;

use common::fake_nvml::{self, Variant};
use common::{Agent, AgentOptions};
use serde_json::Value;
use std::time::{Duration, Instant};

fn env(pairs: &[(&str, &str)]) -> AgentOptions {
    AgentOptions {
        env: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        wait_for_gpu: true,
    }
}

fn metrics(agent: &Agent) -> Value {
    let response = agent.get("/api/v1/metrics");
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

/// The metrics document once CPU usage is known (it is `null` until sysinfo's second reading,
/// a fraction of a second after start).
fn metrics_with_cpu(agent: &Agent) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(agent);
        if !m["cpu_usage_percent"].is_null() || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_report_host_and_every_fake_gpu() {
    let agent = Agent::start(|_| {});
    let m = metrics_with_cpu(&agent);

    // The original agent's fields, then ours.
    assert_eq!(m["node_id"], Value::Null, "not registered");
    for key in ["cpu_usage_percent", "memory_usage_percent"] {
        let v = m[key].as_f64().unwrap_or_else(|| panic!("{key} in {m}"));
        assert!((0.0..=100.0).contains(&v), "{key} = {v}");
    }
    assert!(m["memory_total_mb"].as_u64().unwrap() > 0);
    assert!(m["memory_used_mb"].as_u64().unwrap() <= m["memory_total_mb"].as_u64().unwrap());
    assert!(m["load_average"]["one"].is_f64());
    assert!(m["load_average"]["fifteen"].is_f64());
    let timestamp = m["timestamp"].as_str().unwrap();
    assert!(
        timestamp.len() == 20 && timestamp.ends_with('Z'),
        "{timestamp}"
    );
    assert_eq!(m["driver_version"], "550.54.15");
    assert!(m.get("gpu_error").is_none(), "{m}");

    let gpus = m["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    for (i, gpu) in gpus.iter().enumerate() {
        let i = i as u64;
        assert_eq!(gpu["id"], i);
        assert_eq!(gpu["name"], "NVIDIA Fake H100 80GB HBM3");
        assert_eq!(
            gpu["uuid"],
            format!("GPU-00000000-0000-4000-8000-{i:012x}").as_str()
        );
        assert_eq!(gpu["temperature_c"], 40 + i);
        assert_eq!(gpu["memory_total_mb"], 81559);
        assert_eq!(gpu["memory_used_mb"], 1024 * (i + 1));
        let expected = ((1024.0 * (i + 1) as f64) * 1000.0 / 81559.0).round() / 10.0;
        assert_eq!(gpu["memory_usage_percent"].as_f64().unwrap(), expected);
        assert_eq!(
            gpu["usage_percent"].as_f64().unwrap(),
            10.0 * (i + 1) as f64
        );
        assert_eq!(gpu["power_watts"].as_f64().unwrap(), 100.0 + i as f64);
        assert_eq!(gpu["lost"], false);
        assert!(gpu.get("errors").is_none(), "{gpu}");
    }
    // GPU 0 runs the fake's compute process: busy. GPU 1 runs none.
    assert_eq!(gpus[0]["busy"], true);
    assert_eq!(
        gpus[0]["processes"],
        serde_json::json!([{"pid": 4242, "used_memory_mb": 512, "kind": "compute",
                            "container_id": null, "claim_id": "host"}])
    );
    assert_eq!(gpus[1]["busy"], false);
    assert_eq!(gpus[1]["processes"], serde_json::json!([]));
}

#[test]
fn processes_decide_busy() {
    let agent = Agent::start_with(
        |_| {},
        env(&[
            ("FAKE_NVML_GPU_COUNT", "3"),
            ("FAKE_NVML_PROCS", "2:77:100;2:78:200"),
        ]),
    );
    let m = metrics(&agent);
    let gpus = m["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 3);
    assert_eq!(gpus[0]["busy"], false);
    assert_eq!(gpus[1]["busy"], false);
    assert_eq!(gpus[2]["busy"], true);
    assert_eq!(gpus[2]["processes"].as_array().unwrap().len(), 2);
}

#[test]
fn nvml_unavailable_leaves_the_agent_running() {
    let agent = Agent::start_with(|_| {}, env(&[("FAKE_NVML_INIT_FAIL", "1")]));
    let m = metrics_with_cpu(&agent);
    assert_eq!(m["gpus"], serde_json::json!([]));
    let reason = m["gpu_error"].as_str().unwrap();
    assert!(reason.contains("driver is not loaded"), "{reason}");
    assert!(m["cpu_usage_percent"].is_f64(), "host metrics still work");
    let health = agent.get("/health").json();
    assert_eq!(
        health["components"]["gpu"],
        format!("unavailable: {reason}").as_str()
    );
}

#[test]
fn a_missing_library_is_named() {
    let agent = Agent::start(|c| c.gpu.nvml_library_path = "/nonexistent/libnvidia-ml.so.1".into());
    let m = metrics(&agent);
    assert_eq!(m["gpus"], serde_json::json!([]));
    let reason = m["gpu_error"].as_str().unwrap();
    assert!(
        reason.contains("/nonexistent/libnvidia-ml.so.1"),
        "{reason}"
    );
}

#[test]
fn nvml_init_is_retried_when_the_driver_loads_late() {
    let flag = tempfile::NamedTempFile::new().unwrap();
    let flag_path = flag.path().to_string_lossy().into_owned();
    let agent = Agent::start_with(
        |c| c.gpu.init_retry_secs = 1,
        env(&[("FAKE_NVML_INIT_FAIL_FILE", &flag_path)]),
    );
    assert_eq!(metrics(&agent)["gpus"], serde_json::json!([]));
    drop(flag); // the "driver" is loaded now
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = metrics(&agent);
        if m["gpus"].as_array().map(Vec::len) == Some(2) {
            assert!(m.get("gpu_error").is_none());
            break;
        }
        assert!(Instant::now() < deadline, "NVML never re-initialised: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let health = agent.get("/health").json();
    assert_eq!(health["components"]["gpu"], "ok");
}

#[test]
fn a_lost_gpu_is_reported_and_the_others_are_intact() {
    let agent = Agent::start_with(|_| {}, env(&[("FAKE_NVML_LOST_GPU", "1")]));
    let m = metrics(&agent);
    let gpus = m["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0]["lost"], false);
    assert_eq!(gpus[0]["temperature_c"], 40);
    assert_eq!(gpus[1]["lost"], true);
    assert_eq!(gpus[1]["id"], 1);
    assert_eq!(gpus[1]["temperature_c"], Value::Null);
    assert_eq!(gpus[1]["memory_used_mb"], Value::Null);
    assert!(gpus[1]["errors"]["temperature_c"]
        .as_str()
        .unwrap()
        .contains("fallen off the bus"));
    let health = agent.get("/health").json();
    assert_eq!(health["components"]["gpu"], "degraded: GPU 1 lost");
}

#[test]
fn an_unsupported_metric_is_null_with_its_reason() {
    let agent = Agent::start_with(
        |_| {},
        env(&[("FAKE_NVML_UNSUPPORTED", "power,temperature")]),
    );
    let m = metrics(&agent);
    for gpu in m["gpus"].as_array().unwrap() {
        assert_eq!(gpu["power_watts"], Value::Null);
        assert_eq!(gpu["temperature_c"], Value::Null);
        assert_eq!(
            gpu["errors"]["power_watts"],
            "not supported by this GPU or driver"
        );
        assert!(gpu["errors"]["temperature_c"].is_string());
        assert!(gpu["memory_total_mb"].is_u64(), "the rest is intact: {gpu}");
        assert!(gpu["usage_percent"].is_f64());
        assert_eq!(gpu["lost"], false);
    }
}

#[test]
fn an_old_driver_without_memory_v2_falls_back_to_v1() {
    let library = fake_nvml::library(Variant::NoMemoryV2);
    let agent = Agent::start(|c| c.gpu.nvml_library_path = library.to_string_lossy().into());
    let m = metrics(&agent);
    let gpus = m["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    assert_eq!(gpus[0]["memory_total_mb"], 81559);
    assert_eq!(gpus[1]["memory_used_mb"], 2048);
    assert!(gpus[0].get("errors").is_none(), "{}", gpus[0]);
    assert!(agent.log().contains("using the v1 memory call"));
}

#[test]
fn no_gpus_is_an_empty_list_not_an_error() {
    let agent = Agent::start_with(|_| {}, env(&[("FAKE_NVML_GPU_COUNT", "0")]));
    let m = metrics(&agent);
    assert_eq!(m["gpus"], serde_json::json!([]));
    assert!(m.get("gpu_error").is_none());
}

#[test]
fn a_slow_nvml_never_slows_the_api_or_the_shutdown() {
    // Every NVML device call takes 100 ms: one sample of two GPUs (some 25 calls each, with
    // the health signals) takes seconds.
    let mut agent = Agent::start_with(
        |c| c.gpu.sample_interval_ms = 100,
        env(&[("FAKE_NVML_SLOW_MS", "100")]),
    );
    // The sampler is now (almost always) inside a slow call; requests must not wait for it.
    for _ in 0..10 {
        let started = Instant::now();
        let m = metrics(&agent);
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "metrics took {:?}",
            started.elapsed()
        );
        assert_eq!(m["gpus"].as_array().unwrap().len(), 2);
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status}: {}", agent.log());
    assert!(took < Duration::from_secs(2), "stop took {took:?}");
}

#[test]
fn the_served_document_follows_the_samples() {
    let agent = Agent::start(|c| c.gpu.sample_interval_ms = 200);
    let first = agent.get("/api/v1/metrics").text();
    // Served as stored bytes between samples, rebuilt after one: within a few host samples
    // (one a second) the document, its timestamp included, has moved on.
    let deadline = Instant::now() + Duration::from_secs(5);
    let later = loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = metrics(&agent);
        let stamp = now["timestamp"].as_str().unwrap_or_default().to_string();
        let before: Value = serde_json::from_str(&first).unwrap();
        if stamp != before["timestamp"].as_str().unwrap_or_default() || Instant::now() > deadline {
            break now;
        }
    };
    let before: Value = serde_json::from_str(&first).unwrap();
    assert_ne!(later["timestamp"], before["timestamp"], "rebuilt: {later}");
    assert!(later["cpu_usage_percent"].is_f64(), "{later}");
    assert_eq!(later["gpus"].as_array().unwrap().len(), 2);
}

#[test]
fn the_api_answers_soon_after_start() {
    // Not a benchmark (scripts/bench.sh measures start-up): a sanity bound, generous enough for
    // a loaded test machine, that would catch a start-up waiting on a sampler again.
    let started = Instant::now();
    let agent = Agent::start_with(
        |_| {},
        AgentOptions {
            env: Vec::new(),
            wait_for_gpu: false,
        },
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "start-up took {took:?}");
    assert_eq!(agent.get("/health").status, 200);
}
