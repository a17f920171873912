//! What the runner publishes after every change: the container summaries, the GPU
//! allocations, the ports the tunnel publishes, and the `docker` health.

use super::{DockerState, Runner};
use crate::docker::container::ContainerView;
use crate::state::{ContainerSummary, Health, PublishedPort};

impl Runner {
    /// The view with its warnings, and its usage as the usage sampler last read it.
    pub(super) fn decorate(&self, view: &ContainerView) -> ContainerView {
        let mut view = self.table.decorate(view, &self.snapshot.gpus());
        view.usage = self.snapshot.usage().get(&view.id).cloned();
        view
    }

    pub(super) fn publish(&mut self) {
        let views: Vec<ContainerView> = self.table.views().map(|v| self.decorate(v)).collect();
        self.writer.publish(
            views
                .iter()
                .map(|v| ContainerSummary {
                    id: v.id.clone(),
                    claim_id: v.claim_id.clone(),
                    state: v.state.clone(),
                    gpu_ids: v.gpu_ids.clone(),
                    pid: v.pid,
                    usage: None,
                })
                .collect(),
            self.ledger.allocations(),
        );
        // What the frp tunnel publishes on frps: the ports of the managed containers that hold
        // their host ports (running or paused). A stopped container's host port is free again:
        // a proxy left on it would hand the renter's public traffic to whatever local process
        // binds that port next.
        self.writer.publish_ports(
            views
                .iter()
                .filter(|v| holds_host_ports(&v.state))
                .flat_map(|v| {
                    v.port_mappings.iter().map(|m| PublishedPort {
                        claim_id: v.claim_id.clone(),
                        container_port: m.container_port,
                        protocol: m.protocol.as_str(),
                        host_port: m.host_port,
                        remote_port: m.remote_port,
                    })
                })
                .collect(),
        );
        let health = match &self.docker {
            DockerState::Starting => Health::Starting(None),
            DockerState::Unavailable(why) => Health::Unavailable(why.clone()),
            DockerState::Ok => {
                let mut problems: Vec<String> = views
                    .iter()
                    .filter(|v| !v.warnings.is_empty())
                    .map(|v| format!("{}: {}", v.name, v.warnings.join("; ")))
                    .collect();
                problems.extend(self.network_problem.clone());
                if problems.is_empty() {
                    Health::Ok
                } else {
                    Health::Degraded(problems.join(" | "))
                }
            }
        };
        if self.published_health.as_ref() != Some(&health) {
            self.writer.set_health(health.clone());
            self.published_health = Some(health);
        }
    }
}

/// Whether a container in docker state `state` holds its published host ports: docker binds
/// them while it runs (also paused) and frees them when it stops, exits or restarts.
pub(super) fn holds_host_ports(state: &str) -> bool {
    matches!(state, "running" | "paused")
}

#[cfg(test)]
mod tests {
    use super::holds_host_ports;

    #[test]
    fn only_running_or_paused_containers_hold_their_host_ports() {
        for state in ["running", "paused"] {
            assert!(holds_host_ports(state), "{state}");
        }
        for state in [
            "created",
            "exited",
            "restarting",
            "removing",
            "dead",
            "creating",
            "",
        ] {
            assert!(!holds_host_ports(state), "{state}");
        }
    }
}
