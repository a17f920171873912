//! `utopia-node-agent doctor` on the real binary: a host where everything works (fake NVML, the
//! real docker engine, the fake frpc, a listening frps stand-in, the test platform over TLS)
//! passes every check and exits 0, text and `--json`; a host with problems fails exactly the
//! checks concerned, each with what to do, and exits 1; an invalid config fails its check alone.

mod common;

use common::docker::ready;
use common::platform::PlatformServer;
use common::{fake_frpc, free_port, test_config, write_config};
use serde_json::Value;
use std::net::TcpListener;
use std::process::{Command, Output};
use utopia_node_agent::config::{Config, GpuMode};

fn doctor(config: &std::path::Path, json: bool) -> Output {
    let mut command = Command::new(common::agent_binary());
    command.arg("doctor").arg("--config").arg(config);
    if json {
        command.arg("--json");
    }
    for (key, _) in std::env::vars() {
        if key.starts_with("PHOENIX_") || key.to_ascii_lowercase().ends_with("_proxy") {
            command.env_remove(key);
        }
    }
    command.output().expect("run doctor")
}

fn report_of(output: &Output) -> Vec<Value> {
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "--json is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    report.as_array().expect("an array of checks").clone()
}

fn status_of<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["check"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

const ALL: &[&str] = &[
    "config", "identity", "nvml", "docker", "gpu_mode", "disk", "frpc", "frps", "platform", "clock",
];

/// Whether a disk line reports less than doctor's 20 GiB warning mark ("18.5 GiB free ...").
fn low_disk(line: &str) -> bool {
    line.split_whitespace()
        .zip(line.split_whitespace().skip(1))
        .find(|(_, unit)| *unit == "GiB")
        .and_then(|(number, _)| number.parse::<f64>().ok())
        .is_some_and(|gib| gib < 20.0)
}

#[test]
fn a_working_host_passes_every_check() {
    if !ready("a_working_host_passes_every_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let platform = PlatformServer::start_tls();
    let frps = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config: Config = test_config(dir.path());
    config.central_platform.api_url = platform.https_url();
    config.central_platform.ca_file = common::platform::tls_fixture("ca.pem")
        .to_string_lossy()
        .into_owned();
    config.frp.server_addr = "127.0.0.1".into();
    config.frp.server_port = frps.local_addr().unwrap().port();
    config.frp.frpc_path = fake_frpc::binary();
    config.frp.tls_ca_file = common::platform::tls_fixture("ca.pem")
        .to_string_lossy()
        .into_owned();
    config.docker.gpu_mode = GpuMode::Env;
    config.docker.runtime = "runc".into();
    common::write_private(&dir.path().join("node_id"), "node-doctor\n");
    let path = write_config(dir.path(), &config);

    let out = doctor(&path, false);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), ALL.len() + 1, "{text}");
    // The disk check reads this host's real free space: below 20 GiB a warning is its right
    // verdict (a shared CI disk can be that full), and the only one allowed here.
    let mut warned = 0;
    for (line, name) in lines.iter().zip(ALL) {
        if *name == "disk" && line.starts_with("WARN disk ") && low_disk(line) {
            warned += 1;
            continue;
        }
        assert!(line.starts_with(&format!("PASS {name} ")), "{line}");
    }
    assert!(text.contains("driver 550.54.15, 2 GPU(s)"), "{text}");
    assert!(text.contains("node id node-doctor"), "{text}");
    assert!(text.contains("version 0.61.1"), "{text}");
    assert!(text.contains("accepts TCP connections"), "{text}");
    assert!(text.contains("docker has the runtime runc"), "{text}");
    assert_eq!(
        lines[ALL.len()],
        format!("{} passed, {warned} warned, 0 failed", ALL.len() - warned)
    );

    let out = doctor(&path, true);
    assert!(out.status.success());
    let checks = report_of(&out);
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(names, ALL);
    assert!(
        checks
            .iter()
            .all(|c| (c["status"] == "pass" && c["action"] == "")
                || (warned == 1 && c["check"] == "disk" && c["status"] == "warn")),
        "{checks:?}"
    );
}

