//! The GPU ledger: which claim (and, once it exists, which container) holds which GPUs and host
//! ports. Pure bookkeeping, owned by the [`DockerRunner`] thread alone, so every decision about a
//! GPU is taken in one place and two requests can never be given the same GPU.
//!
//! A create first *reserves* (claim, GPUs, ports) before any docker command runs; the
//! reservation is *bound* to the container id once docker created it, or *released* when the
//! create failed. A held GPU stays held, whatever the container's state, until the container is
//! removed. On start the ledger is rebuilt by *adopting* the labelled containers docker reports.
//!
//! [`DockerRunner`]: crate::docker::runner

use crate::docker::spec::{GpuRequest, PortMapping, Protocol};
use crate::state::GpuAllocation;
use std::collections::BTreeMap;
use std::fmt;

/// One claim's hold on GPUs and host ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub claim_id: String,
    /// `None` while the container is being created.
    pub container_id: Option<String>,
    pub gpus: Vec<u32>,
    pub ports: Vec<PortMapping>,
    /// Its create timed out: docker may still have made the container. Set to the container
    /// table's generation at that moment; kept reserved until a reconcile started later shows
    /// whether the container exists ([`GpuLedger::settle_unknown`]).
    pub unknown_since: Option<u64>,
    /// The claim was given up (deleted) while its create's outcome was unknown: a container
    /// that turns up is removed, not kept.
    pub given_up: bool,
}

/// Why a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The claim already has a container (or one being created).
    ClaimTaken {
        claim_id: String,
        container_id: Option<String>,
    },
    GpuHeld {
        gpu: u32,
        claim_id: String,
        container_id: Option<String>,
    },
    /// Not enough free GPUs for a `gpu_count` request.
    NotEnoughGpus { wanted: u32, free: Vec<u32> },
    PortHeld {
        port: u16,
        protocol: Protocol,
        claim_id: String,
        container_id: Option<String>,
    },
    /// A host port the agent itself uses (its API, frpc's admin port).
    PortReserved { port: u16 },
    /// The `remote_port` on frps another claim's mapping asks for.
    RemotePortHeld {
        port: u16,
        protocol: Protocol,
        claim_id: String,
        container_id: Option<String>,
    },
}

fn holder_text(claim_id: &str, container_id: &Option<String>) -> String {
    match container_id {
        Some(id) => format!("claim {claim_id} (container {})", short_id(id)),
        None => format!("claim {claim_id} (container being created)"),
    }
}

/// The 12-character id docker shows.
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::ClaimTaken {
                claim_id,
                container_id: Some(id),
            } => write!(f, "claim {claim_id} already has container {id}"),
            Conflict::ClaimTaken {
                claim_id,
                container_id: None,
            } => write!(f, "a container for claim {claim_id} is being created"),
            Conflict::GpuHeld {
                gpu,
                claim_id,
                container_id,
            } => write!(
                f,
                "GPU {gpu} is held by {}",
                holder_text(claim_id, container_id)
            ),
            Conflict::NotEnoughGpus { wanted, free } => write!(
                f,
                "{wanted} GPU(s) asked for but only {} free ({})",
                free.len(),
                if free.is_empty() {
                    "none".to_string()
                } else {
                    crate::docker::spec::join_ids(free)
                }
            ),
            Conflict::PortHeld {
                port,
                protocol,
                claim_id,
                container_id,
            } => write!(
                f,
                "host port {port}/{} is held by {}",
                protocol.as_str(),
                holder_text(claim_id, container_id)
            ),
            Conflict::PortReserved { port } => {
                write!(f, "host port {port} is used by the agent itself")
            }
            Conflict::RemotePortHeld {
                port,
                protocol,
                claim_id,
                container_id,
            } => write!(
                f,
                "remote port {port}/{} on frps is asked for by {}",
                protocol.as_str(),
                holder_text(claim_id, container_id)
            ),
        }
    }
}

/// GPU and port holdings of every managed container and every create in flight.
#[derive(Debug, Default)]
pub struct GpuLedger {
    holdings: Vec<Holding>,
    /// Host ports the agent itself listens on.
    reserved_ports: Vec<u16>,
}

impl GpuLedger {
    pub fn new(reserved_ports: Vec<u16>) -> Self {
        GpuLedger {
            holdings: Vec::new(),
            reserved_ports,
        }
    }

