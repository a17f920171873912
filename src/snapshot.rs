//! The published state the API reads: the latest system and GPU samples, the node id, and each
//! component's one-line status.
//!
//! Each piece has exactly one writer (the sampler or component that owns it) and any number of
//! readers. A reader takes an `Arc` of the current value and never waits for a sampler: the
//! request path never calls NVML, sysinfo or docker for something published here.

use crate::telemetry::gpu::GpuReport;
use crate::telemetry::system::SystemSample;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A value replaced whole by its owner and read as a cheap `Arc` by everyone else.
pub struct Published<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Published<T> {
    pub fn new(value: T) -> Self {
        Published {
            value: RwLock::new(Arc::new(value)),
        }
    }

    pub fn get(&self) -> Arc<T> {
        match self.value.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.value.write() {
            Ok(mut guard) => *guard = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// A managed container in a few words (heartbeats carry this list).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSummary {
    pub id: String,
    pub claim_id: String,
    pub state: String,
    pub gpu_ids: Vec<u32>,
}

/// Who holds a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuAllocation {
    pub claim_id: String,
    pub container_id: String,
}

/// Everything the API and the heartbeat read.
pub struct Snapshot {
    /// Host CPU, memory and load; `None` until the first sample.
    pub system: Published<Option<SystemSample>>,
    /// GPUs as NVML last reported them, or why NVML is unavailable.
    pub gpus: Published<GpuReport>,
    /// The id the platform gave this node; `None` until registered.
    pub node_id: Published<Option<String>>,
    /// The frps remote port the platform assigned to the agent API at registration, if any
    /// (kept in the registration record beside the identity file across restarts).
    pub assigned_api_remote_port: Published<Option<u16>>,
    /// The managed containers, as the container runner last saw them.
    pub containers: Published<Vec<ContainerSummary>>,
    /// GPU index → the container holding it (until that container is removed).
    pub gpu_allocations: Published<BTreeMap<u32, GpuAllocation>>,
    components: RwLock<BTreeMap<&'static str, String>>,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot::new()
    }
}

impl Snapshot {
    pub fn new() -> Self {
        Snapshot {
            system: Published::new(None),
            gpus: Published::new(GpuReport::starting()),
            node_id: Published::new(None),
            assigned_api_remote_port: Published::new(None),
            containers: Published::new(Vec::new()),
            gpu_allocations: Published::new(BTreeMap::new()),
            components: RwLock::new(BTreeMap::new()),
        }
    }

    /// Records a component's status line (`"ok"`, or what is wrong with it).
    pub fn set_component(&self, name: &'static str, status: impl Into<String>) {
        let status = status.into();
        let mut guard = match self.components.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.insert(name, status);
    }

    pub fn components(&self) -> BTreeMap<&'static str, String> {
        match self.components.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
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
        let s = Snapshot::new();
        s.set_component("gpu", "starting");
        s.set_component("gpu", "ok");
        assert_eq!(s.components().get("gpu").map(String::as_str), Some("ok"));
    }
}
