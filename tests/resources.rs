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

/// Whether this engine applies `--storage-opt size=` (overlay2 on xfs with pquota, btrfs, ...).
fn engine_limits_writable_layers() -> bool {
    let out = common::docker::docker(&[
        "create",
        "--storage-opt",
        "size=64m",
        "--label",
        "io.utopia.test-run=storage-check",
        common::docker::TEST_IMAGE,
        "true",
    ]);
    if out.status.success() {
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let _ = common::docker::docker(&["rm", "-f", &id]);
    }
    out.status.success()
}

/// The leftovers of the probes of the agent `pid`: containers and images named
/// `utopia-storage-probe(-|:)<pid>-...`.
fn probe_leftovers(pid: u32) -> String {
    let containers = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("name=utopia-storage-probe-{pid}-"),
        "--format",
        "{{.Names}}",
    ]);
    let images = docker_ok(&["images", "utopia-storage-probe", "--format", "{{.Tag}}"]);
    let images: Vec<&str> = images
        .lines()
        .filter(|tag| tag.starts_with(&format!("{pid}-")))
        .collect();
    format!("{containers}{}", images.join(" "))
}

#[test]
fn a_storage_size_the_engine_cannot_apply_refuses_the_start() {
    if !ready("a_storage_size_the_engine_cannot_apply_refuses_the_start") {
        return;
    }
    if engine_limits_writable_layers() {
        // The other side: the container gets the option.
        let scope = Scope::new();
        let agent = scope.agent(|c| c.docker.storage_size = "1g".into());
        let created = agent.create(&body(&scope.claim("disk"), &[], "sleep 600"));
        let id = created["id"].as_str().unwrap();
        assert_eq!(
            inspect(id, "{{index .HostConfig.StorageOpt \"size\"}}"),
            "1024m"
        );
        assert_eq!(probe_leftovers(agent.pid()), "");
        return;
    }
    // This engine's storage driver cannot limit a writable layer: --check-config and the start
    // both refuse, naming the key and docker's words, and the probe leaves nothing behind.
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    common::docker::configure(&mut config, "io.utopia.test-run=storage-refused");
    config.docker.storage_size = "1g".into();
    let path = common::write_config(dir.path(), &config);
    for args in [
        vec!["--check-config", "-c", path.to_str().unwrap()],
        vec!["-c", path.to_str().unwrap()],
    ] {
        let child = std::process::Command::new(common::agent_binary())
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert_eq!(probe_leftovers(pid), "", "{args:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?} passed: {said}");
        assert!(
            said.contains(
                "docker.storage_size 1024m: this docker engine refuses --storage-opt size="
            ) && said.contains("docker said: Error response from daemon: --storage-opt"),
            "{args:?}: {said}"
        );
    }
}

#[test]
fn the_storage_size_reaches_docker_run_once_the_probe_passes() {
    if !ready("the_storage_size_reaches_docker_run_once_the_probe_passes") {
        return;
    }
    // A docker stand-in that takes `--storage-opt X` out of `create` and `run` (this engine
    // refuses it) and writes down what it took: the probe passes, and the create shows what
    // the agent asks of `docker run`.
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("storage-opts");
    let wrapper = common::docker::docker_wrapper(
        dir.path(),
        "docker-storage",
        &format!(
            "cmd=$1; skip=0; taken=\"\"\n\
             for a; do shift; if [ $skip = 1 ]; then taken=\"$taken $a\"; skip=0; continue; fi\n\
             if [ \"$a\" = --storage-opt ]; then skip=1; continue; fi; set -- \"$@\" \"$a\"; done\n\
             if [ -n \"$taken\" ]; then echo \"$cmd$taken\" >> {}; fi\n",
            seen.display()
        ),
    );
    let scope = Scope::new();
    let agent = scope.agent(|c| {
        c.docker.storage_size = "2g".into();
        c.docker.binary = wrapper.clone();
    });
    agent.create(&body(&scope.claim("disk"), &[], "sleep 600"));
    let taken = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(taken, "create size=2048m\nrun size=2048m\n");
    assert_eq!(probe_leftovers(agent.pid()), "");
}
