//! Helpers shared by the integration tests: start the real agent binary with a temp config on a
//! free port, talk to it over raw HTTP/1.1, and stop it.
#![allow(dead_code)]

pub mod docker;
pub mod fake_frpc;
pub mod fake_nvml;
pub mod nfrp;
pub mod platform;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use utopia_node_agent::config::Config;

/// The bearer token every test agent is configured with.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// Path of the agent binary cargo built for these tests.
pub fn agent_binary() -> &'static str {
    env!("CARGO_BIN_EXE_utopia-node-agent")
}

/// A port that was free a moment ago (the OS picks it, so parallel tests do not collide).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on loopback")
}

/// True when running in CI, where tests may not skip for lack of a tool.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A config for a test agent: loopback on a free port, the test token, the fake NVML library,
/// fast GPU sampling, identity file inside `dir`.
pub fn test_config(dir: &Path) -> Config {
    let mut config = Config::default();
    config.agent_api.listen_address = format!("127.0.0.1:{}", free_port());
    config.agent_api.auth_token = TOKEN.to_string();
    config.identity_file_path = dir.join("node_id");
    config.gpu.nvml_library_path = fake_nvml::library(fake_nvml::Variant::Standard)
        .to_string_lossy()
        .into_owned();
    config.gpu.sample_interval_ms = 200;
    config.gpu.init_retry_secs = 1;
    config.frp.work_dir = dir.join("frp");
    // Its own managed label: a test agent never sees containers of another agent on this engine.
    static AGENTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = AGENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    config.docker.managed_label = format!("io.utopia.test.agent={}-{n}", std::process::id());
    config
}

/// Writes `config` as YAML, mode 0600, and returns its path.
pub fn write_config(dir: &Path, config: &Config) -> PathBuf {
    let path = dir.join("agent-config.yaml");
    let yaml = serde_yaml::to_string(config).expect("config serializes");
    write_private(&path, &yaml);
    path
}

/// Writes a file readable by its owner only (so the agent does not warn about it).
pub fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The permission bits of a file (`0o600`), for checks on files holding secrets.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A running agent process; killed and reaped on drop.
pub struct Agent {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

/// How to start a test agent.
pub struct AgentOptions {
    pub env: Vec<(String, String)>,
    /// Wait until the GPU sampler has published its first report.
    pub wait_for_gpu: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            env: Vec::new(),
            wait_for_gpu: true,
        }
    }
}

impl Agent {
    /// Starts the agent with `test_config`, changed by `edit`.
    pub fn start(edit: impl FnOnce(&mut Config)) -> Agent {
        Agent::start_with(edit, AgentOptions::default())
    }

    pub fn start_with(edit: impl FnOnce(&mut Config), options: AgentOptions) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        edit(&mut config);
        let config_path = write_config(dir.path(), &config);
        Agent::spawn(dir, config_path, &config, options)
    }

    /// Starts the agent on an existing config file in `dir` (e.g. after a restart).
    pub fn spawn(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        config: &Config,
        options: AgentOptions,
    ) -> Agent {
        let addr: SocketAddr = config
            .agent_api
            .listen_address
            .parse()
            .expect("listen addr");
        let log_path = dir.path().join(format!("agent-{}.log", addr.port()));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut command = Command::new(agent_binary());
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        for (key, _) in std::env::vars() {
            // The host's proxy settings would send the agent's platform requests elsewhere.
            let proxy = key.to_ascii_lowercase().ends_with("_proxy");
            // GLIBC_TUNABLES too: a test agent starts as one started by hand (tests/allocator.rs).
            if key.starts_with("PHOENIX_")
                || key.starts_with("FAKE_NVML_")
                || proxy
                || key == "GLIBC_TUNABLES"
            {
                command.env_remove(key);
            }
        }
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let child = command.spawn().expect("start the agent binary");
        let mut agent = Agent {
            child: Some(child),
            addr,
            dir,
            config_path,
            log_path,
        };
        agent.wait_ready(options.wait_for_gpu);
        agent
    }

    fn wait_ready(&mut self, wait_for_gpu: bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "agent exited during start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = try_request(self.addr, "GET", "/health", &[], b"") {
                if response.status == 200 {
                    let gpu = response.json()["components"]["gpu"].clone();
                    if !wait_for_gpu || gpu != "starting" {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("agent did not become ready in 15 s; log:\n{}", self.log());
    }

    /// Everything the agent wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// A request with the test token.
    pub fn api(&self, method: &str, path: &str, body: &[u8]) -> HttpResponse {
        let auth = format!("Bearer {TOKEN}");
        let mut headers = vec![("Authorization", auth.as_str())];
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        self.request(method, path, &headers, body)
    }

    /// `GET` with the test token.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.api("GET", path, b"")
    }

    /// A request with exactly these headers (plus Host, Content-Length and Connection: close).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        try_request(self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log()))
    }

    /// Sends a signal to the agent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit; returns the status and how long it took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(Duration::from_secs(10));
        (status, start.elapsed())
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("agent still owned");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "agent did not exit within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the agent (SIGTERM, or SIGKILL when `crash`) and starts it again on the same
    /// directory, config file and port.
    pub fn restart(&mut self, crash: bool, options: AgentOptions) {
        if crash {
            self.kill();
        } else if self.child.is_some() {
            let (status, _) = self.terminate();
            assert!(
                status.success(),
                "agent exited with {status}; log:\n{}",
                self.log()
            );
        }
        let text = std::fs::read_to_string(&self.config_path).expect("read the config back");
        let config = Config::parse(&text).expect("config parses");
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        *self = Agent::spawn(dir, self.config_path.clone(), &config, options);
    }

    /// Kills the agent with SIGKILL (a crash), reaps it, and keeps its directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `error.code` of a JSON error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {}", self.text()))
            .to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // A server may answer (413) and close before reading a large body: that is not an error.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw)
}

/// Parses a raw HTTP/1.1 response with a Content-Length body (what the agent sends).
pub fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            bad(&format!(
                "no header end in {:?}",
                String::from_utf8_lossy(raw)
            ))
        })?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty response"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}
