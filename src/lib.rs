//! utopia-node-agent: the node agent of a GPU server of the Utopia platform.
//!
//! A synchronous, thread-per-component daemon (see README "Architecture"): `main` loads the
//! [`config`], [`agent::Agent::start`] starts each component on its own thread, and the
//! [`shutdown`] channel stops them. The modules are public so the integration tests and the
//! binary share them.

pub mod agent;
pub mod api;
pub mod backoff;
pub mod child;
pub mod cli;
pub mod config;
pub mod docker;
pub mod http;
pub mod names;
pub mod platform;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod timefmt;

/// The agent's version, as reported by `--version`, `/health` and to the platform.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
