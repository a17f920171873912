//! The frpc supervisor against the fake frpc (tests/fake_frpc): the config file it writes,
//! start, restart with backoff, reload on container changes, failure paths, shutdown and
//! crash behaviour, secrets in the log.

mod common;

use common::docker::{body, ready, wait_until, Scope};
use common::fake_frpc::{self, Journal};
use common::{Agent, AgentOptions};
use serde_json::{json, Value};
use std::time::Duration;
use utopia_node_agent::config::{ApiProxyType, Config};

const FRP_USER: &str = "node-t";
const FRP_TOKEN: &str = "frps-token-0123456789";

/// Frp switched on with the fake frpc, no platform, user [`FRP_USER`].
fn frp_on(c: &mut Config) {
    c.frp.server_addr = "127.0.0.1".into();
    c.frp.server_port = 7000;
    c.frp.token = FRP_TOKEN.into();
    c.frp.user = FRP_USER.into();
    c.frp.frpc_path = fake_frpc::binary();
    c.frp.admin_port = common::free_port();
}

/// Options whose environment points the fake frpc at `journal` (plus `env`).
fn with_journal(journal: &Journal, env: &[(&str, &str)]) -> AgentOptions {
    let mut vars = vec![(
        "FAKE_FRPC_JOURNAL".to_string(),
        journal.path().to_string_lossy().into_owned(),
    )];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    AgentOptions {
        env: vars,
        wait_for_gpu: false,
    }
}

