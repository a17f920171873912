//! Containers through the docker CLI.
//!
//! The runner's contract and its parts:
//! - [`protocol`]: what the API uses of the runner: [`protocol::Request`],
//!   [`protocol::RunnerHandle`], [`protocol::ContainerError`].
//! - [`runner`]: the [`protocol::DockerRunner`] thread: start, select loop, dispatch, publishing.
//! - [`jobs`]: the plain-data work the runner queues for its workers and their reports.
//! - [`worker`]: what the worker threads do (the docker commands of each operation).
//! - [`table`]: the container table and its stale-report rules; [`ledger`]: the
//!   [`ledger::GpuLedger`], which claim holds which GPUs and host ports; [`placement`]: which
//!   GPUs a create gets.
//! - [`events`]: the `docker events` watcher thread.
//! - [`network`]: the renters' bridge network (no inter-container traffic), checked at reconcile;
//!   [`metadata_block`]: `docker.block_metadata`'s iptables rules for it.
//!
//! The docker CLI itself:
//! - [`spec`]: the create request's schema and validation → a typed [`spec::CreateSpec`].
//! - [`argv`]: `docker run`'s argv; [`labels`]: the labels it sets, encoded and decoded.
//! - [`cli`]: running one docker command with a deadline, and classifying its failures.
//! - [`container`]: the container JSON, read from `docker container inspect`.
//! - [`pull_auth`]: a create's registry credentials, in a docker config of that pull only;
//!   [`pull_progress`]: the pull's layers and bytes, read from its output on a pseudo-terminal.

pub mod argv;
pub mod cli;
pub mod container;
pub mod events;
#[cfg(test)]
mod fixtures;
pub(crate) mod jobs;
pub mod labels;
pub mod ledger;
pub mod metadata_block;
pub mod network;
pub(crate) mod placement;
pub mod protocol;
pub mod pull_auth;
pub mod pull_progress;
pub mod registry_address;
pub mod runner;
mod scratch;
pub mod spec;
pub mod storage_probe;
pub(crate) mod table;
pub mod worker;
