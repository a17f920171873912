//! The agent's configuration, typed at the boundary.
//!
//! - [`file`](mod@file): the YAML model and its defaults (what the operator writes).
//! - [`env`](mod@env): the one table of `PHOENIX_*` environment overrides, which drives overriding,
//!   scrubbing the variables from the environment, redaction and `--help`.
//! - [`validate`]: each section checked and turned into its typed settings.
//! - [`settings`]: the typed [`Settings`] the components take (socket addresses, durations, a
//!   parsed managed label): no consumer converts or checks a value again.
//!
//! Loading never half-succeeds: [`Config::load`] returns fully validated settings or a
//! [`ConfigError`] that names the file, the key and, for YAML syntax errors, the line.

pub mod env;
pub mod file;
pub mod messages;
pub mod settings;
pub mod validate;

pub use env::{remove_env_overrides, EnvOverride, ENV_OVERRIDES};
pub use file::{
    ApiConfig, ApiProxyType, Config, DockerConfig, FrpConfig, GpuConfig, GpuMode, LogLevel,
    PlatformConfig, PrometheusConfig,
};
pub use settings::{
    ApiSettings, DefaultMemory, DockerSettings, FrpSettings, GpuSettings, ManagedLabel,
    PlatformSettings, RunSettings, Settings,
};
pub use validate::{url_host, Validated};

use std::fmt;
use std::path::{Path, PathBuf};

/// Where the agent looks for its config when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/utopia/agent-config.yaml";

/// The placeholder token of the shipped example config: accepted, but the agent warns about it.
pub const EXAMPLE_AUTH_TOKEN: &str = "change-me-dev-token-0123456789abcdef";

/// Shortest bearer token the API accepts.
pub const MIN_AUTH_TOKEN_LEN: usize = 16;

const REDACTED: &str = "<redacted>";

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
    /// [`ConfigError::Invalid`] with where the value came from, in the user's words: the
    /// environment variable that set it, or the config file.
    InvalidValue {
        origin: Origin,
        key: &'static str,
        message: String,
    },
}

/// Where a config value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file (or its default, when the file does not set the key).
    File(PathBuf),
    /// An environment override (`PHOENIX_*`).
    Env(&'static str),
}

impl ConfigError {
    /// The config key a value error is about.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::InvalidValue { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Says where an [`ConfigError::Invalid`] value came from: `env` lists the keys the
    /// environment set (key, variable); the others came from the file at `path`.
    fn located(self, path: &Path, env: &[(&'static str, &'static str)]) -> ConfigError {
        match self {
            ConfigError::Invalid { key, message } => {
                let origin = env
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, var)| Origin::Env(var))
                    .unwrap_or_else(|| Origin::File(path.to_path_buf()));
                ConfigError::InvalidValue {
                    origin,
                    key,
                    message,
                }
            }
            other => other,
        }
    }
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
            ConfigError::InvalidValue {
                origin: Origin::Env(var),
                key,
                message,
            } => write!(
                f,
                "{var}: {message} (it overrides `{key}` of the config file)"
            ),
            ConfigError::InvalidValue {
                origin: Origin::File(path),
                key,
                message,
            } => write!(f, "invalid `{key}` in {}: {message}", path.display()),
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

impl Config {
    /// Reads, parses, applies the process environment's overrides and validates.
    /// A `PHOENIX_*` variable the agent does not read (a typo) is a warning.
    pub fn load(path: &Path) -> Result<(Settings, Vec<ConfigWarning>), ConfigError> {
        let (settings, mut warnings) = Config::load_with(path, |name| std::env::var(name).ok())?;
        warnings.extend(env::unknown_variables(
            std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned()),
        ));
        Ok((settings, warnings))
    }

    /// [`Config::load`] with the overrides read through `lookup` (a reload applies the ones
    /// the agent started with: they are gone from its environment by then).
    pub fn load_with(
        path: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(Settings, Vec<ConfigWarning>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let from_env = config.apply_env_tracked(lookup)?;
        let Validated {
            settings,
            mut warnings,
        } = config.validate().map_err(|e| e.located(path, &from_env))?;
        warnings.extend(file_permission_warning(path));
        Ok((settings, warnings))
    }

    /// Parses YAML text; unknown keys and wrong types are errors. An empty document is all defaults.
    pub fn parse(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml::from_str(text).map_err(|e| messages::yaml_error(text, &e.to_string()))
    }

    /// The config with every secret replaced, safe to print or log.
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        copy.hide_secrets(REDACTED);
        copy
    }

    /// The redacted config as YAML.
    pub fn redacted_yaml(&self) -> String {
        serde_yaml::to_string(&self.redacted())
            .unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
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
pub(crate) mod tests {
    use super::*;

    pub(crate) const TOKEN: &str = "0123456789abcdef0123";

    pub(crate) fn valid() -> Config {
        let mut c = Config::default();
        c.agent_api.auth_token = TOKEN.to_string();
        c
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
    fn shipped_config_lists_every_default() {
        let shipped = Config::parse(include_str!("../../conf/agent-config.yaml")).unwrap();
        let mut expected = Config::default();
        expected.agent_api.auth_token = EXAMPLE_AUTH_TOKEN.to_string();
        assert_eq!(shipped, expected);
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
