//! Validation, one section at a time: each section of the file model is checked and turned into
//! its typed settings, or into a [`ConfigError`] naming the key. Problems that do not stop the
//! agent become [`ConfigWarning`]s.

use super::file::{
    ApiConfig, ApiProxyType, Config, DockerConfig, FrpConfig, GpuConfig, GpuMode, PlatformConfig,
};
use super::settings::{
    ApiSettings, DefaultMemory, DockerSettings, FrpSettings, GpuSettings, ManagedLabel,
    PlatformSettings, RunSettings, Settings,
};
use super::{invalid, ConfigError, ConfigWarning, EXAMPLE_AUTH_TOKEN, MIN_AUTH_TOKEN_LEN};
use crate::names::{has_template_marker, is_name, is_name_byte};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A validated configuration and what the operator should be told about it.
#[derive(Debug)]
pub struct Validated {
    pub settings: Settings,
    pub warnings: Vec<ConfigWarning>,
}

impl Config {
    /// Checks every value and turns the file into typed [`Settings`].
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let mut warnings = Vec::new();
        let api = self.agent_api.validate(&mut warnings)?;
        let platform = self.central_platform.validate(&mut warnings)?;
        if self.identity_file_path.as_os_str().is_empty() {
            return Err(invalid("identity_file_path", "must not be empty"));
        }
        let frp =
            self.frp
                .validate(platform.api_url.is_some(), api.listen.port(), &mut warnings)?;
        let gpu = self.gpu.validate()?;
        let docker = self.docker.validate()?;
        if docker.run.default_memory.is_none() {
            warnings.push(ConfigWarning(
                "docker.default_memory is empty: a container created without memory_mb has no \
                 memory limit and can take all of the host's memory (set e.g. 90% or 64g)"
                    .to_string(),
            ));
        }
        Ok(Validated {
            settings: Settings {
                identity_file_path: self.identity_file_path.clone(),
                log_level: self.log_level,
                platform,
                frp,
                api,
                gpu,
                docker,
                prometheus_auth: self.prometheus.auth,
                file: self.clone(),
            },
            warnings,
        })
    }
}

