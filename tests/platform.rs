//! The agent against a scripted test platform: registration, the identity file, heartbeats,
//! outages, rejected tokens, malformed answers, slow answers, proxies.

mod common;

use common::platform::{PlatformServer, Reply};
use common::{free_port, mode, write_config, Agent, AgentOptions};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use utopia_node_agent::config::Config;

const BOOTSTRAP_TOKEN: &str = "bootstrap-secret-5f1e2d3c4b5a";

/// A test agent registering with `platform_url`: fast backoff (100 ms, capped at 400 ms),
/// heartbeats off unless a test turns them on.
fn platform_config(config: &mut Config, platform_url: &str) {
    config.central_platform.api_url = platform_url.to_string();
    config.central_platform.bootstrap_token = BOOTSTRAP_TOKEN.to_string();
    config.central_platform.heartbeat_interval_secs = 0;
    config.central_platform.request_timeout_secs = 2;
    config.central_platform.backoff_initial_ms = 100;
    config.central_platform.backoff_max_ms = 400;
}

fn health(agent: &Agent) -> serde_json::Value {
    agent.get("/health").json()
}

fn platform_status(agent: &Agent) -> String {
    health(agent)["components"]["platform"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until `/health` shows `components.platform` satisfying `done`.
fn wait_for_status(agent: &Agent, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let status = platform_status(agent);
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "platform status still {status:?} after {timeout:?}; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn identity_path(agent: &Agent) -> std::path::PathBuf {
    agent.dir.path().join("node_id")
}

#[test]
fn first_start_registers_once_then_restart_reuses_the_identity() {
    let platform = PlatformServer::start();
    platform.queue_register([Reply::json(
        201,
        json!({"node_id": "node-abc.1:x_y-z", "frp": {"api_remote_port": 7001}}),
    )]);
    let mut agent = Agent::start(|c| platform_config(c, &platform.url()));

    let registrations = platform.wait_for_registrations(1, Duration::from_secs(10));
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    let request = &registrations[0];
    assert_eq!(
        request.header("Authorization"),
        Some(format!("Bearer {BOOTSTRAP_TOKEN}").as_str())
    );
    assert!(request
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("application/json")));

    // The documented body.
    let body = request.json();
    let metrics = agent.get("/api/v1/metrics").json();
    assert!(
        body["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "{body}"
    );
    match std::fs::read_to_string("/etc/machine-id") {
        Ok(id) if !id.trim().is_empty() => assert_eq!(body["machine_id"], id.trim()),
        _ => assert!(body["machine_id"].is_null()),
    }
    assert_eq!(body["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        body["os"].is_string() && body["kernel_version"].is_string(),
        "{body}"
    );
    assert!(body["cpu_model"].is_string() || body["cpu_model"].is_null());
    assert!(body["cpu_cores"].as_u64().is_some_and(|n| n > 0), "{body}");
    assert!(
        body["memory_total_mb"].as_u64().is_some_and(|n| n > 0),
        "{body}"
    );
    assert_eq!(body["driver_version"], metrics["driver_version"]);
    assert!(body["driver_version"].is_string(), "{body}");
    let gpus = body["gpus"].as_array().expect("gpus array");
    let metric_gpus = metrics["gpus"].as_array().expect("metrics gpus");
    assert!(!gpus.is_empty());
    assert_eq!(gpus.len(), metric_gpus.len());
    for (gpu, seen) in gpus.iter().zip(metric_gpus) {
        assert_eq!(gpu["index"], seen["id"]);
        assert_eq!(gpu["uuid"], seen["uuid"]);
        assert_eq!(gpu["name"], seen["name"]);
        assert_eq!(gpu["memory_total_mb"], seen["memory_total_mb"]);
    }
    assert_eq!(body["api_listen_address"], agent.addr.to_string());

    // Published, persisted complete and private.
    assert_eq!(metrics["node_id"], "node-abc.1:x_y-z");
    let path = identity_path(&agent);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "node-abc.1:x_y-z\n"
    );
    assert_eq!(mode(&path), 0o600);
    let record_path = agent.dir.path().join("node_id.registration.json");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!(record["node_id"], "node-abc.1:x_y-z");
    assert_eq!(record["api_remote_port"], 7001);
    assert_eq!(mode(&record_path), 0o600);
    let names: Vec<String> = std::fs::read_dir(agent.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");

    // Once: no second registration.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(platform.registrations().len(), 1);
    let log = agent.log();
    assert!(!log.contains(BOOTSTRAP_TOKEN), "token in the log:\n{log}");

    // A restart (and a crash and restart) uses the file and does not register.
    agent.restart(false, AgentOptions::default());
    assert_eq!(platform_status(&agent), "ok");
    assert_eq!(
        agent.get("/api/v1/metrics").json()["node_id"],
        "node-abc.1:x_y-z"
    );
    agent.restart(true, AgentOptions::default());
    assert_eq!(
        agent.get("/api/v1/metrics").json()["node_id"],
        "node-abc.1:x_y-z"
    );
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        platform.registrations().len(),
        1,
        "registered again after a restart"
    );
    assert!(agent.log().contains("not registering"), "{}", agent.log());
}

/// Runs the binary on a config whose identity file holds `contents`; returns (exit code, output).
fn start_with_identity(contents: &[u8], platform: &PlatformServer) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    platform_config(&mut config, &platform.url());
    std::fs::write(&config.identity_file_path, contents).unwrap();
    let (code, text) = run_to_refusal(dir.path(), &config);
    assert!(
        text.contains(&config.identity_file_path.display().to_string()),
        "the message does not name the file:\n{text}"
    );
    (code, text)
}

/// Runs the binary on `config`, which it must refuse at start; returns (exit code, output).
fn run_to_refusal(dir: &std::path::Path, config: &Config) -> (Option<i32>, String) {
    let config_path = write_config(dir, config);
    let mut child = Command::new(common::agent_binary())
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent started on a damaged identity file");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    (output.status.code(), text)
}

#[test]
fn a_damaged_identity_file_stops_the_agent_with_what_to_do() {
    let platform = PlatformServer::start();
    for contents in [
        &b""[..],
        b"\n",
        b"not a valid id\n",
        b"\xff\xfe",
        &[b'x'; 200][..],
    ] {
        let (code, text) = start_with_identity(contents, &platform);
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("does not hold a valid node id"), "{text}");
        assert!(text.contains("remove the file"), "{text}");
    }
    assert!(
        platform.requests().is_empty(),
        "a second node was registered"
    );
}

