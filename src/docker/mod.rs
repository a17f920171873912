//! Containers through the docker CLI.
//!
//! - [`spec`]: the create request's schema and validation → a typed [`spec::CreateSpec`].
//! - [`ledger`]: the [`ledger::GpuLedger`], which claim holds which GPUs and host ports.
//! - [`command`]: `docker run`'s argv, and running one docker command with a deadline.
//! - [`container`]: the container JSON, read from `docker container inspect`.
//! - [`runner`]: the [`runner::DockerRunner`] thread that owns the ledger and the container
//!   table, and its worker pool.
//! - [`worker`]: what the runner's worker threads do (the docker commands of each operation).
//! - [`events`]: the `docker events` watcher thread.

pub mod command;
pub mod container;
pub mod events;
pub mod ledger;
pub mod runner;
pub mod spec;
pub mod worker;
