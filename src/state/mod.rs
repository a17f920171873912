//! Published state: what the components publish and the API and the heartbeat read.
//!
//! A leaf module: it holds data and imports no other component. [`new`] makes the read-only
//! [`Snapshot`] every reader shares and the [`Writers`], one typed writer per component, handed
//! out at start-up: only the system sampler can publish a host sample, only the container
//! runner the container list, only the platform thread the node id. Each piece has exactly one
//! writer and any number of readers; a reader takes an `Arc` of the current value and never
//! waits for a writer, so the request path never calls NVML, sysinfo or docker for something
//! published here.
//!
//! - [`samples`]: the sample and summary types.
//! - [`health`]: the typed health of each component, rendered for `/health` in one place.
//! - [`counters`]: the agent's own counters (API requests, docker command durations, ...).
//! - [`document`]: the metrics document and the heartbeat body, built from the snapshot.
//! - [`tunnel`]: the frp tunnel's view and the container ports it publishes.
//!
//! A new component (the frp tunnel, GPU health checks) adds its slot to [`Snapshot`], a reader
//! method, a writer in [`Writers`] and, when it reports health, a [`Component`].

pub mod counters;
pub mod document;
pub mod health;
pub mod registration;
pub mod samples;
pub mod tunnel;

pub use counters::Counters;
pub use health::{Component, Health};
pub use registration::{ApiToken, PlatformApiProxy, PlatformGrant};
pub use samples::{
    ClaimGpuUsage, ClaimUsage, ContainerSummary, CpuTimes, GpuAllocation, GpuHealth, GpuProcess,
    GpuReport, GpuSample, LoadAverage, MemoryBytes, NvmlState, RemappedRows, SystemSample, XidView,
};
pub use tunnel::{ProxyStatus, PublishedPort, TunnelState, TunnelView};

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// A value replaced whole by its owner and read as a cheap `Arc` by everyone else.
struct Published<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Published<T> {
    fn new(value: T) -> Self {
        Published {
            value: RwLock::new(Arc::new(value)),
        }
    }

    fn get(&self) -> Arc<T> {
        match self.value.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.value.write() {
            Ok(mut guard) => *guard = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }

    fn update(&self, change: impl FnOnce(&mut T))
    where
        T: Clone,
    {
        let mut guard = match self.value.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(Arc::make_mut(&mut guard));
    }
}

/// Bytes built from published values, kept until those values change: `get` answers the bytes
/// built for `key` (a generation of their inputs), building them again only when the key moved.
/// The request path thus serialises a document once per change, not once per request.
pub struct Cached<K> {
    value: Mutex<Option<(K, Arc<[u8]>)>>,
}

impl<K: PartialEq> Cached<K> {
    pub fn new() -> Self {
        Cached {
            value: Mutex::new(None),
        }
    }