#[test]
fn an_identity_link_to_a_missing_or_unusable_file_is_refused_and_kept() {
    // `node_id` on a volume that is not mounted: the link dangles. Registering would give the
    // server a second node id and replace the link.
    let platform = PlatformServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    platform_config(&mut config, &platform.url());
    let volume = dir.path().join("unmounted-volume");
    for target in [volume.join("node_id"), dir.path().to_path_buf()] {
        let _ = std::fs::remove_file(&config.identity_file_path);
        std::os::unix::fs::symlink(&target, &config.identity_file_path).unwrap();
        let (code, text) = run_to_refusal(dir.path(), &config);
        assert_eq!(code, Some(1), "{target:?}: {text}");
        assert!(text.contains("does not hold a valid node id"), "{text}");
        assert!(
            text.contains(&config.identity_file_path.display().to_string()),
            "{text}"
        );
        let link = std::fs::symlink_metadata(&config.identity_file_path).unwrap();
        assert!(link.file_type().is_symlink(), "the link was replaced");
        assert_eq!(
            std::fs::read_link(&config.identity_file_path).unwrap(),
            target
        );
    }
    assert!(
        platform.requests().is_empty(),
        "a second node was registered"
    );
}

#[test]
fn platform_down_at_start_then_up_registers_while_everything_else_works() {
    let port = free_port();
    let agent = Agent::start(|c| platform_config(c, &format!("http://127.0.0.1:{port}")));

    // Unregistered: the API and metrics work, health says why.
    let status = wait_for_status(&agent, Duration::from_secs(5), |s| {
        s.starts_with("registering: ")
    });
    assert!(status.contains(&format!("127.0.0.1:{port}")), "{status}");
    for _ in 0..3 {
        let metrics = agent.get("/api/v1/metrics");
        assert_eq!(metrics.status, 200);
        assert!(metrics.json()["node_id"].is_null());
        assert!(!metrics.json()["gpus"].as_array().unwrap().is_empty());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!identity_path(&agent).exists());

    let platform = PlatformServer::start_on(port);
    platform.set_register_default(Reply::registered("node-after-outage"));
    platform.wait_for_registrations(1, Duration::from_secs(5));
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert_eq!(
        agent.get("/api/v1/metrics").json()["node_id"],
        "node-after-outage"
    );
    assert_eq!(
        std::fs::read_to_string(identity_path(&agent)).unwrap(),
        "node-after-outage\n"
    );
    assert_eq!(health(&agent)["components"]["gpu"], "ok");
}

