//! The frp tunnel: a supervised `frpc` through which the platform reaches the agent API and
//! renters reach their containers' ports (see README "Tunnel").
//!
//! - [`ApiProxy`] and [`resolve_api_proxy`]: how the agent API is published on frps.
//! - [`frpc_config`]: the TOML file frpc reads, written atomically with mode 0600.
//! - [`admin`]: frpc's admin API (status, reload).
//! - [`output`]: frpc's output into the agent's log, secrets scrubbed.
//! - [`supervisor`]: the `frp` thread that starts, watches, reloads and stops frpc.

pub mod admin;
pub mod frpc_config;
pub mod output;
pub mod supervisor;

pub use supervisor::start;

use crate::config::{ApiProxyType, FrpSettings};
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

/// The API proxy from the settings, with `assigned_remote_port` (the tcp port the platform
/// assigned at registration) used when `frp.api_remote_port` names none. The config keys win
/// over what the platform said; `auto` is tcp until the platform's answer says otherwise.
pub fn resolve_api_proxy(
    settings: &FrpSettings,
    assigned_remote_port: Option<u16>,
) -> Result<ApiProxy, ApiProxyError> {
    match settings.api_proxy_type {
        ApiProxyType::Auto | ApiProxyType::Tcp => Ok(ApiProxy::Tcp {
            remote_port: settings.api_remote_port.or(assigned_remote_port),
        }),
        ApiProxyType::Stcp => {
            let secret_key = settings
                .api_secret_key
                .clone()
                .ok_or(ApiProxyError::NoSecretKey)?;
            Ok(ApiProxy::Stcp {
                secret_key,
                allow_users: settings.api_allow_users.clone(),
            })
        }
    }
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
        }
    }

    #[test]
    fn config_keys_win_over_the_platform() {
        let auto = settings(ApiProxyType::Auto);
        assert_eq!(
            resolve_api_proxy(&auto, Some(7001)),
            Ok(ApiProxy::Tcp {
                remote_port: Some(7001)
            })
        );
        let mut tcp = settings(ApiProxyType::Tcp);
        tcp.api_remote_port = Some(7002);
        assert_eq!(
            resolve_api_proxy(&tcp, Some(7001)),
            Ok(ApiProxy::Tcp {
                remote_port: Some(7002)
            })
        );
        let mut stcp = settings(ApiProxyType::Stcp);
        assert_eq!(
            resolve_api_proxy(&stcp, None),
            Err(ApiProxyError::NoSecretKey)
        );
        stcp.api_secret_key = Some("s".into());
        stcp.api_allow_users = vec!["platform".into()];
        let proxy = resolve_api_proxy(&stcp, Some(7001)).unwrap();
        assert_eq!(proxy.kind(), "stcp");
        assert_eq!(proxy.secret(), Some("s"));
    }
}
