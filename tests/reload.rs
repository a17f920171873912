//! SIGHUP reload on the real binary: the token rotates without a restart (same pid, the old
//! token 401 at once, the new one 200), an invalid file is rejected whole and the running
//! config stays, a key that needs a restart is logged as such and keeps its running value, the
//! log level changes live, and systemd hears `RELOADING=1` then `READY=1`.

mod common;

use common::{test_config, write_config, Agent, AgentOptions, TOKEN};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use utopia_node_agent::config::{Config, LogLevel};

const NEW_TOKEN: &str = "rotated-token-0123456789abcdef";

fn status_with(agent: &Agent, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    agent
        .request("GET", "/api/v1/metrics", &[("Authorization", &auth)], b"")
        .status
}

/// Waits until the agent's log contains `needle` (at most 10 s).
fn wait_log(agent: &Agent, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if agent.log().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the log never said {needle:?}:\n{}", agent.log());
}

fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).expect("a notify message within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Reads notify messages until one contains `needle`.
fn wait_message(socket: &UnixDatagram, needle: &str) -> String {
    loop {
        let message = next(socket);
        if message.contains(needle) {
            return message;
        }
    }
}

struct Setup {
    agent: Agent,
    config: Config,
    socket: UnixDatagram,
}

fn start(edit: impl FnOnce(&mut Config)) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    edit(&mut config);
    let path = write_config(dir.path(), &config);
    let notify = dir.path().join("notify");
    let socket = UnixDatagram::bind(&notify).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let options = AgentOptions {
        env: vec![(
            "NOTIFY_SOCKET".to_string(),
            notify.to_string_lossy().into_owned(),
        )],
        ..AgentOptions::default()
    };
    let agent = Agent::spawn(dir, path, &config, options);
    wait_message(&socket, "READY=1");
    Setup {
        agent,
        config,
        socket,
    }
}

impl Setup {
    fn rewrite(&self, config: &Config) {
        write_config(self.agent.dir.path(), config);
    }

    /// SIGHUP, then the RELOADING=1 and READY=1 that frame the reload; returns the READY one.
    fn reload(&self) -> String {
        self.agent.signal(libc::SIGHUP);
        let reloading = wait_message(&self.socket, "RELOADING=1");
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
        wait_message(&self.socket, "READY=1")
    }
}

#[test]
fn the_token_rotates_without_a_restart() {
    let setup = start(|_| {});
    let agent = &setup.agent;
    let pid = agent.pid();
    assert_eq!(status_with(agent, TOKEN), 200);
    assert_eq!(status_with(agent, NEW_TOKEN), 401);

    let mut config = setup.config.clone();
    config.agent_api.auth_token = NEW_TOKEN.to_string();
    setup.rewrite(&config);
    let ready = setup.reload();
    assert!(ready.contains("configuration reloaded"), "{ready}");

    // The reload is done when READY=1 arrives: no wait, no restart.
    assert_eq!(status_with(agent, NEW_TOKEN), 200);
    assert_eq!(status_with(agent, TOKEN), 401);
    assert_eq!(agent.pid(), pid);
    assert_eq!(agent.request("GET", "/health", &[], b"").status, 200);
    let log = agent.log();
    assert!(
        log.contains("config key agent_api.auth_token changed: applied"),
        "{log}"
    );
    assert!(
        !log.contains(NEW_TOKEN),
        "the token reached the log:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the token reached the log:\n{log}");
}

#[test]
fn an_invalid_file_is_rejected_whole_and_the_running_config_stays() {
    let setup = start(|_| {});
    let agent = &setup.agent;
    // A valid new token next to an invalid key: neither is taken.
    let text = format!(
        "agent_api:\n  auth_token: {NEW_TOKEN}\n  listen_address: {}\ngpu:\n  sample_interval_ms: nope\n",
        setup.config.agent_api.listen_address
    );
    common::write_private(&agent.config_path, &text);
    let ready = setup.reload();
    assert!(ready.contains("configuration reload rejected"), "{ready}");
    wait_log(
        agent,
        "configuration reload rejected, the running configuration stays",
    );
    assert_eq!(status_with(agent, TOKEN), 200);
    assert_eq!(status_with(agent, NEW_TOKEN), 401);

    // A missing file too.
    std::fs::remove_file(&agent.config_path).expect("remove the config");
    setup.reload();
    assert_eq!(status_with(agent, TOKEN), 200);
    assert_eq!(
        agent
            .log()
            .matches("configuration reload rejected, the running configuration stays")
            .count(),
        2,
        "{}",
        agent.log()
    );
}

