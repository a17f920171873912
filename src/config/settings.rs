//! Typed settings: what [`Config::validate`](super::Config::validate) makes of the file, in the
//! types the components use (socket addresses, durations, a parsed label), so that no consumer
//! converts or checks a value again.

use super::file::{ApiProxyType, Config, GpuMode, LogLevel};
use crate::names::{is_name, is_name_byte};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the node id given by the platform is persisted.
    pub identity_file_path: PathBuf,
    pub log_level: LogLevel,
    pub platform: PlatformSettings,
    pub frp: FrpSettings,
    pub api: ApiSettings,
    pub gpu: GpuSettings,
    pub docker: DockerSettings,
    /// `GET /metrics` needs the bearer token (`prometheus.auth`).
    pub prometheus_auth: bool,
    /// The file model the settings came from (after the environment's overrides).
    pub(super) file: Config,
}

impl Settings {
    /// The configuration with every secret replaced, as YAML: safe to print or log.
    pub fn redacted_yaml(&self) -> String {
        self.file.redacted_yaml()
    }

    /// The file model the settings came from (a reload compares these key by key).
    pub fn file_model(&self) -> &Config {
        &self.file
    }

    /// Takes the dotted `key` of the file model from `other` (after a reload applied it).
    pub fn set_file_key(&mut self, key: &str, other: &Settings) {
        let pointer = format!("/{}", key.replace('.', "/"));
        let (Ok(mut mine), Ok(theirs)) = (
            serde_json::to_value(&self.file),
            serde_json::to_value(&other.file),
        ) else {
            return;
        };
        if let (Some(slot), Some(value)) = (mine.pointer_mut(&pointer), theirs.pointer(&pointer)) {
            *slot = value.clone();
            if let Ok(file) = serde_json::from_value(mine) {
                self.file = file;
            }
        }
    }
}

/// The central platform (`central_platform.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformSettings {
    /// Base URL without a trailing `/`; `None` runs the agent standalone.
    pub api_url: Option<String>,
    /// Sent as `Authorization: Bearer` when not empty.
    pub bootstrap_token: String,
    /// Zero: no heartbeats.
    pub heartbeat_interval: Duration,
    pub request_timeout: Duration,
    /// Extra CA certificates trusted for the platform.
    pub ca_file: Option<PathBuf>,
    pub backoff_initial: Duration,
    pub backoff_cap: Duration,
}

/// The frpc tunnel (`frp.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct FrpSettings {
    /// frps `host`; `None` disables the tunnel.
    pub server_addr: Option<String>,
    pub server_port: u16,
    pub token: String,
    /// The frp user without a platform (with one, the node id is used).
    pub user: Option<String>,
    pub frpc_path: PathBuf,
    pub work_dir: PathBuf,
    /// Loopback port of frpc's admin API.
    pub admin_port: u16,
    pub api_proxy_type: ApiProxyType,
    /// Remote port on frps for the agent API (tcp); `None`: the platform's, or frps's choice.
    pub api_remote_port: Option<u16>,
    /// stcp secret; `None`: the platform's.
    pub api_secret_key: Option<String>,
    /// stcp visitors' users; empty: the platform's.
    pub api_allow_users: Vec<String>,
    /// CA of frps's certificate; `None`: frpc does not verify it.
    pub tls_ca_file: Option<PathBuf>,
    pub expose_container_ports: bool,
    /// Longest wait before starting a crashed frpc again.
    pub restart_backoff_max: Duration,
}

/// The agent's REST API (`agent_api.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    pub auth_token: String,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub io_threads: usize,
}

/// GPU sampling (`gpu.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuSettings {
    /// `None`: the system's `libnvidia-ml.so.1`.
    pub nvml_library_path: Option<PathBuf>,
    pub sample_interval: Duration,
    /// How often NVML init is tried again after it failed.
    pub init_retry: Duration,
}

/// Containers through the docker CLI (`docker.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct DockerSettings {
    pub binary: PathBuf,
    /// `DOCKER_CONFIG` of every docker command.
    pub config_dir: PathBuf,
    /// Deadline of every short docker command.
    pub command_timeout: Duration,
    /// Deadline of an image pull.
    pub pull_timeout: Duration,
    /// `docker stop -t` grace period.
    pub stop_timeout: Duration,
    /// Period of the full reconcile.
    pub reconcile_interval: Duration,
    /// How long a create's answer waits for the container (then 202).
    pub create_wait: Duration,
    /// Threads of each worker pool.
    pub workers: usize,
    /// How containers are created.
    pub run: RunSettings,
}

/// The `docker.*` settings that shape `docker run`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    pub gpu_mode: GpuMode,
    /// `--runtime` for containers with GPUs; `None`: docker's default.
    pub runtime: Option<String>,
    pub cdi_kind: String,
    pub publish_address: IpAddr,
    pub managed_label: ManagedLabel,
    /// `--network`: the agent's bridge network without inter-container traffic.
    pub network: String,
    /// `--pids-limit`; 0 = no limit.
    pub pids_limit: u64,
    /// `--oom-score-adj` (1-1000).
    pub oom_score_adj: u16,
    /// The memory limit of a create without `memory_mb`; `None`: none.
    pub default_memory: Option<DefaultMemory>,
    /// `--storage-opt size=<MiB>m`: the size of each container's writable layer; `None`: none.
    pub storage_size_mib: Option<u64>,
    pub log_max_size: String,
    pub log_max_file: u32,
    pub init: bool,
    pub no_new_privileges: bool,
    /// `docker.block_metadata`: iptables rules cut the network's containers off from
    /// link-local addresses (see [`crate::docker::metadata_block`]).
    pub block_metadata: bool,
    /// Registries images may come from (normalized); empty: any outside this host.
    pub allowed_registries: Vec<String>,
    /// Host ports containers may publish on; `None`: any.
    pub host_port_range: Option<(u16, u16)>,
    /// `--restart` of every container.
    pub restart_policy: String,
}

