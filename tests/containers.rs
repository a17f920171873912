//! Containers against the real docker engine: each test runs its own agent (fake NVML, 2 GPUs,
//! `gpu_mode: env`) with its own managed label, so tests run in parallel without seeing each
//! other's containers; a `Scope` guard removes everything a test created, even on failure.

mod common;

use common::docker::{body, docker, docker_ok, ready, wait_until, Scope, TEST_IMAGE};
use common::{Agent, AgentOptions};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;
use utopia_node_agent::config::{Config, GpuMode};

/// Lines of a container's environment, read through the logs endpoint of a container whose
/// command prints `env`.
fn env_lines(agent: &Agent, id: &str) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    wait_until(Duration::from_secs(10), || {
        let r = agent.get(&format!("/api/v1/containers/{id}/logs?tail=100"));
        assert_eq!(r.status, 200, "{}", r.text());
        lines = r.text().lines().map(str::to_string).collect();
        lines.iter().any(|l| l == "ENV-DONE")
    });
    lines
}

fn visible_devices(lines: &BTreeSet<String>) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.starts_with("NVIDIA_VISIBLE_DEVICES="))
        .cloned()
        .collect()
}

#[test]
fn lifecycle_create_list_inspect_logs_stop_start_restart_delete() {
    if !ready("lifecycle") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let claim = scope.claim("life");
    let port = common::free_port();
    let mut request = body(
        &claim,
        &[1],
        "env; echo ENV-DONE; echo to-stderr >&2; sleep 600",
    );
    request["env_vars"] = json!(["GREETING=hello world", "EMPTY="]);
    request["port_mappings"] = json!([{"host_port": port, "container_port": 80}]);
    request["memory_mb"] = json!(64);
    request["cpus"] = json!(0.5);
    request["shm_size_mb"] = json!(32);
    let created = agent.create(&request);

    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 64, "{created}");
    assert_eq!(created["name"], format!("utopia-{claim}"));
    assert_eq!(created["claim_id"], claim.as_str());
    assert_eq!(created["image"], TEST_IMAGE);
    assert_eq!(created["state"], "running");
    assert_eq!(created["exit_code"], Value::Null);
    assert_eq!(created["oom_killed"], false);
    assert_eq!(created["gpu_ids"], json!([1]));
    assert_eq!(
        created["gpu_uuids"],
        json!(["GPU-00000000-0000-4000-8000-000000000001"])
    );
    assert_eq!(
        created["port_mappings"],
        json!([{"host_port": port, "container_port": 80, "protocol": "tcp", "remote_port": 0}])
    );
    // frp is off in this agent: the endpoint has no public address.
    assert_eq!(
        created["endpoints"],
        json!([{"container_port": 80, "protocol": "tcp", "host_port": port, "remote_addr": null}])
    );
    // The answer is built from `docker run`'s id and what the agent asked for: docker's own
    // times are not in it (null) but follow within moments, from the refresh after the create.
    assert_eq!(created["status"], "Up (just started)", "{created}");
    assert!(created["created_at"].is_null() && created["started_at"].is_null());
    let mut shown = Value::Null;
    assert!(
        wait_until(Duration::from_secs(10), || {
            shown = agent.get(&format!("/api/v1/containers/{id}")).json();
            shown["started_at"].is_string()
        }),
        "docker's times never filled in: {shown}"
    );
    assert!(
        shown["created_at"].as_str().unwrap().ends_with('Z'),
        "{shown}"
    );
    assert!(
        shown["status"].as_str().unwrap().starts_with("Up since 20"),
        "{shown}"
    );
    assert_eq!(shown["state"], "running");

    // The container sees exactly its GPU, and the user's environment arrived verbatim.
    let lines = env_lines(&agent, &id);
    assert_eq!(visible_devices(&lines), vec!["NVIDIA_VISIBLE_DEVICES=1"]);
    assert!(lines.contains("GREETING=hello world"), "{lines:?}");
    assert!(lines.contains("EMPTY="), "{lines:?}");
    // Toolkit features that would hand out host devices are switched off for every container.
    for feature in [
        "NVIDIA_GDS",
        "NVIDIA_MOFED",
        "NVIDIA_NVSWITCH",
        "NVIDIA_GDRCOPY",
    ] {
        assert!(lines.contains(&format!("{feature}=disabled")), "{lines:?}");
    }
    assert!(
        lines.contains("to-stderr"),
        "stderr is in the logs: {lines:?}"
    );
    let tail = agent.get(&format!("/api/v1/containers/{id}/logs?tail=1"));
    assert_eq!(
        tail.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(tail.text().lines().count(), 1, "{}", tail.text());
    // Query values are percent-decoded: %31 is 1.
    let encoded = agent.get(&format!("/api/v1/containers/{id}/logs?tail=%31"));
    assert_eq!(encoded.status, 200, "{}", encoded.text());
    assert_eq!(encoded.text(), tail.text());
    // HEAD works wherever GET does.
    let head = agent.api("HEAD", &format!("/api/v1/containers/{id}"), b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("content-length").is_some_and(|l| l != "0"));
    assert_eq!(
        agent
            .get(&format!("/api/v1/containers/{id}/logs?tail=x"))
            .status,
        400
    );

    // What docker was told: safe defaults, loopback publishing, labels, limits.
    let inspect: Value = serde_json::from_str(&docker_ok(&["container", "inspect", &id])).unwrap();
    let host = &inspect[0]["HostConfig"];
    assert_eq!(host["SecurityOpt"], json!(["no-new-privileges"]));
    assert_eq!(host["PidsLimit"], 4096);
    assert_eq!(host["Init"], true);
    assert_eq!(host["Privileged"], false);
    assert_eq!(host["Memory"], 64 * 1024 * 1024);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["ShmSize"], 32 * 1024 * 1024);
    assert_eq!(host["LogConfig"]["Type"], "json-file");
    assert_eq!(host["LogConfig"]["Config"]["max-size"], "50m");
    assert_eq!(
        host["PortBindings"]["80/tcp"][0],
        json!({"HostIp": "127.0.0.1", "HostPort": port.to_string()})
    );
    let labels = &inspect[0]["Config"]["Labels"];
    assert_eq!(labels["io.utopia.claim_id"], claim.as_str());
    assert_eq!(labels["io.utopia.gpu_ids"], "1");
    assert_eq!(labels["io.utopia.ports"], format!("{port}:80/tcp"));
    let (label_key, label_value) = scope.label.split_once('=').unwrap();
    assert_eq!(labels[label_key], label_value);
    let argv = inspect[0]["Args"].to_string();
    assert!(!argv.contains("hello world"), "env stays off the argv");

    // Listed, and found by id, 12-char prefix, name and claim id.
    let list = agent.containers();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    for key in [
        id.clone(),
        id[..12].to_string(),
        format!("utopia-{claim}"),
        claim.clone(),
    ] {
        let r = agent.get(&format!("/api/v1/containers/{key}"));
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        assert_eq!(r.json()["id"], id.as_str());
    }
    assert_eq!(
        agent
            .get(&format!("/api/v1/containers/{}", &id[..11]))
            .status,
        404,
        "a prefix shorter than 12 is not an id"
    );

    // The GPU shows as held in the metrics.
    assert_eq!(agent.gpu_holders(), vec![(1, claim.clone(), id.clone())]);

    let stopped = agent.api("POST", &format!("/api/v1/containers/{claim}/stop"), b"");
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    assert_eq!(stopped.json()["state"], "exited");
    assert!(stopped.json()["exit_code"].is_i64());
    // A stopped container keeps its GPU.
    assert_eq!(agent.gpu_holders().len(), 1);
    let started = agent.api("POST", &format!("/api/v1/containers/{id}/start"), b"");
    assert_eq!(started.status, 200, "{}", started.text());
    assert_eq!(started.json()["state"], "running");
    let restarted = agent.api("POST", &format!("/api/v1/containers/{id}/restart"), b"");
    assert_eq!(restarted.status, 200, "{}", restarted.text());
    assert_eq!(restarted.json()["state"], "running");

    let deleted = agent.api("DELETE", &format!("/api/v1/containers/{id}"), b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(
        deleted.json(),
        json!({"id": id, "name": format!("utopia-{claim}"), "claim_id": claim,
               "deleted": true, "gpu_ids": [1]})
    );
    assert!(scope.docker_ids().is_empty(), "removed from docker");
    assert_eq!(agent.get(&format!("/api/v1/containers/{id}")).status, 404);
    assert_eq!(
        agent
            .api("DELETE", &format!("/api/v1/containers/{id}"), b"")
            .status,
        404
    );
    assert!(agent.containers().is_empty());
    assert!(agent.gpu_holders().is_empty(), "GPU 1 is free again");
}