#[test]
fn server_errors_are_retried_with_backoff_until_201() {
    let platform = PlatformServer::start();
    platform.queue_register([
        Reply::status(500),
        Reply::status(502),
        Reply::status(503),
        Reply::registered("node-after-500s"),
    ]);
    let agent = Agent::start(|c| platform_config(c, &platform.url()));
    let registrations = platform.wait_for_registrations(4, Duration::from_secs(10));
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert_eq!(
        agent.get("/api/v1/metrics").json()["node_id"],
        "node-after-500s"
    );
    // Retries wait no longer than the schedule allows (100, 200, 400 ms ceilings, plus slack).
    for (pair, ceiling) in registrations.windows(2).zip([100u64, 200, 400]) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap <= Duration::from_millis(ceiling + 600), "gap {gap:?}");
    }
    let log = agent.log();
    assert!(
        log.contains("HTTP 500") && log.contains("HTTP 503"),
        "{log}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(platform.registrations().len(), 4);
}

#[test]
fn a_rejected_token_is_logged_clearly_and_retried_at_the_cap() {
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::status(401));
    let agent = Agent::start(|c| platform_config(c, &platform.url()));
    let registrations = platform.wait_for_registrations(3, Duration::from_secs(10));
    // At the cap (400 ms), jittered between half of it and all of it.
    for pair in registrations.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(190) && gap <= Duration::from_millis(1000),
            "gap {gap:?}"
        );
    }
    let status = platform_status(&agent);
    assert!(
        status.starts_with("registering: ") && status.contains("HTTP 401"),
        "{status}"
    );
    let log = agent.log();
    assert!(
        log.contains("ERROR") && log.contains("rejected the bootstrap token"),
        "{log}"
    );
    assert!(!log.contains(BOOTSTRAP_TOKEN), "token in the log:\n{log}");
    assert!(!status.contains(BOOTSTRAP_TOKEN));

    // The operator fixes the platform side; the node joins without being touched.
    platform.set_register_default(Reply::registered("node-after-401"));
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert_eq!(
        agent.get("/api/v1/metrics").json()["node_id"],
        "node-after-401"
    );
}

#[test]
fn malformed_node_ids_are_rejected_and_never_written() {
    let platform = PlatformServer::start();
    platform.queue_register([
        Reply::json(201, json!({"node_id": "../../etc/passwd"})),
        Reply::json(201, json!({"node_id": ".."})),
        Reply::json(201, json!({"node_id": ""})),
        Reply::json(201, json!({"node_id": "has space"})),
        Reply::json(201, json!({"node_id": "x".repeat(129)})),
        Reply::json(201, json!({"node_id": 42})),
        Reply::json(200, json!({"id": "wrong-field"})),
    ]);
    platform.set_register_default(Reply::json(201, json!({"node_id": "bad\nid"})));
    let agent = Agent::start(|c| platform_config(c, &platform.url()));
    platform.wait_for_registrations(8, Duration::from_secs(10));
    let status = platform_status(&agent);
    assert!(status.contains("invalid answer"), "{status}");
    assert!(
        !identity_path(&agent).exists(),
        "a malformed id was written"
    );
    assert!(agent.get("/api/v1/metrics").json()["node_id"].is_null());
    assert!(agent.log().contains("rejected"), "{}", agent.log());

    platform.set_register_default(Reply::registered("node-good"));
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert_eq!(
        std::fs::read_to_string(identity_path(&agent)).unwrap(),
        "node-good\n"
    );
}

