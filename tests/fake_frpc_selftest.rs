//! Self-test of the fake frpc (tests/fake_frpc/fake_frpc.rs): it behaves as its header says,
//! which is how official frpc 0.61 behaves where the agent can see it: strict config parsing
//! with frpc's messages, the admin API with Basic auth, reloads that keep unchanged proxies
//! running, frpc's log lines, and the fault knobs the agent's tests rely on.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::fake_frpc::{basic_auth, binary, Journal};
use common::{free_port, try_request, write_private, HttpResponse};
use serde_json::Value;

const ADMIN_USER: &str = "agent";
const ADMIN_PASSWORD: &str = "pw-0123456789";

/// The config the agent writes (issue 8), with the given admin port and proxy tables.
fn config(admin_port: u16, extra_common: &str, proxies: &str) -> String {
    format!(
        r#"serverAddr = "frps.example.net"
serverPort = 7000
user = "node-7"
loginFailExit = false
auth.method = "token"
auth.token = "frps-token"
transport.tls.enable = true
log.to = "console"
log.level = "info"
log.disablePrintColor = true
webServer.addr = "127.0.0.1"
webServer.port = {admin_port}
webServer.user = "{ADMIN_USER}"
webServer.password = "{ADMIN_PASSWORD}"
{extra_common}
{proxies}"#
    )
}

fn stcp_api(local_port: u16) -> String {
    format!(
        r#"
[[proxies]]
name = "agent-api"
type = "stcp"
localIP = "127.0.0.1"
localPort = {local_port}
secretKey = "stcp-secret"
allowUsers = ["platform"]
"#
    )
}

fn tcp_proxy(name: &str, local_port: u16, remote_port: u16) -> String {
    format!(
        r#"
[[proxies]]
name = "{name}"
type = "tcp"
localIP = "127.0.0.1"
localPort = {local_port}
remotePort = {remote_port}
"#
    )
}

/// A running fake frpc with its own temp dir, config file, journal and captured stdout.
struct Fake {
    dir: tempfile::TempDir,
    child: Child,
    admin: SocketAddr,
    journal: Journal,
}

impl Fake {
    fn start(admin_port: u16, text: &str, env: &[(&str, &str)]) -> Fake {
        let dir = tempfile::tempdir().expect("tempdir");
        write_private(&dir.path().join("frpc.toml"), text);
        let journal = Journal::in_dir(dir.path());
        let child = spawn(dir.path(), &journal, env);
        Fake {
            admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            dir,
            child,
            journal,
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("frpc.toml")
    }

    fn rewrite(&self, text: &str) {
        write_private(&self.config_path(), text);
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, Some((ADMIN_USER, ADMIN_PASSWORD)))
    }

    fn request(&self, method: &str, path: &str, auth: Option<(&str, &str)>) -> HttpResponse {
        let header = auth.map(|(u, p)| basic_auth(u, p));
        let headers: Vec<(&str, &str)> = header
            .as_deref()
            .map(|h| vec![("Authorization", h)])
            .unwrap_or_default();
        try_request(self.admin, method, path, &headers, b"")
            .unwrap_or_else(|e| panic!("{method} {path} on the fake's admin API: {e}"))
    }

