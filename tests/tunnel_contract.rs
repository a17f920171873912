//! The tunnel's contract with the platform, against the fake frpc (tests/fake_frpc): the API
//! proxy the registration answer asks for reaches frpc's config, the config keys override it,
//! and `/health` says how the tunnel's security falls short (tcp, frps not verified).

mod common;

use common::fake_frpc::{self, Journal};
use common::platform::{PlatformServer, Reply};
use common::{Agent, AgentOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use utopia_node_agent::config::{ApiProxyType, Config};

const FRP_TOKEN: &str = "frps-token-0123456789";
const STCP_SECRET: &str = "platform-stcp-secret-5e6f7a";
const PLATFORM_API_TOKEN: &str = "platform-api-token-1a2b3c4d5e";

/// Frp on with the fake frpc writing to `journal`; with `platform`, registering there.
fn frp_on(c: &mut Config, platform: Option<&PlatformServer>) {
    c.frp.server_addr = "127.0.0.1".into();
    c.frp.server_port = 7000;
    c.frp.token = FRP_TOKEN.into();
    c.frp.frpc_path = fake_frpc::binary();
    c.frp.admin_port = common::free_port();
    match platform {
        Some(platform) => {
            c.central_platform.api_url = platform.url();
            c.central_platform.heartbeat_interval_secs = 0;
            c.central_platform.backoff_initial_ms = 100;
            c.central_platform.backoff_max_ms = 400;
        }
        None => c.frp.user = "node-standalone".into(),
    }
}

fn options(journal: &Journal) -> AgentOptions {
    AgentOptions {
        env: vec![(
            "FAKE_FRPC_JOURNAL".to_string(),
            journal.path().to_string_lossy().into_owned(),
        )],
        wait_for_gpu: false,
    }
}

/// frpc's config once frpc started on it.
fn frpc_config(agent: &Agent, journal: &Journal) -> String {
    journal.wait_for("start", Duration::from_secs(15), |_| true);
    std::fs::read_to_string(agent.dir.path().join("frp/frpc.toml")).expect("frpc.toml")
}

/// `/health`'s `warnings` with the token (waiting until the supervisor published some).
fn warnings(agent: &Agent) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = agent.get("/health").json();
        if let Some(list) = health["warnings"].as_array() {
            return list
                .iter()
                .map(|w| w.as_str().unwrap_or_default().to_string())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "no warnings in {health}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

#[test]
fn the_platforms_stcp_answer_reaches_frpc_and_its_token_opens_the_api() {
    let jdir = tempfile::tempdir().unwrap();
    let journal = Journal::in_dir(jdir.path());
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::json(
        201,
        json!({
            "node_id": "node-stcp",
            "api_token": PLATFORM_API_TOKEN,
            "frp": {"api_proxy": {
                "type": "stcp", "secret_key": STCP_SECRET, "allow_users": ["platform"]
            }},
        }),
    ));
    let agent = Agent::start_with(|c| frp_on(c, Some(&platform)), options(&journal));
    let text = frpc_config(&agent, &journal);
    for line in [
        "user = \"node-stcp\"",
        "type = \"stcp\"",
        &format!("secretKey = \"{STCP_SECRET}\""),
        "allowUsers = [\"platform\"]",
    ] {
        assert!(has_line(&text, line), "{line:?} not in\n{text}");
    }
    // stcp: no plain-HTTP warning; frps's certificate is not verified (no tls_ca_file).
    let warnings = warnings(&agent);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("does not verify"), "{warnings:?}");
    // Not shown without the token.
    let open = agent.request("GET", "/health", &[], b"").json();
    assert!(open.get("warnings").is_none(), "{open}");
    let auth = format!("Bearer {PLATFORM_API_TOKEN}");
    let r = agent.request("GET", "/api/v1/metrics", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200);
    let log = agent.log();
    assert!(!log.contains("plain HTTP"), "{log}");
    for secret in [STCP_SECRET, PLATFORM_API_TOKEN] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

#[test]
fn config_keys_override_the_platforms_answer() {
    let jdir = tempfile::tempdir().unwrap();
    let journal = Journal::in_dir(jdir.path());
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::json(
        201,
        json!({"node_id": "node-over", "frp": {"api_proxy": {
            "type": "stcp", "secret_key": STCP_SECRET, "allow_users": ["platform"]
        }}}),
    ));
    let agent = Agent::start_with(
        |c| {
            frp_on(c, Some(&platform));
            c.frp.api_proxy_type = ApiProxyType::Tcp;
            c.frp.api_remote_port = 7011;
        },
        options(&journal),
    );
    let text = frpc_config(&agent, &journal);
    assert!(has_line(&text, "remotePort = 7011"), "{text}");
    assert!(
        !text.contains("stcp") && !text.contains(STCP_SECRET),
        "{text}"
    );
    let warnings = warnings(&agent);
    assert!(
        warnings.iter().any(|w| w.contains("plain HTTP")),
        "{warnings:?}"
    );
}