#[test]
fn a_platform_echoing_the_token_in_a_success_answer_does_not_leak_it() {
    // A broken or malicious platform puts the request's token into a 2xx answer: in the node
    // id (with a space, with nothing else) or in the frp port. The token must not reach the
    // log, /health, the identity file or the published node id.
    let platform = PlatformServer::start();
    platform.queue_register([
        Reply::json(201, json!({"node_id": format!("Bearer {BOOTSTRAP_TOKEN}")})),
        Reply::json(201, json!({"node_id": BOOTSTRAP_TOKEN})),
        Reply::json(
            201,
            json!({"node_id": "node-x", "frp": {"api_remote_port": BOOTSTRAP_TOKEN}}),
        ),
        // Where a quote of the answer is cut short, the cut must not leave the token's start.
        Reply::json(
            201,
            json!({"node_id": format!("{} {BOOTSTRAP_TOKEN}", "x".repeat(50))}),
        ),
        // The token JSON-escaped: not in the raw text, but it is the token once parsed.
        Reply {
            status: 201,
            body: format!(
                r#"{{"node_id": "\u{:04x}{}"}}"#,
                b'b',
                &BOOTSTRAP_TOKEN[1..]
            ),
            delay: Duration::ZERO,
        },
    ]);
    platform.set_register_default(Reply::registered("node-clean"));
    let agent = Agent::start(|c| platform_config(c, &platform.url()));
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = platform_status(&agent);
        statuses.push(status.clone());
        if status == "ok" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not registered; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(platform.registrations().len(), 6);
    let log = agent.log();
    assert!(
        !log.contains(&BOOTSTRAP_TOKEN[..10]),
        "token in the log:\n{log}"
    );
    assert!(log.contains("<redacted>"), "{log}");
    assert!(log.contains("is the bootstrap token"), "{log}");
    for status in statuses {
        assert!(
            !status.contains(&BOOTSTRAP_TOKEN[..10]),
            "token in /health: {status}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(identity_path(&agent)).unwrap(),
        "node-clean\n"
    );
    assert_eq!(agent.get("/api/v1/metrics").json()["node_id"], "node-clean");
}

#[test]
fn secrets_from_the_environment_are_not_inherited_by_child_processes() {
    // The docker CLI (and frpc) the agent runs must not receive the tokens it was given
    // through PHOENIX_* variables. A stand-in docker binary records its environment.
    let platform = PlatformServer::start();
    let scratch = tempfile::tempdir().unwrap();
    let fake_docker = scratch.path().join("docker");
    let seen = scratch.path().join("env");
    std::fs::write(
        &fake_docker,
        format!("#!/bin/sh\nenv >> '{}'\nexit 1\n", seen.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake_docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let agent = Agent::start_with(
        |c| {
            platform_config(c, &platform.url());
            c.central_platform.bootstrap_token = String::new();
            c.docker.binary = fake_docker.clone();
        },
        AgentOptions {
            env: vec![
                ("PHOENIX_BOOTSTRAP_TOKEN".into(), BOOTSTRAP_TOKEN.into()),
                ("PHOENIX_FRP_TOKEN".into(), "frp-secret-0a9b8c7d".into()),
                ("SOME_OTHER_VARIABLE".into(), "kept".into()),
            ],
            ..AgentOptions::default()
        },
    );
    // The variable still configured the agent.
    let registrations = platform.wait_for_registrations(1, Duration::from_secs(10));
    assert_eq!(
        registrations[0].header("Authorization"),
        Some(format!("Bearer {BOOTSTRAP_TOKEN}").as_str())
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&seen).is_ok_and(|e| e.contains("SOME_OTHER_VARIABLE")) {
        assert!(
            Instant::now() < deadline,
            "docker never ran; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let env = std::fs::read_to_string(&seen).unwrap();
    assert!(
        !env.contains(BOOTSTRAP_TOKEN),
        "docker got the token:\n{env}"
    );
    assert!(
        !env.contains("frp-secret-0a9b8c7d"),
        "docker got the frp token"
    );
    assert!(!env.contains("PHOENIX_"), "{env}");
}

#[test]
fn an_identity_that_cannot_be_written_is_not_registered_until_it_can() {
    // Registering a node whose id cannot be kept would register another one at every restart.
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::registered("node-kept"));
    let agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        // A file where the identity's directory should be.
        let blocker = c.identity_file_path.with_file_name("blocked");
        std::fs::write(&blocker, "a file, not a directory\n").unwrap();
        c.identity_file_path = blocker.join("node_id");
    });
    let status = wait_for_status(&agent, Duration::from_secs(5), |s| {
        s.starts_with("registering: ")
    });
    assert!(
        status.contains("blocked/node_id") && status.contains("cannot write"),
        "{status}"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        platform.registrations().is_empty(),
        "registered a node whose id cannot be saved"
    );
    assert!(agent.get("/api/v1/metrics").json()["node_id"].is_null());

    // Fixed: the agent registers, once, and keeps the id.
    let blocker = agent.dir.path().join("blocked");
    std::fs::remove_file(&blocker).unwrap();
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert_eq!(
        std::fs::read_to_string(blocker.join("node_id")).unwrap(),
        "node-kept\n"
    );
    assert_eq!(platform.registrations().len(), 1);
    let names: Vec<String> = std::fs::read_dir(&blocker)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "probe files left behind: {names:?}");
}

#[test]
fn heartbeats_carry_the_metrics_and_containers_at_the_interval() {
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::registered("node-hb"));
    let agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.central_platform.heartbeat_interval_secs = 1;
    });
    let registered = platform.wait_for_registrations(1, Duration::from_secs(10))[0].at;
    let heartbeats = platform.wait_for_heartbeats(4, Duration::from_secs(10));

    // The first at a random offset within the interval, then one per interval.
    assert!(heartbeats[0].at - registered <= Duration::from_millis(1300));
    for pair in heartbeats.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(800) && gap <= Duration::from_millis(1400),
            "heartbeat gap {gap:?}"
        );
    }
    let beat = &heartbeats[3];
    assert_eq!(beat.path, "/api/v1/nodes/node-hb/heartbeat");
    assert_eq!(
        beat.header("Authorization"),
        Some(format!("Bearer {BOOTSTRAP_TOKEN}").as_str())
    );
    let body = beat.json();
    assert_eq!(body["node_id"], "node-hb");
    assert_eq!(body["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(
        body["uptime_secs"].as_u64().is_some_and(|s| s >= 2),
        "{body}"
    );
    assert_eq!(body["containers"], json!([]));
    // The metrics document, whole.
    let metrics = agent.get("/api/v1/metrics").json();
    for key in metrics.as_object().unwrap().keys() {
        assert!(body.get(key).is_some(), "heartbeat lacks {key}: {body}");
    }
    assert!(body["cpu_usage_percent"].is_number());
    assert!(!body["gpus"].as_array().unwrap().is_empty());
    assert_eq!(body["gpus"][0]["uuid"], metrics["gpus"][0]["uuid"]);
    assert_eq!(platform_status(&agent), "ok");
    assert_eq!(platform.registrations().len(), 1);
}

