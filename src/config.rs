//! The agent's configuration: the YAML model, its defaults, the `PHOENIX_*` environment overrides,
//! validation, and a view with every secret redacted.
//!
//! Loading never half-succeeds: [`Config::load`] returns a fully validated config or a
//! [`ConfigError`] that names the file, the key and, for YAML syntax errors, the line.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/utopia/agent-config.yaml";

/// The placeholder token of the shipped example config: accepted, but the agent warns about it.
pub const EXAMPLE_AUTH_TOKEN: &str = "change-me-dev-token-0123456789abcdef";

/// Shortest bearer token the API accepts.
pub const MIN_AUTH_TOKEN_LEN: usize = 16;

const REDACTED: &str = "<redacted>";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the node id given by the platform is persisted.
    pub identity_file_path: PathBuf,
    pub log_level: LogLevel,
    pub central_platform: PlatformConfig,
    pub frp: FrpConfig,
    pub agent_api: ApiConfig,
    pub gpu: GpuConfig,
    pub docker: DockerConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn to_filter(self) -> log::LevelFilter {
        match self {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }

    fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "error" => Some(LogLevel::Error),
            "warn" | "warning" => Some(LogLevel::Warn),
            "info" => Some(LogLevel::Info),
            "debug" => Some(LogLevel::Debug),
            "trace" => Some(LogLevel::Trace),
            _ => None,
        }
    }
}

/// The central platform the agent registers with and sends heartbeats to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformConfig {
    /// Base URL of the platform API; empty runs the agent standalone (no registration).
    pub api_url: String,
    /// Sent as `Authorization: Bearer` on registration and heartbeats when not empty.
    pub bootstrap_token: String,
    /// Seconds between heartbeats; 0 disables them.
    pub heartbeat_interval_secs: u64,
    /// Connect and overall timeout of each platform request.
    pub request_timeout_secs: u64,
    /// PEM file of extra CA certificates trusted for the platform (a private CA).
    pub ca_file: String,
    /// Ceiling of the first registration retry; it doubles per failure up to `backoff_max_ms`.
    pub backoff_initial_ms: u64,
    /// Longest wait between registration retries (and the wait after a rejected token).
    pub backoff_max_ms: u64,
}

/// The frpc tunnel the platform is to reach the agent through. This release does not run frpc:
/// the keys are validated, and `admin_port` is kept free of container ports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrpConfig {
    /// frps host; empty disables the tunnel.
    pub server_addr: String,
    pub server_port: u16,
    pub token: String,
    pub frpc_path: PathBuf,
    /// Where the agent writes frpc's config (mode 0600) and keeps its state.
    pub work_dir: PathBuf,
    /// Loopback port of frpc's admin API.
    pub admin_port: u16,
    /// Remote port on frps for the agent API; 0 = the one the platform assigns at registration.
    pub api_remote_port: u16,
}

/// The agent's own REST API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen_address: String,
    pub auth_token: String,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout_secs: u64,
}

/// GPU sampling through NVML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    /// Path of `libnvidia-ml.so.1`; empty = the system's library.
    pub nvml_library_path: String,
    pub sample_interval_ms: u64,
    /// How often NVML init is tried again after it failed (driver loaded late).
    pub init_retry_secs: u64,
}

/// How GPUs are handed to containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuMode {
    /// `--gpus "device=0,1"` (nvidia-container-toolkit's docker integration).
    Gpus,
    /// `--device nvidia.com/gpu=0` per GPU (Container Device Interface).
    Cdi,
    /// `-e NVIDIA_VISIBLE_DEVICES=0,1` (with `--runtime` when `docker.runtime` is set).
    Env,
}