#[test]
fn logs_longer_than_the_cap_keep_the_newest_lines() {
    if !ready("long-logs") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    // About 10 MiB in 100000 lines, more than the 8 MiB a logs answer carries.
    let line = "x".repeat(100);
    let created = agent.create(&body(
        &scope.claim("chatty"),
        &[],
        &format!("yes {line} | head -n 99999; echo LAST-LINE; sleep 600"),
    ));
    let id = created["id"].as_str().unwrap();
    let mut text = String::new();
    let done = wait_until(Duration::from_secs(20), || {
        let r = agent.get(&format!("/api/v1/containers/{id}/logs?tail=100000"));
        assert_eq!(r.status, 200);
        text = r.text();
        text.contains("LAST-LINE")
    });
    assert!(
        done,
        "the newest line is missing: ...{}",
        &text[text.len().saturating_sub(300)..]
    );
    assert!(text.len() <= 8 * 1024 * 1024 + 200, "{}", text.len());
    assert!(
        text.starts_with("[... cut:"),
        "{}",
        &text[..200.min(text.len())]
    );
    assert!(text.ends_with("\nLAST-LINE\n"));
    // Whole lines only after the note.
    assert!(text.lines().skip(1).all(|l| l == line || l == "LAST-LINE"));
}

#[test]
fn a_container_without_gpus_sees_void_and_gpu_count_picks_free_gpus() {
    if !ready("void") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let none = agent.create(&body(
        &scope.claim("nogpu"),
        &[],
        "env; echo ENV-DONE; sleep 600",
    ));
    assert_eq!(none["gpu_ids"], json!([]));
    let lines = env_lines(&agent, none["id"].as_str().unwrap());
    assert_eq!(visible_devices(&lines), vec!["NVIDIA_VISIBLE_DEVICES=void"]);

    // The original design's example: NVIDIA_VISIBLE_DEVICES naming exactly the GPUs.
    let mut both = body(
        &scope.claim("both"),
        &[0, 1],
        "env; echo ENV-DONE; sleep 600",
    );
    both["env_vars"] = json!(["NVIDIA_VISIBLE_DEVICES=0,1"]);
    let both = agent.create(&both);
    let lines = env_lines(&agent, both["id"].as_str().unwrap());
    assert_eq!(visible_devices(&lines), vec!["NVIDIA_VISIBLE_DEVICES=0,1"]);
    agent.api(
        "DELETE",
        &format!("/api/v1/containers/{}", both["id"].as_str().unwrap()),
        b"",
    );

    let mut counted = json!({"claim_id": scope.claim("count"), "image": TEST_IMAGE,
        "gpu_count": 1, "command": ["sh", "-c", "env; echo ENV-DONE; sleep 600"]});
    let first = agent.create(&counted);
    assert_eq!(first["gpu_ids"], json!([0]));
    counted["claim_id"] = json!(scope.claim("count2"));
    let second = agent.create(&counted);
    assert_eq!(second["gpu_ids"], json!([1]));
    let lines = env_lines(&agent, second["id"].as_str().unwrap());
    assert_eq!(visible_devices(&lines), vec!["NVIDIA_VISIBLE_DEVICES=1"]);
    counted["claim_id"] = json!(scope.claim("count3"));
    let r = agent.post_json("/api/v1/containers", &counted);
    assert_eq!(
        (r.status, r.error_code()),
        (409, "gpu_in_use".to_string()),
        "{}",
        r.text()
    );
}

#[test]
fn conflicts_name_the_holder() {
    if !ready("conflicts") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let port = common::free_port();
    let claim = scope.claim("a");
    let mut first = body(&claim, &[0], "sleep 600");
    first["port_mappings"] = json!([{"host_port": port, "container_port": 80}]);
    let created = agent.create(&first);
    let id = created["id"].as_str().unwrap();

    // Same claim, even without GPUs: 409 naming the existing container.
    let r = agent.post_json("/api/v1/containers", &body(&claim, &[], "true"));
    assert_eq!(
        (r.status, r.error_code()),
        (409, "claim_in_use".to_string())
    );
    assert!(r.text().contains(id), "{}", r.text());

    // The GPU, held by a stopped container too.
    assert_eq!(
        agent
            .api("POST", &format!("/api/v1/containers/{id}/stop"), b"")
            .status,
        200
    );
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("b"), &[1, 0], "true"),
    );
    assert_eq!((r.status, r.error_code()), (409, "gpu_in_use".to_string()));
    assert!(
        r.text().contains(&claim) && r.text().contains(&id[..12]),
        "{}",
        r.text()
    );

    // The host port, of a managed container and of the agent itself.
    let mut other = body(&scope.claim("c"), &[1], "true");
    other["port_mappings"] = json!([{"host_port": port, "container_port": 81}]);
    let r = agent.post_json("/api/v1/containers", &other);
    assert_eq!((r.status, r.error_code()), (409, "port_in_use".to_string()));
    assert!(r.text().contains(&claim), "{}", r.text());
    other["port_mappings"] = json!([{"host_port": agent.addr.port(), "container_port": 81}]);
    let r = agent.post_json("/api/v1/containers", &other);
    assert_eq!((r.status, r.error_code()), (409, "port_in_use".to_string()));

    // A host port some other process holds: docker fails, the agent answers 409 and leaves
    // no half-created container behind.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    other["port_mappings"] = json!([{"host_port": taken, "container_port": 81}]);
    let r = agent.post_json("/api/v1/containers", &other);
    assert_eq!(
        (r.status, r.error_code()),
        (409, "port_in_use".to_string()),
        "{}",
        r.text()
    );
    assert_eq!(scope.docker_ids(), vec![id.to_string()]);
    // GPU 1 was not kept by the failed create.
    other["port_mappings"] = json!([]);
    agent.create(&other);
    assert_eq!(agent.containers().len(), 2);
}

