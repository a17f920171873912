//! GPU health end to end: the agent against the fake NVML, whose knob file the test rewrites
//! while the agent runs (an Xid event, ECC counts, remapped rows, PCIe width, throttling,
//! unsupported and failing calls), with the test platform receiving heartbeats and the real
//! docker engine behind the ledger.

mod common;

use common::docker::{body, ready, wait_until, Scope};
use common::fake_nvml::{knob_file, knob_options, write_knobs};
use common::platform::PlatformServer;
use common::Agent;
use serde_json::{json, Value};
use std::time::Duration;

fn gpu(agent: &Agent, index: usize) -> Value {
    agent.get("/api/v1/metrics").json()["gpus"][index].clone()
}

/// Waits until GPU `index`'s health is `health`; returns the GPU.
fn wait_for_health(agent: &Agent, index: usize, health: &str) -> Value {
    let mut last = Value::Null;
    let reached = wait_until(Duration::from_secs(10), || {
        last = gpu(agent, index);
        last["health"] == health
    });
    assert!(
        reached,
        "GPU {index} never became {health}: {last}\nlog:\n{}",
        agent.log()
    );
    last
}

fn components_gpu(agent: &Agent) -> String {
    agent.get("/health").json()["components"]["gpu"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_xid_79_fails_the_gpu_everywhere_survives_a_restart_and_is_cleared_by_reset() {
    if !ready("an_xid_79_fails_the_gpu") {
        return;
    }
    let (_knob_dir, knobs) = knob_file("knobs", "");
    let platform = PlatformServer::start();
    let scope = Scope::new();
    let mut agent = scope.agent_beating_to(&platform, "node-health", knob_options(&knobs));
    let healthy = gpu(&agent, 1);
    assert_eq!(healthy["health"], "healthy", "{healthy}");
    assert_eq!(healthy["health_reasons"], json!([]));
    assert_eq!(healthy["pcie"]["width"], 16);
    assert_eq!(healthy["clock_sm_mhz"], 1980);
    assert_eq!(healthy["power_limit_watts"], 700.0);
    assert_eq!(healthy["performance_state"], "P0");
    assert_eq!(healthy["ecc_errors"]["volatile_uncorrected"], 0);

    // A container on GPU 0 before anything happens; GPU 0 then fails under it.
    let holder_claim = scope.claim("holder");
    let holder = agent.create(&body(&holder_claim, &[0], "sleep 600"));
    let holder_id = holder["id"].as_str().unwrap().to_string();

    // Xid 79 on GPU 1 and GPU 0, an application Xid (13) on GPU 1.
    write_knobs(&knobs, "xid_events = 1:13, 1:79, 0:79\n");
    let failed = wait_for_health(&agent, 1, "failed");
    let reasons = failed["health_reasons"].to_string();
    assert!(
        reasons.contains("xid 79 at ") && reasons.contains("fallen off the bus"),
        "{reasons}"
    );
    assert!(
        !reasons.contains("xid 13"),
        "an application Xid is no fault: {reasons}"
    );
    assert_eq!(failed["xid_errors"].as_array().unwrap().len(), 2);
    assert_eq!(failed["xid_errors"][0]["severity"], "none");
    assert_eq!(failed["xid_errors"][1]["xid"], 79);
    wait_for_health(&agent, 0, "failed");

    // The ledger refuses it by id (409 naming the reason) and never picks it for a count.
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("onfailed"), &[1], "sleep 600"),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "gpu_unhealthy");
    assert!(r.text().contains("xid 79"), "{}", r.text());
    let mut by_count = body(&scope.claim("count"), &[], "sleep 600");
    by_count.as_object_mut().unwrap().remove("gpu_ids");
    by_count["gpu_count"] = json!(1);
    let r = agent.post_json("/api/v1/containers", &by_count);
    assert_eq!(
        (r.status, r.error_code()),
        (409, "gpu_unhealthy".to_string()),
        "{}",
        r.text()
    );

    // The container holding GPU 0 keeps running; the failure shows beside its claim.
    let view = agent.get(&format!("/api/v1/containers/{holder_id}")).json();
    assert_eq!(view["state"], "running", "{view}");
    let gpu0 = gpu(&agent, 0);
    assert_eq!(gpu0["claim_id"], holder_claim.as_str());

    // /health is degraded, naming the GPUs; the heartbeat carries the health.
    let health = agent.get("/health").json();
    assert_eq!(health["status"], "degraded", "{health}");
    let component = health["components"]["gpu"].as_str().unwrap();
    assert!(component.contains("GPU 1 failed: xid 79"), "{component}");
    let mut beat = Value::Null;
    let carried = wait_until(Duration::from_secs(10), || {
        beat = platform
            .heartbeats()
            .last()
            .map(|b| b.json())
            .unwrap_or(Value::Null);
        beat["gpus"][1]["health"] == "failed"
    });
    assert!(carried, "no heartbeat carried the failure: {beat}");
    assert!(beat["gpus"][1]["health_reasons"][0]
        .as_str()
        .unwrap()
        .starts_with("xid 79 at "));

    // The log says it once per transition.
    let log = agent.log();
    assert_eq!(
        log.matches("GPU 1 (GPU-00000000-0000-4000-8000-000000000001) is now failed")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("Xid 79: GPU has fallen off the bus"), "{log}");

    // A restart remembers the fallen GPUs (the event itself is gone from the fake).
    write_knobs(&knobs, "");
    agent.restart(false, knob_options(&knobs));
    agent.wait_for_docker();
    let after = gpu(&agent, 1);
    assert_eq!(after["health"], "failed", "{after}");
    assert!(after["health_reasons"][0]
        .as_str()
        .unwrap()
        .starts_with("xid 79 at "));
    let history = agent.dir.path().join("node_id.gpu-health.json");
    assert_eq!(common::mode(&history), 0o600);

    // Reset: the Xid history goes, the GPU is healthy again and can be given out.
    let r = agent.api("POST", "/api/v1/gpus/1/health/reset", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let reset = r.json();
    assert_eq!(reset["cleared_xid_errors"], 2);
    assert_eq!(reset["health"], "healthy");
    wait_for_health(&agent, 1, "healthy");
    assert!(agent.log().contains("is now healthy (was failed)"));
    agent.create(&body(&scope.claim("repaired"), &[1], "sleep 600"));
    // GPU 0 was not reset.
    assert_eq!(gpu(&agent, 0)["health"], "failed");

    // Bad resets.
    for (path, status) in [
        ("/api/v1/gpus/7/health/reset", 404),
        ("/api/v1/gpus/x/health/reset", 400),
    ] {
        let r = agent.api("POST", path, b"");
        assert_eq!(r.status, status, "{path}: {}", r.text());
    }
    assert_eq!(
        agent
            .request("POST", "/api/v1/gpus/1/health/reset", &[], b"")
            .status,
        401
    );
}

#[test]
fn counters_degrade_or_fail_a_gpu_while_they_last_and_reset_leaves_them() {
    let (_knob_dir, knobs) = knob_file("knobs", "");
    let agent = Agent::start_with(|_| {}, knob_options(&knobs));
    assert_eq!(components_gpu(&agent), "ok");

    write_knobs(
        &knobs,
        "gpu.0.pcie.width = 4\ngpu.0.throttle = 0x40\ngpu.0.retired_pages_pending = 1\n",
    );
    let degraded = wait_for_health(&agent, 0, "degraded");
    assert_eq!(
        degraded["health_reasons"],
        json!([
            "retired pages pending (reset the GPU)",
            "PCIe x16 → x4",
            "thermal slowdown"
        ])
    );
    assert_eq!(degraded["throttle_reasons"], json!(["hw_thermal_slowdown"]));
    assert!(components_gpu(&agent).starts_with("degraded: GPU 0 degraded: retired pages"));

    write_knobs(
        &knobs,
        "gpu.0.ecc.volatile.uncorrected = 3\ngpu.0.remapped.failed = 1\n",
    );
    let failed = wait_for_health(&agent, 0, "failed");
    assert_eq!(
        failed["health_reasons"],
        json!(["uncorrectable ECC errors: 3", "row remapping failed"])
    );
    // A reset clears Xid history only: live counters still fail the GPU.
    let r = agent.api("POST", "/api/v1/gpus/0/health/reset", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["cleared_xid_errors"], 0);
    assert_eq!(r.json()["health"], "failed");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gpu(&agent, 0)["health"], "failed");

    write_knobs(&knobs, "");
    wait_for_health(&agent, 0, "healthy");
    assert_eq!(components_gpu(&agent), "ok");
}

