//! What a renter's container may take from the host, on the real docker engine: under memory
//! pressure it is the kernel's first choice to kill (before the agent and dockerd), and its memory
//! is limited (the claim's or `docker.default_memory`), without swap.

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

#[test]
fn a_container_without_memory_mb_gets_the_default_limit_and_no_swap() {
    if !ready("a_container_without_memory_mb_gets_the_default_limit_and_no_swap") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.default_memory = "96m".into());
    let defaulted = agent.create(&body(&scope.claim("dflt"), &[], "sleep 600"));
    let id = defaulted["id"].as_str().unwrap();
    let mib = (96u64 << 20).to_string();
    assert_eq!(inspect(id, "{{.HostConfig.Memory}}"), mib);
    assert_eq!(inspect(id, "{{.HostConfig.MemorySwap}}"), mib, "no swap");
    // A claim's own limit wins over the default.
    let mut own = body(&scope.claim("own"), &[], "sleep 600");
    own["memory_mb"] = 64.into();
    let own = agent.create(&own);
    let id = own["id"].as_str().unwrap();
    let mib = (64u64 << 20).to_string();
    assert_eq!(inspect(id, "{{.HostConfig.Memory}}"), mib);
    assert_eq!(inspect(id, "{{.HostConfig.MemorySwap}}"), mib);
}

#[test]
fn the_default_limit_is_a_share_of_the_hosts_memory_and_holds() {
    if !ready("the_default_limit_is_a_share_of_the_hosts_memory_and_holds") {
        return;
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("MemTotal");
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.default_memory = "1%".into());
    let expected_mib = (total_kib / 1024 / 100).max(6);
    // A renter allocating without end (awk doubling a string: page faults charged to its
    // cgroup) is killed by the kernel inside its container, at its limit: the host keeps its
    // memory and the container goes on.
    let request = body(
        &scope.claim("hog"),
        &[],
        "awk 'BEGIN { s = \"x\"; while (1) s = s s }'; echo HOG rc=$?; sleep 600",
    );
    let created = agent.create(&request);
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        inspect(id, "{{.HostConfig.Memory}}"),
        (expected_mib << 20).to_string()
    );
    let mut logs = String::new();
    let ended = common::docker::wait_until(std::time::Duration::from_secs(30), || {
        logs = agent
            .get(&format!("/api/v1/containers/{id}/logs?tail=20"))
            .text();
        logs.contains("HOG rc=")
    });
    assert!(ended, "the hog is still allocating: {logs}");
    // SIGKILL (128 + 9) from the kernel's OOM killer, not awk giving up on its own.
    assert!(logs.contains("HOG rc=137"), "{logs}");
    assert_eq!(inspect(id, "{{.State.Running}}"), "true");
}
