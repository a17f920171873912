//! The frp tunnel: a supervised `frpc` through which the platform reaches the agent API and
//! renters reach their containers' ports (see README "Tunnel").
//!
//! - [`ApiProxy`] and [`resolve_api_proxy`]: how the agent API is published on frps.
//! - [`frpc_config`]: the TOML file frpc reads, written atomically with mode 0600.
//! - [`admin`]: frpc's admin API (status, reload).
//! - [`listener`]: who holds the admin port (the password goes to frpc only).
//! - [`output`]: frpc's output into the agent's log, secrets scrubbed.
//! - [`supervisor`]: the `frp` thread that starts, watches, reloads and stops frpc.

pub mod admin;
pub mod frpc_config;
pub mod listener;
pub mod output;
mod sock_diag;
pub mod supervisor;

pub use supervisor::start;

use crate::config::{ApiProxyType, FrpSettings};
use crate::state::PlatformApiProxy;
use std::fmt;

/// How the agent API is published on frps (the proxy `agent-api`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiProxy {
    /// A public port on frps; `None`: frps chooses.
    Tcp { remote_port: Option<u16> },
    /// Secret TCP: only a visitor presenting `secret_key`, as one of `allow_users`, reaches it.
    Stcp {
        secret_key: String,
        allow_users: Vec<String>,
    },
}

impl ApiProxy {
    /// `tcp` or `stcp`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiProxy::Tcp { .. } => "tcp",
            ApiProxy::Stcp { .. } => "stcp",
        }
    }

    /// The secret frpc is given for this proxy, if any (scrubbed from frpc's output).
    pub fn secret(&self) -> Option<&str> {
        match self {
            ApiProxy::Tcp { .. } => None,
            ApiProxy::Stcp { secret_key, .. } => Some(secret_key),
        }
    }
}

/// Why the API proxy cannot be decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiProxyError {
    /// stcp without a secret key from the configuration or the platform.
    NoSecretKey,
}

impl fmt::Display for ApiProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiProxyError::NoSecretKey => f.write_str(
                "frp.api_proxy_type is stcp but there is no secret key: set frp.api_secret_key \
                 (or PHOENIX_FRP_API_SECRET_KEY), or let the platform give one at registration",
            ),
        }
    }
}

impl std::error::Error for ApiProxyError {}

/// The API proxy from the settings and `assigned` (what the platform's registration answer
/// said, if anything). The config keys win over the answer, each on its own:
/// `frp.api_proxy_type` `auto` is the platform's type (tcp when it said nothing);
/// `frp.api_remote_port`, `frp.api_secret_key`, `frp.api_allow_users` when set, else the
/// platform's value for that type.
pub fn resolve_api_proxy(
    settings: &FrpSettings,
    assigned: Option<&PlatformApiProxy>,
) -> Result<ApiProxy, ApiProxyError> {
    let stcp = match settings.api_proxy_type {
        ApiProxyType::Tcp => false,
        ApiProxyType::Stcp => true,
        ApiProxyType::Auto => matches!(assigned, Some(PlatformApiProxy::Stcp { .. })),
    };
    if !stcp {
        let assigned_port = match assigned {
            Some(PlatformApiProxy::Tcp { remote_port }) => *remote_port,
            _ => None,
        };
        return Ok(ApiProxy::Tcp {
            remote_port: settings.api_remote_port.or(assigned_port),
        });
    }
    let (assigned_key, assigned_users) = match assigned {
        Some(PlatformApiProxy::Stcp {
            secret_key,
            allow_users,
        }) => (Some(secret_key), allow_users.as_slice()),
        _ => (None, &[][..]),
    };
    let secret_key = settings
        .api_secret_key
        .clone()
        .or_else(|| assigned_key.cloned())
        .ok_or(ApiProxyError::NoSecretKey)?;
    let allow_users = if settings.api_allow_users.is_empty() {
        assigned_users.to_vec()
    } else {
        settings.api_allow_users.clone()
    };
    Ok(ApiProxy::Stcp {
        secret_key,
        allow_users,
    })
}