impl ApiConfig {
    pub fn validate(&self, warnings: &mut Vec<ConfigWarning>) -> Result<ApiSettings, ConfigError> {
        if self.auth_token.is_empty() {
            return Err(invalid(
                "agent_api.auth_token",
                "is required (or set PHOENIX_AUTH_TOKEN); generate one with `openssl rand -hex 32`",
            ));
        }
        if self.auth_token.chars().count() < MIN_AUTH_TOKEN_LEN {
            return Err(invalid(
                "agent_api.auth_token",
                format!("must be at least {MIN_AUTH_TOKEN_LEN} characters long"),
            ));
        }
        if !self.auth_token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "agent_api.auth_token",
                "may only contain printable ASCII characters without spaces",
            ));
        }
        if self.auth_token == EXAMPLE_AUTH_TOKEN {
            warnings.push(ConfigWarning(
                "agent_api.auth_token is the example token of the shipped config: anyone who has \
                 read the README can use this API; set your own (`openssl rand -hex 32`)"
                    .to_string(),
            ));
        }
        let listen: SocketAddr = self.listen_address.parse().map_err(|_| {
            invalid(
                "agent_api.listen_address",
                format!(
                    "{:?} is not an IP:port address (e.g. 127.0.0.1:9200)",
                    self.listen_address
                ),
            )
        })?;
        if !listen.ip().is_loopback() {
            warnings.push(ConfigWarning(format!(
                "agent_api.listen_address {listen} is NOT a loopback address: the API (which can \
                 start containers) is reachable from the network, not only through the tunnel; \
                 use 127.0.0.1 unless you know why"
            )));
        }
        if !(1..=10_000).contains(&self.max_connections) {
            return Err(invalid(
                "agent_api.max_connections",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=3600).contains(&self.idle_timeout_secs) {
            return Err(invalid(
                "agent_api.idle_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        if !(1..=crate::http::MAX_IO_THREADS).contains(&self.io_threads) {
            return Err(invalid(
                "agent_api.io_threads",
                format!("must be between 1 and {}", crate::http::MAX_IO_THREADS),
            ));
        }
        Ok(ApiSettings {
            listen,
            auth_token: self.auth_token.clone(),
            max_connections: self.max_connections,
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            io_threads: self.io_threads,
        })
    }
}

impl PlatformConfig {
    pub fn validate(
        &self,
        warnings: &mut Vec<ConfigWarning>,
    ) -> Result<PlatformSettings, ConfigError> {
        if !self.api_url.is_empty() {
            check_api_url(&self.api_url, warnings)?;
        }
        if !self.bootstrap_token.bytes().all(|b| b.is_ascii_graphic()) {
            // It is sent as `Authorization: Bearer <token>`: a line break (pasted with the
            // token), a space or a non-ASCII character makes every request fail.
            return Err(invalid(
                "central_platform.bootstrap_token",
                "may only contain printable ASCII characters, without spaces or line breaks \
                 (look for a trailing newline pasted with it)",
            ));
        }
        if self.heartbeat_interval_secs > 86_400 {
            return Err(invalid(
                "central_platform.heartbeat_interval_secs",
                "must be between 0 (no heartbeats) and 86400",
            ));
        }
        if !(1..=3_600_000).contains(&self.backoff_initial_ms) {
            return Err(invalid(
                "central_platform.backoff_initial_ms",
                "must be between 1 and 3600000",
            ));
        }
        if !(self.backoff_initial_ms..=86_400_000).contains(&self.backoff_max_ms) {
            return Err(invalid(
                "central_platform.backoff_max_ms",
                "must be at least central_platform.backoff_initial_ms and at most 86400000",
            ));
        }
        if !(1..=300).contains(&self.request_timeout_secs) {
            return Err(invalid(
                "central_platform.request_timeout_secs",
                "must be between 1 and 300",
            ));
        }
        Ok(PlatformSettings {
            api_url: (!self.api_url.is_empty())
                .then(|| self.api_url.trim_end_matches('/').to_string()),
            bootstrap_token: self.bootstrap_token.clone(),
            heartbeat_interval: Duration::from_secs(self.heartbeat_interval_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            ca_file: (!self.ca_file.is_empty()).then(|| PathBuf::from(&self.ca_file)),
            backoff_initial: Duration::from_millis(self.backoff_initial_ms),
            backoff_cap: Duration::from_millis(self.backoff_max_ms),
        })
    }
}

/// `central_platform.api_url`: http(s), a host, no credentials, no query or fragment.
fn check_api_url(url: &str, warnings: &mut Vec<ConfigWarning>) -> Result<(), ConfigError> {
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
    if let Some(at) = rest.find(['?', '#']) {
        // The API paths are appended to it: they would land in the query or fragment. Only the
        // part before is named: a query is where a token is often put (`?token=...`).
        let base = &url[..url.len() - rest.len() + at];
        return Err(invalid(
            "central_platform.api_url",
            format!(
                "{base:?} must not be followed by a query (?) or fragment (#) (not shown): it \
                 is the base the API paths (/api/v1/...) are appended to"
            ),
        ));
    }
    if url.starts_with("http://") && !url_host(url).is_some_and(|host| is_loopback_host(&host)) {
        warnings.push(ConfigWarning(format!(
            "central_platform.api_url {url} is plain http:// to a host that is not this \
             machine: the bootstrap token and the node's data cross the network in \
             clear; use https://"
        )));
    }
    Ok(())
}

/// The host of an `http(s)://` URL, lower-cased, without brackets or a trailing dot.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split_once(']')?.0
    } else {
        host_port.split(':').next()?
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

/// Whether a host (as [`url_host`] gives it) names this machine.
fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl FrpConfig {
    /// `platform`: whether a platform is configured (it then names the frp user and may give
    /// the API proxy's settings); `api_port`: the agent API's port, which the admin API must
    /// not take.
    pub fn validate(
        &self,
        platform: bool,
        api_port: u16,
        warnings: &mut Vec<ConfigWarning>,
    ) -> Result<FrpSettings, ConfigError> {
        // Every value that reaches frpc.toml: frpc renders the file as a Go template first.
        let texts: [(&'static str, &str); 5] = [
            ("frp.server_addr", &self.server_addr),
            ("frp.token", &self.token),
            ("frp.user", &self.user),
            ("frp.api_secret_key", &self.api_secret_key),
            ("frp.tls_ca_file", &self.tls_ca_file),
        ];
        for (key, value) in texts {
            check_frpc_text(key, value)?;
        }
        for user in &self.api_allow_users {
            check_frpc_text("frp.api_allow_users", user)?;
            if user != "*" && !is_name(user, 128) {
                return Err(invalid(
                    "frp.api_allow_users",
                    format!("{user:?} is not an frp user name (A-Z a-z 0-9 _ . -) or `*`"),
                ));
            }
        }
        if !(1..=3600).contains(&self.restart_backoff_max_secs) {
            return Err(invalid(
                "frp.restart_backoff_max_secs",
                "must be between 1 and 3600",
            ));
        }
        if self.admin_port == 0 {
            return Err(invalid("frp.admin_port", "must be between 1 and 65535"));
        }
        let enabled = !self.server_addr.is_empty();
        if enabled {
            if self.server_port == 0 {
                return Err(invalid("frp.server_port", "must be between 1 and 65535"));
            }
            let host_ok = self
                .server_addr
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
            if !host_ok {
                return Err(invalid(
                    "frp.server_addr",
                    format!(
                        "{:?} is not a host name or IP address (no scheme, no port: the port is \
                         frp.server_port)",
                        self.server_addr
                    ),
                ));
            }
            if self.admin_port == api_port {
                return Err(invalid(
                    "frp.admin_port",
                    format!("{api_port} is the agent API's port (agent_api.listen_address)"),
                ));
            }
            if self.frpc_path.as_os_str().is_empty() {
                return Err(invalid("frp.frpc_path", "must not be empty"));
            }
            if self.work_dir.as_os_str().is_empty() {
                return Err(invalid("frp.work_dir", "must not be empty"));
            }
        }
        if !self.user.is_empty() && !is_name(&self.user, 128) {
            return Err(invalid(
                "frp.user",
                format!(
                    "{:?} is not an frp user name (A-Z a-z 0-9 _ . -)",
                    self.user
                ),
            ));
        }
        if enabled && !platform && self.user.is_empty() {
            return Err(invalid(
                "frp.user",
                "is required when frp.server_addr is set without central_platform.api_url (with \
                 a platform the node id is the frp user): frps prefixes proxy names with it, so \
                 that two nodes' proxies do not collide",
            ));
        }
        if enabled && platform && !self.user.is_empty() {
            warnings.push(ConfigWarning(format!(
                "frp.user {:?} is not used: with a platform the frp user is the node id",
                self.user
            )));
        }
        if !self.api_secret_key.is_empty()
            && !self.api_secret_key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(invalid(
                "frp.api_secret_key",
                "may only contain printable ASCII characters without spaces",
            ));
        }
        if enabled
            && self.api_proxy_type == ApiProxyType::Stcp
            && self.api_secret_key.is_empty()
            && !platform
        {
            return Err(invalid(
                "frp.api_secret_key",
                "is required with frp.api_proxy_type stcp when no platform gives one \
                 (generate one with `openssl rand -hex 32`)",
            ));
        }
        if enabled && self.api_proxy_type == ApiProxyType::Tcp && !self.api_secret_key.is_empty() {
            warnings.push(ConfigWarning(
                "frp.api_secret_key is not used: frp.api_proxy_type is tcp".to_string(),
            ));
        }
        if enabled && self.api_proxy_type == ApiProxyType::Stcp && self.api_remote_port != 0 {
            warnings.push(ConfigWarning(
                "frp.api_remote_port is not used: frp.api_proxy_type is stcp (no public port)"
                    .to_string(),
            ));
        }
        let tls_ca_file = (!self.tls_ca_file.is_empty()).then(|| PathBuf::from(&self.tls_ca_file));
        if let Some(path) = &tls_ca_file {
            if !path.is_file() {
                return Err(invalid(
                    "frp.tls_ca_file",
                    format!("no file at {} (a PEM file of frps's CA)", path.display()),
                ));
            }
        } else if enabled {
            warnings.push(ConfigWarning(format!(
                "frp.tls_ca_file is empty: frpc encrypts its connection to {} but does not verify \
                 its certificate, so a machine in between can pose as frps; set it to the PEM \
                 file of frps's CA",
                self.server_addr
            )));
        }
        Ok(FrpSettings {
            server_addr: enabled.then(|| self.server_addr.clone()),
            server_port: self.server_port,
            token: self.token.clone(),
            user: (!self.user.is_empty()).then(|| self.user.clone()),
            frpc_path: self.frpc_path.clone(),
            work_dir: self.work_dir.clone(),
            admin_port: self.admin_port,
            api_proxy_type: self.api_proxy_type,
            api_remote_port: (self.api_remote_port != 0).then_some(self.api_remote_port),
            api_secret_key: (!self.api_secret_key.is_empty()).then(|| self.api_secret_key.clone()),
            api_allow_users: self.api_allow_users.clone(),
            tls_ca_file,
            expose_container_ports: self.expose_container_ports,
            restart_backoff_max: Duration::from_secs(self.restart_backoff_max_secs),
        })
    }
}

/// A value the agent writes into frpc's config: no template marker (frpc renders the file as a
/// Go template before parsing it, so `{{ .Envs.X }}` would read the agent's environment) and no
/// control character.
fn check_frpc_text(key: &'static str, value: &str) -> Result<(), ConfigError> {
    if has_template_marker(value) {
        return Err(invalid(
            key,
            "must not contain `{{` or `}}`: frpc renders its config as a Go template",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            key,
            "must not contain control characters (a line break pasted with it?)",
        ));
    }
    Ok(())
}

impl GpuConfig {
    pub fn validate(&self) -> Result<GpuSettings, ConfigError> {
        if !(100..=3_600_000).contains(&self.sample_interval_ms) {
            return Err(invalid(
                "gpu.sample_interval_ms",
                "must be between 100 and 3600000",
            ));
        }
        if !(1..=86_400).contains(&self.init_retry_secs) {
            return Err(invalid(
                "gpu.init_retry_secs",
                "must be between 1 and 86400",
            ));
        }
        Ok(GpuSettings {
            nvml_library_path: (!self.nvml_library_path.is_empty())
                .then(|| PathBuf::from(&self.nvml_library_path)),
            sample_interval: Duration::from_millis(self.sample_interval_ms),
            init_retry: Duration::from_secs(self.init_retry_secs),
        })
    }
}

impl DockerConfig {
    pub fn validate(&self) -> Result<DockerSettings, ConfigError> {
        if self.binary.as_os_str().is_empty() {
            return Err(invalid("docker.binary", "must not be empty"));
        }
        let publish_address = self.publish_address.parse::<IpAddr>().map_err(|_| {
            invalid(
                "docker.publish_address",
                format!("{:?} is not an IP address", self.publish_address),
            )
        })?;
        if self.gpu_mode == GpuMode::Cdi && !valid_cdi_kind(&self.cdi_kind) {
            return Err(invalid(
                "docker.cdi_kind",
                format!("{:?} is not a CDI kind like nvidia.com/gpu", self.cdi_kind),
            ));
        }
        if !self.runtime.bytes().all(is_name_byte) || self.runtime.starts_with('-') {
            return Err(invalid(
                "docker.runtime",
                format!("{:?} is not a runtime name", self.runtime),
            ));
        }
        let managed_label = ManagedLabel::parse(&self.managed_label).ok_or_else(|| {
            invalid(
                "docker.managed_label",
                format!(
                    "{:?} is not a label key=value like io.utopia.managed=true",
                    self.managed_label
                ),
            )
        })?;
        if !valid_network_name(&self.network) {
            return Err(invalid(
                "docker.network",
                format!(
                    "{:?} is not a network name the agent may create (letters, digits, _ . -, at \
                     most 64, not bridge, host, none or default)",
                    self.network
                ),
            ));
        }
        let ranges: [(&'static str, u64, u64, u64); 6] = [
            ("docker.create_wait_secs", self.create_wait_secs, 1, 3600),
            ("docker.stop_timeout_secs", self.stop_timeout_secs, 0, 3600),
            (
                "docker.pull_timeout_secs",
                self.pull_timeout_secs,
                1,
                86_400,
            ),
            (
                "docker.command_timeout_secs",
                self.command_timeout_secs,
                1,
                3600,
            ),
            (
                "docker.reconcile_interval_secs",
                self.reconcile_interval_secs,
                1,
                86_400,
            ),
            ("docker.workers", self.workers as u64, 1, 64),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(invalid(key, format!("must be between {min} and {max}")));
            }
        }
        let oom_score_adj = u16::try_from(self.oom_score_adj)
            .ok()
            .filter(|v| (1..=1000).contains(v))
            .ok_or_else(|| {
                invalid(
                    "docker.oom_score_adj",
                    format!(
                        "{} is not between 1 and 1000: renters' containers must be the kernel's \
                         first choice under memory pressure, before the agent and dockerd",
                        self.oom_score_adj
                    ),
                )
            })?;
        let default_memory = if self.default_memory.trim().is_empty() {
            None
        } else {
            Some(DefaultMemory::parse(&self.default_memory).ok_or_else(|| {
                invalid(
                    "docker.default_memory",
                    format!(
                        "{:?} is not a percentage of the host's memory (1%-100%), a size like \
                         64g or 65536m (6m-16t), or empty for no limit",
                        self.default_memory
                    ),
                )
            })?)
        };
        let storage_size_mib = if self.storage_size.trim().is_empty() {
            None
        } else {
            Some(
                super::settings::parse_size_mib(&self.storage_size).ok_or_else(|| {
                    invalid(
                        "docker.storage_size",
                        format!(
                            "{:?} is not a size like 50g or 51200m (6m-16t), or empty for none",
                            self.storage_size
                        ),
                    )
                })?,
            )
        };
        if !valid_size(&self.log_max_size) {
            return Err(invalid(
                "docker.log_max_size",
                format!(
                    "{:?} is not a size like 50m (digits, then k, m or g)",
                    self.log_max_size
                ),
            ));
        }
        if !(1..=100).contains(&self.log_max_file) {
            return Err(invalid("docker.log_max_file", "must be between 1 and 100"));
        }
        let mut allowed_registries = Vec::new();
        for registry in &self.allowed_registries {
            let key = "docker.allowed_registries";
            if !crate::docker::spec::valid_registry(registry) {
                return Err(invalid(
                    key,
                    format!("{registry:?} is not a registry host[:port] like registry.example.com"),
                ));
            }
            crate::docker::spec::check_registry_host(registry).map_err(|m| invalid(key, m))?;
            allowed_registries.push(crate::docker::spec::normalize_registry(registry));
        }
        let host_port_range = if self.host_port_range.trim().is_empty() {
            None
        } else {
            Some(parse_port_range(&self.host_port_range).ok_or_else(|| {
                invalid(
                    "docker.host_port_range",
                    format!(
                        "{:?} is not a port range low-high like 20000-29999 (1-65535, low <= high)",
                        self.host_port_range
                    ),
                )
            })?)
        };
        if !valid_restart_policy(&self.restart_policy) {
            return Err(invalid(
                "docker.restart_policy",
                format!(
                    "{:?} is not no, always, unless-stopped, on-failure or on-failure:N",
                    self.restart_policy
                ),
            ));
        }
        if !self.config_dir.is_absolute() {
            return Err(invalid(
                "docker.config_dir",
                format!(
                    "{:?} is not an absolute path (the docker CLI's DOCKER_CONFIG)",
                    self.config_dir.display().to_string()
                ),
            ));
        }
        Ok(DockerSettings {
            binary: self.binary.clone(),
            config_dir: self.config_dir.clone(),
            command_timeout: Duration::from_secs(self.command_timeout_secs),
            pull_timeout: Duration::from_secs(self.pull_timeout_secs),
            stop_timeout: Duration::from_secs(self.stop_timeout_secs),
            reconcile_interval: Duration::from_secs(self.reconcile_interval_secs),
            create_wait: Duration::from_secs(self.create_wait_secs),
            workers: self.workers,
            run: RunSettings {
                gpu_mode: self.gpu_mode,
                runtime: (!self.runtime.is_empty()).then(|| self.runtime.clone()),
                cdi_kind: self.cdi_kind.clone(),
                publish_address,
                managed_label,
                network: self.network.clone(),
                pids_limit: self.pids_limit,
                oom_score_adj,
                default_memory,
                storage_size_mib,
                log_max_size: self.log_max_size.clone(),
                log_max_file: self.log_max_file,
                init: self.init,
                no_new_privileges: self.no_new_privileges,
                block_metadata: self.block_metadata,
                allowed_registries,
                host_port_range,
                restart_policy: self.restart_policy.clone(),
            },
        })
    }
}

/// `low-high` (or one port), 1-65535, low <= high.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let text = text.trim();
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let parse = |p: &str| {
        let p = p.trim();
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u16>().ok())
            .flatten()
            .filter(|p| *p > 0)
    };
    let (low, high) = (parse(low)?, parse(high)?);
    (low <= high).then_some((low, high))
}

/// What `docker run --restart` accepts: `no`, `always`, `unless-stopped`, `on-failure` or
/// `on-failure:N` (N a count of retries, 1 or more).
fn valid_restart_policy(policy: &str) -> bool {
    match policy {
        "no" | "always" | "unless-stopped" | "on-failure" => true,
        _ => policy.strip_prefix("on-failure:").is_some_and(|n| {
            n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u32>().is_ok_and(|n| n > 0)
        }),
    }
}

/// A docker network name of the agent's own: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`, none of
/// docker's predefined networks (sharing those is what the network is there to avoid).
fn valid_network_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !matches!(name, "bridge" | "host" | "none" | "default")
}