#[test]
fn a_broken_host_fails_the_checks_concerned_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = test_config(dir.path());
    config.gpu.nvml_library_path = dir
        .path()
        .join("missing/libnvidia-ml.so.1")
        .to_string_lossy()
        .into_owned();
    config.frp.server_addr = "127.0.0.1".into();
    config.frp.server_port = free_port();
    config.frp.frpc_path = dir.path().join("no-frpc");
    config.central_platform.api_url = format!("http://127.0.0.1:{}", free_port());
    config.central_platform.request_timeout_secs = 2;
    config.docker.binary = dir.path().join("no-docker");
    let path = write_config(dir.path(), &config);

    let out = doctor(&path, true);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let checks = report_of(&out);
    for name in ["nvml", "docker", "frpc", "frps", "platform"] {
        let c = status_of(&checks, name);
        assert_eq!(c["status"], "fail", "{c}");
        assert!(!c["action"].as_str().unwrap().is_empty(), "{c}");
    }
    // Valid, with the warning that frps's certificate is not verified.
    let config_check = status_of(&checks, "config");
    assert_eq!(config_check["status"], "warn", "{config_check}");
    assert!(config_check["message"]
        .as_str()
        .unwrap()
        .contains("frp.tls_ca_file"));
    // Registered nowhere yet: a first start, not a fault.
    assert_eq!(status_of(&checks, "identity")["status"], "warn");
    assert!(status_of(&checks, "nvml")["action"]
        .as_str()
        .unwrap()
        .contains("gpu.nvml_library_path"));

    let text = doctor(&path, false);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("FAIL frps ") && l.contains(" -> ")),
        "{text}"
    );

    // A platform whose certificate the host does not trust: TLS is part of "reachable".
    let platform = PlatformServer::start_tls();
    config.central_platform.api_url = platform.https_url();
    let path = write_config(dir.path(), &config);
    let out = doctor(&path, true);
    let report = report_of(&out);
    let c = status_of(&report, "platform");
    assert_eq!(c["status"], "fail", "{c}");
    assert!(c["action"].as_str().unwrap().contains("ca_file"), "{c}");
}

#[test]
fn an_invalid_config_fails_its_check_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent-config.yaml");
    common::write_private(&path, "agent_api:\n  auth_token: short\n");
    let out = doctor(&path, false);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("FAIL config "), "{text}");
    assert!(text.contains("agent_api.auth_token"), "{text}");
    assert!(text.ends_with("0 passed, 0 warned, 1 failed\n"), "{text}");
}

#[test]
fn a_storage_size_the_engine_refuses_fails_its_check() {
    if !ready("a_storage_size_the_engine_refuses_fails_its_check") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config: Config = test_config(dir.path());
    config.docker.storage_size = "1g".into();
    let path = write_config(dir.path(), &config);
    let checks = report_of(&doctor(&path, true));
    let c = status_of(&checks, "storage");
    // Which the engine's storage driver decides (fuse-overlayfs and overlay2 on ext4 refuse).
    let driver = common::docker::docker_ok(&["info", "--format", "{{.Driver}}"]);
    if c["status"] == "pass" {
        assert!(c["message"].as_str().unwrap().contains("1024 MiB"), "{c}");
        return;
    }
    assert_eq!(c["status"], "fail", "{driver}: {c}");
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("refuses --storage-opt size="),
        "{c}"
    );
    assert!(c["action"].as_str().unwrap().contains("pquota"), "{c}");
    // Without the key there is no such check.
    config.docker.storage_size = String::new();
    let path = write_config(dir.path(), &config);
    let checks = report_of(&doctor(&path, true));
    assert!(checks.iter().all(|c| c["check"] != "storage"));
}