#[test]
fn twenty_concurrent_creates_for_one_gpu_give_exactly_one_201() {
    if !ready("concurrent") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let statuses: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let request = body(&scope.claim(&format!("race{i}")), &[0], "sleep 600");
                let agent = &agent;
                s.spawn(move || {
                    let r = agent.post_json("/api/v1/containers", &request);
                    let code = if r.status == 201 {
                        String::new()
                    } else {
                        r.error_code()
                    };
                    (r.status, code)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created = statuses.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|(s, c)| *s == 201 || (*s == 409 && c == "gpu_in_use")),
        "{statuses:?}"
    );
    assert_eq!(scope.docker_ids().len(), 1);
    assert_eq!(agent.containers().len(), 1);
    assert_eq!(agent.gpu_holders().len(), 1);
}

#[test]
fn injection_corpus_is_refused_and_creates_nothing() {
    if !ready("injection") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let claim = scope.claim("inj");
    let with = |key: &str, value: Value| {
        let mut b = body(&claim, &[], "true");
        b[key] = value;
        b
    };
    let corpus = vec![
        with("image", json!("--privileged")),
        with("image", json!("-v/:/host")),
        with("image", json!("busybox --privileged")),
        with("env_vars", json!(["A=1\nB=2"])),
        with("env_vars", json!(["A=1\r\n--privileged"])),
        with("env_vars", json!(["NVIDIA_VISIBLE_DEVICES=all"])),
        with("env_vars", json!(["NVIDIA_MOFED=enabled"])),
        with("env_vars", json!(["NVIDIA_NVSWITCH=enabled"])),
        with("env_vars", json!(["PATH"])),
        with("env_vars", json!(["--privileged=true"])),
        with("claim_id", json!("a/b")),
        with("claim_id", json!("../etc")),
        with("claim_id", json!("..")),
        with("claim_id", json!("a..b")),
        with(
            "port_mappings",
            json!([{"host_port": 0, "container_port": 80}]),
        ),
        with(
            "port_mappings",
            json!([{"host_port": 70000, "container_port": 80}]),
        ),
        with(
            "port_mappings",
            json!([{"host_port": 8080, "container_port": 70000}]),
        ),
        with("gpu_ids", json!([7])),
        with("gpu_ids", json!([0, 0])),
        with("privileged", json!(true)),
        with("volumes", json!(["/:/host"])),
        with("network_mode", json!("host")),
        with("cap_add", json!(["SYS_ADMIN"])),
        with("devices", json!(["/dev/mem"])),
        with("command", json!(["sh", "a\u{0}b"])),
        json!({"claim_id": claim, "image": TEST_IMAGE, "gpu_ids": [0],
               "env_vars": ["NVIDIA_VISIBLE_DEVICES=0,1"]}),
        json!({"claim_id": claim}),
        json!("not an object"),
    ];
    for request in &corpus {
        let r = agent.post_json("/api/v1/containers", request);
        assert_eq!(r.status, 400, "{request} -> {}", r.text());
        assert_eq!(r.error_code(), "bad_request", "{request}");
    }
    let r = agent.api("POST", "/api/v1/containers", b"{not json");
    assert_eq!(r.status, 400);
    let r = agent.api("POST", "/api/v1/containers", b"");
    assert_eq!(r.status, 400);
    assert!(scope.docker_ids().is_empty(), "nothing was created");
    assert!(agent.containers().is_empty());
    assert!(agent.gpu_holders().is_empty(), "no GPU stayed reserved");
    let named = docker(&["container", "inspect", &format!("utopia-{claim}")]);
    assert!(
        !named.status.success(),
        "no container named after the claim"
    );
    // The valid request still works afterwards.
    agent.create(&body(&claim, &[0], "true"));
}

