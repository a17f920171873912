//! The central platform: registration, the node identity, heartbeats.
//!
//! [`prepare`] runs before any other component starts: it reads the identity file (an existing
//! but unusable file stops the agent: it must never register a second node silently) and builds
//! the HTTP client (a bad `ca_file` or proxy stops the agent too). [`start`], called once the API
//! is up, starts the presence thread (see [`presence`]), which registers when needed and sends
//! heartbeats, and returns at once: the API and the samplers never wait for the platform.

pub mod client;
pub mod identity;
pub mod node_facts;
pub mod presence;

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::state::{Health, PlatformWriter, Snapshot};
use std::fmt;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// The platform's registration endpoint, below `central_platform.api_url`.
pub const REGISTER_PATH: &str = "/api/v1/nodes/register";

/// The platform's heartbeat endpoint for a node.
pub fn heartbeat_path(node_id: &identity::NodeId) -> String {
    format!("/api/v1/nodes/{node_id}/heartbeat")
}

/// Why the platform component could not start (the agent does not start either).
#[derive(Debug)]
pub enum PlatformStartError {
    Identity(identity::IdentityError),
    Client(client::ClientError),
    Spawn(std::io::Error),
}

impl fmt::Display for PlatformStartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformStartError::Identity(e) => e.fmt(f),
            PlatformStartError::Client(e) => e.fmt(f),
            PlatformStartError::Spawn(e) => {
                write!(f, "cannot start the platform thread: {e}")
            }
        }
    }
}

impl std::error::Error for PlatformStartError {}

/// The platform component, checked and ready to start.
pub struct Prepared {
    settings: presence::PresenceSettings,
    client: client::PlatformClient,
    known: Option<identity::NodeId>,
    record: Option<identity::RegistrationRecord>,
}

/// Reads the identity file and builds the client, before anything else starts; `None` when
/// `central_platform.api_url` is empty (standalone).
pub fn prepare(config: &Config) -> Result<Option<Prepared>, PlatformStartError> {
    let platform = &config.central_platform;
    if platform.api_url.is_empty() {
        return Ok(None);
    }
    let known =
        identity::load_node_id(&config.identity_file_path).map_err(PlatformStartError::Identity)?;
    let client = client::PlatformClient::new(platform, |name| std::env::var(name).ok())
        .map_err(PlatformStartError::Client)?;
    let record = known
        .as_ref()
        .and_then(|id| identity::load_registration_record(&config.identity_file_path, id));
    let settings = presence::PresenceSettings {
        identity_path: config.identity_file_path.clone(),
        heartbeat_interval: Duration::from_secs(platform.heartbeat_interval_secs),
        backoff_initial: Duration::from_millis(platform.backoff_initial_ms),
        backoff_cap: Duration::from_millis(platform.backoff_max_ms),
        api_listen_address: config.agent_api.listen_address.clone(),
    };
    Ok(Some(Prepared {
        settings,
        client,
        known,
        record,
    }))
}

/// Publishes what is known and starts the presence thread; with nothing prepared (standalone),
/// only says so in `/health`.
pub fn start(
    prepared: Option<Prepared>,
    snapshot: Arc<Snapshot>,
    writer: PlatformWriter,
    shutdown: Shutdown,
) -> Result<Option<JoinHandle<()>>, PlatformStartError> {
    let Some(prepared) = prepared else {
        writer.set_health(Health::Disabled("central_platform.api_url is empty".into()));
        return Ok(None);
    };
    if let Some(node_id) = &prepared.known {
        log::info!(
            "node id {node_id} read from {}; not registering",
            prepared.settings.identity_path.display()
        );
        writer.registered(
            node_id.to_string(),
            prepared.record.and_then(|r| r.api_remote_port),
        );
    } else {
        writer.set_health(Health::Starting(None));
    }
    presence::start(
        prepared.settings,
        prepared.client,
        prepared.known,
        snapshot,
        writer,
        shutdown,
    )
    .map(Some)
    .map_err(PlatformStartError::Spawn)
}
