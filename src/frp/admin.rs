//! frpc's admin API (`webServer`) on loopback: `GET /api/status` (the proxies and their remote
//! addresses) and `GET /api/reload?strictConfig=true` (re-read the config file: changed proxies
//! restart, unchanged ones keep running). Basic auth with the per-start password, sent only
//! once [`check_admin_listener`] found the port held by this frpc (never to a local user who
//! bound it first); every call is bounded by [`ADMIN_TIMEOUT`]; no proxy from the environment
//! is used for loopback.

use super::listener::{check_admin_listener, HolderNames, ListenerError};
use crate::state::ProxyStatus;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The most one admin API call may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest answer read from the admin API.
const MAX_ANSWER: u64 = 1024 * 1024;

/// Why an admin API call gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// No connection, or no answer in time (an frpc built without the admin API, or not up yet).
    Unreachable(String),
    /// An answer other than 200.
    Status { code: u16, body: String },
    /// A 200 whose body is not frpc's `/api/status` JSON.
    BadAnswer(String),
    /// The admin port is held by another process than this frpc: nothing was sent.
    NotFrpc(String),
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::Unreachable(why) => write!(f, "frpc admin API unreachable: {why}"),
            AdminError::Status { code, body } if body.is_empty() => {
                write!(f, "frpc admin API answered HTTP {code}")
            }
            AdminError::Status { code, body } => {
                write!(f, "frpc admin API answered HTTP {code}: {body}")
            }
            AdminError::BadAnswer(why) => write!(f, "frpc admin API: unreadable answer: {why}"),
            AdminError::NotFrpc(why) => write!(f, "frpc admin API not called: {why}"),
        }
    }
}

impl std::error::Error for AdminError {}

/// A client of one frpc's admin API (one per frpc start: the password changes).
pub struct AdminClient {
    agent: ureq::Agent,
    base: String,
    authorization: String,
    port: u16,
    /// frpc's pid: the process that must hold the admin port.
    frpc_pid: u32,
    /// Names another process holding the port (shared by every frpc start).
    holders: Arc<HolderNames>,
}

impl AdminClient {
    /// A client of the admin API that frpc `frpc_pid` serves on `127.0.0.1:port`; `holders`
    /// names another process holding the port.
    pub fn new(
        port: u16,
        user: &str,
        password: &str,
        frpc_pid: u32,
        holders: Arc<HolderNames>,
    ) -> AdminClient {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(ADMIN_TIMEOUT))
            .timeout_connect(Some(ADMIN_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .build();
        AdminClient {
            agent: config.into(),
            base: format!("http://127.0.0.1:{port}"),
            authorization: format!(
                "Basic {}",
                crate::base64::encode(format!("{user}:{password}").as_bytes())
            ),
            port,
            frpc_pid,
            holders,
        }
    }

    /// `GET /api/status`: every proxy frpc runs, in name order.
    pub fn status(&self) -> Result<Vec<ProxyStatus>, AdminError> {
        let body = self.get("/api/status")?;
        parse_status(&body)
    }

    /// `GET /api/reload?strictConfig=true`: frpc re-reads its config file.
    pub fn reload(&self) -> Result<(), AdminError> {
        self.get("/api/reload?strictConfig=true").map(|_| ())
    }

    fn get(&self, path: &str) -> Result<String, AdminError> {
        check_admin_listener(self.port, self.frpc_pid, &self.holders).map_err(|e| match e {
            ListenerError::NotFrpc { .. } => AdminError::NotFrpc(e.to_string()),
            ListenerError::NotListening | ListenerError::Unreadable(_) => {
                AdminError::Unreachable(e.to_string())
            }
        })?;
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .header("Authorization", &self.authorization)
            .call()
            .map_err(|e| AdminError::Unreachable(e.to_string()))?;
        let code = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|e| AdminError::Unreachable(e.to_string()))?;
        if code != 200 {
            let body: String = body.trim().chars().take(300).collect();
            return Err(AdminError::Status { code, body });
        }
        Ok(body)
    }
}

/// One proxy in frpc's `/api/status` answer.
#[derive(serde::Deserialize)]
struct RawProxy {
    name: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    err: String,
    #[serde(default)]
    local_addr: String,
    #[serde(default)]
    remote_addr: String,
}

/// frpc's `/api/status`: `{"tcp": [proxy, ...], "stcp": [...], ...}` grouped by type.
pub fn parse_status(body: &str) -> Result<Vec<ProxyStatus>, AdminError> {
    let groups: BTreeMap<String, Vec<RawProxy>> =
        serde_json::from_str(body).map_err(|e| AdminError::BadAnswer(e.to_string()))?;
    let mut proxies: Vec<ProxyStatus> = groups
        .into_iter()
        .flat_map(|(group, list)| {
            list.into_iter().map(move |p| ProxyStatus {
                name: p.name,
                kind: if p.kind.is_empty() {
                    group.clone()
                } else {
                    p.kind
                },
                status: p.status,
                error: (!p.err.is_empty()).then_some(p.err),
                local_addr: p.local_addr,
                remote_addr: (!p.remote_addr.is_empty()).then_some(p.remote_addr),
            })
        })
        .collect();
    proxies.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(proxies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_flattened_and_sorted() {
        let body = r#"{"tcp":[{"name":"n1.c1-80-tcp","type":"tcp","status":"running","err":"",
            "local_addr":"127.0.0.1:18080","plugin":"","remote_addr":"frps.example:40001"},
            {"name":"n1.agent-api","type":"tcp","status":"start error","err":"port already used",
            "local_addr":"127.0.0.1:8080","plugin":"","remote_addr":":7001"}],
            "stcp":[{"name":"n1.x","type":"stcp","status":"running","err":"",
            "local_addr":"127.0.0.1:1","plugin":"","remote_addr":""}]}"#;
        let proxies = parse_status(body).unwrap();
        let names: Vec<&str> = proxies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["n1.agent-api", "n1.c1-80-tcp", "n1.x"]);
        assert_eq!(proxies[0].error.as_deref(), Some("port already used"));
        assert_eq!(
            proxies[1].remote_addr.as_deref(),
            Some("frps.example:40001")
        );
        assert_eq!(proxies[1].error, None);
        assert_eq!(proxies[2].remote_addr, None);
        assert_eq!(parse_status("{}").unwrap(), []);
        assert!(matches!(
            parse_status("<html>"),
            Err(AdminError::BadAnswer(_))
        ));
    }
}
