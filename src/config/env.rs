//! The environment variables that override config keys: one table, [`ENV_OVERRIDES`], drives
//! the overriding ([`Config::apply_env`]), the scrubbing of the variables from the process
//! environment once read ([`remove_env_overrides`]: they carry secrets every child would
//! inherit), the redaction of the secrets they set, and the `ENVIRONMENT` part of `--help`.

use super::file::{Config, LogLevel};
use super::{ConfigError, Origin};

/// What an override sets.
#[derive(Clone, Copy)]
pub(super) enum Target {
    /// A text key.
    Text(fn(&mut Config) -> &mut String),
    /// A text key that holds a secret: redacted wherever the config is shown.
    Secret(fn(&mut Config) -> &mut String),
    /// `log_level`, parsed.
    LogLevel,
    /// An integer key (validated with the rest of the config).
    Integer(fn(&mut Config) -> &mut i64),
}

/// One environment variable and the key it overrides.
pub struct EnvOverride {
    pub name: &'static str,
    /// The config key, as `--help` and errors name it.
    pub key: &'static str,
    /// What `--help` adds after the key.
    pub note: &'static str,
    pub(super) target: Target,
}

/// Environment variables that override config keys (empty values are ignored).
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    EnvOverride {
        name: "PHOENIX_API_URL",
        key: "central_platform.api_url",
        note: "",
        target: Target::Text(|c| &mut c.central_platform.api_url),
    },
    EnvOverride {
        name: "PHOENIX_BOOTSTRAP_TOKEN",
        key: "central_platform.bootstrap_token",
        note: "",
        target: Target::Secret(|c| &mut c.central_platform.bootstrap_token),
    },
    EnvOverride {
        name: "PHOENIX_FRP_SERVER",
        key: "frp.server_addr",
        note: "",
        target: Target::Text(|c| &mut c.frp.server_addr),
    },
    EnvOverride {
        name: "PHOENIX_FRP_TOKEN",
        key: "frp.token",
        note: "",
        target: Target::Secret(|c| &mut c.frp.token),
    },
    EnvOverride {
        name: "PHOENIX_FRP_USER",
        key: "frp.user",
        note: "",
        target: Target::Text(|c| &mut c.frp.user),
    },
    EnvOverride {
        name: "PHOENIX_FRP_API_SECRET_KEY",
        key: "frp.api_secret_key",
        note: "",
        target: Target::Secret(|c| &mut c.frp.api_secret_key),
    },
    EnvOverride {
        name: "PHOENIX_AUTH_TOKEN",
        key: "agent_api.auth_token",
        note: "",
        target: Target::Secret(|c| &mut c.agent_api.auth_token),
    },
    EnvOverride {
        name: "PHOENIX_DOCKER_DEFAULT_MEMORY",
        key: "docker.default_memory",
        note: " (90% of the host, or 64g)",
        target: Target::Text(|c| &mut c.docker.default_memory),
    },
    EnvOverride {
        name: "PHOENIX_DOCKER_STORAGE_SIZE",
        key: "docker.storage_size",
        note: " (e.g. 50g)",
        target: Target::Text(|c| &mut c.docker.storage_size),
    },
    EnvOverride {
        name: "PHOENIX_DOCKER_OOM_SCORE_ADJ",
        key: "docker.oom_score_adj",
        note: " (1-1000)",
        target: Target::Integer(|c| &mut c.docker.oom_score_adj),
    },
    EnvOverride {
        name: "PHOENIX_LOG_LEVEL",
        key: "log_level",
        note: " (error, warn, info, debug, trace)",
        target: Target::LogLevel,
    },
];

/// Removes the [`ENV_OVERRIDES`] variables from this process's environment, once the config has
/// read them: they carry secrets (the bootstrap, frp and API tokens, the stcp secret), and every child the agent
/// runs (the docker CLI) would otherwise inherit them. Call it while the process has a
/// single thread (changing the environment races with other threads reading it).
pub fn remove_env_overrides() {
    for o in ENV_OVERRIDES {
        std::env::remove_var(o.name);
    }
}

