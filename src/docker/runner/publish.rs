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
        // What the frp tunnel publishes on frps: every managed container's ports.
        self.writer.publish_ports(
            views
                .iter()
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
