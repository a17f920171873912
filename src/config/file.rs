//! The configuration file's model: every key, its type and its default (what an empty file
//! means). Unknown keys and wrong types are parse errors; values are checked by
//! [`validate`](super::validate) into typed [`Settings`](super::Settings).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    pub prometheus: PrometheusConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

    pub(crate) fn parse(value: &str) -> Option<Self> {
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

/// The frpc tunnel through which the platform reaches the agent API and renters reach their
/// containers' ports (see README "Tunnel").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrpConfig {
    /// frps host; empty disables the tunnel.
    pub server_addr: String,
    pub server_port: u16,
    pub token: String,
    /// frp user name (frps prefixes proxy names with it) when running without a platform; with
    /// one, the node id is the user.
    pub user: String,
    pub frpc_path: PathBuf,
    /// Where the agent writes frpc's config (mode 0600) and keeps its state.
    pub work_dir: PathBuf,
    /// Loopback port of frpc's admin API.
    pub admin_port: u16,
    /// How the agent API is published on frps.
    pub api_proxy_type: ApiProxyType,
    /// Remote port on frps for the agent API (tcp); 0 = the one the platform assigns at
    /// registration, or frps's choice.
    pub api_remote_port: u16,
    /// stcp: the secret a visitor must present; empty = the one the platform gave.
    pub api_secret_key: String,
    /// stcp: frp users whose visitors may connect; empty = the ones the platform gave.
    pub api_allow_users: Vec<String>,
    /// PEM file of the CA that signed frps's certificate; empty = frpc does not verify it.
    pub tls_ca_file: String,
    /// Publish every container port through the tunnel too (one proxy per port mapping).
    pub expose_container_ports: bool,
    /// Longest wait before starting a crashed frpc again (the wait starts at 1 s and doubles).
    pub restart_backoff_max_secs: u64,
}

/// How the agent API is published on frps (`frp.api_proxy_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiProxyType {
    /// What the platform said at registration; tcp when it said nothing.
    Auto,
    /// A public port on frps (the leg from the platform to frps is plain HTTP).
    Tcp,
    /// Secret TCP: only a visitor holding the secret key reaches it.
    Stcp,
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
    /// The most threads that accept connections and serve their requests (each holds its
    /// share; the first runs always, the others while they hold connections).
    pub io_threads: usize,
}

/// The Prometheus exposition at `GET /metrics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Whether `/metrics` needs the bearer token like the API; `false` opens it to any local
    /// scraper (it shows no secret, but does show claims and containers).
    pub auth: bool,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig { auth: true }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// The bridge network the agent creates (without inter-container traffic) and puts every
    /// managed container on.
    pub network: String,
    /// How long `POST /api/v1/containers` waits for the container: 201 when it is up by then,
    /// else 202 and the create goes on (image pulls can take many minutes).
    pub create_wait_secs: u64,
    /// Grace period of `docker stop` (SIGTERM, then SIGKILL) on stop, restart and delete.
    pub stop_timeout_secs: u64,
    /// Deadline of an image pull; the docker child is killed after it.
    pub pull_timeout_secs: u64,
    /// Deadline of every other docker command (besides the stop grace period).
    pub command_timeout_secs: u64,
    /// `--pids-limit` of every container; 0 = no limit.
    pub pids_limit: u64,
    /// `--oom-score-adj` of every container (1-1000): under host memory pressure the kernel
    /// kills a renter's process before the agent (the units' -900) or dockerd (-500).
    pub oom_score_adj: i64,
    /// `--memory` of a container whose create gives no `memory_mb`: a percentage of the host's
    /// memory (`90%`), a size (`64g`, `65536m`), or empty for none (such a container can then
    /// take the host's memory). `--memory-swap` is always the same: no swap.
    pub default_memory: String,
    /// `--storage-opt size=` of every container: its writable layer's size (`50g`); empty =
    /// none. Only some storage drivers apply it (overlay2 on xfs mounted with `pquota`,
    /// btrfs, zfs, devicemapper): the start is refused when the engine does not.
    pub storage_size: String,
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
    /// Registries (`host[:port]`, `docker.io` for references without one) images may be
    /// pulled from; empty: any registry outside this host.
    pub allowed_registries: Vec<String>,
    /// `low-high`: the host ports containers may publish on; empty: any.
    pub host_port_range: String,
    /// `--restart` of every container: `no`, `always`, `unless-stopped`, `on-failure[:N]`.
    pub restart_policy: String,
    /// `DOCKER_CONFIG` of every docker command (the operator's `docker login` goes here).
    pub config_dir: PathBuf,
    /// Reject what renters' containers send to link-local addresses (169.254.0.0/16: cloud
    /// metadata services) with iptables rules in `DOCKER-USER` and `INPUT` for the network's
    /// bridge; needs the `iptables` command and docker's iptables chains.
    pub block_metadata: bool,
}

/// The choice keys read their value case-insensitively (`log_level: DEBUG`), as the
/// environment overrides do; an unknown value names the choices.
macro_rules! case_insensitive {
    ($type:ty, [$($name:literal => $value:expr),+ $(,)?], $choices:literal) => {
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Choice;
                impl serde::de::Visitor<'_> for Choice {
                    type Value = $type;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        write!(f, "one of {}", $choices)
                    }
                    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<$type, E> {
                        match text.to_ascii_lowercase().as_str() {
                            $($name => Ok($value),)+
                            _ => Err(E::custom(format!("{text:?} is not one of {}", $choices))),
                        }
                    }
                }
                d.deserialize_str(Choice)
            }
        }
    };
}

case_insensitive!(LogLevel, [
    "error" => LogLevel::Error,
    "warn" => LogLevel::Warn,
    "warning" => LogLevel::Warn,
    "info" => LogLevel::Info,
    "debug" => LogLevel::Debug,
    "trace" => LogLevel::Trace,
], "error, warn, info, debug, trace");

case_insensitive!(ApiProxyType, [
    "auto" => ApiProxyType::Auto,
    "tcp" => ApiProxyType::Tcp,
    "stcp" => ApiProxyType::Stcp,
], "auto, tcp, stcp");

case_insensitive!(GpuMode, [
    "gpus" => GpuMode::Gpus,
    "cdi" => GpuMode::Cdi,
    "env" => GpuMode::Env,
], "gpus, cdi, env");

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
            prometheus: PrometheusConfig::default(),
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
            api_proxy_type: ApiProxyType::Auto,
            api_remote_port: 0,
            user: String::new(),
            api_secret_key: String::new(),
            api_allow_users: Vec::new(),
            tls_ca_file: String::new(),
            expose_container_ports: true,
            restart_backoff_max_secs: 60,
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
            io_threads: 8,
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
            network: "utopia-renters".to_string(),
            create_wait_secs: 20,
            stop_timeout_secs: 10,
            pull_timeout_secs: 1800,
            command_timeout_secs: 30,
            pids_limit: 4096,
            oom_score_adj: 500,
            default_memory: "90%".to_string(),
            storage_size: String::new(),
            log_max_size: "50m".to_string(),
            log_max_file: 3,
            init: true,
            no_new_privileges: true,
            block_metadata: false,
            reconcile_interval_secs: 30,
            workers: 4,
            allowed_registries: Vec::new(),
            host_port_range: String::new(),
            restart_policy: "unless-stopped".to_string(),
            config_dir: PathBuf::from("/etc/utopia/docker"),
        }
    }
}
