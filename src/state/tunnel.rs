//! The frp tunnel as the supervisor last saw it (`GET /api/v1/tunnels`, the heartbeat's
//! `tunnel`), and the container ports it publishes (written by the container runner, read by the
//! supervisor).

use serde::Serialize;

/// Where the tunnel stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    /// frp is switched off (`frp.server_addr` empty).
    Disabled,
    /// frpc is starting (or waiting for the node id) and has not logged in yet.
    Starting,
    /// frpc is logged in to frps.
    Connected,
    /// frpc exited or lost frps and is being restarted, or its login is being retried.
    Reconnecting,
    /// frpc cannot run (missing, not executable, no config can be written); retried.
    Failed,
}

/// One proxy as frpc's `/api/status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProxyStatus {
    /// The name as frpc reports it (frps prefixes it with the frp user: `user.name`).
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// frpc's word: `new`, `wait start`, `running`, `start error`, `closed`, ...
    pub status: String,
    /// Why it is not running; `null` when nothing is wrong.
    pub error: Option<String>,
    pub local_addr: String,
    /// `host:port` on frps; `null` until frps gave one (and always for stcp).
    pub remote_addr: Option<String>,
}

/// The tunnel: `GET /api/v1/tunnels` and the heartbeat's `tunnel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelView {
    pub state: TunnelState,
    /// How many times frpc was started again after the first start.
    pub restarts: u64,
    /// The last thing that went wrong (an exit, a failed reload, a failed start); `null` if none.
    pub last_error: Option<String>,
    /// frps as `host:port`; `null` when frp is disabled.
    pub server: Option<String>,
    pub proxies: Vec<ProxyStatus>,
    /// What an operator should know about how the tunnel is secured (plain-HTTP tcp API proxy,
    /// frps's certificate not verified): what `/health`'s `warnings` shows prefixed `frp: `.
    pub warnings: Vec<String>,
}

impl TunnelView {
    /// The view while frp is switched off.
    pub fn disabled() -> TunnelView {
        TunnelView {
            state: TunnelState::Disabled,
            restarts: 0,
            last_error: None,
            server: None,
            proxies: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// One container port published on the host, which the tunnel may publish on frps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    pub claim_id: String,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    pub host_port: u16,
    /// The port asked for on frps; 0: frps chooses.
    pub remote_port: u16,
}