/// `64g`, `65536m`, `6144k`, `1t` (either case) in MiB, 6 MiB to 16 TiB, a whole number of
/// MiB; `None` otherwise.
pub fn parse_size_mib(text: &str) -> Option<u64> {
    let text = text.trim();
    let unit = text.chars().last()?.to_ascii_lowercase();
    let kib_per_unit: u64 = match unit {
        'k' => 1,
        'm' => 1024,
        'g' => 1024 * 1024,
        't' => 1024 * 1024 * 1024,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kib = digits.parse::<u64>().ok()?.checked_mul(kib_per_unit)?;
    let mib = kib / 1024;
    (kib % 1024 == 0 && (DefaultMemory::MIN_MIB..=DefaultMemory::MAX_MIB).contains(&mib))
        .then_some(mib)
}

/// `docker.default_memory`: the memory limit of a create that gives none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultMemory {
    /// This many MiB.
    Mib(u64),
    /// This percentage (1-100) of the host's memory.
    PercentOfHost(u8),
}

impl DefaultMemory {
    /// Fewest MiB docker accepts for `--memory`.
    pub const MIN_MIB: u64 = 6;
    /// Most MiB a limit may be (as a create's `memory_mb`).
    pub const MAX_MIB: u64 = 16 * 1024 * 1024;

    /// Parses `90%`, `64g`, `65536m`, `1t` (k, m, g, t, either case); `None` when it is none
    /// of those or outside 1-100 % or 6 MiB-16 TiB.
    pub fn parse(text: &str) -> Option<DefaultMemory> {
        let text = text.trim();
        let digits = |t: &str| {
            (!t.is_empty() && t.len() <= 15 && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse::<u64>().ok())
                .flatten()
        };
        if let Some(percent) = text.strip_suffix('%') {
            let percent = digits(percent.trim_end())?;
            return (1..=100)
                .contains(&percent)
                .then_some(DefaultMemory::PercentOfHost(percent as u8));
        }
        parse_size_mib(text).map(DefaultMemory::Mib)
    }

    /// The limit in MiB on a host with `host_mib` of memory (`None`: unknown); `None` when a
    /// percentage cannot be resolved.
    pub fn resolve(self, host_mib: Option<u64>) -> Option<u64> {
        match self {
            DefaultMemory::Mib(mib) => Some(mib),
            DefaultMemory::PercentOfHost(percent) => {
                host_mib.map(|host| (host * u64::from(percent) / 100).max(Self::MIN_MIB))
            }
        }
    }
}

/// The `key=value` label that marks the containers this agent manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedLabel {
    key: String,
    value: String,
}

impl ManagedLabel {
    /// Parses `key=value`: a reverse-DNS style key, a plain value, nothing a shell or docker
    /// flag could misread.
    pub fn parse(text: &str) -> Option<ManagedLabel> {
        let (key, value) = text.split_once('=')?;
        let key_ok = !key.is_empty()
            && key.len() <= 128
            && key.as_bytes()[0].is_ascii_alphanumeric()
            && key.bytes().all(|b| b == b'/' || is_name_byte(b));
        (key_ok && is_name(value, 128)).then(|| ManagedLabel {
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    /// True when `labels` carry this label (same key, same value).
    pub fn is_on(&self, labels: &BTreeMap<String, String>) -> bool {
        labels.get(&self.key) == Some(&self.value)
    }
}

impl fmt::Display for ManagedLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_memory_parses_percentages_and_sizes() {
        use DefaultMemory::*;
        for (text, expected) in [
            ("90%", PercentOfHost(90)),
            ("100%", PercentOfHost(100)),
            ("1 %", PercentOfHost(1)),
            ("64g", Mib(65536)),
            ("64G", Mib(65536)),
            ("6m", Mib(6)),
            ("6144k", Mib(6)),
            ("1t", Mib(1024 * 1024)),
            ("16t", Mib(16 * 1024 * 1024)),
        ] {
            assert_eq!(DefaultMemory::parse(text), Some(expected), "{text}");
        }
        for bad in [
            "",
            "0%",
            "101%",
            "-5%",
            "%",
            "5m%",
            "64",
            "5m",
            "0g",
            "17t",
            "1.5g",
            "1000b",
            "6145k",
            "g",
            "--memory=1g",
            "99999999999999999999g",
        ] {
            assert_eq!(DefaultMemory::parse(bad), None, "{bad}");
        }
        assert_eq!(PercentOfHost(90).resolve(Some(1000)), Some(900));
        assert_eq!(
            PercentOfHost(1).resolve(Some(100)),
            Some(6),
            "docker's minimum"
        );
        assert_eq!(PercentOfHost(90).resolve(None), None);
        assert_eq!(Mib(64).resolve(None), Some(64));
    }

    #[test]
    fn managed_label_round_trips() {
        let label = ManagedLabel::parse("io.utopia.test/run=abc-1.2").unwrap();
        assert_eq!(label.to_string(), "io.utopia.test/run=abc-1.2");
        let mut labels = BTreeMap::new();
        labels.insert("io.utopia.test/run".to_string(), "abc-1.2".to_string());
        assert!(label.is_on(&labels));
        labels.insert("io.utopia.test/run".to_string(), "other".to_string());
        assert!(!label.is_on(&labels));
        for bad in ["nolabel", "=x", "-e=x", "a=b c", "a=", "a b=c"] {
            assert_eq!(ManagedLabel::parse(bad), None, "{bad}");
        }
    }
}