/// Containers through the docker CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    pub binary: PathBuf,
    pub gpu_mode: GpuMode,
    /// Host address container ports are published on.
    pub publish_address: String,
    /// `--runtime` for containers with GPUs; empty = docker's default runtime.
    pub runtime: String,
    /// CDI device kind used in `cdi` mode.
    pub cdi_kind: String,
    /// `key=value` label that marks the containers this agent manages; containers without it
    /// are invisible to the API and never touched.
    pub managed_label: String,
    /// Grace period of `docker stop` (SIGTERM, then SIGKILL) on stop, restart and delete.
    pub stop_timeout_secs: u64,
    /// Deadline of an image pull; the docker child is killed after it.
    pub pull_timeout_secs: u64,
    /// Deadline of every other docker command (besides the stop grace period).
    pub command_timeout_secs: u64,
    /// `--pids-limit` of every container; 0 = no limit.
    pub pids_limit: u64,
    /// `--log-opt max-size` of the json-file log driver (e.g. `50m`).
    pub log_max_size: String,
    /// `--log-opt max-file` of the json-file log driver.
    pub log_max_file: u32,
    /// Run an init process (`--init`) as PID 1 that reaps zombies and forwards signals.
    pub init: bool,
    /// `--security-opt no-new-privileges`.
    pub no_new_privileges: bool,
    /// Period of the full reconcile (`docker ps -a` + `docker container inspect`).
    pub reconcile_interval_secs: u64,
    /// Creates (with their image pulls) run at once, and as many other docker commands (stop,
    /// delete, logs, reconcile) besides: two pools of this many threads.
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            identity_file_path: PathBuf::from("/etc/utopia/node_id"),
            log_level: LogLevel::Info,
            central_platform: PlatformConfig::default(),
            frp: FrpConfig::default(),
            agent_api: ApiConfig::default(),
            gpu: GpuConfig::default(),
            docker: DockerConfig::default(),
        }
    }
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            api_url: String::new(),
            bootstrap_token: String::new(),
            heartbeat_interval_secs: 30,
            request_timeout_secs: 10,
            ca_file: String::new(),
            backoff_initial_ms: 1000,
            backoff_max_ms: 300_000,
        }
    }
}

impl Default for FrpConfig {
    fn default() -> Self {
        FrpConfig {
            server_addr: String::new(),
            server_port: 7000,
            token: String::new(),
            frpc_path: PathBuf::from("/usr/local/bin/frpc"),
            work_dir: PathBuf::from("/var/lib/utopia/frp"),
            admin_port: 7400,
            api_remote_port: 0,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen_address: "127.0.0.1:9200".to_string(),
            auth_token: String::new(),
            max_connections: 1024,
            idle_timeout_secs: 15,
        }
    }
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            nvml_library_path: String::new(),
            sample_interval_ms: 2000,
            init_retry_secs: 30,
        }
    }
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            binary: PathBuf::from("docker"),
            gpu_mode: GpuMode::Gpus,
            publish_address: "127.0.0.1".to_string(),
            runtime: String::new(),
            cdi_kind: "nvidia.com/gpu".to_string(),
            managed_label: "io.utopia.managed=true".to_string(),
            stop_timeout_secs: 10,
            pull_timeout_secs: 1800,
            command_timeout_secs: 30,
            pids_limit: 4096,
            log_max_size: "50m".to_string(),
            log_max_file: 3,
            init: true,
            no_new_privileges: true,
            reconcile_interval_secs: 30,
            workers: 4,
        }
    }
}

/// Why a config could not be loaded. Each variant says which file and, where it can, which key.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML syntax or schema error (unknown key, wrong type); `message` carries the line.
    Parse { path: PathBuf, message: String },
    /// A value that parsed but is not acceptable.
    Invalid { key: &'static str, message: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Parse { path, message } => {
                write!(f, "invalid config file {}: {message}", path.display())
            }
            ConfigError::Invalid { key, message } => write!(f, "invalid `{key}`: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Something worth telling the operator that does not stop the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub String);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Environment variables that override config keys (empty values are ignored).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PHOENIX_API_URL", "central_platform.api_url"),
    (
        "PHOENIX_BOOTSTRAP_TOKEN",
        "central_platform.bootstrap_token",
    ),
    ("PHOENIX_FRP_SERVER", "frp.server_addr"),
    ("PHOENIX_FRP_TOKEN", "frp.token"),
    ("PHOENIX_AUTH_TOKEN", "agent_api.auth_token"),
    ("PHOENIX_LOG_LEVEL", "log_level"),
];

/// Removes the [`ENV_OVERRIDES`] variables from this process's environment, once the config has
/// read them: they carry secrets (the bootstrap, frp and API tokens), and every child the agent
/// runs (the docker CLI) would otherwise inherit them. Call it while the process has a
/// single thread (changing the environment races with other threads reading it).
pub fn remove_env_overrides() {
    for (name, _) in ENV_OVERRIDES {
        std::env::remove_var(name);
    }
}