/// What an operator should know about how the tunnel is secured, for `/health` (and the
/// heartbeat's tunnel): each warning, and whether it is logged here (the configuration already
/// warned about the others at start).
pub fn security_warnings(settings: &FrpSettings, api_proxy: &ApiProxy) -> Vec<(String, bool)> {
    let mut warnings = Vec::new();
    if let ApiProxy::Tcp { .. } = api_proxy {
        warnings.push((
            "the agent API is published with tcp on a public port of frps: the leg from the \
             platform to frps is plain HTTP (the bearer token crosses it in clear); use stcp \
             (frp.api_proxy_type, or the platform's frp.api_proxy) to keep it encrypted and off \
             the public internet"
                .to_string(),
            true,
        ));
    }
    if settings.tls_ca_file.is_none() {
        warnings.push((
            "frp.tls_ca_file is empty: frpc does not verify frps's certificate, so a machine in \
             between can pose as frps"
                .to_string(),
            false,
        ));
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn settings(kind: ApiProxyType) -> FrpSettings {
        FrpSettings {
            server_addr: Some("frps.example.com".into()),
            server_port: 7000,
            token: "t".into(),
            user: Some("u".into()),
            frpc_path: PathBuf::from("/usr/local/bin/frpc"),
            work_dir: PathBuf::from("/tmp/frp"),
            admin_port: 7400,
            api_proxy_type: kind,
            api_remote_port: None,
            api_secret_key: None,
            api_allow_users: Vec::new(),
            tls_ca_file: None,
            expose_container_ports: true,
            restart_backoff_max: std::time::Duration::from_secs(60),
        }
    }

    fn tcp(port: Option<u16>) -> ApiProxy {
        ApiProxy::Tcp { remote_port: port }
    }

    #[test]
    fn config_keys_win_over_the_platform() {
        let said_tcp = PlatformApiProxy::Tcp {
            remote_port: Some(7001),
        };
        let said_stcp = PlatformApiProxy::Stcp {
            secret_key: "platform-secret".into(),
            allow_users: vec!["platform".into()],
        };
        // auto: what the platform said; tcp when it said nothing.
        let auto = settings(ApiProxyType::Auto);
        assert_eq!(resolve_api_proxy(&auto, None), Ok(tcp(None)));
        assert_eq!(
            resolve_api_proxy(&auto, Some(&said_tcp)),
            Ok(tcp(Some(7001)))
        );
        assert_eq!(
            resolve_api_proxy(&auto, Some(&said_stcp)),
            Ok(ApiProxy::Stcp {
                secret_key: "platform-secret".into(),
                allow_users: vec!["platform".into()],
            })
        );
        // Each key set wins over the platform's value.
        let mut tcp_keys = settings(ApiProxyType::Tcp);
        tcp_keys.api_remote_port = Some(7002);
        assert_eq!(
            resolve_api_proxy(&tcp_keys, Some(&said_tcp)),
            Ok(tcp(Some(7002)))
        );
        assert_eq!(
            resolve_api_proxy(&tcp_keys, Some(&said_stcp)),
            Ok(tcp(Some(7002)))
        );
        let mut auto_port = settings(ApiProxyType::Auto);
        auto_port.api_remote_port = Some(7003);
        assert_eq!(
            resolve_api_proxy(&auto_port, Some(&said_tcp)),
            Ok(tcp(Some(7003)))
        );
        let mut stcp = settings(ApiProxyType::Stcp);
        assert_eq!(
            resolve_api_proxy(&stcp, None),
            Err(ApiProxyError::NoSecretKey)
        );
        // A tcp answer gives stcp no secret.
        assert_eq!(
            resolve_api_proxy(&stcp, Some(&said_tcp)),
            Err(ApiProxyError::NoSecretKey)
        );
        assert_eq!(
            resolve_api_proxy(&stcp, Some(&said_stcp)),
            Ok(ApiProxy::Stcp {
                secret_key: "platform-secret".into(),
                allow_users: vec!["platform".into()],
            })
        );
        stcp.api_secret_key = Some("s".into());
        let proxy = resolve_api_proxy(&stcp, Some(&said_stcp)).unwrap();
        assert_eq!(proxy.secret(), Some("s"));
        assert_eq!(
            proxy,
            ApiProxy::Stcp {
                secret_key: "s".into(),
                allow_users: vec!["platform".into()],
            }
        );
        stcp.api_allow_users = vec!["ops".into()];
        let proxy = resolve_api_proxy(&stcp, Some(&said_stcp)).unwrap();
        assert_eq!(
            proxy,
            ApiProxy::Stcp {
                secret_key: "s".into(),
                allow_users: vec!["ops".into()],
            }
        );
    }

    #[test]
    fn tcp_and_an_unverified_frps_are_warned_about() {
        let mut s = settings(ApiProxyType::Auto);
        let warnings = security_warnings(&s, &tcp(None));
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].0.contains("plain HTTP") && warnings[0].1);
        assert!(warnings[1].0.contains("does not verify") && !warnings[1].1);
        s.tls_ca_file = Some(PathBuf::from("/etc/frp/ca.pem"));
        let stcp = ApiProxy::Stcp {
            secret_key: "k".into(),
            allow_users: vec![],
        };
        assert!(security_warnings(&s, &stcp).is_empty());
        assert_eq!(security_warnings(&s, &tcp(Some(7001))).len(), 1);
    }
}