/// `vendor/class`, both plain names, the vendor not starting with `-`.
fn valid_cdi_kind(kind: &str) -> bool {
    match kind.split_once('/') {
        Some((vendor, class)) => {
            is_name(vendor, usize::MAX) && is_name(class, usize::MAX) && !vendor.starts_with('-')
        }
        None => false,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{valid, TOKEN};
    use crate::config::DockerConfig;

    fn warnings_of(c: &Config) -> Result<Vec<ConfigWarning>, ConfigError> {
        c.validate().map(|v| v.warnings)
    }

    #[test]
    fn defaults_need_only_a_token() {
        assert!(matches!(
            warnings_of(&Config::default()),
            Err(ConfigError::Invalid {
                key: "agent_api.auth_token",
                ..
            })
        ));
        assert_eq!(warnings_of(&valid()).unwrap(), vec![]);
    }

    #[test]
    fn short_token_and_bad_address_are_rejected() {
        let mut c = valid();
        c.agent_api.auth_token = "short".into();
        assert!(warnings_of(&c).unwrap_err().to_string().contains("16"));
        let mut c = valid();
        c.agent_api.listen_address = "localhost".into();
        let e = warnings_of(&c).unwrap_err().to_string();
        assert!(e.contains("agent_api.listen_address"), "{e}");
    }

    #[test]
    fn io_threads_are_between_1_and_the_most() {
        for bad in [0, crate::http::MAX_IO_THREADS + 1] {
            let mut c = valid();
            c.agent_api.io_threads = bad;
            let e = warnings_of(&c).unwrap_err().to_string();
            assert!(e.contains("agent_api.io_threads"), "{bad}: {e}");
        }
        let mut c = valid();
        c.agent_api.io_threads = 1;
        assert_eq!(c.validate().unwrap().settings.api.io_threads, 1);
    }

    #[test]
    fn non_loopback_listen_warns() {
        let mut c = valid();
        c.agent_api.listen_address = "0.0.0.0:9200".into();
        let w = warnings_of(&c).unwrap();
        assert_eq!(w.len(), 1);
        assert!(w[0].0.contains("NOT a loopback"));
    }

    #[test]
    fn frp_keys_are_checked() {
        let frp = |edit: fn(&mut Config)| {
            let mut c = valid();
            c.frp.server_addr = "frps.example".into();
            c.frp.user = "node-a".into();
            c.frp.tls_ca_file = "/dev/null".into();
            edit(&mut c);
            warnings_of(&c)
        };
        // Standalone with a user and a CA: no warning (/dev/null is not a regular file).
        let e = frp(|_| {}).unwrap_err().to_string();
        assert!(e.contains("frp.tls_ca_file"), "{e}");
        let ca = tempfile::NamedTempFile::new().unwrap();
        let mut c = valid();
        c.frp.server_addr = "frps.example".into();
        c.frp.user = "node-a".into();
        c.frp.tls_ca_file = ca.path().to_string_lossy().into_owned();
        assert_eq!(warnings_of(&c).unwrap(), vec![]);
        let s = c.validate().unwrap().settings.frp;
        assert_eq!(s.user.as_deref(), Some("node-a"));
        assert!(s.expose_container_ports);
        assert_eq!(s.api_proxy_type, ApiProxyType::Auto);
        assert_eq!(s.restart_backoff_max, Duration::from_secs(60));
        c.frp.restart_backoff_max_secs = 2;
        let s = c.validate().unwrap().settings.frp;
        assert_eq!(s.restart_backoff_max, Duration::from_secs(2));

        // Template markers and control characters never reach frpc.toml.
        for (key, edit) in [
            (
                "frp.token",
                (|c: &mut Config| c.frp.token = "a{{ .Envs.X }}".into()) as fn(&mut Config),
            ),
            ("frp.server_addr", |c| c.frp.server_addr = "h}}".into()),
            ("frp.api_secret_key", |c| {
                c.frp.api_secret_key = "{{x".into()
            }),
            ("frp.api_allow_users", |c| {
                c.frp.api_allow_users = vec!["{{.}}".into()]
            }),
            ("frp.token", |c| c.frp.token = "secret\n".into()),
            ("frp.server_addr", |c| {
                c.frp.server_addr = "https://frps.example".into()
            }),
            ("frp.user", |c| c.frp.user = String::new()),
            ("frp.user", |c| c.frp.user = "a b".into()),
            ("frp.admin_port", |c| c.frp.admin_port = 9200),
            ("frp.restart_backoff_max_secs", |c| {
                c.frp.restart_backoff_max_secs = 0
            }),
            ("frp.restart_backoff_max_secs", |c| {
                c.frp.restart_backoff_max_secs = 3601
            }),
            ("frp.api_secret_key", |c| {
                c.frp.api_proxy_type = ApiProxyType::Stcp
            }),
            ("frp.api_allow_users", |c| {
                c.frp.api_allow_users = vec!["a/b".into()]
            }),
        ] {
            match frp(edit) {
                Err(ConfigError::Invalid { key: k, message }) => {
                    assert_eq!(k, key, "{message}");
                    assert!(
                        !message.contains("Envs"),
                        "the value is not echoed: {message}"
                    );
                }
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn frp_warns_about_what_is_not_verified_or_not_used() {
        let mut c = valid();
        c.central_platform.api_url = "https://p.example".into();
        c.frp.server_addr = "frps.example".into();
        c.frp.user = "ignored".into();
        c.frp.api_proxy_type = ApiProxyType::Tcp;
        c.frp.api_secret_key = "s3cret".into();
        let w: Vec<String> = warnings_of(&c).unwrap().into_iter().map(|w| w.0).collect();
        assert_eq!(w.len(), 3, "{w:?}");
        assert!(
            w.iter().any(|w| w.contains("frp.tls_ca_file is empty")),
            "{w:?}"
        );
        assert!(w.iter().any(|w| w.contains("frp.user")), "{w:?}");
        assert!(
            w.iter()
                .any(|w| w.contains("frp.api_secret_key is not used")),
            "{w:?}"
        );
        // With a platform, stcp may take its secret from the registration answer.
        c.frp.api_proxy_type = ApiProxyType::Stcp;
        c.frp.api_secret_key = String::new();
        c.frp.api_remote_port = 7001;
        let w = warnings_of(&c).unwrap();
        assert!(
            w.iter()
                .any(|w| w.0.contains("api_remote_port is not used")),
            "{w:?}"
        );
        // Off: nothing is required.
        let mut c = valid();
        c.frp.api_proxy_type = ApiProxyType::Stcp;
        assert_eq!(warnings_of(&c).unwrap(), vec![]);
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
            let e = warnings_of(&c).unwrap_err().to_string();
            assert!(
                e.contains("central_platform.bootstrap_token"),
                "{bad:?}: {e}"
            );
            assert!(!e.contains("secret"), "the error shows the token: {e}");
        }
        let mut c = valid();
        c.central_platform.bootstrap_token = "abc.DEF_123-~+/=".into();
        assert!(warnings_of(&c).is_ok());
    }

    #[test]
    fn api_url_has_no_query_or_fragment() {
        // The API paths are appended to api_url: after a query or fragment they end up in it
        // ("https://p/#x/api/v1/nodes/register" POSTs to "/").
        for bad in [
            "https://p.example/#x",
            "https://p.example/base?x=1",
            "https://p.example?",
            "https://p.example/api?token=SECRET-0123",
            "https://p.example/api#SECRET-0123",
        ] {
            let mut c = valid();
            c.central_platform.api_url = bad.into();
            let e = warnings_of(&c).unwrap_err().to_string();
            assert!(e.contains("central_platform.api_url"), "{bad}: {e}");
            assert!(e.contains("query (?) or fragment (#)"), "{bad}: {e}");
            // A token put into the query never reaches the message (logs, doctor).
            assert!(!e.contains("SECRET"), "{bad}: {e}");
        }
    }

    #[test]
    fn api_url_must_be_http() {
        let mut c = valid();
        c.central_platform.api_url = "ftp://x".into();
        assert!(warnings_of(&c).is_err());
        c.central_platform.api_url = "http://".into();
        assert!(warnings_of(&c).is_err());
        c.central_platform.api_url = "https://platform.example/base".into();
        assert!(warnings_of(&c).is_ok());
    }

    #[test]
    fn plain_http_to_another_host_warns_and_credentials_are_refused() {
        let mut c = valid();
        c.central_platform.api_url = "http://platform.example".into();
        let w = warnings_of(&c).unwrap();
        assert!(w.iter().any(|w| w.0.contains("in clear")), "{w:?}");
        for local in [
            "http://127.0.0.1:8080",
            "http://localhost/x",
            "http://[::1]:80",
            "https://p.example",
        ] {
            c.central_platform.api_url = local.into();
            assert_eq!(warnings_of(&c).unwrap(), vec![], "{local}");
        }
        c.central_platform.api_url = "https://user:secret@p.example".into();
        let e = warnings_of(&c).unwrap_err().to_string();
        assert!(e.contains("credentials") && !e.contains("secret"), "{e}");
    }

    #[test]
    fn backoff_bounds_are_checked() {
        let mut c = valid();
        c.central_platform.backoff_initial_ms = 0;
        assert!(warnings_of(&c).is_err());
        let mut c = valid();
        c.central_platform.backoff_initial_ms = 2000;
        c.central_platform.backoff_max_ms = 1000;
        assert!(warnings_of(&c).is_err());
        let mut c = valid();
        c.central_platform.heartbeat_interval_secs = 0;
        assert!(warnings_of(&c).is_ok());
    }

    #[test]
    fn docker_settings_are_checked() {
        let mut c = valid();
        c.docker.publish_address = "all".into();
        assert!(warnings_of(&c).is_err());
        let mut c = valid();
        c.docker.runtime = "--privileged".into();
        assert!(warnings_of(&c).is_err());
        let mut c = valid();
        c.docker.gpu_mode = GpuMode::Cdi;
        c.docker.cdi_kind = "gpu".into();
        assert!(warnings_of(&c).is_err());
    }

    #[test]
    fn docker_container_settings_are_checked() {
        let check = |edit: fn(&mut DockerConfig)| {
            let mut c = valid();
            edit(&mut c.docker);
            warnings_of(&c)
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
            |d| d.oom_score_adj = 0,
            |d| d.oom_score_adj = -500,
            |d| d.oom_score_adj = 1001,
            |d| d.network = "bridge".into(),
            |d| d.create_wait_secs = 0,
            |d| d.network = "host".into(),
            |d| d.network = "".into(),
            |d| d.network = "-x".into(),
            |d| d.network = "a b".into(),
        ] {
            let mut c = valid();
            bad(&mut c.docker);
            let key = match warnings_of(&c) {
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
        let mut c = valid();
        c.docker.default_memory = "lots".into();
        let e = warnings_of(&c).unwrap_err().to_string();
        assert!(
            e.contains("`docker.default_memory`") && e.contains("\"lots\""),
            "{e}"
        );
        for (text, expected) in [
            ("90%", Some(DefaultMemory::PercentOfHost(90))),
            ("512m", Some(DefaultMemory::Mib(512))),
            ("", None),
        ] {
            let mut c = valid();
            c.docker.default_memory = text.into();
            let v = c.validate().unwrap();
            assert_eq!(v.settings.docker.run.default_memory, expected, "{text}");
            let warned = v
                .warnings
                .iter()
                .any(|w| w.0.contains("docker.default_memory"));
            assert_eq!(warned, expected.is_none(), "{text}: {:?}", v.warnings);
        }
        for (text, expected) in [("", None), ("50g", Some(51200)), ("512m", Some(512))] {
            let mut c = valid();
            c.docker.storage_size = text.into();
            assert_eq!(c.docker.validate().unwrap().run.storage_size_mib, expected);
        }
        for bad in ["50", "90%", "big", "-1g", "0g"] {
            let mut c = valid();
            c.docker.storage_size = bad.into();
            let e = warnings_of(&c).unwrap_err().to_string();
            assert!(e.contains("`docker.storage_size`"), "{bad}: {e}");
        }
        for adj in [1, 1000] {
            let mut c = valid();
            c.docker.oom_score_adj = adj;
            assert_eq!(
                c.docker.validate().unwrap().run.oom_score_adj,
                adj as u16,
                "{adj}"
            );
        }
        let mut c = valid();
        c.docker.oom_score_adj = -1;
        let e = warnings_of(&c).unwrap_err().to_string();
        assert!(
            e.contains("docker.oom_score_adj") && e.contains("-1 is not between 1 and 1000"),
            "{e}"
        );
    }

    #[test]
    fn registries_port_range_and_restart_policy_are_checked() {
        let settings = |edit: fn(&mut DockerConfig)| {
            let mut c = valid();
            edit(&mut c.docker);
            c.docker.validate()
        };
        for bad in [
            (|d: &mut DockerConfig| d.allowed_registries = vec!["localhost:5000".into()])
                as fn(&mut DockerConfig),
            |d| d.allowed_registries = vec!["127.0.0.1:5000".into()],
            |d| d.allowed_registries = vec!["reg example".into()],
            |d| d.allowed_registries = vec!["https://reg.example.com".into()],
            |d| d.host_port_range = "30000-20000".into(),
            |d| d.host_port_range = "0-100".into(),
            |d| d.host_port_range = "1-70000".into(),
            |d| d.host_port_range = "a-b".into(),
            |d| d.restart_policy = "sometimes".into(),
            |d| d.restart_policy = "on-failure:".into(),
            |d| d.restart_policy = "on-failure:-1".into(),
            |d| d.restart_policy = "on-failure:0".into(),
        ] {
            assert!(settings(bad).is_err(), "{:?}", {
                let mut c = valid();
                bad(&mut c.docker);
                c.docker
            });
        }
        let s = settings(|d| {
            d.allowed_registries = vec!["Reg.Example.com:5000".into(), "index.docker.io".into()];
            d.host_port_range = "20000-29999".into();
            d.restart_policy = "on-failure:3".into();
        })
        .unwrap();
        assert_eq!(
            s.run.allowed_registries,
            vec!["reg.example.com:5000", "docker.io"]
        );
        assert_eq!(s.run.host_port_range, Some((20000, 29999)));
        assert_eq!(s.run.restart_policy, "on-failure:3");
        let defaults = settings(|_| {}).unwrap();
        assert_eq!(defaults.run.restart_policy, "unless-stopped");
        assert_eq!(defaults.run.host_port_range, None);
        for policy in ["no", "always", "unless-stopped", "on-failure"] {
            let mut c = valid();
            c.docker.restart_policy = policy.into();
            assert!(c.docker.validate().is_ok(), "{policy}");
        }
    }

    #[test]
    fn url_host_handles_ports_userinfo_and_ipv6() {
        assert_eq!(
            url_host("https://Platform.Example:8443/api").as_deref(),
            Some("platform.example")
        );
        assert_eq!(url_host("http://[::1]:8080/").as_deref(), Some("::1"));
        assert_eq!(
            url_host("http://u:p@h.example/").as_deref(),
            Some("h.example")
        );
        assert_eq!(url_host("http://10.0.0.1").as_deref(), Some("10.0.0.1"));
    }

    #[test]
    fn validation_gives_typed_settings() {
        let mut c = valid();
        c.central_platform.api_url = "https://p.example/base/".into();
        c.central_platform.backoff_initial_ms = 250;
        c.frp.api_remote_port = 7001;
        c.gpu.nvml_library_path = "/opt/libnvidia-ml.so.1".into();
        c.docker.runtime = "nvidia".into();
        c.docker.publish_address = "::1".into();
        let s = c.validate().unwrap().settings;
        assert_eq!(s.api.listen, "127.0.0.1:9200".parse().unwrap());
        assert_eq!(s.api.idle_timeout, Duration::from_secs(15));
        assert_eq!(s.api.io_threads, 8);
        assert_eq!(
            s.platform.api_url.as_deref(),
            Some("https://p.example/base")
        );
        assert_eq!(s.platform.backoff_initial, Duration::from_millis(250));
        assert_eq!(s.platform.ca_file, None);
        assert_eq!(s.frp.server_addr, None);
        assert_eq!(s.frp.api_remote_port, Some(7001));
        assert_eq!(
            s.gpu.nvml_library_path,
            Some(PathBuf::from("/opt/libnvidia-ml.so.1"))
        );
        assert_eq!(s.gpu.sample_interval, Duration::from_secs(2));
        assert_eq!(s.docker.pull_timeout, Duration::from_secs(1800));
        assert_eq!(s.docker.run.runtime.as_deref(), Some("nvidia"));
        assert_eq!(
            s.docker.run.publish_address,
            "::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            s.docker.run.managed_label.to_string(),
            "io.utopia.managed=true"
        );
        assert!(!s.redacted_yaml().contains(TOKEN));
        let standalone = valid().validate().unwrap().settings;
        assert_eq!(standalone.platform.api_url, None);
        assert_eq!(standalone.docker.run.runtime, None);
    }
}