fn tunnels(agent: &Agent) -> Value {
    let r = agent.get("/api/v1/tunnels");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn wait_tunnel(agent: &Agent, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let ok = wait_until(timeout, || {
        last = tunnels(agent);
        pred(&last)
    });
    assert!(
        ok,
        "tunnel never as expected: {last}\nlog:\n{}",
        agent.log()
    );
    last
}

fn frp_health(agent: &Agent) -> String {
    agent.get("/health").json()["components"]["frp"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// True while `pid` exists and is not a zombie.
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn start_pids(journal: &Journal) -> Vec<u64> {
    journal
        .of("start")
        .iter()
        .filter_map(|e| e["pid"].as_u64())
        .collect()
}

fn journal_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn config_is_private_frpc_connects_and_stops_with_the_agent() {
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    let mut agent = Agent::start_with(frp_on, with_journal(&journal, &[]));
    let start = journal.wait_for("start", Duration::from_secs(10), |_| true);
    assert_eq!(start["mode"], "0600", "{start}");
    let config_path = agent.dir.path().join("frp/frpc.toml");
    assert_eq!(start["config"], config_path.to_string_lossy().as_ref());
    assert_eq!(common::mode(&config_path), 0o600);
    let text = std::fs::read_to_string(&config_path).unwrap();
    for line in [
        "serverAddr = \"127.0.0.1\"".to_string(),
        "serverPort = 7000".to_string(),
        format!("user = \"{FRP_USER}\""),
        "loginFailExit = false".to_string(),
        format!("auth.token = \"{FRP_TOKEN}\""),
        "transport.tls.enable = true".to_string(),
        "log.disablePrintColor = true".to_string(),
        "webServer.addr = \"127.0.0.1\"".to_string(),
        "name = \"agent-api\"".to_string(),
        format!("localPort = {}", agent.addr.port()),
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    let password = text
        .lines()
        .find_map(|l| l.strip_prefix("webServer.password = "))
        .expect("an admin password")
        .trim_matches('"')
        .to_string();
    assert!(password.len() >= 32, "{password}");

    let view = wait_tunnel(&agent, Duration::from_secs(10), |t| {
        t["state"] == "connected"
            && t["proxies"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["status"] == "running"))
    });
    assert_eq!(view["restarts"], 0, "{view}");
    assert_eq!(view["server"], "127.0.0.1:7000");
    let api = &view["proxies"][0];
    assert_eq!(api["name"], format!("{FRP_USER}.agent-api"), "{view}");
    assert_eq!(api["type"], "tcp");
    assert_eq!(
        api["local_addr"],
        format!("127.0.0.1:{}", agent.addr.port())
    );
    assert!(api["remote_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert_eq!(api["error"], Value::Null);
    assert_eq!(frp_health(&agent), "ok");
    // The admin API was used with Basic auth and accepted.
    let status_calls = journal.of("api");
    assert!(
        status_calls
            .iter()
            .any(|e| e["path"] == "/api/status" && e["code"] == 200),
        "{status_calls:?}"
    );
    // frpc's lines reach the agent's log, prefixed; the password never does.
    assert!(
        agent.log().contains("frpc: [client/service.go:287]"),
        "{}",
        agent.log()
    );
    assert!(!agent.log().contains(&password));
    assert!(!agent.log().contains(FRP_TOKEN));

    let pid = start_pids(&journal)[0];
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(!running(pid), "frpc {pid} outlived the agent");
    let signal = journal.wait_for("signal", Duration::from_secs(2), |_| true);
    assert_eq!(signal["signal"], "SIGTERM", "{signal}");
}

#[test]
fn a_hanging_admin_api_call_never_holds_the_stop_past_its_deadline() {
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    // frpc's admin API never answers (each call would take its whole 2 s timeout) and frpc
    // ignores SIGTERM (the stop takes its whole grace before SIGKILL).
    let mut agent = Agent::start_with(
        frp_on,
        with_journal(
            &journal,
            &[
                ("FAKE_FRPC_HANG_ADMIN", "1"),
                ("FAKE_FRPC_IGNORE_SIGTERM", "1"),
            ],
        ),
    );
    journal.wait_for("api_hang", Duration::from_secs(10), |e| {
        e["path"] == "/api/status"
    });
    let pid = start_pids(&journal)[0];
    // Shutdown starts while the status call hangs.
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    assert!(
        !agent.log().contains("did not stop in time"),
        "took {took:?}; log:\n{}",
        agent.log()
    );
    // The agent's stop deadline (1.5 s), and some room for a loaded machine.
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(
        agent
            .log()
            .contains("frpc stopped (the agent is shutting down)"),
        "{}",
        agent.log()
    );
    assert!(
        wait_until(Duration::from_secs(2), || !running(pid)),
        "frpc {pid} outlived the agent"
    );
}

#[test]
fn sigkill_of_the_agent_leaves_no_frpc() {
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    let mut agent = Agent::start_with(frp_on, with_journal(&journal, &[]));
    journal.wait_for("login", Duration::from_secs(10), |e| e["ok"] == true);
    let pid = start_pids(&journal)[0];
    assert!(running(pid));
    agent.kill();
    assert!(
        wait_until(Duration::from_secs(3), || !running(pid)),
        "frpc {pid} survived a SIGKILLed agent"
    );
}

#[test]
fn frp_disabled_runs_no_frpc() {
    let agent = Agent::start_with(|_| {}, AgentOptions::default());
    let view = tunnels(&agent);
    assert_eq!(view["state"], "disabled", "{view}");
    assert_eq!(view["proxies"], json!([]));
    assert_eq!(view["server"], Value::Null);
    assert_eq!(frp_health(&agent), "disabled (frp.server_addr is empty)");
    assert!(!agent.dir.path().join("frp/frpc.toml").exists());
    // Unauthenticated: 401 like every /api path.
    let r = agent.request("GET", "/api/v1/tunnels", &[], b"");
    assert_eq!(r.status, 401);
}

#[test]
fn missing_frpc_is_reported_and_retried_while_the_api_works() {
    let agent = Agent::start_with(
        |c| {
            frp_on(c);
            c.frp.frpc_path = "/nonexistent/frpc".into();
        },
        AgentOptions {
            env: Vec::new(),
            wait_for_gpu: false,
        },
    );
    let view = wait_tunnel(&agent, Duration::from_secs(5), |t| t["state"] == "failed");
    let error = view["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("frpc not found at /nonexistent/frpc"),
        "{view}"
    );
    let health = agent.get("/health").json();
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["components"]["frp"]
            .as_str()
            .is_some_and(|h| h.starts_with("unavailable: frpc not found")),
        "{health}"
    );
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
    // frp holds no readiness back (whatever else may still be starting).
    let ready = agent.request("GET", "/health/ready", &[], b"").json();
    let waiting = ready["waiting_for"].to_string();
    assert!(!waiting.contains("frp"), "{ready}");
    // Retried: the error is logged again after the first backoff step.
    assert!(wait_until(Duration::from_secs(4), || {
        agent.log().matches("frpc not found").count() >= 2
    }));

    // Present but not executable: said so.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("frpc");
    common::write_private(&file, "#!/bin/sh\n");
    let agent = Agent::start_with(
        |c| {
            frp_on(c);
            c.frp.frpc_path = file.clone();
        },
        AgentOptions {
            env: Vec::new(),
            wait_for_gpu: false,
        },
    );
    let view = wait_tunnel(&agent, Duration::from_secs(5), |t| t["state"] == "failed");
    assert!(
        view["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("is not executable"),
        "{view}"
    );
}

#[test]
fn secrets_never_reach_the_agent_log() {
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    let secret = "stcp-secret-abcdef0123";
    let agent = Agent::start_with(
        |c| {
            frp_on(c);
            c.frp.api_proxy_type = ApiProxyType::Stcp;
            c.frp.api_secret_key = secret.into();
            c.frp.api_allow_users = vec!["platform".into()];
        },
        with_journal(&journal, &[("FAKE_FRPC_LEAK_SECRETS", "1")]),
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("debug dump")),
        "{}",
        agent.log()
    );
    let text = std::fs::read_to_string(agent.dir.path().join("frp/frpc.toml")).unwrap();
    assert!(text.contains("type = \"stcp\""), "{text}");
    assert!(text.contains("allowUsers = [\"platform\"]"), "{text}");
    let password = text
        .lines()
        .find_map(|l| l.strip_prefix("webServer.password = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let log = agent.log();
    for s in [FRP_TOKEN, secret, password.as_str()] {
        assert!(!log.contains(s), "{s:?} leaked into the log:\n{log}");
    }
    assert!(log.contains("token [[redacted]]"), "{log}");
    let view = wait_tunnel(&agent, Duration::from_secs(5), |t| {
        t["state"] == "connected" && t["proxies"].as_array().is_some_and(|p| !p.is_empty())
    });
    assert_eq!(view["proxies"][0]["type"], "stcp", "{view}");
    assert_eq!(view["proxies"][0]["remote_addr"], Value::Null, "{view}");
}

#[test]
fn a_crashing_frpc_is_restarted_with_backoff() {
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    let agent = Agent::start_with(
        frp_on,
        with_journal(&journal, &[("FAKE_FRPC_CRASH_AFTER_SECS", "0.2")]),
    );
    assert!(
        wait_until(Duration::from_secs(15), || journal.of("start").len() >= 4),
        "{:?}\n{}",
        journal.events(),
        agent.log()
    );
    let starts: Vec<u64> = journal
        .of("start")
        .iter()
        .map(|e| e["t_ms"].as_u64().unwrap())
        .collect();
    // Each run lasts 0.2 s, then the wait doubles: 1 s, 2 s, 4 s.
    for (i, expected) in [1000u64, 2000, 4000].iter().enumerate() {
        let gap = starts[i + 1] - starts[i];
        assert!(
            gap >= expected + 150 && gap <= expected + 900,
            "restart {i}: {gap} ms after the previous start, expected {expected} ms + the 0.2 s run"
        );
    }
    let view = tunnels(&agent);
    assert!(view["restarts"].as_u64().unwrap() >= 3, "{view}");
    assert!(
        view["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("frpc exited"),
        "{view}"
    );
    assert!(frp_health(&agent).starts_with("degraded: reconnecting"));
    assert!(agent.log().contains("restarting in 2s"), "{}", agent.log());
}

/// A container with one published port; returns (claim, proxy name as frpc reports it).
fn create_with_port(agent: &Agent, scope: &Scope, name: &str) -> (String, String) {
    let claim = scope.claim(name);
    let mut request = body(&claim, &[], "sleep 600");
    request["port_mappings"] = json!([{"host_port": common::free_port(), "container_port": 80}]);
    agent.create(&request);
    let proxy = format!("{FRP_USER}.{claim}-80-tcp");
    (claim, proxy)
}

fn has_proxy(view: &Value, name: &str) -> bool {
    view["proxies"].as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p["name"] == name && p["status"] == "running")
    })
}

#[test]
fn container_changes_reload_frpc_without_a_restart() {
    if !ready("container_changes_reload_frpc_without_a_restart") {
        return;
    }
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    let scope = Scope::new();
    let agent = scope.agent_with(frp_on, with_journal(&journal, &[]));
    wait_tunnel(&agent, Duration::from_secs(10), |t| {
        t["state"] == "connected"
    });
    let (claim, proxy) = create_with_port(&agent, &scope, "frp-a");
    let reload = journal.wait_for("reload", Duration::from_secs(10), |e| {
        e["added"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(proxy)))
    });
    assert_eq!(reload["code"], 200, "{reload}");
    assert_eq!(reload["strict"], true, "{reload}");
    // The API proxy was not touched.
    assert!(
        reload["unchanged"]
            .as_array()
            .is_some_and(|u| u.contains(&json!(format!("{FRP_USER}.agent-api")))),
        "{reload}"
    );
    let view = wait_tunnel(&agent, Duration::from_secs(10), |t| has_proxy(t, &proxy));
    let container = view["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == proxy.as_str())
        .unwrap()
        .clone();
    assert_eq!(container["type"], "tcp");
    assert!(container["remote_addr"].as_str().is_some(), "{container}");

    // A stopped container's host port is free again: its proxy goes, and comes back with it.
    let r = agent.api("POST", &format!("/api/v1/containers/{claim}/stop"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    journal.wait_for("reload", Duration::from_secs(20), |e| {
        e["removed"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(proxy)))
    });
    wait_tunnel(&agent, Duration::from_secs(10), |t| !has_proxy(t, &proxy));
    let r = agent.api("POST", &format!("/api/v1/containers/{claim}/start"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_tunnel(&agent, Duration::from_secs(20), |t| has_proxy(t, &proxy));

    let r = agent.api("DELETE", &format!("/api/v1/containers/{claim}"), b"");
    assert!(r.status == 200 || r.status == 204, "{}", r.text());
    journal.wait_for("reload", Duration::from_secs(10), |e| {
        e["removed"]
            .as_array()
            .is_some_and(|a| a.contains(&json!(proxy)))
    });
    wait_tunnel(&agent, Duration::from_secs(10), |t| !has_proxy(t, &proxy));
    assert_eq!(journal.of("start").len(), 1, "frpc was restarted");
    assert_eq!(tunnels(&agent)["restarts"], 0);
}

#[test]
fn a_rejected_reload_restarts_frpc_and_an_agent_restart_keeps_the_proxies() {
    if !ready("a_rejected_reload_restarts_frpc") {
        return;
    }
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    let scope = Scope::new();
    let mut agent = scope.agent_with(
        frp_on,
        with_journal(&journal, &[("FAKE_FRPC_REJECT_RELOAD", "1")]),
    );
    wait_tunnel(&agent, Duration::from_secs(10), |t| {
        t["state"] == "connected"
    });
    let (_claim, proxy) = create_with_port(&agent, &scope, "frp-b");
    journal.wait_for("reload", Duration::from_secs(10), |e| e["code"] == 500);
    let view = wait_tunnel(&agent, Duration::from_secs(10), |t| has_proxy(t, &proxy));
    assert_eq!(view["restarts"], 1, "{view}");
    assert!(
        view["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("reload failed"),
        "{view}"
    );
    assert_eq!(journal.of("start").len(), 2);
    let first = start_pids(&journal)[0];
    assert!(!running(first), "the replaced frpc {first} still runs");

    // The agent restarts: the container's proxy is back from its labels in the first frpc
    // the new agent starts (no reload needed).
    agent.restart(false, with_journal(&journal, &[]));
    agent.wait_for_docker();
    let view = wait_tunnel(&agent, Duration::from_secs(15), |t| has_proxy(t, &proxy));
    assert_eq!(view["state"], "connected", "{view}");
    let text = std::fs::read_to_string(agent.dir.path().join("frp/frpc.toml")).unwrap();
    let bare = proxy.trim_start_matches(&format!("{FRP_USER}."));
    assert!(text.contains(&format!("name = \"{bare}\"")), "{text}");
}

#[test]
fn with_a_platform_frpc_waits_for_the_node_id_and_heartbeats_carry_the_tunnel() {
    use common::platform::{PlatformServer, Reply};
    let platform = PlatformServer::start();
    let remote_port = common::free_port();
    platform.queue_register([Reply::json(
        201,
        json!({"node_id": "node-frp", "frp": {"api_remote_port": remote_port}}),
    )
    .after(Duration::from_millis(1500))]);
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    let agent = Agent::start_with(
        |c| {
            frp_on(c);
            c.frp.user = String::new();
            c.central_platform.api_url = platform.url();
            c.central_platform.bootstrap_token = "bootstrap-0123456789abcdef".into();
            c.central_platform.heartbeat_interval_secs = 1;
            c.central_platform.request_timeout_secs = 3;
        },
        with_journal(&journal, &[]),
    );
    // Not registered yet: no frpc, and the tunnel says why.
    let view = tunnels(&agent);
    assert_eq!(view["state"], "starting", "{view}");
    assert_eq!(
        frp_health(&agent),
        "starting: waiting for the node id from the platform"
    );
    assert!(journal.of("start").is_empty());

    journal.wait_for("start", Duration::from_secs(10), |_| true);
    let text = std::fs::read_to_string(agent.dir.path().join("frp/frpc.toml")).unwrap();
    assert!(text.contains("user = \"node-frp\"\n"), "{text}");
    assert!(
        text.contains(&format!("remotePort = {remote_port}\n")),
        "{text}"
    );
    wait_tunnel(&agent, Duration::from_secs(10), |t| {
        t["state"] == "connected" && !t["proxies"].as_array().is_some_and(Vec::is_empty)
    });
    // The heartbeat carries the same view, with the remote address frps gave.
    let expected = format!("127.0.0.1:{remote_port}");
    let carried = wait_until(Duration::from_secs(10), || {
        platform.heartbeats().iter().any(|b| {
            let tunnel = &b.json()["tunnel"];
            tunnel["state"] == "connected"
                && tunnel["proxies"][0]["name"] == "node-frp.agent-api"
                && tunnel["proxies"][0]["remote_addr"] == expected.as_str()
        })
    });
    assert!(
        carried,
        "no heartbeat with the connected tunnel: {:?}",
        platform
            .heartbeats()
            .last()
            .map(|b| b.json()["tunnel"].clone())
    );
    // With its warnings (no frp.tls_ca_file here), the same as GET /api/v1/tunnels and /health.
    let carried = platform
        .heartbeats()
        .last()
        .map(|b| b.json()["tunnel"]["warnings"].clone())
        .unwrap_or_default();
    let shown = tunnels(&agent)["warnings"].clone();
    assert_eq!(carried, shown, "heartbeat vs GET /api/v1/tunnels");
    let lines = shown.as_array().cloned().unwrap_or_default();
    assert!(
        lines
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("does not verify"))),
        "{shown}"
    );
    let health = agent.get("/health").json();
    let prefixed: Vec<String> = lines
        .iter()
        .map(|w| format!("frp: {}", w.as_str().unwrap_or_default()))
        .collect();
    assert_eq!(health["warnings"], json!(prefixed), "{health}");
}

#[test]
fn the_admin_password_is_never_sent_to_a_process_squatting_the_admin_port() {
    // A local user binds frpc's admin port first; frpc (here one without an admin server, as
    // an frpc whose admin server could not listen) runs anyway. Every connection to the
    // squatter is recorded.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    squatter.set_nonblocking(true).unwrap();
    let accepter = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Read;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match squatter.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = vec![0u8; 4096];
                        let n = conn.read(&mut buf).unwrap_or(0);
                        received
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };
    let jdir = journal_dir();
    let journal = Journal::in_dir(jdir.path());
    let agent = Agent::start_with(
        |c| {
            frp_on(c);
            c.frp.admin_port = port;
        },
        with_journal(&journal, &[("FAKE_FRPC_NO_ADMIN", "1")]),
    );
    let holder = format!("pid {} (", std::process::id());
    // The tunnel's view and /health name the squatter.
    let view = wait_tunnel(&agent, Duration::from_secs(10), |t| {
        t["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w.as_str().unwrap_or("").contains(&holder)))
    });
    let warning = view["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|w| w.contains("not by frpc"))
        .unwrap_or_else(|| panic!("{view}"))
        .to_string();
    assert!(
        warning.contains(&format!("127.0.0.1:{port} (frp.admin_port)")),
        "{warning}"
    );
    let health = frp_health(&agent);
    assert!(
        health.starts_with("degraded") && health.contains(&holder),
        "{health}"
    );
    let body = agent.get("/health").json();
    assert!(
        body["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w.as_str().unwrap_or("").contains(&holder))),
        "{body}"
    );
    assert!(agent.log().contains("not by frpc"), "{}", agent.log());
    // Several status rounds later: still nothing was sent to the squatter.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    accepter.join().unwrap();
    let received = received.lock().unwrap().clone();
    assert!(received.is_empty(), "the squatter was sent: {received:?}");
    // The squatter gone, the warning goes at the next status round (frpc has no admin API
    // here, so the tunnel stays without proxy status).
    wait_tunnel(&agent, Duration::from_secs(10), |t| {
        !t["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w.as_str().unwrap_or("").contains(&holder)))
    });
}