#[test]
fn a_key_needing_a_restart_is_logged_and_keeps_its_value_and_the_log_level_changes_live() {
    let setup = start(|c| c.log_level = LogLevel::Info);
    let agent = &setup.agent;
    let old_listen = setup.config.agent_api.listen_address.clone();
    let mut config = setup.config.clone();
    config.agent_api.listen_address = format!("127.0.0.1:{}", common::free_port());
    config.agent_api.max_connections = 17;
    config.log_level = LogLevel::Debug;
    setup.rewrite(&config);
    // Before: a request is not logged at info.
    agent.request("GET", "/health", &[], b"");
    assert!(
        !agent.log().contains("GET /health -> 200"),
        "{}",
        agent.log()
    );

    let ready = setup.reload();
    assert!(
        ready.contains("restart to apply: agent_api.listen_address, agent_api.max_connections"),
        "{ready}"
    );
    let log = agent.log();
    for key in ["agent_api.listen_address", "agent_api.max_connections"] {
        assert!(
            log.contains(&format!(
                "config key {key} changed: it needs a restart to take effect (the running value stays)"
            )),
            "{log}"
        );
    }
    assert!(
        log.contains("config key log_level changed: applied"),
        "{log}"
    );
    // Still on the old address; requests are now logged at debug.
    assert_eq!(agent.addr.to_string(), old_listen);
    assert_eq!(agent.request("GET", "/health", &[], b"").status, 200);
    wait_log(agent, "GET /health -> 200");
}

/// One keep-alive connection: sends `request`, reads one answer (`head_only`: no body follows,
/// whatever its Content-Length says); returns the status, the raw head and the body.
fn exchange(
    stream: &mut std::net::TcpStream,
    request: &str,
    head_only: bool,
) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    stream.write_all(request.as_bytes()).expect("write");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).expect("read a head");
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .expect("Content-Length");
    let mut body = raw[end + 4..].to_vec();
    let want = if head_only { 0 } else { length };
    while body.len() < want {
        let n = stream.read(&mut chunk).expect("read a body");
        assert!(n > 0, "closed inside a body");
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), want, "bytes after the answer: {head}");
    (status, head, body)
}

#[test]
fn a_rotated_token_applies_to_connections_already_open_and_head_needs_it_too() {
    let setup = start(|_| {});
    let agent = &setup.agent;
    let mut stream = std::net::TcpStream::connect(agent.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let req = |method: &str, token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!("{method} /api/v1/metrics HTTP/1.1\r\nHost: t\r\n{auth}\r\n")
    };
    // The cached document with the token, twice (the second from the cache), then HEAD.
    for _ in 0..2 {
        let (status, head, body) = exchange(&mut stream, &req("GET", Some(TOKEN)), false);
        assert_eq!(status, 200, "{head}");
        assert!(
            serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
            "{head}"
        );
        // Date: today's, within a few seconds of now.
        let date = head
            .lines()
            .find_map(|l| l.strip_prefix("Date: "))
            .expect("a Date field");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let fields: Vec<&str> = date.split(' ').collect();
        assert_eq!(fields.len(), 6, "{date}");
        assert_eq!(fields[5], "GMT", "{date}");
        let hms: Vec<u64> = fields[4]
            .split(':')
            .map(|p| p.parse().expect("h:m:s"))
            .collect();
        let of_day = hms[0] * 3600 + hms[1] * 60 + hms[2];
        let behind = (now % 86_400 + 86_400 - of_day) % 86_400;
        assert!(behind <= 3, "Date {date} is {behind} s from now");
    }
    let (status, head, body) = exchange(&mut stream, &req("HEAD", None), true);
    assert_eq!(status, 401, "HEAD without a token: {head}");
    assert!(body.is_empty());
    let (status, head, _) = exchange(&mut stream, &req("HEAD", Some(TOKEN)), true);
    assert_eq!(status, 200, "{head}");

    let mut config = setup.config.clone();
    config.agent_api.auth_token = NEW_TOKEN.to_string();
    setup.rewrite(&config);
    setup.reload();
    // The same connection: the old token is refused at once, the new one served.
    let (status, head, _) = exchange(&mut stream, &req("GET", Some(TOKEN)), false);
    assert_eq!(status, 401, "the old token on an open connection: {head}");
    let (status, head, _) = exchange(&mut stream, &req("GET", Some(NEW_TOKEN)), false);
    assert_eq!(status, 200, "{head}");
    let (status, head, _) = exchange(&mut stream, &req("GET", None), false);
    assert_eq!(status, 401, "{head}");
}
