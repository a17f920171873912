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

use crate::component::StartError;
use crate::config::Settings;
use crate::shutdown::Shutdown;
use crate::state::{Health, PlatformWriter, Snapshot};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The platform's registration endpoint, below `central_platform.api_url`.
pub const REGISTER_PATH: &str = "/api/v1/nodes/register";

/// The platform's heartbeat endpoint for a node.
pub fn heartbeat_path(node_id: &identity::NodeId) -> String {
    format!("/api/v1/nodes/{node_id}/heartbeat")
}

/// The platform component, checked and ready to start.
pub struct Prepared {
    settings: presence::PresenceSettings,
    client: client::PlatformClient,
    known: Option<identity::NodeId>,
    record: Option<identity::RegistrationRecord>,
}

impl Prepared {
    /// The node id read from the identity file, if there was one.
    pub fn node_id(&self) -> Option<&identity::NodeId> {
        self.known.as_ref()
    }

    /// The heartbeat period the thread reads at each beat (a reload changes it).
    pub fn heartbeat_interval(&self) -> crate::reload::LiveDuration {
        self.settings.heartbeat_interval.clone()
    }
}

/// Reads the identity file and builds the client, before anything else starts; `None` when
/// `central_platform.api_url` is empty (standalone).
pub fn prepare(settings: &Settings) -> Result<Option<Prepared>, StartError> {
    let platform = &settings.platform;
    let Some(api_url) = &platform.api_url else {
        return Ok(None);
    };
    let identity_path = &settings.identity_file_path;
    let known = identity::load_node_id(identity_path).map_err(StartError::new)?;
    let client = client::PlatformClient::new(api_url, platform, |name| std::env::var(name).ok())
        .map_err(StartError::new)?;
    let record = known
        .as_ref()
        .and_then(|id| identity::load_registration_record(identity_path, id));
    let settings = presence::PresenceSettings {
        identity_path: identity_path.clone(),
        heartbeat_interval: platform.heartbeat_interval.into(),
        backoff_initial: platform.backoff_initial,
        backoff_cap: platform.backoff_cap,
        api_listen_address: settings.api.listen.to_string(),
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
) -> Result<Option<JoinHandle<()>>, StartError> {
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
            prepared.record.map(|r| r.grant()).unwrap_or_default(),
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
}