    /// Waits until `/api/status` shows every proxy in `names` (frpc names) with a status.
    fn wait_running(&self, names: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(resp) = try_request(
                self.admin,
                "GET",
                "/api/status",
                &[("Authorization", &basic_auth(ADMIN_USER, ADMIN_PASSWORD))],
                b"",
            ) {
                let status = resp.json();
                if names.iter().all(|n| proxy(&status, n).is_some()) {
                    return status;
                }
            }
            assert!(
                Instant::now() < deadline,
                "proxies {names:?} never showed up\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "fake frpc still running after {timeout:?}\n{}",
                self.stdout()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, journal: &Journal, env: &[(&str, &str)]) -> Child {
    let stdout = std::fs::File::create(dir.join("stdout")).expect("stdout file");
    let mut cmd = Command::new(binary());
    cmd.arg("-c")
        .arg(dir.join("frpc.toml"))
        .env("FAKE_FRPC_JOURNAL", journal.path())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FAKE_FRPC_") && key != "FAKE_FRPC_JOURNAL" {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied())
        .spawn()
        .expect("spawn fake frpc")
}

/// Runs the fake on `text` to completion (for configs it must refuse).
fn run_once(text: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    write_private(&dir.path().join("frpc.toml"), text);
    let mut cmd = Command::new(binary());
    cmd.arg("-c").arg(dir.path().join("frpc.toml"));
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fake frpc did not exit on {text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn proxy<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status
        .as_object()?
        .values()
        .flat_map(|list| list.as_array().into_iter().flatten())
        .find(|p| p["name"] == name)
}

fn refused(text: &str) -> String {
    let out = run_once(text, &[]);
    assert_eq!(out.status.code(), Some(1), "exit status for:\n{text}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn config_errors_exit_1_with_frpc_messages() {
    let port = free_port();
    let good = config(port, "", &stcp_api(9000));

    let out = refused(&format!("bogusKey = 1\n{good}"));
    assert!(out.contains(r#"json: unknown field "bogusKey""#), "{out}");

    let out = refused(&good.replace("localPort = 9000", "localPort = 9000\nlocalAddr = \"x\""));
    assert!(
        out.contains(r#"unmarshal ProxyConfig error: json: unknown field "localAddr""#),
        "{out}"
    );

    let out = refused(&good.replace("log.level = \"info\"", "log.bogus = true"));
    assert!(out.contains(r#"json: unknown field "bogus""#), "{out}");

    let out = refused("[common]\nserver_addr = 1.2.3.4\nserver_port = 7000\n");
    assert!(out.contains("ini format is deprecated"), "{out}");

    let out = refused(&good.replace("stcp-secret", "{{ .Envs.HOME }}"));
    assert!(out.starts_with("template: frp:"), "{out}");

    let out = refused(&good.replace("serverPort = 7000", "serverPort = \"7000\""));
    assert!(
        out.contains("json: cannot unmarshal string into Go struct field")
            && out.contains("serverPort of type int"),
        "{out}"
    );

    let out = refused(&good.replace("serverPort = 7000", "serverPort = "));
    assert!(out.starts_with("toml: line 2, column"), "{out}");

    let out = refused(&good.replace("log.level = \"info\"", "log.level = \"loud\""));
    assert!(out.contains("invalid log level"), "{out}");

    let out = refused(&config(
        port,
        "",
        &format!("{}{}", tcp_proxy("dup", 1, 0), tcp_proxy("dup", 2, 0)),
    ));
    assert!(
        out.contains("proxy name [node-7.dup] is duplicated"),
        "{out}"
    );

    let out = refused(&good.replace("type = \"stcp\"", "type = \"ftp\""));
    assert!(out.contains("unknown proxy type: ftp"), "{out}");
}

#[test]
fn version_and_verify_answer_like_frpc() {
    let out = Command::new(binary()).arg("-v").output().expect("run");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0.61.1");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("frpc.toml");
    write_private(&path, &config(free_port(), "", &stcp_api(9000)));
    let out = Command::new(binary())
        .args(["verify", "-c"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("syntax is ok"));

    let out = Command::new(binary()).arg("--bogus").output().expect("run");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn admin_api_needs_basic_auth_and_answers_in_frpcs_shape() {
    let port = free_port();
    let local = TcpListener::bind("127.0.0.1:0").expect("bind");
    let local_port = local.local_addr().expect("addr").port();
    let text = config(
        port,
        "",
        &format!(
            "{}{}",
            stcp_api(9000),
            tcp_proxy("claim1-80-tcp", local_port, 0)
        ),
    );
    let fake = Fake::start(port, &text, &[]);
    let status = fake.wait_running(&["node-7.agent-api", "node-7.claim1-80-tcp"]);

    // Grouped by proxy type, names carry the user prefix, frpc's field names.
    let api = &status["stcp"][0];
    assert_eq!(api["name"], "node-7.agent-api");
    assert_eq!(api["type"], "stcp");
    assert_eq!(api["status"], "running");
    assert_eq!(api["err"], "");
    assert_eq!(api["local_addr"], "127.0.0.1:9000");
    assert_eq!(api["plugin"], "");
    assert_eq!(api["remote_addr"], "", "stcp has no public address");
    let tcp = &status["tcp"][0];
    let remote = tcp["remote_addr"].as_str().expect("remote_addr");
    assert!(remote.starts_with("frps.example.net:"), "{remote}");
    assert_eq!(tcp["local_addr"], format!("127.0.0.1:{local_port}"));

    // Without or with wrong credentials: 401 after frpc's 200 ms delay, with its challenge.
    for auth in [
        None,
        Some((ADMIN_USER, "wrong")),
        Some(("admin", ADMIN_PASSWORD)),
    ] {
        let started = Instant::now();
        let resp = fake.request("GET", "/api/status", auth);
        assert_eq!(resp.status, 401, "{auth:?}");
        assert!(started.elapsed() >= Duration::from_millis(190));
        assert_eq!(
            resp.header("WWW-Authenticate"),
            Some("Basic realm=\"Restricted\"")
        );
        assert_eq!(resp.text(), "Unauthorized\n");
    }
    assert_eq!(fake.request("GET", "/api/reload", None).status, 401);
    assert_eq!(fake.request("POST", "/api/stop", None).status, 401);
    // /healthz is open, as in frpc; wrong method 405; unknown path 404.
    assert_eq!(fake.request("GET", "/healthz", None).status, 200);
    let auth = Some((ADMIN_USER, ADMIN_PASSWORD));
    assert_eq!(fake.request("POST", "/api/reload", auth).status, 405);
    assert_eq!(fake.request("GET", "/api/stop", auth).status, 405);
    assert_eq!(fake.request("GET", "/api/nothing", auth).status, 404);
    assert_eq!(fake.get("/api/config").text(), text);

    // The journal saw each request and whether it was authorized.
    let api = fake.journal.of("api");
    assert!(api
        .iter()
        .any(|e| e["path"] == "/api/status" && e["code"] == 401 && e["authorized"] == false));

    // frpc's log lines, on stdout, uncoloured as configured.
    let out = fake.stdout();
    let login = out
        .lines()
        .find(|l| l.contains("login to server success"))
        .expect("login line");
    let bytes = login.as_bytes();
    assert!(
        bytes.len() > 24 && bytes[4] == b'-' && bytes[10] == b' ' && bytes[19] == b'.',
        "timestamp in {login}"
    );
    assert!(
        login[23..].starts_with(" [I] [client/service.go:287] ["),
        "{login}"
    );
    assert!(
        out.contains("[node-7.agent-api] start proxy success"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "colour despite disablePrintColor");
    assert!(
        !out.contains("frps-token")
            && !out.contains(ADMIN_PASSWORD)
            && !out.contains("stcp-secret")
    );
}

#[test]
fn tcp_proxies_forward_from_their_remote_port() {
    let port = free_port();
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let local_port = echo.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 64];
            if let Ok(n) = conn.read(&mut buf) {
                let _ = conn.write_all(&buf[..n]);
            }
        }
    });
    let remote_port = free_port();
    let fake = Fake::start(
        port,
        &config(port, "", &tcp_proxy("c-80-tcp", local_port, remote_port)),
        &[],
    );
    let status = fake.wait_running(&["node-7.c-80-tcp"]);
    assert_eq!(
        status["tcp"][0]["remote_addr"],
        format!("frps.example.net:{remote_port}")
    );
    let mut conn = TcpStream::connect(("127.0.0.1", remote_port)).expect("connect remote port");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    conn.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).expect("echo through the proxy");
    assert_eq!(&buf, b"ping");

    // A second fake asking for the same remote port gets frps's error for that proxy.
    let port2 = free_port();
    let other = Fake::start(
        port2,
        &config(port2, "", &tcp_proxy("c-80-tcp", local_port, remote_port)),
        &[],
    );
    let status = other.wait_running(&["node-7.c-80-tcp"]);
    assert_eq!(status["tcp"][0]["status"], "start error");
    assert_eq!(status["tcp"][0]["err"], "port already used");
    assert_eq!(status["tcp"][0]["remote_addr"], "");
}

#[test]
fn reload_keeps_unchanged_proxies_and_applies_the_diff() {
    let port = free_port();
    let (a, b, c) = (free_port(), free_port(), free_port());
    let keep = tcp_proxy("keep", 1001, a);
    let fake = Fake::start(
        port,
        &config(
            port,
            "",
            &format!("{}{keep}{}", stcp_api(9000), tcp_proxy("gone", 1002, b)),
        ),
        &[],
    );
    fake.wait_running(&["node-7.agent-api", "node-7.keep", "node-7.gone"]);
    let pid = fake.child.id();

    // Changed: agent-api's local port. Removed: gone. Added: new. Unchanged: keep.
    fake.rewrite(&config(
        port,
        "",
        &format!("{}{keep}{}", stcp_api(9001), tcp_proxy("new", 1003, c)),
    ));
    let resp = fake.get("/api/reload?strictConfig=true");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let reload = fake
        .journal
        .wait_for("reload", Duration::from_secs(5), |_| true);
    assert_eq!(reload["code"], 200);
    assert_eq!(reload["strict"], true);
    assert_eq!(reload["unchanged"], serde_json::json!(["node-7.keep"]));
    assert_eq!(
        reload["removed"],
        serde_json::json!(["node-7.agent-api", "node-7.gone"])
    );
    assert_eq!(
        reload["added"],
        serde_json::json!(["node-7.agent-api", "node-7.new"])
    );
    assert_eq!(reload["common_changed"], false);
    let status = fake.wait_running(&["node-7.new"]);
    assert!(proxy(&status, "node-7.gone").is_none());
    assert_eq!(
        proxy(&status, "node-7.agent-api").expect("api")["local_addr"],
        "127.0.0.1:9001"
    );
    // Same process; the unchanged proxy's listener was never closed, the removed one's was.
    assert_eq!(fake.journal.of("start").len(), 1);
    assert_eq!(fake.child.id(), pid);
    assert!(
        TcpStream::connect(("127.0.0.1", a)).is_ok(),
        "the unchanged proxy's remote port closed"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while TcpListener::bind(("127.0.0.1", b)).is_err() {
        assert!(
            Instant::now() < deadline,
            "removed proxy still holds its remote port"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let keep_events = fake
        .journal
        .of("proxy")
        .into_iter()
        .filter(|e| e["name"] == "node-7.keep")
        .count();
    assert_eq!(keep_events, 1, "the unchanged proxy was restarted");

    // An unknown key: refused with 400 only in strict mode; without it, ignored (unchanged).
    let with_unknown = config(
        port,
        "",
        &format!(
            "{}{keep}{}",
            stcp_api(9001),
            tcp_proxy("new", 1003, c).replace("remotePort", "futureKey = 1\nremotePort")
        ),
    );
    fake.rewrite(&with_unknown);
    let resp = fake.get("/api/reload?strictConfig=true");
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.text(),
        r#"unmarshal ProxyConfig error: json: unknown field "futureKey""#
    );
    let resp = fake.get("/api/reload");
    assert_eq!(resp.status, 200);
    let last = fake.journal.of("reload").pop().expect("reload");
    assert_eq!(last["strict"], false);
    assert_eq!(last["added"], serde_json::json!([]));
    assert_eq!(last["removed"], serde_json::json!([]));

    // A broken file: 400 and everything keeps running; a common-section change is ignored.
    fake.rewrite("serverAddr = ");
    assert_eq!(fake.get("/api/reload?strictConfig=true").status, 400);
    fake.wait_running(&["node-7.agent-api", "node-7.keep", "node-7.new"]);
    fake.rewrite(
        &with_unknown
            .replace("frps-token", "rotated")
            .replace("futureKey = 1\n", ""),
    );
    assert_eq!(fake.get("/api/reload?strictConfig=true").status, 200);
    let last = fake.journal.of("reload").pop().expect("reload");
    assert_eq!(last["common_changed"], true);
    assert!(fake.stdout().contains("success reload conf"));
}

#[test]
fn api_stop_exits_0_and_sigterm_kills_it_like_frpc() {
    let port = free_port();
    let mut fake = Fake::start(port, &config(port, "", &stcp_api(9000)), &[]);
    fake.wait_running(&["node-7.agent-api"]);
    assert_eq!(
        fake.request("POST", "/api/stop", Some((ADMIN_USER, ADMIN_PASSWORD)))
            .status,
        200
    );
    let status = fake.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0));
    assert_eq!(fake.journal.of("exit")[0]["reason"], "api stop");

    let port = free_port();
    let mut fake = Fake::start(port, &config(port, "", &stcp_api(9000)), &[]);
    fake.wait_running(&["node-7.agent-api"]);
    fake.signal(libc::SIGTERM);
    let status = fake.wait_exit(Duration::from_secs(5));
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_eq!(fake.journal.of("signal")[0]["signal"], "SIGTERM");

    // FAKE_FRPC_IGNORE_SIGTERM: only SIGKILL stops it.
    let port = free_port();
    let mut fake = Fake::start(
        port,
        &config(port, "", &stcp_api(9000)),
        &[("FAKE_FRPC_IGNORE_SIGTERM", "1")],
    );
    fake.wait_running(&["node-7.agent-api"]);
    fake.signal(libc::SIGTERM);
    fake.journal
        .wait_for("signal", Duration::from_secs(5), |e| {
            e["action"] == "ignored"
        });
    std::thread::sleep(Duration::from_millis(300));
    assert!(fake.child.try_wait().expect("try_wait").is_none());
    fake.signal(libc::SIGKILL);
    assert_eq!(
        fake.wait_exit(Duration::from_secs(5)).signal(),
        Some(libc::SIGKILL)
    );
}

#[test]
fn journal_records_start_with_config_mode_and_argv() {
    let port = free_port();
    let fake = Fake::start(port, &config(port, "", &stcp_api(9000)), &[]);
    fake.wait_running(&["node-7.agent-api"]);
    let start = &fake.journal.of("start")[0];
    assert_eq!(start["mode"], "0600");
    assert_eq!(
        start["config"],
        fake.config_path().to_string_lossy().as_ref()
    );
    assert_eq!(start["pid"], fake.child.id());
    assert_eq!(start["ppid"], std::process::id());
    assert_eq!(start["argv"][1], "-c");
    let login = &fake.journal.of("login")[0];
    assert_eq!(login["ok"], true);
}

#[test]
fn login_failure_knobs() {
    // loginFailExit = true (frpc's default): one try, frpc's message, exit 1.
    let port = free_port();
    let text = config(port, "", &stcp_api(9000)).replace("loginFailExit = false\n", "");
    let out = run_once(&text, &[("FAKE_FRPC_FAIL_LOGIN", "1")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[W] [client/service.go:298] connect to server error: token in login doesn't match token from configuration"), "{stdout}");
    assert!(
        stdout.contains("With loginFailExit enabled, no additional retries"),
        "{stdout}"
    );

    // loginFailExit = false: it keeps retrying; status is {} while not logged in.
    let port = free_port();
    let fake = Fake::start(
        port,
        &config(port, "", &stcp_api(9000)),
        &[("FAKE_FRPC_FAIL_LOGIN", "dial tcp: connection refused")],
    );
    fake.journal
        .wait_for("login", Duration::from_secs(5), |e| e["attempt"] == 2);
    assert_eq!(fake.get("/api/status").text(), "{}");
    assert!(fake.journal.of("login").iter().all(|e| e["ok"] == false));
    assert!(fake
        .stdout()
        .contains("connect to server error: dial tcp: connection refused"));

    // FAKE_FRPC_FAIL_LOGIN_COUNT: fails the first N, then logs in and starts the proxies.
    let port = free_port();
    let fake = Fake::start(
        port,
        &config(port, "", &stcp_api(9000)),
        &[("FAKE_FRPC_FAIL_LOGIN_COUNT", "1")],
    );
    fake.wait_running(&["node-7.agent-api"]);
    let logins = fake.journal.of("login");
    assert_eq!(logins.len(), 2);
    assert_eq!(logins[0]["ok"], false);
    assert_eq!(logins[1]["ok"], true);

    // FAKE_FRPC_SERVER_TOKEN: the login checks auth.token like frps.
    let port = free_port();
    let text = config(port, "", &stcp_api(9000));
    let out = run_once(
        &text.replace("loginFailExit = false\n", "loginFailExit = true\n"),
        &[("FAKE_FRPC_SERVER_TOKEN", "other")],
    );
    assert_eq!(out.status.code(), Some(1));
    let fake = Fake::start(port, &text, &[("FAKE_FRPC_SERVER_TOKEN", "frps-token")]);
    fake.wait_running(&["node-7.agent-api"]);
}

#[test]
fn fault_knobs_proxy_reload_admin_crash() {
    // A failing proxy: frps's error in its status, the others run.
    let port = free_port();
    let fake = Fake::start(
        port,
        &config(
            port,
            "",
            &format!("{}{}", stcp_api(9000), tcp_proxy("c-22-tcp", 22, 0)),
        ),
        &[
            ("FAKE_FRPC_FAIL_PROXY", "c-22-tcp"),
            ("FAKE_FRPC_FAIL_PROXY_ERROR", "port not allowed"),
        ],
    );
    let status = fake.wait_running(&["node-7.agent-api", "node-7.c-22-tcp"]);
    let failed = proxy(&status, "node-7.c-22-tcp").expect("proxy");
    assert_eq!(failed["status"], "start error");
    assert_eq!(failed["err"], "port not allowed");
    assert_eq!(
        proxy(&status, "node-7.agent-api").expect("api")["status"],
        "running"
    );
    assert!(fake.stdout().contains("[W] [client/control.go:166] ["));

    // Reloads rejected: 500, nothing changes.
    let port = free_port();
    let fake = Fake::start(
        port,
        &config(port, "", &stcp_api(9000)),
        &[("FAKE_FRPC_REJECT_RELOAD", "1")],
    );
    fake.wait_running(&["node-7.agent-api"]);
    fake.rewrite(&config(port, "", &stcp_api(9001)));
    assert_eq!(fake.get("/api/reload?strictConfig=true").status, 500);
    let status = fake.get("/api/status").json();
    assert_eq!(status["stcp"][0]["local_addr"], "127.0.0.1:9000");

    // No admin API at all.
    let port = free_port();
    let fake = Fake::start(
        port,
        &config(port, "", &stcp_api(9000)),
        &[("FAKE_FRPC_NO_ADMIN", "1")],
    );
    fake.journal
        .wait_for("login", Duration::from_secs(5), |e| e["ok"] == true);
    assert!(TcpStream::connect(fake.admin).is_err());
    assert!(fake.journal.of("admin_listen").is_empty());

    // Crash after a while: exit 2 with a Go-like panic; only the first K starts with CRASH_STARTS.
    let port = free_port();
    let mut fake = Fake::start(
        port,
        &config(port, "", &stcp_api(9000)),
        &[
            ("FAKE_FRPC_CRASH_AFTER_SECS", "0.3"),
            ("FAKE_FRPC_CRASH_STARTS", "1"),
        ],
    );
    let started = Instant::now();
    assert_eq!(fake.wait_exit(Duration::from_secs(5)).code(), Some(2));
    assert!(started.elapsed() >= Duration::from_millis(250));
    let mut stderr = String::new();
    let _ = fake
        .child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    assert!(stderr.starts_with("panic: "), "{stderr}");
    assert_eq!(fake.journal.of("crash").len(), 1);
    // Second start (same journal): no crash.
    fake.child = spawn(
        fake.dir.path(),
        &fake.journal,
        &[
            ("FAKE_FRPC_CRASH_AFTER_SECS", "0.3"),
            ("FAKE_FRPC_CRASH_STARTS", "1"),
        ],
    );
    fake.wait_running(&["node-7.agent-api"]);
    std::thread::sleep(Duration::from_millis(600));
    assert!(fake.child.try_wait().expect("try_wait").is_none());
    assert_eq!(fake.journal.of("start").len(), 2);

    // Admin port taken: frpc's listen error, exit 1.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = run_once(&config(port, "", &stcp_api(9000)), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("bind: address already in use"));
}

#[test]
fn leak_knob_prints_the_secrets_for_scrubbing_tests() {
    let port = free_port();
    let fake = Fake::start(
        port,
        &config(port, "", &stcp_api(9000)),
        &[("FAKE_FRPC_LEAK_SECRETS", "1")],
    );
    fake.wait_running(&["node-7.agent-api"]);
    let out = fake.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("debug dump"))
        .expect("leak line");
    assert!(line.contains("[W]"), "{line}");
    for secret in ["frps-token", ADMIN_PASSWORD, "stcp-secret"] {
        assert!(line.contains(secret), "{secret} not in {line}");
    }
}

#[test]
fn log_to_file_and_colours() {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("frpc.log");
    let text = config(port, "", &stcp_api(9000)).replace(
        "log.to = \"console\"",
        &format!("log.to = \"{}\"", log.display()),
    );
    let fake = Fake::start(port, &text, &[]);
    fake.wait_running(&["node-7.agent-api"]);
    assert!(std::fs::read_to_string(&log)
        .expect("log file")
        .contains("start proxy success"));
    assert!(!fake.stdout().contains("start proxy success"));

    let port = free_port();
    let text = config(port, "", &stcp_api(9000)).replace("log.disablePrintColor = true\n", "");
    let fake = Fake::start(port, &text, &[]);
    fake.wait_running(&["node-7.agent-api"]);
    assert!(fake.stdout().contains("\x1b[1;32m"), "{:?}", fake.stdout());

    // log.level = warn hides the info lines but keeps warnings.
    let port = free_port();
    let text = config(port, "", &stcp_api(9000)).replace("level = \"info\"", "level = \"warn\"");
    let fake = Fake::start(port, &text, &[("FAKE_FRPC_FAIL_PROXY", "agent-api")]);
    fake.wait_running(&["node-7.agent-api"]);
    let out = fake.stdout();
    assert!(!out.contains("[I]"), "{out}");
    assert!(out.contains("[W]"), "{out}");
}
