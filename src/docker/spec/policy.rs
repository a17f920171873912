//! What a create may use on this host besides what the request itself allows.

use super::image::{check_registry_host, normalize_registry, registry_of};
use super::{err, CreateSpec, SpecError};
use crate::config::DefaultMemory;

/// What a create may use on this host besides what the request itself allows: which
/// registries, which host ports, how many CPUs and how much memory (checked before docker is
/// asked, so a request docker would refuse is a 400 naming the field).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreatePolicy {
    /// `docker.allowed_registries`, normalized; empty: any registry outside this host.
    pub allowed_registries: Vec<String>,
    /// `docker.host_port_range`; `None`: any port.
    pub host_port_range: Option<(u16, u16)>,
    /// The host's CPUs (`None`: unknown, not checked).
    pub host_cpus: Option<u32>,
    /// The host's memory in MiB (`None`: unknown, not checked).
    pub host_memory_mb: Option<u64>,
    /// `docker.default_memory` in MiB: the limit of a create without `memory_mb`.
    pub default_memory_mb: Option<u64>,
}

impl CreatePolicy {
    /// The policy of `docker.*` with this host's CPUs and memory.
    pub fn for_host(
        allowed_registries: &[String],
        host_port_range: Option<(u16, u16)>,
        default_memory: Option<DefaultMemory>,
    ) -> Self {
        let host_memory_mb = host_memory_mb();
        let default_memory_mb = default_memory.and_then(|d| {
            let mb = d.resolve(host_memory_mb);
            if mb.is_none() {
                log::warn!(
                    "docker.default_memory is a share of the host's memory, which cannot be read \
                     (/proc/meminfo): containers created without memory_mb get no memory limit"
                );
            }
            mb
        });
        if let Some(mb) = default_memory_mb {
            log::info!(
                "containers created without memory_mb get --memory {mb}m (docker.default_memory)"
            );
        }
        CreatePolicy {
            allowed_registries: allowed_registries
                .iter()
                .map(|r| normalize_registry(r))
                .collect(),
            host_port_range,
            host_cpus: host_cpu_count(),
            host_memory_mb,
            default_memory_mb,
        }
    }

    /// Gives a create without `memory_mb` the default limit (`docker.default_memory`), at
    /// most the host's memory.
    pub fn apply_defaults(&self, spec: &mut CreateSpec) {
        if spec.memory_mb.is_none() {
            spec.memory_mb = match (self.default_memory_mb, self.host_memory_mb) {
                (Some(mb), Some(host)) => Some(mb.min(host.max(DefaultMemory::MIN_MIB))),
                (default, _) => default,
            };
        }
    }

    /// Refuses what this host does not allow.
    pub fn check(&self, spec: &CreateSpec) -> Result<(), SpecError> {
        let registry = registry_of(&spec.image);
        check_registry_host(&registry).map_err(|m| err("image", m))?;
        if !self.allowed_registries.is_empty() && !self.allowed_registries.contains(&registry) {
            return Err(err(
                "image",
                format!(
                    "registry {registry} is not allowed on this node (docker.allowed_registries: \
                     {})",
                    self.allowed_registries.join(", ")
                ),
            ));
        }
        if let Some((low, high)) = self.host_port_range {
            for (i, port) in spec.ports.iter().enumerate() {
                if !(low..=high).contains(&port.host_port) {
                    return Err(err(
                        format!("port_mappings[{i}].host_port"),
                        format!(
                            "{} is outside the host ports containers may use ({low}-{high})",
                            port.host_port
                        ),
                    ));
                }
            }
        }
        if let (Some(cpus), Some(host)) = (spec.cpus, self.host_cpus) {
            if cpus > f64::from(host) {
                return Err(err(
                    "cpus",
                    format!("{cpus} is more than this host's {host} CPUs"),
                ));
            }
        }
        if let (Some(mb), Some(host)) = (spec.memory_mb, self.host_memory_mb) {
            if mb > host {
                return Err(err(
                    "memory_mb",
                    format!("{mb} is more than this host's {host} MiB of memory"),
                ));
            }
        }
        Ok(())
    }
}

/// The CPUs the engine counts (`/sys/devices/system/cpu/online`, e.g. `0-3,6`).
fn host_cpu_count() -> Option<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    count_cpu_list(text.trim())
}

pub(super) fn count_cpu_list(list: &str) -> Option<u32> {
    let mut total = 0u32;
    for part in list.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        total = total.checked_add(last.checked_sub(first)?.checked_add(1)?)?;
    }
    (total > 0).then_some(total)
}

/// `MemTotal` of `/proc/meminfo`, in MiB.
fn host_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