#[test]
fn a_forgotten_node_registers_again_and_replaces_the_file() {
    let platform = PlatformServer::start();
    platform.queue_register([Reply::registered("node-old")]);
    platform.set_register_default(Reply::registered("node-new"));
    platform.queue_heartbeat([Reply::status(404)]);
    let agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.central_platform.heartbeat_interval_secs = 1;
    });
    platform.wait_for_registrations(2, Duration::from_secs(10));
    let heartbeats = platform.wait_for_heartbeats(2, Duration::from_secs(10));
    assert_eq!(heartbeats[0].path, "/api/v1/nodes/node-old/heartbeat");
    assert_eq!(heartbeats[1].path, "/api/v1/nodes/node-new/heartbeat");
    assert_eq!(
        std::fs::read_to_string(identity_path(&agent)).unwrap(),
        "node-new\n"
    );
    assert_eq!(agent.get("/api/v1/metrics").json()["node_id"], "node-new");
    assert!(
        agent.log().contains("no longer knows node node-old"),
        "{}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(platform.registrations().len(), 2);
}

#[test]
fn a_platform_that_forgets_every_new_node_is_not_flooded_with_registrations() {
    // Heartbeats answered 404 even for the id registration just gave (a platform whose
    // endpoints disagree, a wrong path prefix): re-registering at once, every interval, would
    // create a node per interval per agent. It waits about backoff_max_ms instead.
    let platform = PlatformServer::start();
    platform.set_heartbeat_default(Reply::status(404));
    let agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.central_platform.heartbeat_interval_secs = 1;
        c.central_platform.backoff_max_ms = 3000;
    });
    let registrations = platform.wait_for_registrations(2, Duration::from_secs(10));
    let heartbeats = platform.heartbeats();
    let first_404 = heartbeats[0].at;
    let gap = registrations[1].at - first_404;
    assert!(
        gap >= Duration::from_millis(1400),
        "registered again {gap:?} after a 404 for a brand-new id"
    );
    let log = agent.log();
    assert!(log.contains("registered moments ago"), "{log}");
    // The platform records the registration before the agent has read the answer: until it
    // has, the status is still `registering`.
    let status = wait_for_status(&agent, Duration::from_secs(5), |s| s != "registering");
    assert!(
        status.starts_with("heartbeat failing: ") || status == "ok",
        "{status}"
    );
}

#[test]
fn a_forgotten_node_is_unregistered_while_registering_again_fails() {
    // The platform no longer knows the id: until a new one is issued, the node is not
    // registered, and metrics say so (node_id null) as /health does ("registering: ...").
    let platform = PlatformServer::start();
    platform.queue_register([Reply::registered("node-forgotten")]);
    platform.set_register_default(Reply::status(500));
    // Accepted once, then forgotten.
    platform.queue_heartbeat([Reply::json(200, json!({})), Reply::status(404)]);
    let agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.central_platform.heartbeat_interval_secs = 1;
    });
    platform.wait_for_registrations(3, Duration::from_secs(10));
    let status = wait_for_status(&agent, Duration::from_secs(5), |s| {
        s.starts_with("registering: ")
    });
    assert!(status.contains("HTTP 500"), "{status}");
    assert!(
        agent.get("/api/v1/metrics").json()["node_id"].is_null(),
        "still publishing the id the platform forgot"
    );
    // The file keeps the old id until a new one replaces it.
    assert_eq!(
        std::fs::read_to_string(identity_path(&agent)).unwrap(),
        "node-forgotten\n"
    );
    platform.set_register_default(Reply::registered("node-reborn"));
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert_eq!(
        agent.get("/api/v1/metrics").json()["node_id"],
        "node-reborn"
    );
}

