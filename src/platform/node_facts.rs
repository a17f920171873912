//! What the agent tells the platform about this server when it registers.

use crate::state::Snapshot;
use crate::telemetry::bytes_to_mb;
use serde::Serialize;
use std::path::Path;

/// Where systemd keeps the machine's stable id.
pub const MACHINE_ID_PATH: &str = "/etc/machine-id";

/// The body of `POST /api/v1/nodes/register`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegistrationRequest {
    pub hostname: Option<String>,
    pub machine_id: Option<String>,
    pub agent_version: &'static str,
    pub os: Option<String>,
    pub kernel_version: Option<String>,
    pub cpu_model: Option<String>,
    pub cpu_cores: usize,
    pub memory_total_mb: Option<u64>,
    pub gpus: Vec<GpuFacts>,
    pub driver_version: Option<String>,
    pub api_listen_address: String,
}

/// One GPU as registration describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuFacts {
    pub index: u32,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub memory_total_mb: Option<u64>,
}

impl RegistrationRequest {
    /// Collects the facts now: host facts from the OS, GPUs and memory from the snapshot.
    pub fn collect(snapshot: &Snapshot, api_listen_address: &str) -> RegistrationRequest {
        let (cpu_model, cpu_cores, memory_from_os) = cpu_and_memory();
        let system = snapshot.system();
        let gpus = snapshot.gpus();
        RegistrationRequest {
            hostname: sysinfo::System::host_name().ok(),
            machine_id: read_machine_id(Path::new(MACHINE_ID_PATH)),
            agent_version: crate::VERSION,
            os: sysinfo::System::long_os_version().ok(),
            kernel_version: sysinfo::System::kernel_version().ok(),
            cpu_model,
            cpu_cores,
            memory_total_mb: system
                .as_ref()
                .as_ref()
                .map(|s| s.memory_total_mb)
                .or(memory_from_os),
            gpus: gpus
                .gpus
                .iter()
                .map(|g| GpuFacts {
                    index: g.index,
                    uuid: g.uuid.clone(),
                    name: g.name.clone(),
                    memory_total_mb: g.memory_total_mb,
                })
                .collect(),
            driver_version: gpus.driver_version.clone(),
            api_listen_address: api_listen_address.to_string(),
        }
    }
}

/// CPU brand, logical CPU count and total memory, read once from the OS.
fn cpu_and_memory() -> (Option<String>, usize, Option<u64>) {
    let Ok(mut system) = sysinfo::System::new() else {
        return (None, 0, None);
    };
    system.refresh_cpu_list(sysinfo::CpuRefreshKind::nothing());
    system.refresh_memory();
    let cpus = system.cpus();
    let model = cpus
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|b| !b.is_empty());
    let memory = Some(bytes_to_mb(system.total_memory())).filter(|m| *m > 0);
    (model, cpus.len(), memory)
}

/// The machine id, if the file holds one (32 hex digits on systemd hosts).
pub fn read_machine_id(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    (!id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_id_is_read_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        assert_eq!(read_machine_id(&path), None);
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(
            read_machine_id(&path).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read_machine_id(&path), None);
        std::fs::write(&path, "not an id\n").unwrap();
        assert_eq!(read_machine_id(&path), None);
    }

    #[test]
    fn facts_of_this_host() {
        let (snapshot, _writers) = crate::state::new();
        let facts = RegistrationRequest::collect(&snapshot, "127.0.0.1:9200");
        assert!(facts.cpu_cores > 0);
        assert!(facts.memory_total_mb.unwrap_or(0) > 0);
        assert_eq!(facts.agent_version, crate::VERSION);
        assert!(facts.gpus.is_empty());
        assert_eq!(facts.api_listen_address, "127.0.0.1:9200");
    }
}