    /// The bytes for `key`, built by `build` if the cached ones are for another key (a failed
    /// build caches nothing).
    pub fn get<E>(
        &self,
        key: K,
        build: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<[u8]>, E> {
        let mut guard = match self.value.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((cached, bytes)) = guard.as_ref() {
            if *cached == key {
                return Ok(Arc::clone(bytes));
            }
        }
        let bytes: Arc<[u8]> = build()?.into();
        *guard = Some((key, Arc::clone(&bytes)));
        Ok(bytes)
    }
}

impl<K: PartialEq> Default for Cached<K> {
    fn default() -> Self {
        Cached::new()
    }
}

/// How a sampler's last run went, as its driver recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SamplerRun {
    /// How long the last sample took.
    pub last_duration_ms: u64,
    /// How many samples were taken.
    pub samples: u64,
}

/// Everything the API and the heartbeat read. Read-only: see [`Writers`] for who writes.
pub struct Snapshot {
    system: Published<Option<SystemSample>>,
    gpus: Published<GpuReport>,
    node_id: Published<Option<String>>,
    /// What registration gave besides the node id (the API token, the API proxy).
    grant: Published<PlatformGrant>,
    containers: Published<Vec<ContainerSummary>>,
    /// Every managed container's published ports (what the tunnel publishes on frps).
    published_ports: Published<Vec<PublishedPort>>,
    tunnel: Published<TunnelView>,
    /// How the tunnel's security falls short (tcp API proxy, frps not verified).
    tunnel_warnings: Published<Vec<String>>,
    gpu_allocations: Published<BTreeMap<u32, GpuAllocation>>,
    usage: Published<BTreeMap<String, ClaimUsage>>,
    health: Published<BTreeMap<Component, Health>>,
    samplers: Published<BTreeMap<Component, SamplerRun>>,
    /// Bumped after every change to what the metrics document shows (host and GPU samples,
    /// node id, GPU allocations).
    metrics_generation: AtomicU64,
    /// Bumped after every change to what `/health` shows (component health, sampler runs).
    health_generation: AtomicU64,
    /// The metrics document as JSON bytes, for [`Snapshot::metrics_generation`].
    metrics_json: Cached<u64>,
    /// The agent's own counters, added to by the components as they work.
    counters: Arc<Counters>,
}

/// A fresh, empty snapshot and the writers of its pieces.
pub fn new() -> (Arc<Snapshot>, Writers) {
    let snapshot = Arc::new(Snapshot {
        system: Published::new(None),
        gpus: Published::new(GpuReport::starting()),
        node_id: Published::new(None),
        grant: Published::new(PlatformGrant::default()),
        containers: Published::new(Vec::new()),
        published_ports: Published::new(Vec::new()),
        tunnel: Published::new(TunnelView::disabled()),
        tunnel_warnings: Published::new(Vec::new()),
        gpu_allocations: Published::new(BTreeMap::new()),
        usage: Published::new(BTreeMap::new()),
        health: Published::new(BTreeMap::new()),
        samplers: Published::new(BTreeMap::new()),
        metrics_generation: AtomicU64::new(0),
        health_generation: AtomicU64::new(0),
        metrics_json: Cached::new(),
        counters: Arc::new(Counters::default()),
    });
    let health = |component| HealthWriter {
        snapshot: Arc::clone(&snapshot),
        component,
    };
    let writers = Writers {
        system: SampleWriter {
            health: health(Component::System),
            store: |s, sample| {
                s.system.set(Some(sample));
                s.metrics_changed();
            },
        },
        gpu: SampleWriter {
            health: health(Component::Gpu),
            store: |s, report| {
                s.gpus.set(report);
                s.metrics_changed();
            },
        },
        docker: DockerWriter {
            health: health(Component::Docker),
        },
        platform: PlatformWriter {
            health: health(Component::Platform),
        },
        api: health(Component::Api),
        frp: TunnelWriter {
            health: health(Component::Frp),
        },
        usage: UsageWriter {
            snapshot: Arc::clone(&snapshot),
        },
    };
    (snapshot, writers)
}

impl Snapshot {
    /// Counts a change to what the metrics document shows (after the value is published, so a
    /// reader that sees the new generation also sees the new value).
    fn metrics_changed(&self) {
        self.metrics_generation.fetch_add(1, Ordering::SeqCst);
    }

    fn health_changed(&self) {
        self.health_generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Changes so far to what the metrics document shows.
    pub fn metrics_generation(&self) -> u64 {
        self.metrics_generation.load(Ordering::SeqCst)
    }

    /// Changes so far to the components' health and the samplers' runs.
    pub fn health_generation(&self) -> u64 {
        self.health_generation.load(Ordering::SeqCst)
    }

    /// The agent's own counters (each component adds to its own).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Host CPU, memory and load; `None` until the first sample.
    pub fn system(&self) -> Arc<Option<SystemSample>> {
        self.system.get()
    }

    /// GPUs as NVML last reported them, or why NVML is unavailable.
    pub fn gpus(&self) -> Arc<GpuReport> {
        self.gpus.get()
    }

    /// The id the platform gave this node; `None` until registered.
    pub fn node_id(&self) -> Option<String> {
        self.node_id.get().as_ref().clone()
    }

    /// How the platform said the agent API is to be published on frps (`frp.api_proxy` of the
    /// registration answer, or its `frp.api_remote_port`); `None`: it said nothing.
    pub fn assigned_api_proxy(&self) -> Option<PlatformApiProxy> {
        self.grant.get().api_proxy.clone()
    }

    /// The platform's token for the agent API (`api_token` of the registration answer), which
    /// the API accepts besides `agent_api.auth_token`; `None` while unregistered or not given.
    pub fn platform_api_token(&self) -> Option<ApiToken> {
        self.grant.get().api_token.clone()
    }

    /// The managed containers, as the container runner last saw them.
    pub fn containers(&self) -> Arc<Vec<ContainerSummary>> {
        self.containers.get()
    }

    /// The managed containers' published ports, in (claim, port, protocol) order.
    pub fn published_ports(&self) -> Arc<Vec<PublishedPort>> {
        self.published_ports.get()
    }

    /// What an operator should know about how the tunnel is secured (`/health`'s `warnings`).
    pub fn tunnel_warnings(&self) -> Arc<Vec<String>> {
        self.tunnel_warnings.get()
    }

    /// The frp tunnel as its supervisor last saw it.
    pub fn tunnel(&self) -> Arc<TunnelView> {
        self.tunnel.get()
    }

    /// GPU index → the container holding it (until that container is removed).
    pub fn gpu_allocations(&self) -> Arc<BTreeMap<u32, GpuAllocation>> {
        self.gpu_allocations.get()
    }

    /// Container id → what it uses, as the usage sampler last read it.
    pub fn usage(&self) -> Arc<BTreeMap<String, ClaimUsage>> {
        self.usage.get()
    }

    /// Each component's health, rendered (`/health`'s `components`).
    pub fn health(&self) -> BTreeMap<&'static str, String> {
        self.health
            .get()
            .iter()
            .map(|(component, health)| (component.name(), health.render(*component)))
            .collect()
    }