#[test]
fn a_gone_node_registers_again_after_410() {
    let platform = PlatformServer::start();
    platform.queue_register([Reply::registered("node-gone")]);
    platform.set_register_default(Reply::registered("node-back"));
    platform.queue_heartbeat([Reply::status(410)]);
    let agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.central_platform.heartbeat_interval_secs = 1;
    });
    platform.wait_for_registrations(2, Duration::from_secs(10));
    // The second registration is answered before the file is replaced and the id published.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(identity_path(&agent)).unwrap() != "node-back\n"
        || agent.get("/api/v1/metrics").json()["node_id"] != "node-back"
    {
        assert!(
            Instant::now() < deadline,
            "identity not replaced; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(agent.log().contains("HTTP 410"), "{}", agent.log());
}

#[test]
fn a_slow_platform_stalls_nothing() {
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::registered("node-slow").after(Duration::from_secs(30)));
    let mut agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.central_platform.request_timeout_secs = 1;
    });
    platform.wait_for_registrations(1, Duration::from_secs(5));
    // While the request hangs, the API answers at once.
    for _ in 0..5 {
        let start = Instant::now();
        assert_eq!(agent.get("/api/v1/metrics").status, 200);
        assert_eq!(agent.get("/health").status, 200);
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The request is abandoned after request_timeout_secs, and retried.
    let status = wait_for_status(&agent, Duration::from_secs(5), |s| s.contains("no answer"));
    assert!(status.contains("within 1s"), "{status}");
    platform.wait_for_registrations(2, Duration::from_secs(5));

    // SIGTERM while a request hangs: the agent still exits promptly.
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

#[test]
fn shutdown_during_backoff_is_immediate() {
    let port = free_port();
    let mut agent = Agent::start(|c| {
        platform_config(c, &format!("http://127.0.0.1:{port}"));
        c.central_platform.backoff_initial_ms = 60_000;
        c.central_platform.backoff_max_ms = 300_000;
    });
    wait_for_status(&agent, Duration::from_secs(5), |s| {
        s.starts_with("registering: ")
    });
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

#[test]
fn the_proxy_from_the_environment_is_used() {
    // The test platform acts as the proxy: it answers CONNECT, then the request comes through.
    let platform = PlatformServer::start();
    let agent = Agent::start_with(
        |c| platform_config(c, "http://platform.invalid"),
        AgentOptions {
            env: vec![("HTTP_PROXY".into(), platform.url())],
            ..AgentOptions::default()
        },
    );
    let requests = platform.wait_for_registrations(1, Duration::from_secs(10));
    let all = platform.requests();
    assert_eq!(all[0].method, "CONNECT", "{:?}", all[0]);
    assert_eq!(all[0].path, "platform.invalid:80");
    assert!(requests[0].json()["hostname"].is_string());
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert!(agent.log().contains("through the proxy"), "{}", agent.log());
}

#[test]
fn no_proxy_hosts_are_reached_directly_and_no_token_means_no_auth_header() {
    let platform = PlatformServer::start();
    let dead_proxy = format!("http://127.0.0.1:{}", free_port());
    let agent = Agent::start_with(
        |c| {
            platform_config(c, &platform.url());
            c.central_platform.bootstrap_token = String::new();
        },
        AgentOptions {
            env: vec![
                ("HTTP_PROXY".into(), dead_proxy.clone()),
                ("HTTPS_PROXY".into(), dead_proxy),
                ("NO_PROXY".into(), "localhost, 127.0.0.0/8".into()),
            ],
            ..AgentOptions::default()
        },
    );
    let registrations = platform.wait_for_registrations(1, Duration::from_secs(10));
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert!(platform.requests().iter().all(|r| r.method != "CONNECT"));
    // Without a bootstrap token, no Authorization header at all.
    assert_eq!(registrations[0].header("Authorization"), None);
}

#[test]
fn a_bad_ca_file_stops_the_agent_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    platform_config(&mut config, "https://platform.example");
    let ca = dir.path().join("private-ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    config.central_platform.ca_file = ca.display().to_string();
    let config_path = write_config(dir.path(), &config);
    let output = Command::new(common::agent_binary())
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("private-ca.pem") && text.contains("ca_file"),
        "{text}"
    );
}

#[test]
fn https_with_a_private_ca_from_ca_file() {
    let platform = PlatformServer::start_tls();
    platform.set_register_default(Reply::registered("node-tls"));
    let agent = Agent::start(|c| {
        platform_config(c, &platform.https_url());
        c.central_platform.ca_file = common::platform::tls_fixture("ca.pem")
            .display()
            .to_string();
    });
    let registrations = platform.wait_for_registrations(1, Duration::from_secs(10));
    assert_eq!(
        registrations[0].header("Authorization"),
        Some(format!("Bearer {BOOTSTRAP_TOKEN}").as_str())
    );
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");
    assert_eq!(agent.get("/api/v1/metrics").json()["node_id"], "node-tls");
    assert!(
        agent.log().contains("extra CA certificate"),
        "{}",
        agent.log()
    );
}

#[test]
fn https_to_an_untrusted_certificate_is_refused() {
    let platform = PlatformServer::start_tls();
    let agent = Agent::start(|c| platform_config(c, &platform.https_url()));
    // The system roots do not include the test CA: the handshake fails, nothing is sent.
    let status = wait_for_status(&agent, Duration::from_secs(5), |s| {
        s.starts_with("registering: ")
    });
    assert!(status.contains(&platform.https_url()), "{status}");
    assert!(
        status.contains("certificate") && status.contains("ca_file"),
        "{status}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        platform.requests().is_empty(),
        "a request went through: {:?}",
        platform.requests()
    );
    assert!(agent.get("/api/v1/metrics").json()["node_id"].is_null());
}

#[test]
fn a_slow_heartbeat_neither_bursts_afterwards_nor_holds_the_shutdown() {
    // Heartbeats that take longer than the interval: the swallowed beats are skipped, not
    // sent in a burst once the platform is fast again; SIGTERM during one still exits in time.
    let platform = PlatformServer::start();
    platform.queue_heartbeat([
        Reply::json(200, json!({})).after(Duration::from_millis(1500)),
        Reply::json(200, json!({})).after(Duration::from_millis(1500)),
    ]);
    let mut agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.central_platform.heartbeat_interval_secs = 1;
        c.central_platform.request_timeout_secs = 3;
    });
    let heartbeats = platform.wait_for_heartbeats(5, Duration::from_secs(15));
    for pair in heartbeats.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(800), "burst: gap {gap:?}");
    }
    platform.set_heartbeat_default(Reply::json(200, json!({})).after(Duration::from_secs(30)));
    let n = platform.heartbeats().len();
    platform.wait_for_heartbeats(n + 1, Duration::from_secs(5));
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

