//! Test fixtures shared by the runner's, the table's and placement's unit tests.

use crate::docker::container::ContainerView;
use crate::docker::spec::{CreateSpec, GpuRequest, PortMapping, Protocol};

/// Two container ids that share their first 12 characters.
pub(crate) const A: &str = "aaaaaaaaaaaa1111111111111111111111111111111111111111111111111111";
pub(crate) const B: &str = "aaaaaaaaaaaa2222222222222222222222222222222222222222222222222222";

/// A managed container of `claim` holding `gpu_ids` (UUIDs `GPU-<index>`).
pub(crate) fn view(id: &str, claim: &str, gpu_ids: &[u32], state: &str) -> ContainerView {
    ContainerView {
        id: id.into(),
        name: format!("utopia-{claim}"),
        claim_id: claim.into(),
        image: "busybox".into(),
        state: state.into(),
        status: state.into(),
        exit_code: None,
        oom_killed: false,
        gpu_ids: gpu_ids.to_vec(),
        gpu_uuids: gpu_ids.iter().map(|g| format!("GPU-{g}")).collect(),
        port_mappings: vec![],
        endpoints: Vec::new(),
        created_at: None,
        started_at: None,
        finished_at: None,
        warnings: vec![],
        usage: None,
        error: None,
        pull: None,
        pid: None,
    }
}

/// A create of `claim` asking for `gpus`, publishing host port 8000.
pub(crate) fn spec(claim: &str, gpus: GpuRequest) -> CreateSpec {
    CreateSpec {
        claim_id: claim.into(),
        image: "busybox".into(),
        gpus,
        ports: vec![PortMapping {
            host_port: 8000,
            container_port: 80,
            protocol: Protocol::Tcp,
            remote_port: 0,
        }],
        env: vec![],
        command: vec![],
        memory_mb: None,
        cpus: None,
        shm_size_mb: None,
        requested_visible_devices: None,
        registry_auth: None,
    }
}
