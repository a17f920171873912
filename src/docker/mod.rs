//! Containers through the docker CLI.
//!
//! - [`spec`]: the create request's schema and validation → a typed [`spec::CreateSpec`].
//! - [`ledger`]: the [`ledger::GpuLedger`], which claim holds which GPUs and host ports.
//! - [`argv`]: `docker run`'s argv; [`labels`]: the labels it sets.
//! - [`cli`]: running one docker command with a deadline, and classifying its failures.
//! - [`container`]: the container JSON, read from `docker container inspect`.
//! - [`runner`]: the [`runner::DockerRunner`] thread that owns the ledger and the container
//!   table, and its worker pool.
//! - [`worker`]: what the runner's worker threads do (the docker commands of each operation).
//! - [`events`]: the `docker events` watcher thread.

pub mod argv;
pub mod cli;
pub mod container;
pub mod events;
pub mod labels;
pub mod ledger;
pub mod runner;
pub mod spec;
pub mod worker;