const PLATFORM_API_TOKEN: &str = "platform-api-token-7c1d9e2f4a6b";
const STCP_SECRET: &str = "stcp-secret-3b8a0f6e1d2c";

/// The status of `GET path` with `Authorization: Bearer <token>`.
fn status_with(agent: &Agent, path: &str, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    agent
        .request("GET", path, &[("Authorization", auth.as_str())], b"")
        .status
}

#[test]
fn the_platforms_api_token_opens_the_api_beside_the_local_token() {
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::json(
        201,
        json!({
            "node_id": "node-tok",
            "api_token": PLATFORM_API_TOKEN,
            "frp": {"api_proxy": {
                "type": "stcp", "secret_key": STCP_SECRET, "allow_users": ["platform"]
            }},
        }),
    ));
    let mut agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.log_level = utopia_node_agent::config::LogLevel::Debug;
    });
    // Before registration only the local token works.
    platform.wait_for_registrations(1, Duration::from_secs(10));
    wait_for_status(&agent, Duration::from_secs(5), |s| s == "ok");

    assert_eq!(
        status_with(&agent, "/api/v1/metrics", PLATFORM_API_TOKEN),
        200
    );
    assert_eq!(status_with(&agent, "/api/v1/metrics", common::TOKEN), 200);
    for wrong in [
        "wrong-token-0123456789abcdef",
        &PLATFORM_API_TOKEN[..PLATFORM_API_TOKEN.len() - 1],
        &format!("{PLATFORM_API_TOKEN}x"),
        STCP_SECRET,
        BOOTSTRAP_TOKEN,
    ] {
        assert_eq!(
            status_with(&agent, "/api/v1/metrics", wrong),
            401,
            "{wrong}"
        );
    }
    // The platform's token also unlocks /health's reasons, like the local one.
    let auth = format!("Bearer {PLATFORM_API_TOKEN}");
    let health = agent
        .request("GET", "/health", &[("Authorization", auth.as_str())], b"")
        .json();
    assert_eq!(health["components"]["platform"], "ok");
    assert!(!health.to_string().contains(PLATFORM_API_TOKEN));

    // Kept private beside the identity; never in the log.
    let record_path = agent.dir.path().join("node_id.registration.json");
    assert_eq!(mode(&record_path), 0o600);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!(record["api_token"], PLATFORM_API_TOKEN);
    assert_eq!(record["api_proxy"]["type"], "stcp");
    assert_eq!(record["api_proxy"]["secret_key"], STCP_SECRET);
    assert!(record["api_remote_port"].is_null());
    let log = agent.log();
    assert!(log.contains("with an API token for the platform"), "{log}");
    assert!(log.contains("API proxy stcp for platform"), "{log}");

    // A restart reads it back from the record, without registering again.
    agent.restart(false, AgentOptions::default());
    assert_eq!(
        status_with(&agent, "/api/v1/metrics", PLATFORM_API_TOKEN),
        200
    );
    assert_eq!(status_with(&agent, "/api/v1/metrics", common::TOKEN), 200);
    assert_eq!(platform.registrations().len(), 1);
    let log = agent.log();
    for secret in [PLATFORM_API_TOKEN, STCP_SECRET] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn without_an_api_token_only_the_local_token_works() {
    let platform = PlatformServer::start();
    let agent = Agent::start(|c| platform_config(c, &platform.url()));
    wait_for_status(&agent, Duration::from_secs(10), |s| s == "ok");
    assert_eq!(status_with(&agent, "/api/v1/metrics", common::TOKEN), 200);
    assert_eq!(
        status_with(&agent, "/api/v1/metrics", PLATFORM_API_TOKEN),
        401
    );
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.dir.path().join("node_id.registration.json")).unwrap(),
    )
    .unwrap();
    assert!(record.get("api_token").is_none(), "{record}");
}

