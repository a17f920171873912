//! Starting and stopping the components, in order.
//!
//! [`Agent::start`] first runs the [`preflight`] checks that `--check-config` runs too (the node
//! identity, the platform client and its `ca_file`, the tunnel's CA file: a problem stops it
//! before anything runs; frpc, NVML or docker missing are warnings), makes the empty published state
//! (the read-only `Snapshot` and one writer per component), starts the samplers (the system
//! sampler publishes its first sample before returning), then
//! the container runner (whose first work is to rebuild the GPU ledger from the labelled
//! containers; container requests get 503 until it is done, so no create is decided on an empty
//! ledger), the API server, and last the platform thread, which registers and heartbeats in the
//! background. [`Agent::run_until_shutdown`] waits for the shutdown channel to close, then stops
//! in reverse order: the API drains its in-flight requests, and the runner, its workers, the
//! docker events watcher, the sampler and platform threads are joined. Containers are not
//! stopped: the next start adopts them. The whole stop is bounded by [`STOP_DEADLINE`]: a thread
//! stuck in a blocking call (NVML on a dying GPU, a platform request before its timeout) is left
//! to the process exit rather than holding the shutdown.

pub mod preflight;

pub use preflight::{preflight, Preflight, PreflightError};

use crate::api::{ApiContext, ApiServer, ApiSettings};
use crate::component::StartError;
use crate::config::Settings;
use crate::docker::runner as docker_runner;
use crate::frp;
use crate::platform;
use crate::reload::LiveSettings;
use crate::shutdown::Shutdown;
use crate::state::{self, Health};
use crate::telemetry::gpu_health::{history_path, XidHistory};
use crate::telemetry::{gpu, system, usage, xid};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long stopping may take in all, well inside the 2 s a service manager is promised.
pub const STOP_DEADLINE: Duration = Duration::from_millis(1500);

/// The running agent.
pub struct Agent {
    shutdown: Shutdown,
    api: ApiServer,
    /// What a configuration reload changes in the running components.
    live: LiveSettings,
    threads: Vec<(&'static str, JoinHandle<()>)>,
}

impl Agent {
    /// Starts every component; on error, the ones already started stop when `shutdown` fires.
    pub fn start(settings: &Settings, shutdown: Shutdown) -> Result<Agent, StartError> {
        // First, so that a damaged identity file stops the agent before anything runs.
        let Preflight { platform, warnings } = preflight(settings).map_err(StartError::new)?;
        for warning in &warnings {
            log::warn!("{warning}");
        }
        if platform.is_none() {
            log::info!(
                "running standalone: central_platform.api_url is empty, so the node does not \
                 register with a platform nor send heartbeats (set it, or PHOENIX_API_URL, to \
                 join one); the API and containers work as usual"
            );
        }
        let mut live = LiveSettings::new(settings);
        if let Some(prepared) = &platform {
            live.heartbeat_interval = prepared.heartbeat_interval();
        }
        let (snapshot, writers) = state::new();
        // Xid errors seen before a restart still count.
        let xid_history = XidHistory::load(history_path(&settings.identity_file_path));
        let mut threads = vec![
            (
                "system-sampler",
                system::start(writers.system, shutdown.clone())?,
            ),
            (
                "gpu-sampler",
                gpu::start(
                    &settings.gpu,
                    xid_history.clone(),
                    Arc::clone(&snapshot),
                    writers.gpu,
                    live.gpu_sample_interval.clone(),
                    shutdown.clone(),
                )?,
            ),
            (
                "gpu-xid-events",
                xid::start(&settings.gpu, xid_history.clone(), shutdown.clone())?,
            ),
        ];
        // Host ports the agent itself uses can never be published for a container.
        let reserved_ports = vec![settings.api.listen.port(), settings.frp.admin_port];
        let runner = docker_runner::start(
            &settings.docker,
            reserved_ports,
            Arc::clone(&snapshot),
            writers.docker,
            shutdown.clone(),
        )?;
        threads.extend(runner.threads);
        live.docker_timeouts = Some(runner.handle.timeouts());
        threads.push((
            "usage-sampler",
            usage::start(Arc::clone(&snapshot), writers.usage, shutdown.clone())?,
        ));

        let api_settings = ApiSettings {
            listen: settings.api.listen,
            auth_token: live.auth_token.clone(),
            max_connections: settings.api.max_connections,
            idle_timeout: settings.api.idle_timeout,
            io_threads: settings.api.io_threads,
            prometheus_auth: settings.prometheus_auth,
        };
        let context = Arc::new(
            ApiContext::new(api_settings, Arc::clone(&snapshot))
                .with_runner(runner.handle)
                .with_xid_history(xid_history),
        );
        let api = ApiServer::start(context).map_err(StartError::new)?;
        writers.api.set(Health::Ok);

        // The tunnel waits for the node id (with a platform) and publishes the API and the
        // containers' ports.
        if let Some(thread) = frp::start(
            settings,
            Arc::clone(&snapshot),
            writers.frp,
            shutdown.clone(),
        )? {
            threads.push(("frp", thread));
        }

        // Last, so that the API already answers while the node registers.
        if let Some(thread) =
            platform::start(platform, snapshot, writers.platform, shutdown.clone())?
        {
            threads.push(("platform", thread));
        }

        Ok(Agent {
            shutdown,
            api,
            live,
            threads,
        })
    }

    /// The handles a configuration reload applies its changes through.
    pub fn live(&self) -> LiveSettings {
        self.live.clone()
    }

    /// Blocks until shutdown starts, then stops every component within [`STOP_DEADLINE`].
    pub fn run_until_shutdown(self) {
        self.shutdown.wait();
        self.stop();
    }

    fn stop(self) {
        let deadline = Instant::now() + STOP_DEADLINE;
        let left = self.api.drain(STOP_DEADLINE / 2);
        if left > 0 {
            log::warn!("{left} API request(s) still running at shutdown; abandoning them");
        }
        for (name, thread) in self.threads {
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                if thread.join().is_err() {
                    log::error!("{name} thread had panicked");
                }
            } else {
                log::warn!("{name} did not stop in time (blocked in a system call?); leaving it");
            }
        }
        log::info!("stopped; exiting (status 0)");
    }
}