#[test]
fn an_image_that_cannot_be_had_is_an_error_and_frees_the_gpu() {
    if !ready("missing-image") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.pull_timeout_secs = 20);
    let mut request = body(&scope.claim("img"), &[0], "true");
    request["image"] = json!(format!("utopia-test-missing-{}:latest", scope.claim("x")));
    let r = agent.post_json("/api/v1/containers", &request);
    // Not found in a registry (400), or no registry reachable from this machine (502).
    assert!(
        matches!(
            (r.status, r.error_code().as_str()),
            (400, "image_not_found") | (502, "image_pull_failed")
        ),
        "{}",
        r.text()
    );
    assert!(r.text().contains("utopia-test-missing-"), "{}", r.text());
    assert!(scope.docker_ids().is_empty());
    agent.only_failed_creates_listed(&scope.claim("img"));
    // DELETE of the failed claim forgets it: 200, no container id, nothing freed.
    let failed = scope.claim("img");
    let r = agent.api("DELETE", &format!("/api/v1/containers/{failed}"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let deleted = r.json();
    assert!(deleted["id"].is_null(), "{deleted}");
    assert_eq!(deleted["gpu_ids"], json!([]), "{deleted}");
    assert_eq!(
        agent.get(&format!("/api/v1/containers/{failed}")).status,
        404
    );
    assert!(agent.containers().is_empty());
    agent.create(&body(&scope.claim("img2"), &[0], "true"));
}

/// A `docker` that creates instead of running: this engine has neither the nvidia runtime nor
/// CDI, so a container with GPUs cannot start here, but how docker reads the agent's GPU flags
/// can still be checked on the created container.
fn create_only_docker(dir: &std::path::Path) -> std::path::PathBuf {
    // run --detach ARGS... -> create ARGS...
    common::docker::docker_wrapper(
        dir,
        "docker-create-only",
        "if [ \"$1\" = run ]; then shift 2; exec docker create \"$@\"; fi\n",
    )
}

#[test]
fn gpus_and_cdi_modes_as_the_engine_reads_them() {
    if !ready("gpu-modes") {
        return;
    }
    let scope = Scope::new();
    let bin = tempfile::tempdir().unwrap();
    let wrapper = create_only_docker(bin.path());
    for (mode, expected) in [
        (
            GpuMode::Gpus,
            json!([{"Driver": "", "Count": 0, "DeviceIDs": ["0", "1"],
                    "Capabilities": [["gpu"]], "Options": {}}]),
        ),
        (
            GpuMode::Cdi,
            json!([{"Driver": "cdi", "Count": 0,
                    "DeviceIDs": ["example.com/gpu=0", "example.com/gpu=1"],
                    "Capabilities": null, "Options": null}]),
        ),
    ] {
        let wrapper = wrapper.clone();
        let agent = scope.agent(move |c| {
            c.docker.binary = wrapper;
            c.docker.gpu_mode = mode;
            c.docker.cdi_kind = "example.com/gpu".into();
        });
        let created = agent.create(&body(&scope.claim(&format!("{mode:?}")), &[0, 1], "true"));
        // The wrapper only created it: the refresh after the create shows docker's state.
        let id = created["id"].as_str().unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || {
                agent.get(&format!("/api/v1/containers/{id}")).json()["state"] == "created"
            }),
            "{created}"
        );
        let requests = docker_ok(&[
            "inspect",
            "--format",
            "{{json .HostConfig.DeviceRequests}}",
            id,
        ]);
        let requests: Value = serde_json::from_str(&requests).unwrap();
        assert_eq!(requests, expected, "{mode:?}");
        // `gpus`: docker's nvidia support sets NVIDIA_VISIBLE_DEVICES at start, after the
        // image's. `cdi`: the devices come from CDI, and the agent sets `void` so that an
        // image's NVIDIA_VISIBLE_DEVICES=all cannot make a default nvidia runtime add all GPUs.
        let env = docker_ok(&["inspect", "--format", "{{json .Config.Env}}", id]);
        let visible: Vec<&str> = serde_json::from_str::<Vec<String>>(&env)
            .unwrap()
            .iter()
            .filter(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
            .map(|e| {
                if e.ends_with("=void") {
                    "void"
                } else {
                    "other"
                }
            })
            .collect();
        let expected_visible: Vec<&str> = match mode {
            GpuMode::Cdi => vec!["void"],
            _ => vec![],
        };
        assert_eq!(visible, expected_visible, "{mode:?}: {env}");
        let r = agent.api("DELETE", &format!("/api/v1/containers/{id}"), b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// Removes an image tag when dropped.
struct ImageTag(String);

impl Drop for ImageTag {
    fn drop(&mut self) {
        let _ = docker(&["rmi", &self.0]);
    }
}

#[test]
fn a_slow_pull_blocks_neither_reads_nor_deletes_of_other_containers() {
    if !ready("slow-pull") {
        return;
    }
    let scope = Scope::new();
    let bin = tempfile::tempdir().unwrap();
    // `pull -- IMAGE` takes 3 s, then "pulls" by tagging the test image.
    let wrapper = common::docker::docker_wrapper(
        bin.path(),
        "docker-slow-pull",
        &format!("if [ \"$1\" = pull ]; then sleep 3; exec docker tag {TEST_IMAGE} \"$3\"; fi\n"),
    );
    // One worker: a pull must not take the only thread that deletes.
    let agent = scope.agent(move |c| {
        c.docker.binary = wrapper;
        c.docker.workers = 1;
    });
    let first = agent.create(&body(&scope.claim("fast"), &[0], "sleep 600"));
    let first_id = first["id"].as_str().unwrap().to_string();

    let image = format!("utopia-test-slow-{}:latest", scope.claim("img"));
    let _tag = ImageTag(image.clone());
    let slow_claim = scope.claim("slow");
    let mut slow = body(&slow_claim, &[1], "sleep 600");
    slow["image"] = json!(image);
    let addr = agent.addr;
    let pulling = std::thread::spawn(move || {
        let auth = format!("Bearer {}", common::TOKEN);
        common::try_request(
            addr,
            "POST",
            "/api/v1/containers",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            slow.to_string().as_bytes(),
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    // The list shows the first container and the create in progress.
    let listed: Vec<(String, String)> = agent
        .containers()
        .iter()
        .map(|c| {
            (
                c["claim_id"].as_str().unwrap_or("").to_string(),
                c["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.contains(&(slow_claim.clone(), "creating".to_string())),
        "{listed:?}"
    );
    assert_eq!(
        agent.get(&format!("/api/v1/containers/{first_id}")).status,
        200
    );
    // The pulling create's container does not exist yet, but it is not "not found" either
    // (a delete of it gives the claim up: tests/isolation.rs).
    let r = agent.get(&format!("/api/v1/containers/{slow_claim}"));
    assert_eq!(
        (r.status, r.json()["state"].as_str()),
        (200, Some("creating")),
        "{}",
        r.text()
    );
    // The pulling create already holds GPU 1.
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("other"), &[1], "true"),
    );
    assert_eq!((r.status, r.error_code()), (409, "gpu_in_use".to_string()));
    let deleted = agent.api("DELETE", &format!("/api/v1/containers/{first_id}"), b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2000),
        "reads and delete took {took:?}"
    );

    let created = pulling.join().unwrap();
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.json()["image"], image.as_str());
    assert_eq!(created.json()["gpu_ids"], json!([1]));
}

/// `docker pull -- IMAGE` as the docker CLI prints it on a terminal (`jsonmessage.Display`: a
/// line per layer, redrawn in place), in stages 1.5 s apart; then the "pull" tags the test
/// image. Without a terminal it prints docker's plain status lines.
const STAGED_PULL: &str = r#"if [ "$1" = pull ]; then
  echo "latest: Pulling from utopia/staged"
  if [ -t 1 ]; then
    printf '\n\033[1A\033[2K\ra3ed95caeb02: Pulling fs layer \r\033[1B'
    printf '\n\033[1A\033[2K\r9ad63333ebc9: Pulling fs layer \r\033[1B'
    sleep 1.5
    printf '\033[2A\033[2K\ra3ed95caeb02: Downloading [=====>                                             ]  1.049MB/10.49MB 2s\r\033[2B'
    printf '\033[1A\033[2K\r9ad63333ebc9: Already exists \r\033[1B'
    sleep 1.5
    printf '\033[2A\033[2K\ra3ed95caeb02: Downloading [=========================>                         ]  5.243MB/10.49MB 1s\r\033[2B'
    sleep 1.5
    printf '\033[2A\033[2K\ra3ed95caeb02: Download complete \r\033[2B'
    printf '\033[2A\033[2K\ra3ed95caeb02: Pull complete \r\033[2B'
  else
    echo "a3ed95caeb02: Pulling fs layer"; echo "9ad63333ebc9: Pulling fs layer"; sleep 1.5
    echo "a3ed95caeb02: Downloading"; echo "9ad63333ebc9: Already exists"; sleep 3
    echo "a3ed95caeb02: Download complete"; echo "a3ed95caeb02: Pull complete"
  fi
  echo "Digest: sha256:7edf5efe6b86dbf01ccc3c76b32a37a8e23b84e6bad81ce8ae8c221fa456fda8"
  echo "Status: Downloaded newer image for $3"
  exec docker tag TEST_IMAGE "$3"
fi
"#;

#[test]
fn a_pulling_create_shows_its_layers_and_bytes_advance_in_get_and_the_list() {
    if !ready("pull-progress") {
        return;
    }
    let scope = Scope::new();
    let bin = tempfile::tempdir().unwrap();
    let wrapper = common::docker::docker_wrapper(
        bin.path(),
        "docker-staged-pull",
        &STAGED_PULL.replace("TEST_IMAGE", TEST_IMAGE),
    );
    let agent = scope.agent(move |c| {
        c.docker.binary = wrapper;
        c.docker.create_wait_secs = 1;
    });
    let image = format!("utopia-test-staged-{}:latest", scope.claim("img"));
    let _tag = ImageTag(image.clone());
    let claim = scope.claim("staged");
    let mut request = body(&claim, &[0], "sleep 600");
    request["image"] = json!(image);
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 202, "{}", r.text());
    let location = format!("/api/v1/containers/{claim}");
    // Every distinct pull state GET shows, in order, until the container is up.
    let mut seen: Vec<Value> = Vec::new();
    let mut listed_creating = false;
    let up = wait_until(Duration::from_secs(30), || {
        let shown = agent.get(&location).json();
        if shown["state"] == "creating" && !shown["pull"].is_null() {
            if seen.last() != Some(&shown["pull"]) {
                seen.push(shown["pull"].clone());
            }
            if !listed_creating {
                listed_creating = agent.containers().iter().any(|c| {
                    c["claim_id"] == claim.as_str()
                        && c["state"] == "creating"
                        && c["pull"] == shown["pull"]
                });
            }
        }
        shown["state"] == "running"
    });
    assert!(up, "{}", agent.get(&location).text());
    // `docker run` ran twice (no such image; again after the pull): the create is logged once.
    let log = agent.log();
    assert_eq!(
        log.matches(&format!("creating container utopia-{claim} "))
            .count(),
        1,
        "{log}"
    );
    let stage = |layers_done: u64, bytes_done: u64| {
        json!({"layers_total": 2, "layers_done": layers_done, "bytes_done": bytes_done,
               "bytes_total": 10_490_000u64})
    };
    let at = |p: &Value| seen.iter().position(|s| s == p);
    let first = at(&stage(1, 1_049_000));
    let second = at(&stage(1, 5_243_000));
    assert!(
        first.is_some() && second.is_some() && first < second,
        "pull states seen: {seen:?}"
    );
    assert!(
        listed_creating,
        "the list never showed the create in progress"
    );
    // Once up, the container carries no pull any more.
    assert!(agent.get(&location).json()["pull"].is_null());
}

#[test]
fn a_create_docker_cannot_start_leaves_nothing_behind() {
    if !ready("failed-start") {
        return;
    }
    let scope = Scope::new();
    // `--gpus` on an engine without the nvidia runtime: docker creates the container, then
    // cannot start it.
    let agent = scope.agent(|c| c.docker.gpu_mode = GpuMode::Gpus);
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("nostart"), &[0], "true"),
    );
    assert_eq!(
        (r.status, r.error_code()),
        (502, "docker_error".to_string()),
        "{}",
        r.text()
    );
    assert!(r.text().contains("docker run"), "{}", r.text());
    assert!(
        scope.docker_ids().is_empty(),
        "the created container was removed"
    );
    agent.only_failed_creates_listed(&scope.claim("nostart"));
    assert!(agent.gpu_holders().is_empty());
}

#[test]
fn unmanaged_containers_are_invisible_and_untouched() {
    if !ready("unmanaged") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let claim = scope.claim("foreign");
    let name = format!("utopia-{claim}");
    // Same name the agent would use, labelled only for cleanup (not with the managed label).
    let foreign_label = format!("{}-foreign", scope.label);
    let foreign = docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &foreign_label,
        TEST_IMAGE,
        "sleep",
        "600",
    ]);
    let cleanup = Scope::with_label(&foreign_label);
    assert!(agent.containers().is_empty());
    for path in [
        format!("/api/v1/containers/{name}"),
        format!("/api/v1/containers/{foreign}"),
        format!("/api/v1/containers/{}", &foreign[..12]),
    ] {
        assert_eq!(agent.get(&path).status, 404, "{path}");
        assert_eq!(agent.api("DELETE", &path, b"").status, 404, "{path}");
    }
    assert_eq!(
        agent
            .api("POST", &format!("/api/v1/containers/{name}/stop"), b"")
            .status,
        404
    );
    // Creating that claim collides with the name: 409, and the foreign container survives.
    let r = agent.post_json("/api/v1/containers", &body(&claim, &[0], "true"));
    assert_eq!(
        (r.status, r.error_code()),
        (409, "claim_in_use".to_string()),
        "{}",
        r.text()
    );
    let state = docker_ok(&["inspect", "--format", "{{.State.Status}}", &foreign]);
    assert_eq!(state, "running");
    assert!(agent.gpu_holders().is_empty());
    drop(cleanup);
}

