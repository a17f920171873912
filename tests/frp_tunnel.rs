//! A real frp tunnel, end to end, with an frp implementation nobody here wrote: nfrp-server as
//! frps and nfrp-client as frpc and as the platform's stcp visitor (tests/common/nfrp.rs says
//! what of them these tests rely on). Skipped when they are not installed, except under
//! `CI=true` (`.ci/run` installs them).
//!
//! The harness tests prove the peers with a config of the test's own: if they pass and an agent
//! test fails, the agent is at fault, not the tunnel.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::fake_frpc::basic_auth;
use common::nfrp::{self, Frps, Visitor, FRPS_TOKEN};
use common::{free_port, try_request, HttpResponse};

/// A loopback HTTP service answering every request with `body` (a renter's container stand-in).
fn http_service(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// GET `path` on a loopback port until it answers (a tunnel takes a moment to register).
fn get_through(port: u16, path: &str, headers: &[(&str, &str)], timeout: Duration) -> HttpResponse {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    loop {
        match try_request(addr, "GET", path, headers, b"") {
            Ok(resp) => return resp,
            Err(e) if Instant::now() > deadline => {
                panic!("GET {path} through port {port}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// True when nothing reaches `path` through `port` for `settle`: the tunnel stays closed.
fn stays_closed(port: u16, path: &str, settle: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + settle;
    while Instant::now() < deadline {
        if try_request(addr, "GET", path, &[], b"").is_ok() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

fn own_frpc_config(frps: &Frps, user: &str, tls: bool, admin_port: u16, proxies: &str) -> String {
    format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {}
user = "{user}"
loginFailExit = false
auth.method = "token"
auth.token = "{FRPS_TOKEN}"
transport.tls.enable = {tls}
log.to = "console"
log.level = "info"
log.disablePrintColor = true
webServer.addr = "127.0.0.1"
webServer.port = {admin_port}
webServer.user = "admin"
webServer.password = "admin-pw"
{proxies}"#,
        frps.port
    )
}

#[test]
fn harness_stcp_visitor_and_tcp_remote_port_reach_a_local_service() {
    let test = "harness_stcp_visitor_and_tcp_remote_port_reach_a_local_service";
    let Some((server, client)) = nfrp::binaries(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let frps = Frps::start(&server, dir.path());
    let service = http_service("through the tunnel");
    let remote_port = free_port();
    let admin_port = free_port();
    let proxies = format!(
        r#"
[[proxies]]
name = "agent-api"
type = "stcp"
localIP = "127.0.0.1"
localPort = {service}
secretKey = "stcp-secret"
allowUsers = ["platform"]

[[proxies]]
name = "claim-80-tcp"
type = "tcp"
localIP = "127.0.0.1"
localPort = {service}
remotePort = {remote_port}
"#
    );
    let frpc = nfrp::frpc(
        &client,
        dir.path(),
        &own_frpc_config(&frps, "node-1", true, admin_port, &proxies),
    );

    // The platform, through its visitor: stcp with the right secret and an allowed user.
    let visitor = Visitor::start(
        &client,
        dir.path(),
        &frps,
        "platform",
        "node-1",
        "agent-api",
        "stcp-secret",
    );
    let resp = get_through(visitor.port, "/", &[], Duration::from_secs(15));
    assert_eq!(resp.status, 200, "{}", frpc.log());
    assert_eq!(resp.text(), "through the tunnel");

    // A renter, through the public remote port of the tcp proxy.
    let resp = get_through(remote_port, "/", &[], Duration::from_secs(15));
    assert_eq!(resp.text(), "through the tunnel");

    // A visitor with the wrong secret, or a user not in allowUsers, gets nothing.
    let wrong_secret = Visitor::start(
        &client,
        dir.path(),
        &frps,
        "platform",
        "node-1",
        "agent-api",
        "guessed",
    );
    let wrong_user = Visitor::start(
        &client,
        dir.path(),
        &frps,
        "mallory",
        "node-1",
        "agent-api",
        "stcp-secret",
    );
    assert!(stays_closed(wrong_secret.port, "/", Duration::from_secs(2)));
    assert!(stays_closed(wrong_user.port, "/", Duration::from_secs(2)));

    // nfrp-client's admin API is not official frpc's: no /api/reload (an agent must restart it).
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let auth = basic_auth("admin", "admin-pw");
    let reload = try_request(
        admin,
        "GET",
        "/api/reload?strictConfig=true",
        &[("Authorization", &auth)],
        b"",
    )
    .expect("nfrp-client admin API");
    assert_eq!(reload.status, 404, "{}", reload.text());
    let status = try_request(
        admin,
        "GET",
        "/api/status",
        &[("Authorization", &auth)],
        b"",
    )
    .expect("nfrp-client admin API")
    .json();
    assert!(
        status.get("tcp").is_none() && status.get("stcp").is_none(),
        "nfrp-client's /api/status now looks like frpc's: {status}"
    );

    // frpc gone: the remote port closes.
    drop(frpc);
    assert!(stays_closed(remote_port, "/", Duration::from_secs(2)));
}

#[test]
fn harness_frps_refuses_a_client_without_tls() {
    let test = "harness_frps_refuses_a_client_without_tls";
    let Some((server, client)) = nfrp::binaries(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let frps = Frps::start(&server, dir.path());
    let service = http_service("should not be reachable");
    let remote_port = free_port();
    let proxies = format!(
        r#"
[[proxies]]
name = "plain"
type = "tcp"
localIP = "127.0.0.1"
localPort = {service}
remotePort = {remote_port}
"#
    );
    let frpc = nfrp::frpc(
        &client,
        dir.path(),
        &own_frpc_config(&frps, "node-2", false, free_port(), &proxies),
    );
    assert!(
        stays_closed(remote_port, "/", Duration::from_secs(3)),
        "a plain-text frpc registered a proxy:\n{}",
        frpc.log()
    );
    assert!(frps.process.log().contains("TLS"), "{}", frps.process.log());
}

/// The agent's frp keys for `frps`, with nfrp-client as its frpc.
fn agent_frp(c: &mut utopia_node_agent::config::Config, frps: &Frps, client: &std::path::Path) {
    c.frp.server_addr = "127.0.0.1".into();
    c.frp.server_port = frps.port;
    c.frp.token = FRPS_TOKEN.into();
    c.frp.frpc_path = client.to_path_buf();
    c.frp.admin_port = free_port();
}

#[test]
fn the_platform_reaches_the_agent_api_over_stcp_with_its_api_token() {
    use common::platform::{PlatformServer, Reply};
    let test = "the_platform_reaches_the_agent_api_over_stcp_with_its_api_token";
    let Some((server, client)) = nfrp::binaries(test) else {
        return;
    };
    const API_TOKEN: &str = "platform-api-token-e2e-0123456789";
    const SECRET: &str = "stcp-secret-e2e-9f8e7d";
    let dir = tempfile::tempdir().expect("tempdir");
    let frps = Frps::start(&server, dir.path());
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::json(
        201,
        serde_json::json!({
            "node_id": "node-e2e",
            "api_token": API_TOKEN,
            "frp": {"api_proxy": {"type": "stcp", "secret_key": SECRET, "allow_users": ["platform"]}},
        }),
    ));
    let agent = common::Agent::start_with(
        |c| {
            agent_frp(c, &frps, &client);
            c.central_platform.api_url = platform.url();
            c.central_platform.heartbeat_interval_secs = 0;
        },
        common::AgentOptions {
            env: Vec::new(),
            wait_for_gpu: false,
        },
    );
    let visitor = Visitor::start(
        &client,
        dir.path(),
        &frps,
        "platform",
        "node-e2e",
        "agent-api",
        SECRET,
    );
    let auth = format!("Bearer {API_TOKEN}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let r = get_through(
            visitor.port,
            "/api/v1/metrics",
            &[("Authorization", auth.as_str())],
            Duration::from_secs(20),
        );
        if r.status == 200 {
            break r.json();
        }
        assert!(
            Instant::now() < deadline,
            "through the visitor: {} {}\nagent:\n{}\nfrps:\n{}\nvisitor:\n{}",
            r.status,
            r.text(),
            agent.log(),
            frps.process.log(),
            visitor.process.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(metrics["node_id"], "node-e2e");
    // The tunnel is no way around the token.
    let r = get_through(
        visitor.port,
        "/api/v1/metrics",
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    let log = agent.log();
    for secret in [API_TOKEN, SECRET, FRPS_TOKEN] {
        assert!(!log.contains(secret), "{secret} in the agent's log:\n{log}");
    }
}

#[test]
fn a_tcp_api_proxy_publishes_the_api_on_its_remote_port() {
    let test = "a_tcp_api_proxy_publishes_the_api_on_its_remote_port";
    let Some((server, client)) = nfrp::binaries(test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let frps = Frps::start(&server, dir.path());
    let remote_port = free_port();
    let agent = common::Agent::start_with(
        |c| {
            agent_frp(c, &frps, &client);
            c.frp.user = "node-tcp".into();
            c.frp.api_proxy_type = utopia_node_agent::config::ApiProxyType::Tcp;
            c.frp.api_remote_port = remote_port;
        },
        common::AgentOptions {
            env: Vec::new(),
            wait_for_gpu: false,
        },
    );
    let auth = format!("Bearer {}", common::TOKEN);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let addr = SocketAddr::from(([127, 0, 0, 1], remote_port));
        match try_request(
            addr,
            "GET",
            "/api/v1/metrics",
            &[("Authorization", &auth)],
            b"",
        ) {
            Ok(r) if r.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "{:?}\nagent:\n{}\nfrps:\n{}",
                other.map(|r| r.status),
                agent.log(),
                frps.process.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(agent.log().contains("plain HTTP"), "{}", agent.log());
}

#[test]
fn a_renter_reaches_a_containers_port_until_it_is_deleted() {
    use common::docker::{body, ready, Scope};
    let test = "a_renter_reaches_a_containers_port_until_it_is_deleted";
    let Some((server, client)) = nfrp::binaries(test) else {
        return;
    };
    if !ready(test) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let frps = Frps::start(&server, dir.path());
    let scope = Scope::new();
    let agent = scope.agent_with(
        |c| {
            agent_frp(c, &frps, &client);
            c.frp.user = "node-renter".into();
        },
        common::AgentOptions {
            env: Vec::new(),
            wait_for_gpu: false,
        },
    );
    let claim = scope.claim("renter");
    let remote_port = free_port();
    let mut request = body(
        &claim,
        &[],
        "mkdir -p /www && echo renter-page > /www/index.html && exec httpd -f -p 80 -h /www",
    );
    request["port_mappings"] = serde_json::json!([
        {"host_port": free_port(), "container_port": 80, "remote_port": remote_port}
    ]);
    agent.create(&request);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let addr = SocketAddr::from(([127, 0, 0, 1], remote_port));
        match try_request(addr, "GET", "/index.html", &[], b"") {
            Ok(r) if r.status == 200 && r.text().contains("renter-page") => break,
            other => assert!(
                Instant::now() < deadline,
                "{:?}\nagent:\n{}\nfrps:\n{}",
                other.map(|r| r.status),
                agent.log(),
                frps.process.log()
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // nfrp-client has no official /api/reload: the agent restarted frpc to add the proxy.
    let tunnels = agent.get("/api/v1/tunnels").json();
    assert!(
        tunnels["restarts"].as_u64().is_some_and(|n| n >= 1),
        "{tunnels}"
    );
    assert!(agent.log().contains("reload failed"), "{}", agent.log());
    let r = agent.api("DELETE", &format!("/api/v1/containers/{claim}"), b"");
    assert!(r.status == 200 || r.status == 204, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !stays_closed(remote_port, "/index.html", Duration::from_secs(2)) {
        assert!(
            Instant::now() < deadline,
            "still open after the delete:\n{}",
            agent.log()
        );
    }
}
