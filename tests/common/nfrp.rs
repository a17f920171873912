//! A real frp tunnel for the tests, from an implementation nobody here wrote: `nfrp-server` (as
//! frps) and `nfrp-client` (as frpc, and as the platform's stcp visitor), from the Cargo
//! registry (`cargo install --locked nfrp-server nfrp-client`; `.ci/run` does it).
//!
//! What these tests rely on (nfrp 0.7.3, checked by tests/frp_tunnel.rs):
//! * Both read official frp TOML (camelCase keys) besides their own snake_case schema:
//!   frps `bindAddr`, `bindPort`, `auth.token`, `allowPorts = [{start, end}]`,
//!   `transport.tls.force`; frpc `serverAddr`, `serverPort`, `user`, `auth.token`,
//!   `transport.tls.enable`, `webServer.*`, `[[proxies]]` with `localIP`/`localPort`/
//!   `remotePort` or `secretKey`/`allowUsers`, and `[[visitors]]` (stcp: `serverUser`,
//!   `serverName`, `secretKey`, `bindAddr`, `bindPort`).
//! * `transport.tls.force = true` on the server refuses a client that does not speak TLS, so a
//!   working tunnel through such a server proves the agent's leg is encrypted.
//! * nfrp-client's admin API is its own: `/api/status` has another shape, `/api/reload` is 404.
//!   An agent driving it must fall back to restarting it.
//! * Logs go to stdout as `2026-01-01T00:00:00.000000Z  INFO message` (tracing's format), not
//!   frpc's.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, in_ci, write_private};

/// The frps token every test server is started with.
pub const FRPS_TOKEN: &str = "frps-token-for-tests-0123";

/// Where `name` is installed: on PATH, or in ~/.cargo/bin.
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin"));
    std::env::split_paths(&path)
        .chain(home)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `(nfrp-server, nfrp-client)` when both are installed. Otherwise prints why `test` is skipped,
/// or panics under `CI=true`.
pub fn binaries(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (find("nfrp-server"), find("nfrp-client")) {
        (Some(server), Some(client)) => Some((server, client)),
        _ => {
            let reason = "nfrp-server/nfrp-client are not installed \
                          (cargo install --locked nfrp-server nfrp-client)";
            if in_ci() {
                panic!("{test}: {reason}");
            }
            eprintln!("SKIPPED {test}: {reason}");
            None
        }
    }
}

/// A child process with its output in a file, killed and reaped on drop.
pub struct Process {
    pub child: Child,
    pub log_path: PathBuf,
}

impl Process {
    fn spawn(program: &Path, config: &Path, log_path: PathBuf) -> Process {
        let log = std::fs::File::create(&log_path).expect("log file");
        let err = log.try_clone().expect("log file");
        let child = Command::new(program)
            .arg("-c")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
        Process { child, log_path }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts TCP connections on `port` (loopback).
pub fn wait_listening(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// An nfrp-server on a free loopback port: token auth, TLS forced, remote ports 1024-65535.
pub struct Frps {
    pub port: u16,
    pub process: Process,
}

impl Frps {
    pub fn start(server: &Path, dir: &Path) -> Frps {
        let port = free_port();
        let config = dir.join("frps.toml");
        write_private(
            &config,
            &format!(
                r#"bindAddr = "127.0.0.1"
bindPort = {port}
auth.method = "token"
auth.token = "{FRPS_TOKEN}"
transport.tls.force = true
allowPorts = [{{ start = 1024, end = 65535 }}]
"#
            ),
        );
        let process = Process::spawn(server, &config, dir.join("frps.log"));
        assert!(
            wait_listening(port, Duration::from_secs(10)),
            "nfrp-server did not listen on {port}:\n{}",
            process.log()
        );
        Frps { port, process }
    }
}

/// The platform's side of an stcp tunnel: an nfrp-client visitor listening on a loopback port
/// that leads to proxy `server_name` of frp user `server_user`.
pub struct Visitor {
    pub port: u16,
    pub process: Process,
}

impl Visitor {
    pub fn start(
        client: &Path,
        dir: &Path,
        frps: &Frps,
        user: &str,
        server_user: &str,
        server_name: &str,
        secret_key: &str,
    ) -> Visitor {
        let port = free_port();
        let config = dir.join(format!("visitor-{port}.toml"));
        write_private(
            &config,
            &format!(
                r#"serverAddr = "127.0.0.1"
serverPort = {}
user = "{user}"
auth.token = "{FRPS_TOKEN}"
transport.tls.enable = true

[[visitors]]
name = "visit-{server_name}"
type = "stcp"
serverUser = "{server_user}"
serverName = "{server_name}"
secretKey = "{secret_key}"
bindAddr = "127.0.0.1"
bindPort = {port}
"#,
                frps.port
            ),
        );
        let process = Process::spawn(client, &config, dir.join(format!("visitor-{port}.log")));
        assert!(
            wait_listening(port, Duration::from_secs(10)),
            "the visitor did not listen on {port}:\n{}",
            process.log()
        );
        Visitor { port, process }
    }
}

/// An nfrp-client as frpc with a config the test writes itself (the harness's own proof).
pub fn frpc(client: &Path, dir: &Path, toml: &str) -> Process {
    let config = dir.join("own-frpc.toml");
    write_private(&config, toml);
    Process::spawn(client, &config, dir.join("own-frpc.log"))
}