    pub fn holdings(&self) -> &[Holding] {
        &self.holdings
    }

    pub fn by_claim(&self, claim_id: &str) -> Option<&Holding> {
        self.holdings.iter().find(|h| h.claim_id == claim_id)
    }

    fn gpu_holder(&self, gpu: u32) -> Option<&Holding> {
        self.holdings.iter().find(|h| h.gpus.contains(&gpu))
    }

    /// The conflict with whoever holds `port` on the host, if anyone does.
    fn port_conflict(&self, port: &PortMapping) -> Option<Conflict> {
        // The public port on frps: frps gives it to whichever proxy registers first, and frpc
        // registers them in no fixed order at each start, so a second claim asking for it
        // could take the first one's public address (and its users' traffic).
        if port.remote_port != 0 {
            let holder = self.holdings.iter().find(|h| {
                h.ports
                    .iter()
                    .any(|p| p.remote_port == port.remote_port && p.protocol == port.protocol)
            });
            if let Some(holder) = holder {
                return Some(Conflict::RemotePortHeld {
                    port: port.remote_port,
                    protocol: port.protocol,
                    claim_id: holder.claim_id.clone(),
                    container_id: holder.container_id.clone(),
                });
            }
        }
        let holder = self.holdings.iter().find(|h| {
            h.ports
                .iter()
                .any(|p| p.host_port == port.host_port && p.protocol == port.protocol)
        })?;
        Some(Conflict::PortHeld {
            port: port.host_port,
            protocol: port.protocol,
            claim_id: holder.claim_id.clone(),
            container_id: holder.container_id.clone(),
        })
    }

    /// Reserves GPUs and host ports for a new container of `claim_id`. `present` are the GPU
    /// indices that exist and are usable (from NVML), used to pick GPUs for a count request.
    /// Returns the GPUs assigned.
    pub fn reserve(
        &mut self,
        claim_id: &str,
        request: &GpuRequest,
        ports: &[PortMapping],
        present: &[u32],
    ) -> Result<Vec<u32>, Conflict> {
        if let Some(h) = self.by_claim(claim_id) {
            return Err(Conflict::ClaimTaken {
                claim_id: claim_id.to_string(),
                container_id: h.container_id.clone(),
            });
        }
        let gpus = match request {
            GpuRequest::None => Vec::new(),
            GpuRequest::Ids(ids) => {
                for gpu in ids {
                    if let Some(h) = self.gpu_holder(*gpu) {
                        return Err(Conflict::GpuHeld {
                            gpu: *gpu,
                            claim_id: h.claim_id.clone(),
                            container_id: h.container_id.clone(),
                        });
                    }
                }
                ids.clone()
            }
            GpuRequest::Count(wanted) => {
                let free: Vec<u32> = present
                    .iter()
                    .copied()
                    .filter(|g| self.gpu_holder(*g).is_none())
                    .collect();
                if free.len() < *wanted as usize {
                    return Err(Conflict::NotEnoughGpus {
                        wanted: *wanted,
                        free,
                    });
                }
                free[..*wanted as usize].to_vec()
            }
        };
        for port in ports {
            // The agent's own ports are TCP: a UDP mapping on the same number takes nothing.
            if port.protocol == Protocol::Tcp && self.reserved_ports.contains(&port.host_port) {
                return Err(Conflict::PortReserved {
                    port: port.host_port,
                });
            }
            if let Some(conflict) = self.port_conflict(port) {
                return Err(conflict);
            }
        }
        self.holdings.push(Holding {
            claim_id: claim_id.to_string(),
            container_id: None,
            gpus: gpus.clone(),
            ports: ports.to_vec(),
            unknown_since: None,
            given_up: false,
        });
        Ok(gpus)
    }

    /// Records the container a reservation's create produced; false when the claim has no reservation still waiting for its container.
    pub fn bind(&mut self, claim_id: &str, container_id: &str) -> bool {
        let Some(h) = self
            .holdings
            .iter_mut()
            .find(|h| h.claim_id == claim_id && h.container_id.is_none())
        else {
            return false;
        };
        h.container_id = Some(container_id.to_string());
        h.unknown_since = None;
        true
    }