#[test]
fn unsupported_metrics_are_null_and_failing_queries_degrade_the_component() {
    let (_knob_dir, knobs) = knob_file("knobs", "");
    write_knobs(
        &knobs,
        "gpu.*.unsupported = ecc, retired_pages, remapped_rows, throttle, pcie, fan, clocks, \
         power_limit, pstate, events\n",
    );
    let agent = Agent::start_with(|_| {}, knob_options(&knobs));
    let g = gpu(&agent, 0);
    assert_eq!(g["health"], "healthy", "{g}");
    for field in [
        "retired_pages_pending",
        "remapped_rows",
        "throttle_reasons",
        "fan_speed_percent",
        "clock_sm_mhz",
        "clock_memory_mhz",
        "power_limit_watts",
        "performance_state",
    ] {
        assert!(g[field].is_null(), "{field}: {g}");
    }
    assert!(g["ecc_errors"]["volatile_uncorrected"].is_null());
    assert!(g["pcie"]["width"].is_null());
    assert_eq!(g["temperature_c"], 40, "the rest is still read");
    assert_eq!(components_gpu(&agent), "ok", "unsupported is not a failure");
    assert!(
        agent.log().contains("no GPU reports Xid events"),
        "{}",
        agent.log()
    );

    // A query failing at run time degrades the GPU component (the GPU itself stays usable).
    write_knobs(&knobs, "gpu.1.fail = ecc, clocks\n");
    let mut status = String::new();
    let degraded = wait_until(Duration::from_secs(10), || {
        status = components_gpu(&agent);
        status.contains("GPU 1 NVML queries failing")
    });
    assert!(degraded, "{status}");
    assert!(status.contains("ecc_errors"), "{status}");
    assert_eq!(gpu(&agent, 1)["health"], "healthy");
    write_knobs(&knobs, "");
    assert!(wait_until(Duration::from_secs(10), || components_gpu(
        &agent
    ) == "ok"));
}