impl Config {
    /// Reads, parses, applies the process environment's overrides and validates.
    pub fn load(path: &Path) -> Result<(Config, Vec<ConfigWarning>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.apply_env(|name| std::env::var(name).ok())?;
        let mut warnings = config.validate()?;
        warnings.extend(file_permission_warning(path));
        Ok((config, warnings))
    }

    /// Parses YAML text; unknown keys and wrong types are errors. An empty document is all defaults.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// Applies the `PHOENIX_*` overrides read through `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        if let Some(v) = get("PHOENIX_API_URL") {
            self.central_platform.api_url = v;
        }
        if let Some(v) = get("PHOENIX_BOOTSTRAP_TOKEN") {
            self.central_platform.bootstrap_token = v;
        }
        if let Some(v) = get("PHOENIX_FRP_SERVER") {
            self.frp.server_addr = v;
        }
        if let Some(v) = get("PHOENIX_FRP_TOKEN") {
            self.frp.token = v;
        }
        if let Some(v) = get("PHOENIX_AUTH_TOKEN") {
            self.agent_api.auth_token = v;
        }
        if let Some(v) = get("PHOENIX_LOG_LEVEL") {
            self.log_level = LogLevel::parse(&v).ok_or_else(|| {
                invalid(
                    "log_level",
                    format!(
                        "PHOENIX_LOG_LEVEL={v:?} is not one of error, warn, info, debug, trace"
                    ),
                )
            })?;
        }
        Ok(())
    }

    /// Checks every value; returns the warnings an operator should see at start-up.
    pub fn validate(&self) -> Result<Vec<ConfigWarning>, ConfigError> {
        let mut warnings = Vec::new();
        let api = &self.agent_api;

        if api.auth_token.is_empty() {
            return Err(invalid(
                "agent_api.auth_token",
                "is required (or set PHOENIX_AUTH_TOKEN); generate one with `openssl rand -hex 32`",
            ));
        }
        if api.auth_token.chars().count() < MIN_AUTH_TOKEN_LEN {
            return Err(invalid(
                "agent_api.auth_token",
                format!("must be at least {MIN_AUTH_TOKEN_LEN} characters long"),
            ));
        }
        if !api.auth_token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "agent_api.auth_token",
                "may only contain printable ASCII characters without spaces",
            ));
        }
        if api.auth_token == EXAMPLE_AUTH_TOKEN {
            warnings.push(ConfigWarning(
                "agent_api.auth_token is the example token of the shipped config: anyone who has \
                 read the README can use this API; set your own (`openssl rand -hex 32`)"
                    .to_string(),
            ));
        }
        let listen = self.listen_address()?;
        if !listen.ip().is_loopback() {
            warnings.push(ConfigWarning(format!(
                "agent_api.listen_address {listen} is NOT a loopback address: the API (which can \
                 start containers) is reachable from the network, not only through the tunnel; \
                 use 127.0.0.1 unless you know why"
            )));
        }
        if !(1..=10_000).contains(&api.max_connections) {
            return Err(invalid(
                "agent_api.max_connections",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=3600).contains(&api.idle_timeout_secs) {
            return Err(invalid(
                "agent_api.idle_timeout_secs",
                "must be between 1 and 3600",
            ));
        }

        let platform = &self.central_platform;
        if !platform.api_url.is_empty() {
            let url = platform.api_url.as_str();
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
                .ok_or_else(|| {
                    invalid(
                        "central_platform.api_url",
                        format!("{url:?} must start with http:// or https://"),
                    )
                })?;
            if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
                return Err(invalid(
                    "central_platform.api_url",
                    format!("{url:?} has no host"),
                ));
            }
            let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
            if authority.contains('@') {
                // Credentials in the URL would end up in every log line naming it.
                return Err(invalid(
                    "central_platform.api_url",
                    "must not contain credentials (user:password@); use \
                     central_platform.bootstrap_token",
                ));
            }
            if rest.contains(['?', '#']) {
                // The API paths are appended to it: they would land in the query or fragment.
                return Err(invalid(
                    "central_platform.api_url",
                    format!(
                        "{url:?} must not have a query (?) or fragment (#): it is the base the \
                         API paths (/api/v1/...) are appended to"
                    ),
                ));
            }
            if url.starts_with("http://") && !is_loopback_host(authority) {
                warnings.push(ConfigWarning(format!(
                    "central_platform.api_url {url} is plain http:// to a host that is not this \
                     machine: the bootstrap token and the node's data cross the network in \
                     clear; use https://"
                )));
            }
        }
        if !platform
            .bootstrap_token
            .bytes()
            .all(|b| b.is_ascii_graphic())
        {
            // It is sent as `Authorization: Bearer <token>`: a line break (pasted with the
            // token), a space or a non-ASCII character makes every request fail.
            return Err(invalid(
                "central_platform.bootstrap_token",
                "may only contain printable ASCII characters, without spaces or line breaks \
                 (look for a trailing newline pasted with it)",
            ));
        }
        if platform.heartbeat_interval_secs > 86_400 {
            return Err(invalid(
                "central_platform.heartbeat_interval_secs",
                "must be between 0 (no heartbeats) and 86400",
            ));
        }
        if !(1..=3_600_000).contains(&platform.backoff_initial_ms) {
            return Err(invalid(
                "central_platform.backoff_initial_ms",
                "must be between 1 and 3600000",
            ));
        }
        if !(platform.backoff_initial_ms..=86_400_000).contains(&platform.backoff_max_ms) {
            return Err(invalid(
                "central_platform.backoff_max_ms",
                "must be at least central_platform.backoff_initial_ms and at most 86400000",
            ));
        }
        if !(1..=300).contains(&platform.request_timeout_secs) {
            return Err(invalid(
                "central_platform.request_timeout_secs",
                "must be between 1 and 300",
            ));
        }
        if self.identity_file_path.as_os_str().is_empty() {
            return Err(invalid("identity_file_path", "must not be empty"));
        }

        if !self.frp.server_addr.is_empty() && self.frp.server_port == 0 {
            return Err(invalid("frp.server_port", "must be between 1 and 65535"));
        }
        if self.frp.admin_port == 0 {
            return Err(invalid("frp.admin_port", "must be between 1 and 65535"));
        }
        if !self.frp.server_addr.is_empty() {
            warnings.push(ConfigWarning(format!(
                "frp.server_addr is set ({}), but this release does not run frpc: no tunnel is \
                 started, and the API is reachable only at agent_api.listen_address",
                self.frp.server_addr
            )));
        }

        if !(100..=3_600_000).contains(&self.gpu.sample_interval_ms) {
            return Err(invalid(
                "gpu.sample_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        if !(1..=86_400).contains(&self.gpu.init_retry_secs) {
            return Err(invalid(
                "gpu.init_retry_secs",
                "must be between 1 and 86400",
            ));
        }

        if self.docker.binary.as_os_str().is_empty() {
            return Err(invalid("docker.binary", "must not be empty"));
        }
        self.docker.publish_address.parse::<IpAddr>().map_err(|_| {
            invalid(
                "docker.publish_address",
                format!("{:?} is not an IP address", self.docker.publish_address),
            )
        })?;
        if self.docker.gpu_mode == GpuMode::Cdi && !valid_cdi_kind(&self.docker.cdi_kind) {
            return Err(invalid(
                "docker.cdi_kind",
                format!(
                    "{:?} is not a CDI kind like nvidia.com/gpu",
                    self.docker.cdi_kind
                ),
            ));
        }
        if !self
            .docker
            .runtime
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            || self.docker.runtime.starts_with('-')
        {
            return Err(invalid(
                "docker.runtime",
                format!("{:?} is not a runtime name", self.docker.runtime),
            ));
        }
        self.validate_docker_limits()?;
        Ok(warnings)
    }

    fn validate_docker_limits(&self) -> Result<(), ConfigError> {
        let docker = &self.docker;
        match docker.managed_label.split_once('=') {
            Some((key, value)) if valid_label_key(key) && valid_label_value(value) => {}
            _ => {
                return Err(invalid(
                    "docker.managed_label",
                    format!(
                        "{:?} is not a label key=value like io.utopia.managed=true",
                        docker.managed_label
                    ),
                ))
            }
        }
        let ranges: [(&'static str, u64, u64, u64); 5] = [
            (
                "docker.stop_timeout_secs",
                docker.stop_timeout_secs,
                0,
                3600,
            ),
            (
                "docker.pull_timeout_secs",
                docker.pull_timeout_secs,
                1,
                86_400,
            ),
            (
                "docker.command_timeout_secs",
                docker.command_timeout_secs,
                1,
                3600,
            ),
            (
                "docker.reconcile_interval_secs",
                docker.reconcile_interval_secs,
                1,
                86_400,
            ),
            ("docker.workers", docker.workers as u64, 1, 64),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("must be between {min} and {max}")));
            }
        }
        if !valid_size(&docker.log_max_size) {
            return Err(invalid(
                "docker.log_max_size",
                format!(
                    "{:?} is not a size like 50m (digits, then k, m or g)",
                    docker.log_max_size
                ),
            ));
        }
        if !(1..=100).contains(&docker.log_max_file) {
            return Err(invalid("docker.log_max_file", "must be between 1 and 100"));
        }
        Ok(())
    }

    /// The API's listen address, parsed.
    pub fn listen_address(&self) -> Result<SocketAddr, ConfigError> {
        self.agent_api.listen_address.parse().map_err(|_| {
            invalid(
                "agent_api.listen_address",
                format!(
                    "{:?} is not an IP:port address (e.g. 127.0.0.1:9200)",
                    self.agent_api.listen_address
                ),
            )
        })
    }

    /// The config with every secret replaced, safe to print or log.
    pub fn redacted(&self) -> Config {
        fn hide(secret: &mut String) {
            if !secret.is_empty() {
                *secret = REDACTED.to_string();
            }
        }
        let mut copy = self.clone();
        hide(&mut copy.agent_api.auth_token);
        hide(&mut copy.central_platform.bootstrap_token);
        hide(&mut copy.frp.token);
        copy
    }

    /// The redacted config as YAML.
    pub fn redacted_yaml(&self) -> String {
        serde_yaml::to_string(&self.redacted())
            .unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Whether the `host[:port]` of a URL names this machine.
fn is_loopback_host(authority: &str) -> bool {
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn valid_cdi_kind(kind: &str) -> bool {
    match kind.split_once('/') {
        Some((vendor, class)) => {
            !vendor.is_empty()
                && !class.is_empty()
                && vendor
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && class
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && !vendor.starts_with('-')
        }
        None => false,
    }
}

/// A docker label key: reverse-DNS style, no `=`, nothing a shell or docker flag could misread.
fn valid_label_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key.as_bytes()[0].is_ascii_alphanumeric()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

fn valid_label_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// `50m`, `1g`, `512k`, `100` (bytes): what docker's json-file driver accepts for `max-size`.
fn valid_size(size: &str) -> bool {
    let digits = size.trim_end_matches(['k', 'm', 'g']);
    !digits.is_empty()
        && size.len() - digits.len() <= 1
        && digits.len() <= 12
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
}

#[cfg(unix)]
fn file_permission_warning(path: &Path) -> Option<ConfigWarning> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        ConfigWarning(format!(
            "config file {} is readable by group or others (mode {:o}) but holds secrets; \
             run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        ))
    })
}

#[cfg(not(unix))]
fn file_permission_warning(_path: &Path) -> Option<ConfigWarning> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn valid() -> Config {
        let mut c = Config::default();
        c.agent_api.auth_token = TOKEN.to_string();
        c
    }

    #[test]
    fn defaults_need_only_a_token() {
        assert!(matches!(
            Config::default().validate(),
            Err(ConfigError::Invalid {
                key: "agent_api.auth_token",
                ..
            })
        ));
        assert_eq!(valid().validate().unwrap(), vec![]);
    }

    #[test]
    fn unknown_key_is_an_error_with_its_line() {
        let err = Config::parse("agent_api:\n  auth_token: x\n  listen_adress: 1\n").unwrap_err();
        assert!(err.contains("listen_adress"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = Config::parse("log_levl: info\n").unwrap_err();
        assert!(err.contains("log_levl"), "{err}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let err = Config::parse("agent_api:\n  max_connections: many\n").unwrap_err();
        assert!(err.contains("max_connections"), "{err}");
        let err = Config::parse("docker:\n  gpu_mode: all\n").unwrap_err();
        assert!(err.contains("gpu_mode") || err.contains("all"), "{err}");
    }

    #[test]
    fn short_token_and_bad_address_are_rejected() {
        let mut c = valid();
        c.agent_api.auth_token = "short".into();
        assert!(c.validate().unwrap_err().to_string().contains("16"));
        let mut c = valid();
        c.agent_api.listen_address = "localhost".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("agent_api.listen_address"), "{e}");
    }

    #[test]
    fn non_loopback_listen_warns() {
        let mut c = valid();
        c.agent_api.listen_address = "0.0.0.0:9200".into();
        let w = c.validate().unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].0.contains("NOT a loopback"));
    }

    #[test]
    fn an_frp_server_warns_that_no_tunnel_is_started() {
        let mut c = valid();
        c.frp.server_addr = "frps.example".into();
        let w = c.validate().unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].0.contains("does not run frpc"), "{}", w[0]);
    }

    #[test]
    fn every_listed_override_is_applied_and_documented() {
        // ENV_OVERRIDES drives the scrubbing of secrets from the environment: a variable that
        // apply_env reads but the list lacks would stay visible to every child process.
        for (name, key) in ENV_OVERRIDES {
            let mut c = valid();
            let before = c.redacted_yaml() + &c.agent_api.auth_token;
            let value = if *name == "PHOENIX_LOG_LEVEL" {
                "trace"
            } else {
                "https://x.example/v"
            };
            c.apply_env(|n| (n == *name).then(|| value.to_string()))
                .unwrap();
            let after = c.redacted_yaml() + &c.agent_api.auth_token;
            assert_ne!(before, after, "{name} changes nothing");
            let leaf = key.rsplit('.').next().unwrap();
            assert!(after.contains(leaf), "{name} is listed for {key}");
            assert!(crate::cli::HELP.contains(name), "--help lacks {name}");
        }
        // ...and nothing outside the list is read.
        let mut c = valid();
        c.apply_env(|n| {
            assert!(
                ENV_OVERRIDES.iter().any(|(name, _)| *name == n),
                "{n} unlisted"
            );
            None
        })
        .unwrap();
    }

    #[test]
    fn env_overrides_apply_and_empty_is_ignored() {
        let mut c = valid();
        let env = |name: &str| match name {
            "PHOENIX_API_URL" => Some("https://p.example".to_string()),
            "PHOENIX_FRP_TOKEN" => Some("frp-secret".to_string()),
            "PHOENIX_AUTH_TOKEN" => Some(String::new()),
            "PHOENIX_LOG_LEVEL" => Some("DEBUG".to_string()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(c.central_platform.api_url, "https://p.example");
        assert_eq!(c.frp.token, "frp-secret");
        assert_eq!(c.agent_api.auth_token, TOKEN);
        assert_eq!(c.log_level, LogLevel::Debug);
        let bad = |name: &str| (name == "PHOENIX_LOG_LEVEL").then(|| "loud".to_string());
        assert!(valid().apply_env(bad).is_err());
    }

    #[test]
    fn redaction_hides_every_secret() {
        let mut c = valid();
        c.central_platform.bootstrap_token = "boot-secret".into();
        c.frp.token = "frp-secret".into();
        let yaml = c.redacted_yaml();
        for secret in [TOKEN, "boot-secret", "frp-secret"] {
            assert!(!yaml.contains(secret), "{secret} leaked: {yaml}");
        }
        assert!(yaml.contains(REDACTED));
        // The redacted view parses back into the same shape.
        assert!(Config::parse(&yaml).is_ok());
    }

    #[test]
    fn bootstrap_token_must_fit_in_a_header() {
        // A token pasted with its line break, or with a space, cannot be sent as a bearer
        // token: every request failed with "failed to parse header value", forever.
        for bad in [
            "secret-token\n",
            "secret token",
            "secret\ttoken",
            "sécret-token",
        ] {
            let mut c = valid();
            c.central_platform.bootstrap_token = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("central_platform.bootstrap_token"),
                "{bad:?}: {e}"
            );
            assert!(!e.contains("secret"), "the error shows the token: {e}");
        }
        let mut c = valid();
        c.central_platform.bootstrap_token = "abc.DEF_123-~+/=".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn api_url_has_no_query_or_fragment() {
        // The API paths are appended to api_url: after a query or fragment they end up in it
        // ("https://p/#x/api/v1/nodes/register" POSTs to "/").
        for bad in [
            "https://p.example/#x",
            "https://p.example/base?x=1",
            "https://p.example?",
        ] {
            let mut c = valid();
            c.central_platform.api_url = bad.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("central_platform.api_url"), "{bad}: {e}");
        }
    }

    #[test]
    fn api_url_must_be_http() {
        let mut c = valid();
        c.central_platform.api_url = "ftp://x".into();
        assert!(c.validate().is_err());
        c.central_platform.api_url = "http://".into();
        assert!(c.validate().is_err());
        c.central_platform.api_url = "https://platform.example/base".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn plain_http_to_another_host_warns_and_credentials_are_refused() {
        let mut c = valid();
        c.central_platform.api_url = "http://platform.example".into();
        let w = c.validate().unwrap();
        assert!(w.iter().any(|w| w.0.contains("in clear")), "{w:?}");
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost/x",
            "http://[::1]:80",
            "https://p.example",
        ] {
            c.central_platform.api_url = local.into();
            assert_eq!(c.validate().unwrap(), vec![], "{local}");
        }
        c.central_platform.api_url = "https://user:secret@p.example".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("credentials") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn backoff_bounds_are_checked() {
        let mut c = valid();
        c.central_platform.backoff_initial_ms = 0;
        assert!(c.validate().is_err());
        let mut c = valid();
        c.central_platform.backoff_initial_ms = 2000;
        c.central_platform.backoff_max_ms = 1000;
        assert!(c.validate().is_err());
        let mut c = valid();
        c.central_platform.heartbeat_interval_secs = 0;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn shipped_config_lists_every_default() {
        let shipped = Config::parse(include_str!("../conf/agent-config.yaml")).unwrap();
        let mut expected = Config::default();
        expected.agent_api.auth_token = EXAMPLE_AUTH_TOKEN.to_string();
        assert_eq!(shipped, expected);
    }

    #[test]
    fn docker_settings_are_checked() {
        let mut c = valid();
        c.docker.publish_address = "all".into();
        assert!(c.validate().is_err());
        let mut c = valid();
        c.docker.runtime = "--privileged".into();
        assert!(c.validate().is_err());
        let mut c = valid();
        c.docker.gpu_mode = GpuMode::Cdi;
        c.docker.cdi_kind = "gpu".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn docker_container_settings_are_checked() {
        let check = |edit: fn(&mut DockerConfig)| {
            let mut c = valid();
            edit(&mut c.docker);
            c.validate()
        };
        for bad in [
            (|d: &mut DockerConfig| d.managed_label = "io.utopia.managed".into())
                as fn(&mut DockerConfig),
            |d| d.managed_label = "=x".into(),
            |d| d.managed_label = "-e=x".into(),
            |d| d.managed_label = "a=b c".into(),
            |d| d.managed_label = "a=".into(),
            |d| d.command_timeout_secs = 0,
            |d| d.pull_timeout_secs = 0,
            |d| d.reconcile_interval_secs = 0,
            |d| d.workers = 0,
            |d| d.workers = 65,
            |d| d.log_max_size = "big".into(),
            |d| d.log_max_size = "10mm".into(),
            |d| d.log_max_size = "0".into(),
            |d| d.log_max_size = "-1m".into(),
            |d| d.log_max_file = 0,
        ] {
            let mut c = valid();
            bad(&mut c.docker);
            let key = match c.validate() {
                Err(ConfigError::Invalid { key, .. }) => key,
                other => panic!("{:?} accepted: {other:?}", c.docker),
            };
            assert!(key.starts_with("docker."), "{key}");
        }
        assert!(check(|d| d.managed_label = "io.utopia.test/run=abc-1.2".into()).is_ok());
        assert!(check(|d| d.log_max_size = "100".into()).is_ok());
        assert!(check(|d| d.log_max_size = "1g".into()).is_ok());
        assert!(check(|d| d.stop_timeout_secs = 0).is_ok());
        assert!(check(|d| d.pids_limit = 0).is_ok());
    }

    #[test]
    fn docker_keys_parse_from_yaml() {
        let c = Config::parse(
            "docker:\n  managed_label: a.b=c\n  stop_timeout_secs: 2\n  init: false\n  workers: 2\n",
        )
        .unwrap();
        assert_eq!(c.docker.managed_label, "a.b=c");
        assert_eq!(c.docker.stop_timeout_secs, 2);
        assert!(!c.docker.init);
        assert_eq!(c.docker.workers, 2);
        assert_eq!(c.docker.pull_timeout_secs, 1800);
    }
}