    /// A create timed out: its reservation stays, in state `unknown`, from `generation` on.
    pub fn mark_unknown(&mut self, claim_id: &str, generation: u64) {
        if let Some(h) = self
            .holdings
            .iter_mut()
            .find(|h| h.claim_id == claim_id && h.container_id.is_none())
        {
            h.unknown_since = Some(generation);
        }
    }

    /// The claim is given up while it has no container yet (its create is in progress, or
    /// timed out with its outcome unknown); false when it is not in that state.
    pub fn give_up(&mut self, claim_id: &str) -> bool {
        match self
            .holdings
            .iter_mut()
            .find(|h| h.claim_id == claim_id && h.container_id.is_none())
        {
            Some(h) => {
                h.given_up = true;
                true
            }
            None => false,
        }
    }

    /// After a reconcile that started at `generation` (its listing has been adopted): an
    /// unknown reservation older than it whose container did not turn up is released. Returns
    /// the claims released.
    pub fn settle_unknown(&mut self, generation: u64) -> Vec<String> {
        let mut released = Vec::new();
        self.holdings.retain(|h| {
            let settled = h.container_id.is_none()
                && h.unknown_since.is_some_and(|since| since <= generation);
            if settled {
                released.push(h.claim_id.clone());
            }
            !settled
        });
        released
    }

    /// Containers of given-up claims that turned up: to be removed.
    pub fn given_up_containers(&self) -> Vec<String> {
        self.holdings
            .iter()
            .filter(|h| h.given_up)
            .filter_map(|h| h.container_id.clone())
            .collect()
    }

    /// The first GPU of `container_id` that another holding (a container, or a create in
    /// flight or unknown) held before it: such a container must not be started.
    pub fn gpu_taken_from(&self, container_id: &str) -> Option<Conflict> {
        let mine = self
            .holdings
            .iter()
            .position(|h| h.container_id.as_deref() == Some(container_id))?;
        for gpu in &self.holdings[mine].gpus {
            let first = self.holdings.iter().position(|h| h.gpus.contains(gpu))?;
            if first != mine {
                let holder = &self.holdings[first];
                return Some(Conflict::GpuHeld {
                    gpu: *gpu,
                    claim_id: holder.claim_id.clone(),
                    container_id: holder.container_id.clone(),
                });
            }
        }
        None
    }

    /// Which of `gpus` nobody holds (after a removal: the ones really free now).
    pub fn free_of(&self, gpus: &[u32]) -> Vec<u32> {
        gpus.iter()
            .copied()
            .filter(|g| self.gpu_holder(*g).is_none())
            .collect()
    }

    /// Drops a reservation whose create failed (a bound holding is left alone).
    pub fn release_pending(&mut self, claim_id: &str) {
        self.holdings
            .retain(|h| !(h.claim_id == claim_id && h.container_id.is_none()));
    }

    /// Frees what a removed container held.
    pub fn remove_container(&mut self, container_id: &str) -> Option<Holding> {
        let index = self
            .holdings
            .iter()
            .position(|h| h.container_id.as_deref() == Some(container_id))?;
        Some(self.holdings.remove(index))
    }

    pub fn holds_container(&self, container_id: &str) -> bool {
        self.holdings
            .iter()
            .any(|h| h.container_id.as_deref() == Some(container_id))
    }

    /// Records a container found in docker (rebuild, reconcile, events). A pending reservation of
    /// the same claim is bound to it. What it holds is recorded even when it conflicts with
    /// another holding (reality wins: both containers exist); the conflicts are returned so they
    /// can be reported.
    pub fn adopt(
        &mut self,
        claim_id: &str,
        container_id: &str,
        gpus: &[u32],
        ports: &[PortMapping],
    ) -> Vec<Conflict> {
        if self.holds_container(container_id) {
            return Vec::new();
        }
        if self.bind(claim_id, container_id) {
            return Vec::new();
        }
        let mut conflicts = Vec::new();
        if let Some(h) = self.by_claim(claim_id) {
            conflicts.push(Conflict::ClaimTaken {
                claim_id: claim_id.to_string(),
                container_id: h.container_id.clone(),
            });
        }
        for gpu in gpus {
            if let Some(h) = self.gpu_holder(*gpu) {
                conflicts.push(Conflict::GpuHeld {
                    gpu: *gpu,
                    claim_id: h.claim_id.clone(),
                    container_id: h.container_id.clone(),
                });
            }
        }
        for port in ports {
            conflicts.extend(self.port_conflict(port));
        }
        self.holdings.push(Holding {
            claim_id: claim_id.to_string(),
            container_id: Some(container_id.to_string()),
            gpus: gpus.to_vec(),
            ports: ports.to_vec(),
            unknown_since: None,
            given_up: false,
        });
        conflicts
    }