#[test]
fn registering_again_replaces_the_platforms_token() {
    const NEW_TOKEN: &str = "platform-api-token-new-91ab2c";
    let platform = PlatformServer::start();
    platform.queue_register([Reply::json(
        201,
        json!({"node_id": "node-old", "api_token": PLATFORM_API_TOKEN}),
    )]);
    platform.set_register_default(Reply::json(
        201,
        json!({"node_id": "node-new", "api_token": NEW_TOKEN}),
    ));
    platform.queue_heartbeat([Reply::status(404)]);
    let agent = Agent::start(|c| {
        platform_config(c, &platform.url());
        c.central_platform.heartbeat_interval_secs = 1;
    });
    platform.wait_for_registrations(2, Duration::from_secs(10));
    platform.wait_for_heartbeats(2, Duration::from_secs(10));
    assert_eq!(status_with(&agent, "/api/v1/metrics", NEW_TOKEN), 200);
    assert_eq!(
        status_with(&agent, "/api/v1/metrics", PLATFORM_API_TOKEN),
        401
    );
    assert_eq!(status_with(&agent, "/api/v1/metrics", common::TOKEN), 200);
    let record =
        std::fs::read_to_string(agent.dir.path().join("node_id.registration.json")).unwrap();
    assert!(record.contains(NEW_TOKEN) && !record.contains(PLATFORM_API_TOKEN));
}

#[test]
fn bad_tunnel_answers_are_refused_clearly_and_nothing_is_kept() {
    let platform = PlatformServer::start();
    platform.queue_register([
        Reply::json(201, json!({"node_id": "n1", "api_token": "short"})),
        Reply::json(201, json!({"node_id": "n1", "api_token": BOOTSTRAP_TOKEN})),
        Reply::json(
            201,
            json!({"node_id": "n1", "frp": {"api_proxy": {"type": "udp"}}}),
        ),
        Reply::json(
            201,
            json!({"node_id": "n1", "frp": {"api_proxy": {"type": "stcp",
                "secret_key": "{{.Envs.PHOENIX_AGENT_API_AUTH_TOKEN}}"}}}),
        ),
    ]);
    platform.set_register_default(Reply::json(
        201,
        json!({"node_id": "n1", "frp": {"api_proxy": {"type": "tcp", "remote_port": 7001}}}),
    ));
    let agent = Agent::start(|c| platform_config(c, &platform.url()));
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = platform_status(&agent);
        if status == "ok" {
            break;
        }
        statuses.push(status);
        assert!(
            Instant::now() < deadline,
            "not registered:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(platform.registrations().len(), 5);
    let log = agent.log();
    for says in [
        "api_token is 5 characters long",
        // The client redacts the bootstrap token in every answer before it is read.
        "api_token is 10 characters long",
        "frp.api_proxy.type \"udp\" is not tcp or stcp",
        "secret_key must not contain `{{` or `}}`",
    ] {
        assert!(log.contains(says), "{says:?} not in:\n{log}");
    }
    assert!(!log.contains(&BOOTSTRAP_TOKEN[..10]), "{log}");
    assert!(
        statuses.iter().any(|s| s.contains("api_token")),
        "{statuses:?}"
    );
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(agent.dir.path().join("node_id.registration.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["api_proxy"],
        json!({"type": "tcp", "remote_port": 7001})
    );
    assert_eq!(record["api_remote_port"], 7001);
    assert!(record.get("api_token").is_none());
}