    /// Each component's health state word (`ok`, `degraded`, ...), without the reason.
    pub fn health_states(&self) -> BTreeMap<&'static str, &'static str> {
        self.health
            .get()
            .iter()
            .map(|(component, health)| (component.name(), health.state()))
            .collect()
    }

    /// `/health`'s overall status: `ok`, or `degraded` (see [`health::overall`]).
    pub fn overall_status(&self) -> &'static str {
        health::overall(&self.health.get())
    }

    /// What keeps the node from working, one line per component; empty when it is ready (see
    /// [`health::not_ready`]).
    pub fn not_ready(&self) -> Vec<String> {
        health::not_ready(&self.health.get())
    }

    /// How each sampler's last run went.
    pub fn samplers(&self) -> BTreeMap<&'static str, SamplerRun> {
        self.samplers
            .get()
            .iter()
            .map(|(component, run)| (component.name(), *run))
            .collect()
    }
}

/// One writer per component, handed out once at start-up.
pub struct Writers {
    pub system: SampleWriter<SystemSample>,
    pub gpu: SampleWriter<GpuReport>,
    pub docker: DockerWriter,
    pub platform: PlatformWriter,
    pub api: HealthWriter,
    pub frp: TunnelWriter,
    pub usage: UsageWriter,
}

/// The frp supervisor's writer: the tunnel's view and the `frp` component's health.
pub struct TunnelWriter {
    health: HealthWriter,
}

impl TunnelWriter {
    /// Publishes what an operator should know about how the tunnel is secured (`/health`'s
    /// `warnings`); each one flagged to be logged is logged, as a warning, when it appears.
    pub fn set_warnings(&self, warnings: Vec<(String, bool)>) {
        let snapshot = &self.health.snapshot;
        let before = snapshot.tunnel_warnings.get();
        let texts: Vec<String> = warnings.iter().map(|(text, _)| text.clone()).collect();
        if *before == texts {
            return;
        }
        for (text, log) in &warnings {
            if *log && !before.contains(text) {
                log::warn!("frp tunnel: {text}");
            }
        }
        snapshot.tunnel_warnings.set(texts);
    }

    /// Publishes the tunnel's view, with the warnings last set (and the health it implies, when
    /// it changed).
    pub fn publish(&self, mut view: TunnelView, health: Health) {
        let snapshot = &self.health.snapshot;
        view.warnings = snapshot.tunnel_warnings.get().as_ref().clone();
        if *snapshot.tunnel.get() != view {
            snapshot.tunnel.set(view);
        }
        let current = snapshot.health.get().get(&Component::Frp).cloned();
        if current.as_ref() != Some(&health) {
            self.health.set(health);
        }
    }
}

/// The usage sampler's writer: each managed container's usage.
pub struct UsageWriter {
    snapshot: Arc<Snapshot>,
}

impl UsageWriter {
    pub fn publish(&self, usage: BTreeMap<String, ClaimUsage>) {
        self.snapshot.usage.set(usage);
    }
}

/// Sets one component's health.
pub struct HealthWriter {
    snapshot: Arc<Snapshot>,
    component: Component,
}

impl HealthWriter {
    pub fn set(&self, health: Health) {
        let component = self.component;
        self.snapshot.health.update(|map| {
            map.insert(component, health);
        });
        self.snapshot.health_changed();
    }
}

/// A sampler's writer: its sample, its health and how long sampling took.
pub struct SampleWriter<T> {
    health: HealthWriter,
    store: fn(&Snapshot, T),
}

