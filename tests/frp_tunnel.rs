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