/// A warning for each `PHOENIX_*` variable among `names` that the agent does not read: a typo
/// (`PHOENIX_AUTH_TOKN`) would otherwise be ignored in silence.
pub fn unknown_variables(names: impl Iterator<Item = String>) -> Vec<super::ConfigWarning> {
    let mut unknown: Vec<String> = names
        .filter(|n| n.starts_with("PHOENIX_") && !ENV_OVERRIDES.iter().any(|o| o.name == n))
        .collect();
    unknown.sort();
    unknown
        .into_iter()
        .map(|name| {
            super::ConfigWarning(format!(
                "environment variable {name} is not one the agent reads; ignored (the agent \
                 reads {})",
                ENV_OVERRIDES
                    .iter()
                    .map(|o| o.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
        .collect()
}

/// The `ENVIRONMENT` lines of `--help`, one per override.
pub fn help_lines() -> String {
    ENV_OVERRIDES
        .iter()
        .map(|o| format!("    {:<24} {}{}\n", o.name, o.key, o.note))
        .collect()
}

impl Config {
    /// Applies the `PHOENIX_*` overrides read through `lookup`.
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        self.apply_env_tracked(lookup).map(|_| ())
    }

    /// [`Config::apply_env`], returning the keys it set and the variable that set each, so
    /// that an error about one of those values names the variable, not the file.
    pub fn apply_env_tracked(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<(&'static str, &'static str)>, ConfigError> {
        let mut applied = Vec::new();
        for o in ENV_OVERRIDES {
            let Some(value) = lookup(o.name).filter(|v| !v.is_empty()) else {
                continue;
            };
            match o.target {
                Target::Text(field) | Target::Secret(field) => *field(self) = value,
                Target::Integer(field) => {
                    *field(self) = value
                        .trim()
                        .parse()
                        .map_err(|_| ConfigError::InvalidValue {
                            origin: Origin::Env(o.name),
                            key: o.key,
                            message: format!("{value:?} is not an integer"),
                        })?;
                }
                Target::LogLevel => {
                    self.log_level =
                        LogLevel::parse(&value).ok_or_else(|| ConfigError::InvalidValue {
                            origin: Origin::Env(o.name),
                            key: o.key,
                            message: format!(
                                "{value:?} is not one of error, warn, info, debug, trace"
                            ),
                        })?;
                }
            }
            applied.push((o.key, o.name));
        }
        Ok(applied)
    }

    /// Every secret the overrides can set, replaced (when set) by `redacted`.
    pub(super) fn hide_secrets(&mut self, redacted: &str) {
        for o in ENV_OVERRIDES {
            if let Target::Secret(field) = o.target {
                let secret = field(self);
                if !secret.is_empty() {
                    *secret = redacted.to_string();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{valid, TOKEN};

    #[test]
    fn every_listed_override_is_applied_and_documented() {
        // ENV_OVERRIDES drives the scrubbing of secrets from the environment: a variable that
        // apply_env reads but the list lacks would stay visible to every child process.
        for EnvOverride {
            name, key, target, ..
        } in ENV_OVERRIDES
        {
            let mut c = valid();
            let before = c.redacted_yaml() + &c.agent_api.auth_token;
            let value = match *name {
                "PHOENIX_LOG_LEVEL" => "trace",
                "PHOENIX_DOCKER_OOM_SCORE_ADJ" => "321",
                _ => "https://x.example/v",
            };
            c.apply_env(|n| (n == *name).then(|| value.to_string()))
                .unwrap();
            let after = c.redacted_yaml() + &c.agent_api.auth_token;
            assert_ne!(before, after, "{name} changes nothing");
            let leaf = key.rsplit('.').next().unwrap();
            assert!(after.contains(leaf), "{name} is listed for {key}");
            if !matches!(target, Target::Secret(_)) {
                assert!(after.contains(value), "{name} sets {key}");
            }
            assert!(crate::cli::help().contains(name), "--help lacks {name}");
        }
        // ...and nothing outside the list is read.
        let mut c = valid();
        c.apply_env(|n| {
            assert!(ENV_OVERRIDES.iter().any(|o| o.name == n), "{n} unlisted");
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
        let mut c = valid();
        let docker = |name: &str| match name {
            "PHOENIX_DOCKER_DEFAULT_MEMORY" => Some("64g".to_string()),
            "PHOENIX_DOCKER_STORAGE_SIZE" => Some("50g".to_string()),
            "PHOENIX_DOCKER_OOM_SCORE_ADJ" => Some(" 800 ".to_string()),
            _ => None,
        };
        c.apply_env(docker).unwrap();
        let run = c.validate().unwrap().settings.docker.run;
        assert_eq!(
            run.default_memory,
            Some(crate::config::DefaultMemory::Mib(65536))
        );
        assert_eq!(run.storage_size_mib, Some(51200));
        assert_eq!(run.oom_score_adj, 800);
        let not_a_number =
            |name: &str| (name == "PHOENIX_DOCKER_OOM_SCORE_ADJ").then(|| "high".to_string());
        let e = valid().apply_env(not_a_number).unwrap_err().to_string();
        assert!(
            e.starts_with("PHOENIX_DOCKER_OOM_SCORE_ADJ: \"high\" is not an integer"),
            "{e}"
        );
    }

    #[test]
    fn unknown_phoenix_variables_are_warned_about() {
        let names = [
            "PHOENIX_AUTH_TOKN",
            "PHOENIX_AUTH_TOKEN",
            "HOME",
            "PHOENIX_X",
        ];
        let w = unknown_variables(names.iter().map(|n| n.to_string()));
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0]
            .0
            .starts_with("environment variable PHOENIX_AUTH_TOKN is not one"));
        assert!(
            w[0].0.contains("PHOENIX_AUTH_TOKEN"),
            "the known ones are listed"
        );
        assert!(w[1].0.contains("PHOENIX_X"));
    }

    #[test]
    fn an_error_names_the_variable_that_set_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, "agent_api:\n  auth_token: \"0123456789abcdef0\"\n").unwrap();
        let env = |name: &str| (name == "PHOENIX_AUTH_TOKEN").then(|| "short".to_string());
        let e = Config::load_with(&path, env).unwrap_err().to_string();
        assert!(
            e.starts_with("PHOENIX_AUTH_TOKEN: must be at least 16 characters"),
            "{e}"
        );
        std::fs::write(&path, "agent_api:\n  auth_token: short\n").unwrap();
        let e = Config::load_with(&path, |_| None).unwrap_err().to_string();
        assert!(
            e.contains("`agent_api.auth_token`") && e.contains(&path.display().to_string()),
            "{e}"
        );
        assert!(!e.contains("PHOENIX_AUTH_TOKEN:"), "{e}");
        let level = |name: &str| (name == "PHOENIX_LOG_LEVEL").then(|| "loud".to_string());
        let e = Config::load_with(&path, level).unwrap_err().to_string();
        assert!(
            e.starts_with("PHOENIX_LOG_LEVEL: \"loud\" is not one of"),
            "{e}"
        );
    }

    #[test]
    fn help_lists_every_override_in_columns() {
        let help = help_lines();
        assert!(help.contains("    PHOENIX_API_URL          central_platform.api_url\n"));
        assert!(help.contains(
            "    PHOENIX_LOG_LEVEL        log_level (error, warn, info, debug, trace)\n"
        ));
        assert_eq!(help.lines().count(), ENV_OVERRIDES.len());
    }
}