/// Stops the agent (SIGKILL, or SIGTERM when `graceful`) and starts it again on the same
/// directory and config.
fn restart(agent: &mut Agent, graceful: bool, options: AgentOptions) -> Agent {
    if graceful {
        let (status, took) = agent.terminate();
        assert!(status.success(), "{status}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    } else {
        agent.kill();
    }
    let dir = std::mem::replace(&mut agent.dir, tempfile::tempdir().unwrap());
    let text = std::fs::read_to_string(&agent.config_path).unwrap();
    let config = Config::parse(&text).unwrap();
    let agent = Agent::spawn(dir, agent.config_path.clone(), &config, options);
    agent.wait_for_docker();
    agent
}

/// What must survive a restart: per container, id, claim, GPUs, ports, state.
fn ledger_view(agent: &Agent) -> Vec<Value> {
    let mut list: Vec<Value> = agent
        .containers()
        .iter()
        .map(|c| {
            json!([
                c["id"],
                c["claim_id"],
                c["gpu_ids"],
                c["gpu_uuids"],
                c["port_mappings"],
                c["state"]
            ])
        })
        .collect();
    list.sort_by_key(|v| v.to_string());
    list
}

#[test]
fn sigkill_mid_create_then_restart_rebuilds_the_ledger_exactly() {
    if !ready("restart") {
        return;
    }
    let scope = Scope::new();
    // Events and reconcile only from the rebuild on: a long reconcile period.
    let mut agent = scope.agent(|c| c.docker.reconcile_interval_secs = 3600);
    let port = common::free_port();
    let mut running = body(&scope.claim("run"), &[0], "sleep 600");
    running["port_mappings"] = json!([{"host_port": port, "container_port": 80}]);
    let running = agent.create(&running);
    let stopped = agent.create(&body(&scope.claim("stop"), &[], "sleep 600"));
    let r = agent.api(
        "POST",
        &format!(
            "/api/v1/containers/{}/stop",
            stopped["id"].as_str().unwrap()
        ),
        b"",
    );
    assert_eq!(r.status, 200);
    let before = ledger_view(&agent);
    let holders_before = agent.gpu_holders();
    assert_eq!(holders_before.len(), 1);

    // SIGKILL while a create for GPU 1 is in flight.
    let addr = agent.addr;
    let in_flight = body(&scope.claim("flight"), &[1], "sleep 600");
    let request = std::thread::spawn(move || {
        let auth = format!("Bearer {}", common::TOKEN);
        common::try_request(
            addr,
            "POST",
            "/api/v1/containers",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            in_flight.to_string().as_bytes(),
        )
    });
    std::thread::sleep(Duration::from_millis(150));
    let agent2 = restart(&mut agent, false, AgentOptions::default());
    let _ = request.join();

    // The in-flight create either made its container or did not; either way the rebuilt ledger
    // is exactly what docker has, and the two earlier containers are as they were.
    let matches_docker = wait_until(Duration::from_secs(15), || {
        let listed: BTreeSet<String> = agent2
            .containers()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_string())
            .collect();
        listed == scope.docker_ids().into_iter().collect()
    });
    assert!(matches_docker, "log:\n{}", agent2.log());
    let after: Vec<Value> = ledger_view(&agent2)
        .into_iter()
        .filter(|v| !v[1].as_str().unwrap().ends_with("-flight"))
        .collect();
    assert_eq!(after, before);
    let holders_after: Vec<_> = agent2
        .gpu_holders()
        .into_iter()
        .filter(|(gpu, _, _)| *gpu == 0)
        .collect();
    assert_eq!(holders_after, holders_before);
    let flight = agent2
        .containers()
        .into_iter()
        .find(|c| c["claim_id"].as_str().unwrap().ends_with("-flight"));
    if let Some(flight) = &flight {
        assert_eq!(flight["gpu_ids"], json!([1]));
        assert!(agent2.gpu_holders().iter().any(|(gpu, _, _)| *gpu == 1));
    }

    // The rebuilt ledger refuses what the old one refused.
    let r = agent2.post_json(
        "/api/v1/containers",
        &body(&scope.claim("new"), &[0], "true"),
    );
    assert_eq!((r.status, r.error_code()), (409, "gpu_in_use".to_string()));
    let mut same_port = body(&scope.claim("new"), &[], "true");
    same_port["port_mappings"] = json!([{"host_port": port, "container_port": 80}]);
    let r = agent2.post_json("/api/v1/containers", &same_port);
    assert_eq!((r.status, r.error_code()), (409, "port_in_use".to_string()));
    let r = agent2.post_json(
        "/api/v1/containers",
        &body(&scope.claim("stop"), &[], "true"),
    );
    assert_eq!(
        (r.status, r.error_code()),
        (409, "claim_in_use".to_string())
    );
    // And a stopped container is still served.
    let id = stopped["id"].as_str().unwrap();
    let r = agent2.api("POST", &format!("/api/v1/containers/{id}/start"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(running["state"], "running");
}

#[test]
fn a_sigkilled_agent_leaves_no_docker_process_behind() {
    if !ready("orphans") {
        return;
    }
    let scope = Scope::new();
    let mut agent = scope.agent(|_| {});
    let mut children = Vec::new();
    wait_until(Duration::from_secs(5), || {
        children = child_processes(agent.pid());
        !children.is_empty()
    });
    assert!(
        children.iter().any(|(_, stat)| stat.contains("(docker)")),
        "the agent runs `docker events`: {children:?}"
    );
    agent.kill();
    // `docker events` blocks until the next event: only the agent's death can end it.
    let gone = wait_until(Duration::from_secs(5), || {
        children
            .iter()
            .all(|(pid, _)| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    });
    assert!(
        gone,
        "docker children outlived a SIGKILLed agent: {children:?}"
    );
}

#[test]
fn a_gpu_gone_after_restart_is_reported_not_dropped() {
    if !ready("gpu-gone") {
        return;
    }
    let scope = Scope::new();
    let mut agent = scope.agent(|_| {});
    let held = agent.create(&body(&scope.claim("gone"), &[1], "sleep 600"));
    let options = AgentOptions {
        env: vec![("FAKE_NVML_GPU_COUNT".into(), "1".into())],
        ..AgentOptions::default()
    };
    // A graceful stop leaves the containers running.
    let agent = restart(&mut agent, true, options);
    let list = agent.containers();
    assert_eq!(list.len(), 1, "the container is still listed");
    assert_eq!(list[0]["state"], "running");
    assert_eq!(list[0]["id"], held["id"]);
    assert_eq!(list[0]["gpu_ids"], json!([1]));
    let warnings = list[0]["warnings"].to_string();
    assert!(
        warnings.contains("GPU-00000000-0000-4000-8000-000000000001"),
        "{}",
        list[0]
    );
    let health = agent.get("/health").json();
    let docker_health = health["components"]["docker"].as_str().unwrap();
    assert!(docker_health.starts_with("degraded"), "{docker_health}");
}

#[test]
fn shutdown_during_a_slow_docker_stop_still_ends_within_the_deadline() {
    if !ready("shutdown") {
        return;
    }
    let scope = Scope::new();
    let mut agent = scope.agent(|c| c.docker.stop_timeout_secs = 60);
    // A container that ignores SIGTERM: `docker stop` waits the whole grace period.
    let created = agent.create(&body(
        &scope.claim("slow"),
        &[],
        "trap '' TERM; while true; do sleep 1; done",
    ));
    let id = created["id"].as_str().unwrap().to_string();
    let addr = agent.addr;
    let path = format!("/api/v1/containers/{id}");
    let request = std::thread::spawn(move || {
        let auth = format!("Bearer {}", common::TOKEN);
        common::try_request(addr, "DELETE", &path, &[("Authorization", &auth)], b"")
    });
    // The agent's docker children now: `docker events` and the `docker stop` in flight.
    let mut children = Vec::new();
    wait_until(Duration::from_secs(5), || {
        children = child_processes(agent.pid());
        children.len() >= 2
    });
    assert!(children.len() >= 2, "{children:?}");
    let (status, took) = agent.terminate();
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    assert!(took < Duration::from_secs(2), "{took:?}");
    let _ = request.join();
    // Killed and reaped, not left running as orphans.
    for (pid, stat) in &children {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "child still exists: {stat}"
        );
    }
}

/// (pid, stat line) of the processes whose parent is `parent`.
fn child_processes(parent: u32) -> Vec<(u32, String)> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid ..."
        let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
        if after.split(' ').nth(1) == Some(parent.to_string().as_str()) {
            children.push((pid, stat.trim().to_string()));
        }
    }
    children
}

