//! Who uses each GPU, end to end: a real container's PID (from `docker inspect`) is written into
//! the fake NVML's process list, and the agent attributes it to the container and its claim,
//! and reports the isolation violations (a claim's process on a GPU it does not hold, a host
//! process on a claimed GPU) in the metrics and the heartbeat, logging each once.

mod common;

use common::docker::{body, docker_ok, ready, wait_until, Scope};
use common::fake_nvml::write_knobs;
use common::platform::{PlatformServer, Reply};
use common::AgentOptions;
use serde_json::Value;
use std::time::Duration;

#[test]
fn a_real_containers_gpu_process_is_attributed_to_its_claim_and_violations_are_reported() {
    if !ready("gpu_claims_attribution") {
        return;
    }
    let knob_dir = tempfile::tempdir().expect("temp dir");
    let knobs = knob_dir.path().join("knobs");
    write_knobs(&knobs, "gpu.*.procs.compute =\n");
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::registered("node-claims"));
    let scope = Scope::new();
    let url = platform.url();
    let agent = scope.agent_with(
        move |c| {
            c.central_platform.api_url = url;
            c.central_platform.heartbeat_interval_secs = 1;
            c.central_platform.request_timeout_secs = 2;
        },
        AgentOptions {
            env: vec![(
                "FAKE_NVML_KNOB_FILE".into(),
                knobs.to_string_lossy().into_owned(),
            )],
            ..AgentOptions::default()
        },
    );
    let claim = scope.claim("renter");
    let created = agent.create(&body(&claim, &[0], "sleep 600"));
    let id = created["id"].as_str().unwrap().to_string();
    let pid = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    assert!(pid.parse::<u32>().is_ok_and(|p| p > 0), "{pid}");

    // Its process on its own GPU: attributed, no violation.
    write_knobs(&knobs, &format!("gpu.0.procs.compute = {pid}:2048\n"));
    let mut gpus = Value::Null;
    let attributed = wait_until(Duration::from_secs(10), || {
        gpus = agent.get("/api/v1/metrics").json()["gpus"].clone();
        gpus[0]["processes"][0]["claim_id"] == claim.as_str()
    });
    assert!(attributed, "{gpus}\nlog:\n{}", agent.log());
    let process = &gpus[0]["processes"][0];
    assert_eq!(process["container_id"], id.as_str());
    assert_eq!(process["pid"].to_string(), pid);
    assert_eq!(process["kind"], "compute");
    assert_eq!(process["used_memory_mb"], 2048);
    assert_eq!(gpus[0]["isolation_violations"].as_array().unwrap().len(), 0);

    // The same process also on GPU 1 (not its claim's), and a host process (this test) on
    // GPU 0 as a graphics process.
    let me = std::process::id();
    write_knobs(
        &knobs,
        &format!(
            "gpu.0.procs.compute = {pid}:2048\ngpu.0.procs.graphics = {me}:64\n\
             gpu.1.procs.compute = {pid}:512\n"
        ),
    );
    let reported = wait_until(Duration::from_secs(10), || {
        gpus = agent.get("/api/v1/metrics").json()["gpus"].clone();
        gpus[0]["isolation_violations"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
            && gpus[1]["isolation_violations"]
                .as_array()
                .is_some_and(|v| !v.is_empty())
    });
    assert!(reported, "{gpus}\nlog:\n{}", agent.log());
    let on1 = gpus[1]["isolation_violations"][0].as_str().unwrap();
    assert!(
        on1.contains(&format!("process {pid} of claim {claim}"))
            && on1.contains("uses GPU 1, which its claim does not hold"),
        "{on1}"
    );
    let on0 = gpus[0]["isolation_violations"][0].as_str().unwrap();
    assert_eq!(
        on0,
        format!("process {me} (a host process) uses GPU 0, held by claim {claim}")
    );
    let host = gpus[0]["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "graphics")
        .expect("the graphics process")
        .clone();
    assert_eq!(host["claim_id"], "host");
    assert!(host["container_id"].is_null());

    // The heartbeat carries them; the log says each once.
    let mut beat = Value::Null;
    let carried = wait_until(Duration::from_secs(10), || {
        beat = platform
            .heartbeats()
            .last()
            .map(|b| b.json())
            .unwrap_or(Value::Null);
        beat["gpus"][1]["isolation_violations"]
            .as_array()
            .is_some_and(|v| !v.is_empty())
    });
    assert!(carried, "{beat}");
    std::thread::sleep(Duration::from_millis(600));
    let log = agent.log();
    assert_eq!(log.matches(on1).count(), 1, "{log}");
    assert_eq!(log.matches(on0).count(), 1, "{log}");
}
