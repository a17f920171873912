//! What a renter's container may take from the host, on the real docker engine: under memory
//! pressure it is the kernel's first choice to kill (before the agent and dockerd).

mod common;

use common::docker::{body, docker_ok, ready, Scope};

/// `docker container inspect --format <format> <id>`.
fn inspect(id: &str, format: &str) -> String {
    docker_ok(&["container", "inspect", "--format", format, id])
}

#[test]
fn a_renters_container_gets_the_configured_oom_score() {
    if !ready("a_renters_container_gets_the_configured_oom_score") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.oom_score_adj = 777);
    let created = agent.create(&body(&scope.claim("oom"), &[], "sleep 600"));
    let id = created["id"].as_str().unwrap();
    assert_eq!(inspect(id, "{{.HostConfig.OomScoreAdj}}"), "777");
    // What the kernel will use: the container's processes carry it.
    let pid = inspect(id, "{{.State.Pid}}");
    let score = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).unwrap();
    assert_eq!(score.trim(), "777");
}