impl<T> SampleWriter<T> {
    /// Publishes a sample taken in `took`, and the sampled thing's health.
    pub fn publish(&self, sample: T, health: Health, took: Duration) {
        (self.store)(&self.health.snapshot, sample);
        let component = self.health.component;
        self.health.snapshot.samplers.update(|map| {
            let run = map.entry(component).or_insert(SamplerRun {
                last_duration_ms: 0,
                samples: 0,
            });
            run.last_duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            run.samples += 1;
        });
        self.health.snapshot.health_changed();
        self.health.set(health);
    }

    /// The health alone (before the first sample).
    pub fn set_health(&self, health: Health) {
        self.health.set(health);
    }
}

/// The container runner's writer: the container list, the GPU allocations, docker's health.
pub struct DockerWriter {
    health: HealthWriter,
}

impl DockerWriter {
    pub fn publish(
        &self,
        containers: Vec<ContainerSummary>,
        allocations: BTreeMap<u32, GpuAllocation>,
    ) {
        self.health.snapshot.containers.set(containers);
        self.health.snapshot.gpu_allocations.set(allocations);
        self.health.snapshot.metrics_changed();
    }

    /// Every managed container's published ports (sorted here, so equal sets compare equal).
    pub fn publish_ports(&self, mut ports: Vec<PublishedPort>) {
        ports.sort();
        let snapshot = &self.health.snapshot;
        if *snapshot.published_ports.get() != ports {
            snapshot.published_ports.set(ports);
        }
    }

    pub fn set_health(&self, health: Health) {
        self.health.set(health);
    }
}

/// The platform thread's writer: the node's registration and the platform's health.
pub struct PlatformWriter {
    health: HealthWriter,
}

impl PlatformWriter {
    /// The node is registered as `node_id`, with what else the platform gave (a re-registration
    /// replaces all of it).
    pub fn registered(&self, node_id: String, grant: PlatformGrant) {
        let snapshot = &self.health.snapshot;
        snapshot.grant.set(grant);
        snapshot.node_id.set(Some(node_id));
        snapshot.metrics_changed();
        self.health.set(Health::Ok);
    }

    /// The platform forgot the node: unregistered until it registers again.
    pub fn unregistered(&self) {
        let snapshot = &self.health.snapshot;
        snapshot.node_id.set(None);
        snapshot.grant.set(PlatformGrant::default());
        snapshot.metrics_changed();
        self.health.set(Health::Starting(None));
    }

    pub fn set_health(&self, health: Health) {
        self.health.set(health);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_keep_the_value_they_took() {
        let p = Published::new(1);
        let before = p.get();
        p.set(2);
        assert_eq!(*before, 1);
        assert_eq!(*p.get(), 2);
    }

    #[test]
    fn component_status_is_replaced() {
        let (s, writers) = new();
        writers.gpu.set_health(Health::Starting(None));
        writers.gpu.set_health(Health::Ok);
        assert_eq!(s.health().get("gpu").map(String::as_str), Some("ok"));
    }

    #[test]
    fn writers_publish_what_readers_see() {
        let (s, writers) = new();
        assert!(s.health().is_empty());
        let token = ApiToken::parse("platform-token-0123456789").unwrap();
        writers.platform.registered(
            "node-1".into(),
            PlatformGrant {
                api_token: Some(token.clone()),
                api_proxy: Some(PlatformApiProxy::Tcp {
                    remote_port: Some(7001),
                }),
            },
        );
        assert_eq!(s.node_id().as_deref(), Some("node-1"));
        assert_eq!(
            s.assigned_api_proxy(),
            Some(PlatformApiProxy::Tcp {
                remote_port: Some(7001)
            })
        );
        assert_eq!(s.platform_api_token(), Some(token));
        assert_eq!(s.health()["platform"], "ok");
        writers.platform.unregistered();
        assert_eq!(s.node_id(), None);
        assert_eq!(s.platform_api_token(), None);
        assert_eq!(s.assigned_api_proxy(), None);
        assert_eq!(s.health()["platform"], "registering");
        writers.gpu.publish(
            GpuReport::unavailable("no driver".into()),
            Health::Unavailable("no driver".into()),
            Duration::from_millis(7),
        );
        assert_eq!(s.gpus().error().as_deref(), Some("no driver"));
        assert_eq!(s.health()["gpu"], "unavailable: no driver");
        assert_eq!(
            s.samplers()["gpu"],
            SamplerRun {
                last_duration_ms: 7,
                samples: 1
            }
        );
        writers.api.set(Health::Ok);
        let names: Vec<&str> = s.health().into_keys().collect();
        assert_eq!(names, ["api", "gpu", "platform"]);
    }
}