#[test]
fn containers_killed_or_removed_behind_the_agents_back_are_seen_through_events() {
    if !ready("events") {
        return;
    }
    let scope = Scope::new();
    // No periodic reconcile within the test: only docker events can explain what it sees.
    let agent = scope.agent(|c| c.docker.reconcile_interval_secs = 3600);
    let created = agent.create(&body(&scope.claim("ev"), &[0], "sleep 600"));
    let id = created["id"].as_str().unwrap().to_string();
    docker_ok(&["kill", &id]);
    let exited = wait_until(Duration::from_secs(10), || {
        agent.get(&format!("/api/v1/containers/{id}")).json()["state"] == "exited"
    });
    assert!(exited, "log:\n{}", agent.log());
    assert_eq!(
        agent.get(&format!("/api/v1/containers/{id}")).json()["exit_code"],
        137
    );
    assert_eq!(
        agent.gpu_holders().len(),
        1,
        "an exited container keeps its GPU"
    );

    docker_ok(&["rm", "-f", &id]);
    let gone = wait_until(Duration::from_secs(10), || {
        agent.get(&format!("/api/v1/containers/{id}")).status == 404
    });
    assert!(gone, "log:\n{}", agent.log());
    assert!(agent.gpu_holders().is_empty());
    agent.create(&body(&scope.claim("ev2"), &[0], "sleep 600"));
}