#[test]
fn shutdown_stays_prompt_while_the_xid_thread_waits() {
    let (_knob_dir, knobs) = knob_file("knobs", "");
    let mut agent = Agent::start_with(|_| {}, knob_options(&knobs));
    std::thread::sleep(Duration::from_millis(300));
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        !agent.log().contains("did not stop in time"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_gpu_that_cannot_be_watched_leaves_the_others_watched() {
    let (_knob_dir, knobs) = knob_file("knobs", "");
    write_knobs(&knobs, "gpu.1.fail = events\n");
    let agent = Agent::start_with(|_| {}, knob_options(&knobs));
    let watching = wait_until(Duration::from_secs(10), || {
        agent.log().contains("watching GPU(s) 0 for Xid errors")
    });
    assert!(watching, "{}", agent.log());
    assert!(agent.log().contains("GPU 1: cannot watch for Xid errors"));
    // A double-bit ECC error (Xid 48) on GPU 0 still arrives.
    write_knobs(&knobs, "gpu.1.fail = events\nxid_events = 0:48\n");
    let failed = wait_for_health(&agent, 0, "failed");
    assert!(
        failed["health_reasons"][0]
            .as_str()
            .unwrap()
            .ends_with(": double-bit ECC error"),
        "{failed}"
    );
    assert_eq!(gpu(&agent, 1)["health"], "healthy");
}

#[test]
fn a_degraded_gpu_is_still_given_out_a_failed_one_is_not_and_the_heartbeat_says_which() {
    if !ready("a_degraded_gpu_is_still_given_out") {
        return;
    }
    let (_knob_dir, knobs) = knob_file("knobs", "");
    let platform = PlatformServer::start();
    let scope = Scope::new();
    let agent = scope.agent_beating_to(&platform, "node-degraded", knob_options(&knobs));
    // GPU 0: a narrowed PCIe link (degraded); GPU 1: uncorrectable ECC errors (failed).
    write_knobs(
        &knobs,
        "gpu.0.pcie.width = 8\ngpu.1.ecc.volatile.uncorrected = 2\n",
    );
    wait_for_health(&agent, 0, "degraded");
    wait_for_health(&agent, 1, "failed");
    let mut beat = Value::Null;
    let carried = wait_until(Duration::from_secs(10), || {
        beat = platform
            .heartbeats()
            .last()
            .map(|b| b.json())
            .unwrap_or(Value::Null);
        beat["gpus"][0]["health"] == "degraded" && beat["gpus"][1]["health"] == "failed"
    });
    assert!(carried, "{beat}");
    assert_eq!(beat["gpus"][0]["health_reasons"], json!(["PCIe x16 → x8"]));
    assert_eq!(
        beat["gpus"][1]["health_reasons"],
        json!(["uncorrectable ECC errors: 2"])
    );

    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("ecc"), &[1], "sleep 600"),
    );
    assert_eq!(
        (r.status, r.error_code()),
        (409, "gpu_unhealthy".to_string()),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("uncorrectable ECC errors: 2"),
        "{}",
        r.text()
    );
    // A count gets the degraded GPU, the only one left that works.
    let mut by_count = body(&scope.claim("count"), &[], "sleep 600");
    by_count.as_object_mut().unwrap().remove("gpu_ids");
    by_count["gpu_count"] = json!(1);
    let created = agent.create(&by_count);
    assert_eq!(created["gpu_ids"], json!([0]));

    // The counter clears (the GPU was reset): GPU 1 is given out again.
    write_knobs(&knobs, "gpu.0.pcie.width = 8\n");
    wait_for_health(&agent, 1, "healthy");
    agent.create(&body(&scope.claim("after"), &[1], "sleep 600"));
}

#[test]
fn an_application_xid_storm_is_no_fault_and_one_log_line() {
    let (_knob_dir, knobs) = knob_file("knobs", "");
    let agent = Agent::start_with(|_| {}, knob_options(&knobs));
    let storm: Vec<&str> = std::iter::repeat_n("0:13", 200).collect();
    write_knobs(&knobs, &format!("xid_events = {}\n", storm.join(",")));
    let mut g = Value::Null;
    let seen = wait_until(Duration::from_secs(10), || {
        g = gpu(&agent, 0);
        g["xid_errors"].as_array().is_some_and(|x| x.len() == 32)
    });
    assert!(seen, "the newest 32 are kept: {g}");
    std::thread::sleep(Duration::from_millis(300));
    let g = gpu(&agent, 0);
    assert_eq!(g["health"], "healthy", "{g}");
    let log = agent.log();
    assert_eq!(log.matches("Xid 13").count(), 1, "{log}");
    // Nothing worth keeping across a restart was written.
    assert!(!agent.dir.path().join("node_id.gpu-health.json").exists());
}