    /// GPU → holder, for GPUs held by an existing container (the first holder when two conflict).
    pub fn allocations(&self) -> BTreeMap<u32, GpuAllocation> {
        let mut map = BTreeMap::new();
        for h in &self.holdings {
            let Some(container_id) = &h.container_id else {
                continue;
            };
            for gpu in &h.gpus {
                map.entry(*gpu).or_insert_with(|| GpuAllocation {
                    claim_id: h.claim_id.clone(),
                    container_id: container_id.clone(),
                });
            }
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(p: u16) -> PortMapping {
        PortMapping {
            host_port: p,
            container_port: 80,
            protocol: Protocol::Tcp,
            remote_port: 0,
        }
    }

    #[test]
    fn reserve_bind_release() {
        let mut l = GpuLedger::new(vec![9200]);
        assert_eq!(
            l.reserve("a", &GpuRequest::Ids(vec![1]), &[port(8000)], &[0, 1]),
            Ok(vec![1])
        );
        // Held while being created.
        assert_eq!(
            l.reserve("b", &GpuRequest::Ids(vec![1]), &[], &[0, 1]),
            Err(Conflict::GpuHeld {
                gpu: 1,
                claim_id: "a".into(),
                container_id: None
            })
        );
        assert!(
            l.allocations().is_empty(),
            "pending holdings are not published"
        );
        l.bind("a", "c1");
        assert_eq!(l.allocations()[&1].container_id, "c1");
        let e = l.reserve("a", &GpuRequest::None, &[], &[]).unwrap_err();
        assert_eq!(e.to_string(), "claim a already has container c1");
        let e = l
            .reserve("b", &GpuRequest::None, &[port(8000)], &[])
            .unwrap_err();
        assert!(matches!(e, Conflict::PortHeld { port: 8000, .. }), "{e}");
        // Same number, other protocol: free.
        let udp = PortMapping {
            protocol: Protocol::Udp,
            ..port(8000)
        };
        assert!(l.reserve("b", &GpuRequest::None, &[udp], &[]).is_ok());
        assert_eq!(
            l.reserve("c", &GpuRequest::None, &[port(9200)], &[]),
            Err(Conflict::PortReserved { port: 9200 })
        );
        // The public port on frps is one claim's too (0: frps chooses, never a conflict).
        let remote = |host: u16, remote_port: u16, protocol: Protocol| PortMapping {
            protocol,
            remote_port,
            ..port(host)
        };
        assert!(l
            .reserve(
                "r1",
                &GpuRequest::None,
                &[remote(8101, 30001, Protocol::Tcp)],
                &[]
            )
            .is_ok());
        let e = l
            .reserve(
                "r2",
                &GpuRequest::None,
                &[remote(8102, 30001, Protocol::Tcp)],
                &[],
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "remote port 30001/tcp on frps is asked for by claim r1 (container being created)"
        );
        assert!(l.by_claim("r2").is_none());
        assert!(l
            .reserve(
                "r3",
                &GpuRequest::None,
                &[remote(8103, 30001, Protocol::Udp)],
                &[]
            )
            .is_ok());
        assert!(l
            .reserve(
                "r4",
                &GpuRequest::None,
                &[remote(8104, 0, Protocol::Tcp)],
                &[]
            )
            .is_ok());
        assert!(l
            .reserve(
                "r5",
                &GpuRequest::None,
                &[remote(8105, 0, Protocol::Tcp)],
                &[]
            )
            .is_ok());
        assert!(
            l.by_claim("c").is_none(),
            "a refused reservation holds nothing"
        );
        assert!(l.remove_container("c1").is_some());
        assert!(l
            .reserve("d", &GpuRequest::Ids(vec![1]), &[port(8000)], &[0, 1])
            .is_ok());
        l.release_pending("d");
        assert!(l.by_claim("d").is_none());
    }

    #[test]
    fn count_picks_the_lowest_free_gpus() {
        let mut l = GpuLedger::new(vec![]);
        l.reserve("a", &GpuRequest::Ids(vec![1]), &[], &[0, 1, 2, 3])
            .unwrap();
        assert_eq!(
            l.reserve("b", &GpuRequest::Count(2), &[], &[0, 1, 2, 3]),
            Ok(vec![0, 2])
        );
        assert_eq!(
            l.reserve("c", &GpuRequest::Count(2), &[], &[0, 1, 2, 3]),
            Err(Conflict::NotEnoughGpus {
                wanted: 2,
                free: vec![3]
            })
        );
    }

    #[test]
    fn release_pending_keeps_a_bound_holding() {
        let mut l = GpuLedger::new(vec![]);
        l.reserve("a", &GpuRequest::Ids(vec![0]), &[], &[0])
            .unwrap();
        l.bind("a", "c1");
        l.release_pending("a");
        assert!(l.holds_container("c1"));
    }

    #[test]
    fn adopt_rebuilds_and_reports_conflicts() {
        let mut l = GpuLedger::new(vec![]);
        assert!(l.adopt("a", "c1", &[0, 1], &[port(8000)]).is_empty());
        assert!(
            l.adopt("a", "c1", &[0, 1], &[port(8000)]).is_empty(),
            "idempotent"
        );
        let conflicts = l.adopt("b", "c2", &[1], &[port(8000)]);
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        // Both are recorded; GPU 1 stays with its first holder in the published view.
        assert_eq!(l.allocations()[&1].container_id, "c1");
        l.remove_container("c1");
        assert_eq!(l.allocations()[&1].container_id, "c2");
        // A pending reservation is bound by adopting its container.
        l.reserve("p", &GpuRequest::Ids(vec![3]), &[], &[3])
            .unwrap();
        assert!(l.adopt("p", "c3", &[3], &[]).is_empty());
        assert_eq!(l.by_claim("p").unwrap().container_id.as_deref(), Some("c3"));
        assert_eq!(l.holdings().len(), 2);
    }

    #[test]
    fn an_unknown_create_stays_reserved_until_a_later_reconcile() {
        let mut l = GpuLedger::new(vec![]);
        l.reserve("a", &GpuRequest::Ids(vec![0]), &[port(8000)], &[0, 1])
            .unwrap();
        l.mark_unknown("a", 5);
        assert!(l
            .reserve("b", &GpuRequest::Ids(vec![0]), &[], &[0, 1])
            .is_err());
        assert!(l
            .reserve("b", &GpuRequest::None, &[port(8000)], &[])
            .is_err());
        // A reconcile that started before the timeout decides nothing.
        assert!(l.settle_unknown(4).is_empty());
        assert!(l.by_claim("a").is_some());
        assert_eq!(l.settle_unknown(5), vec!["a".to_string()]);
        assert!(l.holdings().is_empty());

        // It turned up: adopted with what it reserved, no conflict.
        l.reserve("c", &GpuRequest::Ids(vec![1]), &[], &[0, 1])
            .unwrap();
        l.mark_unknown("c", 7);
        assert!(l.give_up("c"));
        assert!(!l.give_up("zzz"));
        assert!(l.adopt("c", "c1", &[1], &[]).is_empty());
        assert_eq!(l.given_up_containers(), vec!["c1".to_string()]);
        assert!(l.settle_unknown(9).is_empty(), "bound: kept until removed");
    }

    #[test]
    fn a_late_container_never_gets_a_gpu_someone_else_holds() {
        let mut l = GpuLedger::new(vec![]);
        assert!(l.adopt("a", "first", &[0, 1], &[]).is_empty());
        assert_eq!(l.adopt("b", "late", &[1], &[]).len(), 1);
        assert!(l.gpu_taken_from("first").is_none());
        assert!(matches!(
            l.gpu_taken_from("late"),
            Some(Conflict::GpuHeld { gpu: 1, .. })
        ));
        // Removing the late one frees nothing the first holds.
        l.remove_container("late");
        assert_eq!(l.free_of(&[1]), Vec::<u32>::new());
        assert_eq!(l.allocations()[&1].container_id, "first");
    }
}