#[test]
fn a_container_removed_behind_the_agents_back_stays_gone() {
    if !ready("stays-gone") {
        return;
    }
    let scope = Scope::new();
    let bin = tempfile::tempdir().unwrap();
    // `container inspect` answers a second late: the refreshes the kill/die events ask for
    // report a view taken before the removal, after the destroy event was handled.
    let wrapper = common::docker::docker_wrapper(
        bin.path(),
        "docker-late-inspect",
        "if [ \"$1\" = container ] && [ \"$2\" = inspect ]; then\n\
         out=$(docker \"$@\"); rc=$?; sleep 1; printf '%s\\n' \"$out\"; exit $rc\nfi\n",
    );
    let agent = scope.agent(move |c| {
        c.docker.binary = wrapper;
        c.docker.reconcile_interval_secs = 3600;
    });
    let claim = scope.claim("gone");
    let created = agent.create(&body(&claim, &[0], "sleep 600"));
    let id = created["id"].as_str().unwrap().to_string();
    docker_ok(&["rm", "-f", &id]);
    let gone = wait_until(Duration::from_secs(10), || {
        agent.get(&format!("/api/v1/containers/{id}")).status == 404
    });
    assert!(gone, "log:\n{}", agent.log());
    // The late refreshes arrive: the container must not come back.
    std::thread::sleep(Duration::from_millis(2500));
    let r = agent.get(&format!("/api/v1/containers/{id}"));
    assert_eq!(r.status, 404, "a removed container came back: {}", r.text());
    assert!(agent.gpu_holders().is_empty(), "{:?}", agent.gpu_holders());
    agent.create(&body(&claim, &[0], "sleep 600"));
}

#[test]
fn a_hanging_docker_is_killed_with_what_it_started_and_the_api_recovers() {
    if !ready("hanging-docker") {
        return;
    }
    let scope = Scope::new();
    let bin = tempfile::tempdir().unwrap();
    let hang = bin.path().join("hang");
    let pids = bin.path().join("pids");
    std::fs::write(&hang, "").unwrap();
    // While `hang` exists, every docker command (but `events`, which may block) forks a
    // `sleep` that never ends and waits for it, as a wrapper in front of a stuck CLI would.
    let wrapper = common::docker::docker_wrapper(
        bin.path(),
        "docker-hanging",
        &format!(
            "if [ -e {hang} ] && [ \"$1\" != events ]; then\n\
             sleep 1000 & echo $! >> {pids}; wait; fi\n",
            hang = hang.display(),
            pids = pids.display()
        ),
    );
    let label = scope.label.clone();
    let agent = Agent::start(move |c| {
        common::docker::configure(c, &label);
        c.docker.binary = wrapper;
        c.docker.command_timeout_secs = 1;
    });
    let mut docker_health = String::new();
    let unavailable = wait_until(Duration::from_secs(10), || {
        let health = agent.get("/health").json();
        docker_health = health["components"]["docker"].as_str().unwrap().to_string();
        docker_health.starts_with("unavailable")
    });
    assert!(unavailable, "{docker_health}; log:\n{}", agent.log());
    assert!(docker_health.contains("did not finish"), "{docker_health}");
    let r = agent.get("/api/v1/containers");
    assert_eq!(
        (r.status, r.error_code()),
        (503, "docker_unavailable".to_string())
    );
    // Let a few reconciles time out: none leaves its `sleep` behind.
    std::thread::sleep(Duration::from_millis(2500));
    let started: Vec<String> = std::fs::read_to_string(&pids)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(!started.is_empty(), "the wrapper never hung");
    std::fs::remove_file(&hang).unwrap();
    let left = |pids: &[String]| -> Vec<String> {
        pids.iter()
            .filter(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                stat.contains("(sleep)") && !stat.contains(") Z ")
            })
            .cloned()
            .collect()
    };
    // The one in flight may still run for up to the deadline.
    let reaped = wait_until(Duration::from_secs(3), || left(&started).is_empty());
    assert!(reaped, "orphaned: {:?}", left(&started));
    let recovered = wait_until(Duration::from_secs(10), || {
        agent.get("/api/v1/containers").status == 200
    });
    assert!(recovered, "log:\n{}", agent.log());
    // Creates work again. With a 1 s deadline a loaded engine's `docker run` may still time
    // out (its claim then stays reserved, state unknown): another claim is tried then.
    let created = (0..3).any(|n| {
        let r = agent.post_json(
            "/api/v1/containers",
            &body(&scope.claim(&format!("after{n}")), &[], "sleep 600"),
        );
        assert!(r.status == 201 || r.status == 504, "{}", r.text());
        r.status == 201
    });
    assert!(created, "no create succeeded; log:\n{}", agent.log());
}

#[test]
fn a_slow_ledger_rebuild_holds_container_requests_but_not_health() {
    if !ready("slow-rebuild") {
        return;
    }
    let scope = Scope::new();
    let bin = tempfile::tempdir().unwrap();
    let wrapper = common::docker::docker_wrapper(
        bin.path(),
        "docker-slow-ps",
        "if [ \"$1\" = ps ]; then sleep 3; fi\n",
    );
    let label = scope.label.clone();
    let agent = Agent::start(move |c| {
        common::docker::configure(c, &label);
        c.docker.binary = wrapper;
    });
    let health = agent.get("/health").json();
    assert_eq!(health["components"]["docker"], "starting");
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("early"), &[0], "true"),
    );
    assert_eq!(
        (r.status, r.error_code()),
        (503, "docker_unavailable".to_string())
    );
    assert!(r.text().contains("rebuilding"), "{}", r.text());
    agent.wait_for_docker();
    assert_eq!(agent.get("/health").json()["components"]["docker"], "ok");
    assert!(agent.containers().is_empty());
}

