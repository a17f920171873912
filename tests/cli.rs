//! The binary as an operator meets it: flags, `--check-config`, environment overrides, start-up
//! failures, and how it stops on signals.

mod common;

use common::{agent_binary, test_config, write_config, write_private, Agent, AgentOptions, TOKEN};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(agent_binary());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("PHOENIX_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run the agent binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_and_help() {
    let out = run(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout).trim(),
        format!("utopia-node-agent {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(&["--help"], &[]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "--config",
        "--check-config",
        "PHOENIX_AUTH_TOKEN",
        "SIGTERM",
    ] {
        assert!(help.contains(needle), "help lacks {needle}");
    }
    let out = run(&["--bogus"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--bogus"));
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/agent-config.yaml");
    let out = run(&["--check-config", "--config", shipped], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(
        printed.contains("listen_address: 127.0.0.1:9200"),
        "{printed}"
    );
    assert!(printed.contains("auth_token: <redacted>"), "{printed}");
    assert!(!printed.contains("change-me-dev-token"), "secret printed");
    assert!(text(&out.stderr).contains("example token"));
}

#[test]
fn check_config_redacts_every_secret_including_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.central_platform.bootstrap_token = "bootstrap-secret-1".into();
    config.frp.token = "frp-secret-in-file".into();
    let path = write_config(dir.path(), &config);
    let out = run(
        &["--check-config", "-c", path.to_str().unwrap()],
        &[
            ("PHOENIX_FRP_TOKEN", "frp-secret-from-env"),
            ("PHOENIX_API_URL", "https://platform.example"),
            ("PHOENIX_FRP_SERVER", "frps.example"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout) + &text(&out.stderr);
    for secret in [
        TOKEN,
        "bootstrap-secret-1",
        "frp-secret-in-file",
        "frp-secret-from-env",
    ] {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
    }
    assert!(printed.contains("api_url: https://platform.example"));
    assert!(printed.contains("server_addr: frps.example"));
    assert_eq!(printed.matches("<redacted>").count(), 3, "{printed}");
}

#[test]
fn check_config_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    let cases = [
        (
            "agent_api:\n  auth_token: \"0123456789abcdef0\"\n  listen_adress: x\n",
            "listen_adress",
            Some("line 3"),
        ),
        (
            "agent_api:\n  auth_token: short\n",
            "agent_api.auth_token",
            None,
        ),
        (
            "log_level: loud\nagent_api:\n  auth_token: \"0123456789abcdef0\"\n",
            "log_level",
            Some("line 1"),
        ),
        (
            "agent_api:\n  auth_token: \"0123456789abcdef0\"\n  listen_address: \"nowhere\"\n",
            "agent_api.listen_address",
            None,
        ),
        ("agent_api: [unclosed\n", "line", None),
        ("identity_file_path: /x\n", "agent_api.auth_token", None),
    ];
    for (yaml, needle, line) in cases {
        write_private(&path, yaml);
        let out = run(&["--check-config", "-c", path.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(1), "{yaml}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{yaml}: {err}");
        if let Some(line) = line {
            assert!(err.contains(line), "{yaml}: {err}");
        }
    }
    let out = run(&["--check-config", "-c", "/nonexistent/agent.yaml"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/agent.yaml"));
}

#[test]
fn config_warnings_for_world_readable_file_and_open_listen_address() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.agent_api.listen_address = "0.0.0.0:9".into();
    let path = write_config(dir.path(), &config);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["--check-config", "-c", path.to_str().unwrap()], &[]);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("readable by group or others"), "{err}");
    assert!(err.contains("NOT a loopback address"), "{err}");
}

#[test]
fn environment_overrides_the_token_and_log_level() {
    let new_token = "token-from-the-environment-42";
    let agent = Agent::start_with(
        |_| {},
        AgentOptions {
            env: vec![
                ("PHOENIX_AUTH_TOKEN".into(), new_token.into()),
                ("PHOENIX_LOG_LEVEL".into(), "debug".into()),
            ],
            wait_for_gpu: true,
        },
    );
    assert_eq!(
        agent.get("/api/v1/metrics").status,
        401,
        "file token replaced"
    );
    let auth = format!("Bearer {new_token}");
    let response = agent.request("GET", "/api/v1/metrics", &[("Authorization", &auth)], b"");
    assert_eq!(response.status, 200);
    let log = agent.log();
    assert!(log.contains("[DEBUG]"), "debug logging on: {log}");
    assert!(!log.contains(new_token));
}

#[test]
fn sigterm_stops_cleanly_and_fast() {
    let mut agent = Agent::start(|_| {});
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
    let (status, took) = agent.terminate();
    assert_eq!(status.code(), Some(0), "{}", agent.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let log = agent.log();
    assert!(log.contains("SIGTERM received"));
    // The start says it runs without a platform; the exit is one line.
    assert!(
        log.contains("running standalone: central_platform.api_url is empty"),
        "{log}"
    );
    assert_eq!(log.matches("exiting").count(), 1, "{log}");
    assert!(log.contains("stopped; exiting (status 0)"), "{log}");
}

#[test]
fn sigint_stops_too_and_a_second_signal_forces_exit() {
    let mut agent = Agent::start(|_| {});
    agent.signal(libc::SIGINT);
    let status = agent.wait_exit(Duration::from_secs(2));
    assert_eq!(status.code(), Some(0), "{}", agent.log());

    // The GPU sampler is stuck in a 1 s NVML call, so the graceful stop waits for it; a second
    // signal does not wait.
    let mut agent = Agent::start_with(
        |c| c.gpu.sample_interval_ms = 100,
        AgentOptions {
            env: vec![("FAKE_NVML_SLOW_MS".into(), "1000".into())],
            wait_for_gpu: false,
        },
    );
    let started = Instant::now();
    agent.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(2));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(130), "{}", agent.log());
    assert!(agent.log().contains("forcing exit"));
}

#[test]
fn a_taken_port_fails_start_up_with_a_clear_message() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.agent_api.listen_address = format!("127.0.0.1:{port}");
    let path = write_config(dir.path(), &config);
    let out = run(&["-c", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("not started: "), "{err}");
    assert_eq!(err.matches("exiting (status 1)").count(), 1, "{err}");
}

#[test]
fn a_missing_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.agent_api.auth_token.clear();
    let path = write_config(dir.path(), &config);
    let out = run(&["-c", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("agent_api.auth_token"));
    // ...and the environment can supply it.
    let out = run(
        &["--check-config", "-c", path.to_str().unwrap()],
        &[("PHOENIX_AUTH_TOKEN", "a-token-from-env-0123")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn docker_down_costs_a_few_log_lines_not_one_per_retry() {
    // The docker CLI pointed at a socket nobody listens on: docker is "down" for the whole run.
    // The events watcher retries on its backoff (1 s, 2 s, 4 s, ...) but says so once.
    let dir = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}/no-docker.sock", dir.path().display());
    let mut agent = Agent::start_with(
        |c| c.docker.reconcile_interval_secs = 1,
        AgentOptions {
            env: vec![("DOCKER_HOST".into(), socket)],
            wait_for_gpu: false,
        },
    );
    std::thread::sleep(Duration::from_secs(8));
    let (status, _) = agent.terminate();
    assert_eq!(status.code(), Some(0));
    let log = agent.log();
    let events_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("docker events"))
        .collect();
    assert_eq!(events_lines.len(), 1, "{log}");
    assert!(events_lines[0].contains("[WARN]"), "{log}");
    assert!(events_lines[0].contains("stream lost"), "{log}");
    // The other docker users (reconcile every second here) say it once too.
    let warnings = log
        .lines()
        .filter(|l| l.contains("[WARN]") || l.contains("[ERROR]"))
        .count();
    assert!(warnings <= 4, "{log}");
}

/// Runs `--check-config` and then the agent itself on the config at `path`: a config the check
/// refuses, the start refuses too, with the same words.
fn check_then_start(path: &std::path::Path, needles: &[&str]) {
    let path = path.to_str().unwrap();
    let check = run(&["--check-config", "-c", path], &[]);
    let check_err = text(&check.stderr);
    assert_eq!(
        check.status.code(),
        Some(1),
        "--check-config passed: {check_err}"
    );
    let start = run(&["-c", path], &[]);
    let start_err = text(&start.stderr);
    assert_eq!(
        start.status.code(),
        Some(1),
        "the start passed: {start_err}"
    );
    for needle in needles {
        assert!(
            check_err.contains(needle),
            "--check-config: {needle}: {check_err}"
        );
        assert!(start_err.contains(needle), "start: {needle}: {start_err}");
    }
}

#[test]
fn check_config_refuses_what_the_start_refuses() {
    let ca_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let with_platform = |c: &mut utopia_node_agent::config::Config| {
        c.central_platform.api_url = "https://platform.example".into();
    };
    type Edit = Box<dyn Fn(&mut utopia_node_agent::config::Config)>;
    let not_pem_text = not_pem.display().to_string();
    let cases: Vec<(Edit, Vec<&str>)> = vec![
        (
            Box::new(move |c| {
                with_platform(c);
                c.central_platform.ca_file = "/nonexistent/private-ca.pem".into();
            }),
            vec!["central_platform.ca_file", "/nonexistent/private-ca.pem"],
        ),
        (
            Box::new({
                let p = not_pem_text.clone();
                move |c| {
                    with_platform(c);
                    c.central_platform.ca_file = p.clone();
                }
            }),
            vec!["central_platform.ca_file", "not-a-ca.pem", "no certificate"],
        ),
        (
            Box::new(move |c| {
                with_platform(c);
                // The identity path is a directory.
                c.identity_file_path = c.identity_file_path.with_file_name("identity-dir");
                std::fs::create_dir_all(&c.identity_file_path).unwrap();
            }),
            vec!["identity-dir", "identity_file_path", "directory"],
        ),
        (
            Box::new({
                let p = not_pem_text.clone();
                move |c| {
                    c.frp.server_addr = "frps.example".into();
                    c.frp.user = "node-a".into();
                    c.frp.frpc_path = "/bin/sh".into();
                    c.frp.tls_ca_file = p.clone();
                }
            }),
            vec!["frp.tls_ca_file", "not-a-ca.pem", "no certificate"],
        ),
    ];
    let cases = cases.into_iter().chain([(
        Box::new(|c: &mut utopia_node_agent::config::Config| {
            // TEST-NET-1: an address no test host has.
            c.agent_api.listen_address = "192.0.2.1:9200".into();
        }) as Edit,
        vec![
            "agent_api.listen_address",
            "192.0.2.1 is not an address of this host",
        ],
    )]);
    for (edit, needles) in cases {
        let case_dir = tempfile::tempdir().unwrap();
        let mut config = test_config(case_dir.path());
        edit(&mut config);
        let path = write_config(case_dir.path(), &config);
        check_then_start(&path, &needles);
    }
    // Two problems at once: both are named.
    let case_dir = tempfile::tempdir().unwrap();
    let mut config = test_config(case_dir.path());
    with_platform(&mut config);
    config.central_platform.ca_file = "/nonexistent/private-ca.pem".into();
    config.frp.server_addr = "frps.example".into();
    config.frp.tls_ca_file = not_pem_text;
    let path = write_config(case_dir.path(), &config);
    check_then_start(
        &path,
        &["2 problems", "central_platform.ca_file", "frp.tls_ca_file"],
    );
    // A good CA passes.
    let mut config = test_config(case_dir.path());
    with_platform(&mut config);
    config.central_platform.ca_file = ca_pem.into();
    let path = write_config(case_dir.path(), &config);
    let out = run(&["--check-config", "-c", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn check_config_warns_about_what_the_start_warns_about() {
    // What the agent lives with (and retries) is a warning in both.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.central_platform.api_url = "http://127.0.0.1:9".into();
    let blocker = dir.path().join("blocked");
    std::fs::write(&blocker, "a file, not a directory\n").unwrap();
    config.identity_file_path = blocker.join("node_id");
    config.frp.server_addr = "127.0.0.1".into();
    config.frp.server_port = 9;
    config.frp.frpc_path = "/nonexistent/frpc".into();
    config.gpu.nvml_library_path = "/nonexistent/libnvidia-ml.so.1".into();
    let path = write_config(dir.path(), &config);
    let out = run(&["--check-config", "-c", path.to_str().unwrap()], &[]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let needles = [
        "warning: identity_file_path",
        "blocked is not a directory",
        "warning: frp.frpc_path /nonexistent/frpc: no such file",
        "warning: gpu.nvml_library_path /nonexistent/libnvidia-ml.so.1: no such file",
    ];
    for needle in needles {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let mut agent = Agent::start_with(
        |c| {
            c.central_platform.api_url = config.central_platform.api_url.clone();
            c.identity_file_path = config.identity_file_path.clone();
            c.frp = config.frp.clone();
            c.gpu.nvml_library_path = config.gpu.nvml_library_path.clone();
        },
        AgentOptions {
            env: vec![],
            wait_for_gpu: false,
        },
    );
    let (status, _) = agent.terminate();
    assert_eq!(status.code(), Some(0));
    let log = agent.log();
    for needle in &needles[1..] {
        let needle = needle.trim_start_matches("warning: ");
        assert!(log.contains(needle), "{needle}: {log}");
    }
}

#[test]
fn config_errors_speak_the_users_words() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.yaml");
    let p = path.to_str().unwrap();
    let good = "agent_api:\n  auth_token: \"0123456789abcdef0\"\n";
    // A value from the environment names the variable; one from the file names the file.
    write_private(&path, good);
    let out = run(
        &["--check-config", "-c", p],
        &[("PHOENIX_AUTH_TOKEN", "short")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("error: PHOENIX_AUTH_TOKEN: must be at least 16 characters"),
        "{err}"
    );
    write_private(&path, "agent_api:\n  auth_token: short\n");
    let err = text(&run(&["--check-config", "-c", p], &[]).stderr);
    assert!(
        err.contains(&format!(
            "invalid `agent_api.auth_token` in {p}: must be at least 16"
        )),
        "{err}"
    );
    // Choices are case-insensitive, in the file as in the environment.
    write_private(
        &path,
        &format!("log_level: DEBUG\ndocker:\n  gpu_mode: CDI\n{good}"),
    );
    let out = run(&["--check-config", "-c", p], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("log_level: debug"));
    // An unknown PHOENIX_* variable is a warning, not silence.
    write_private(&path, good);
    let out = run(&["--check-config", "-c", p], &[("PHOENIX_AUTH_TOKN", "x")]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("warning: environment variable PHOENIX_AUTH_TOKN is not one"),
        "{}",
        text(&out.stderr)
    );
    // No Rust type names; YAML mistakes at their own line.
    for (yaml, want) in [
        (
            format!("{good}frp:\n  server_port: 70000\n"),
            "frp.server_port: 70000 is not a port number (1-65535) at line 4",
        ),
        (
            "agent_api: 5\n".to_string(),
            "agent_api: expected a mapping (indented `key: value` lines), found 5",
        ),
        (
            format!("{good}frp:\n  token: a\n  user: b\n  token: c\n"),
            "duplicate key `token` at line 6 (first set at line 4)",
        ),
        (
            format!("{good}  listen_address: \"127.0.0.1:9\ngpu:\n  init_retry_secs: 1\n"),
            "unclosed quote at line 3 column 19",
        ),
    ] {
        write_private(&path, &yaml);
        let out = run(&["--check-config", "-c", p], &[]);
        assert_eq!(out.status.code(), Some(1), "{yaml}");
        let err = text(&out.stderr);
        assert!(err.contains(want), "{yaml}: {err}");
        for rust in ["u16", "struct", "ApiConfig", "expected u"] {
            assert!(!err.contains(rust), "{yaml}: {err}");
        }
    }
}