#[test]
fn without_a_platform_tcp_is_warned_about_once() {
    let jdir = tempfile::tempdir().unwrap();
    let journal = Journal::in_dir(jdir.path());
    let agent = Agent::start_with(|c| frp_on(c, None), options(&journal));
    let text = frpc_config(&agent, &journal);
    assert!(has_line(&text, "type = \"tcp\""), "{text}");
    let warnings = warnings(&agent);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("frp: ") && warnings[0].contains("plain HTTP"));
    assert!(warnings[1].contains("does not verify"));
    // Let the supervisor tick a while: still logged once.
    std::thread::sleep(Duration::from_millis(1500));
    let log = agent.log();
    assert_eq!(log.matches("plain HTTP").count(), 1, "{log}");
    let health: Value = agent.get("/health").json();
    assert_eq!(health["warnings"].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_mappings_remote_port_reaches_frpc_survives_a_restart_and_shows_as_its_endpoint() {
    use common::docker::{body, ready, wait_until, Scope};
    if !ready("a_mappings_remote_port_reaches_frpc") {
        return;
    }
    let jdir = tempfile::tempdir().unwrap();
    let journal = Journal::in_dir(jdir.path());
    let scope = Scope::new();
    let mut agent = scope.agent_with(|c| frp_on(c, None), options(&journal));
    let claim = scope.claim("remote");
    let host_port = common::free_port();
    let remote_port = common::free_port();
    let mut request = body(&claim, &[], "sleep 600");
    request["port_mappings"] = json!([
        {"host_port": host_port, "container_port": 80, "remote_port": remote_port}
    ]);
    let created = agent.create(&request);
    assert_eq!(created["port_mappings"][0]["remote_port"], remote_port);
    let proxy_line = format!("remotePort = {remote_port}");
    let config = agent.dir.path().join("frp/frpc.toml");
    let has_port =
        || std::fs::read_to_string(&config).is_ok_and(|t| t.lines().any(|l| l == proxy_line));
    assert!(
        wait_until(Duration::from_secs(15), has_port),
        "{proxy_line} never in frpc.toml"
    );
    // Its endpoint: the address frpc reports for its proxy.
    let path = format!("/api/v1/containers/{claim}");
    let mut endpoint = Value::Null;
    let reported = wait_until(Duration::from_secs(15), || {
        endpoint = agent.get(&path).json()["endpoints"][0].clone();
        endpoint["remote_addr"].is_string()
    });
    assert!(reported, "no remote_addr: {endpoint}\n{}", agent.log());
    assert_eq!(endpoint["host_port"], host_port);
    assert_eq!(endpoint["container_port"], 80);
    assert!(
        endpoint["remote_addr"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{remote_port}"))),
        "{endpoint}"
    );
    // Kept in the container's labels: after an agent restart frpc is given it again.
    agent.restart(false, options(&journal));
    std::fs::remove_file(&config).ok();
    assert!(
        wait_until(Duration::from_secs(20), has_port),
        "lost after a restart:\n{}",
        agent.log()
    );
    assert_eq!(
        agent.get(&path).json()["port_mappings"][0]["remote_port"],
        remote_port
    );
    // Template markers and bad ports never reach frpc: 400.
    for bad in [json!(70000), json!(-1), json!("{{.Envs.X}}")] {
        let mut request = body(&scope.claim("bad"), &[], "sleep 1");
        request["port_mappings"] = json!([
            {"host_port": common::free_port(), "container_port": 80, "remote_port": bad}
        ]);
        let r = agent.post_json("/api/v1/containers", &request);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert!(r.text().contains("remote_port"), "{}", r.text());
    }
}

#[test]
fn with_frp_off_endpoints_have_no_address() {
    use common::docker::{body, ready, Scope};
    if !ready("with_frp_off_endpoints_have_no_address") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let claim = scope.claim("nofrp");
    let mut request = body(&claim, &[], "sleep 600");
    request["port_mappings"] = json!([{"host_port": common::free_port(), "container_port": 80}]);
    let created = agent.create(&request);
    assert_eq!(
        created["endpoints"].as_array().map(Vec::len),
        Some(1),
        "{created}"
    );
    assert!(
        created["endpoints"][0]["remote_addr"].is_null(),
        "{created}"
    );
    assert_eq!(created["port_mappings"][0]["remote_port"], 0);
}