#[test]
fn docker_unreachable_gives_503_while_health_and_metrics_work() {
    let scope = Scope::new();
    let options = AgentOptions {
        env: vec![("DOCKER_HOST".into(), "unix:///nonexistent.sock".into())],
        ..AgentOptions::default()
    };
    let agent = scope.agent_with(|_| {}, options);
    let requests: [(&str, String, Vec<u8>); 6] = [
        ("GET", "/api/v1/containers".into(), vec![]),
        (
            "POST",
            "/api/v1/containers".into(),
            body(&scope.claim("x"), &[0], "true")
                .to_string()
                .into_bytes(),
        ),
        ("GET", "/api/v1/containers/abc".into(), vec![]),
        ("DELETE", "/api/v1/containers/abc".into(), vec![]),
        ("GET", "/api/v1/containers/abc/logs".into(), vec![]),
        ("POST", "/api/v1/containers/abc/stop".into(), vec![]),
    ];
    for (method, path, request) in &requests {
        let r = agent.api(method, path, request);
        assert_eq!(r.status, 503, "{method} {path}: {}", r.text());
        assert_eq!(r.error_code(), "docker_unavailable");
    }
    let health = agent.get("/health");
    assert_eq!(health.status, 200);
    let docker_health = health.json()["components"]["docker"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        docker_health.starts_with("unavailable") && docker_health.contains("nonexistent.sock"),
        "{docker_health}"
    );
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
    // Bad input is still refused as bad input first.
    let r = agent.post_json("/api/v1/containers", &json!({"claim_id": "../x"}));
    assert_eq!(r.status, 400);
}

#[test]
fn heartbeats_carry_the_managed_containers() {
    use common::platform::{PlatformServer, Reply};
    if !ready("heartbeats_carry_the_managed_containers") {
        return;
    }
    let platform = PlatformServer::start();
    platform.set_register_default(Reply::registered("node-with-containers"));
    let scope = Scope::new();
    let url = platform.url();
    let agent = scope.agent(move |c| {
        c.central_platform.api_url = url;
        c.central_platform.heartbeat_interval_secs = 1;
        c.central_platform.request_timeout_secs = 2;
    });
    let claim = scope.claim("beat");
    let created = agent.create(&body(&claim, &[1], "sleep 600"));
    let id = created["id"].as_str().unwrap().to_string();

    let mut seen = Value::Null;
    let found = wait_until(Duration::from_secs(10), || {
        seen = platform
            .heartbeats()
            .last()
            .map(|beat| beat.json()["containers"].clone())
            .unwrap_or(Value::Null);
        seen.as_array()
            .is_some_and(|list| list.iter().any(|c| c["claim_id"] == claim.as_str()))
    });
    assert!(found, "no heartbeat listed the container: {seen}");
    let entry = seen
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["claim_id"] == claim.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["id"], id.as_str());
    assert_eq!(entry["state"], "running");
    assert_eq!(entry["gpu_ids"], json!([1]));
    // The GPU it holds is busy in the same heartbeat's metrics.
    let beat = platform.heartbeats().last().unwrap().json();
    assert_eq!(beat["gpus"][1]["busy"], true);
    assert_eq!(beat["gpus"][1]["claim_id"], claim.as_str());
}

#[test]
fn an_id_naming_two_containers_is_409_ambiguous_id_naming_both() {
    if !ready("ambiguous") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    // Claim X's container is named `utopia-X`, which is also the claim id of the other one.
    let claim = scope.claim("x");
    let other_claim = format!("utopia-{claim}");
    let first = agent.create(&body(&claim, &[], "sleep 600"));
    let second = agent.create(&body(&other_claim, &[], "sleep 600"));
    for method in ["GET", "DELETE"] {
        let r = agent.api(method, &format!("/api/v1/containers/{other_claim}"), b"");
        assert_eq!(
            (r.status, r.error_code()),
            (409, "ambiguous_id".to_string()),
            "{method}: {}",
            r.text()
        );
        for created in [&first, &second] {
            let id = created["id"].as_str().unwrap();
            let name = created["name"].as_str().unwrap();
            assert!(
                r.text().contains(&id[..12]) && r.text().contains(name),
                "{method}: {} does not name {name}",
                r.text()
            );
        }
    }
    // Nothing was deleted on a guess; the full id still works.
    assert_eq!(agent.containers().len(), 2);
    let id = first["id"].as_str().unwrap();
    assert_eq!(agent.get(&format!("/api/v1/containers/{id}")).status, 200);
}

#[test]
fn a_container_that_exits_on_its_own_is_logged_once_with_its_claim_and_code() {
    if !ready("exit-on-its-own") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.restart_policy = "no".into());
    let claim = scope.claim("dies");
    let created = agent.create(&body(&claim, &[0], "sleep 1; exit 137"));
    let id = created["id"].as_str().unwrap().to_string();
    let short = &id[..12];
    let exited = wait_until(Duration::from_secs(15), || {
        agent.log().contains("exited on its own")
    });
    assert!(exited, "{}", agent.log());
    // Events and reconciles (every second here) keep seeing it stopped: still one line.
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("exited on its own"))
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains(&format!(
            "[WARN] container {short} of claim {claim} exited on its own with code 137"
        )),
        "{log}"
    );
    // Container ids in the log are docker's short ones.
    assert!(!log.contains(&id), "{log}");
    // A stop the agent makes is not one "on its own".
    let other = agent.create(&body(&scope.claim("stopped"), &[1], "sleep 600"));
    let other_id = other["id"].as_str().unwrap();
    let r = agent.api("POST", &format!("/api/v1/containers/{other_id}/stop"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    assert_eq!(log.matches("exited on its own").count(), 1, "{log}");
}

#[test]
fn a_command_that_exits_at_once_is_seen_exited_without_a_reconcile() {
    if !ready("exits-at-once") {
        return;
    }
    let scope = Scope::new();
    // No periodic reconcile to repair the view: only the create's answer, its refresh and
    // docker's events can.
    let agent = scope.agent(|c| {
        c.docker.restart_policy = "no".into();
        c.docker.reconcile_interval_secs = 3600;
    });
    for round in 0..3 {
        let claim = scope.claim(&format!("at-once-{round}"));
        let created = agent.create(&body(&claim, &[round % 2], "exit 3"));
        let id = created["id"].as_str().unwrap().to_string();
        // The answer: docker's id and what was asked, true as of docker run's return.
        assert_eq!(created["gpu_ids"], json!([round % 2]), "{created}");
        assert_eq!(created["name"], format!("utopia-{claim}"), "{created}");
        let inspected = docker_ok(&["inspect", "--format", "{{.Id}}", &id]);
        assert_eq!(inspected.trim(), id);
        let mut last = Value::Null;
        let seen = wait_until(Duration::from_secs(10), || {
            let r = agent.get(&format!("/api/v1/containers/{id}"));
            assert_eq!(r.status, 200, "{}", r.text());
            last = r.json();
            last["state"] == "exited" && last["exit_code"] == 3 && last["started_at"].is_string()
        });
        assert!(
            seen,
            "round {round}: the agent still shows {last}; log:\n{}",
            agent.log()
        );
        let r = agent.api("DELETE", &format!("/api/v1/containers/{id}"), b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
