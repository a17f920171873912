//! utopia-node-agent: the node agent of a GPU server of the Utopia platform.
//!
//! A synchronous, thread-per-component daemon (see README "Architecture"): `main` loads the
//! [`config`], [`agent::Agent::start`] starts each component on its own thread, and the
//! [`shutdown`] channel stops them. Only what the binary and the integration tests use is
//! public; everything else is `pub(crate)`, so the dead-code lint sees what nothing calls.

pub mod agent;
pub mod allocator;
pub(crate) mod api;
pub(crate) mod backoff;
pub(crate) mod base64;
pub(crate) mod child;
pub mod cli;
pub(crate) mod component;
pub mod config;
pub(crate) mod docker;
pub mod doctor;
pub(crate) mod frp;
pub mod http;
pub mod logging;
pub(crate) mod names;
pub mod notify;
pub(crate) mod platform;
pub mod reload;
pub mod shutdown;
pub(crate) mod state;
pub(crate) mod telemetry;
pub(crate) mod timefmt;
pub(crate) mod workers;

/// The agent's version, as reported by `--version`, `/health` and to the platform.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
