//! Renters against each other and against the node's owner, on the real docker engine: what a
//! renter's image or request must not obtain (devices through toolkit variables, another
//! renter's network, the host's loopback services, a GPU someone else holds).

mod common;

use common::docker::{
    body, docker, docker_ok, ready, wait_until, DerivedImage, Scope, TestNetwork,
};
use common::Agent;
use std::collections::BTreeSet;
use std::time::Duration;

/// The environment a container printed (its command runs `env; echo ENV-DONE`).
fn printed_env(agent: &Agent, id: &str) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    let done = wait_until(Duration::from_secs(15), || {
        let r = agent.get(&format!("/api/v1/containers/{id}/logs?tail=200"));
        assert_eq!(r.status, 200, "{}", r.text());
        lines = r.text().lines().map(str::to_string).collect();
        lines.contains("ENV-DONE")
    });
    assert!(
        done,
        "the container never printed its environment: {lines:?}"
    );
    lines
}

#[test]
fn toolkit_variables_an_image_sets_are_overridden() {
    if !ready("toolkit_variables_an_image_sets_are_overridden") {
        return;
    }
    // A renter's image asking the NVIDIA toolkit for IMEX channels, MIG management devices and
    // the host's InfiniBand and NVSwitch devices in its own ENV.
    let image = DerivedImage::new(&[
        "ENV NVIDIA_IMEX_CHANNELS=all",
        "ENV NVIDIA_MIG_CONFIG_DEVICES=all",
        "ENV NVIDIA_MIG_MONITOR_DEVICES=all",
        "ENV NVIDIA_MOFED=enabled",
        "ENV NVIDIA_NVSWITCH=enabled",
        "ENV NVIDIA_GDS=enabled",
        "ENV NVIDIA_GDRCOPY=enabled",
        "ENV NVIDIA_VISIBLE_DEVICES=all",
    ]);
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let mut request = body(&scope.claim("img"), &[0], "env; echo ENV-DONE; sleep 600");
    request["image"] = image.tag.clone().into();
    let created = agent.create(&request);
    let env = printed_env(&agent, created["id"].as_str().unwrap());
    for expected in [
        "NVIDIA_IMEX_CHANNELS=",
        "NVIDIA_MIG_CONFIG_DEVICES=",
        "NVIDIA_MIG_MONITOR_DEVICES=",
        "NVIDIA_MOFED=disabled",
        "NVIDIA_NVSWITCH=disabled",
        "NVIDIA_GDS=disabled",
        "NVIDIA_GDRCOPY=disabled",
        "NVIDIA_VISIBLE_DEVICES=0",
    ] {
        assert!(env.contains(expected), "{expected} missing: {env:?}");
    }
    assert!(
        !env.iter()
            .any(|l| l.ends_with("=all") || l.ends_with("=enabled")),
        "an image's toolkit variable survived: {env:?}"
    );
}

/// `docker exec <id> sh -c <script>`: its stdout and stderr together.
fn exec(id: &str, script: &str) -> String {
    let out = docker(&["exec", id, "sh", "-c", script]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn renters_cannot_reach_each_other_but_keep_outbound_access() {
    if !ready("renters_cannot_reach_each_other_but_keep_outbound_access") {
        return;
    }
    // Declared before the scope: removed after the containers.
    let network = TestNetwork::new();
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.network = network.name.clone());

    // Created at start: a bridge of the agent's, inter-container traffic off.
    let described = docker_ok(&[
        "network",
        "inspect",
        "--format",
        "{{.Driver}} {{index .Options \"com.docker.network.bridge.enable_icc\"}} \
         {{index .Labels \"io.utopia.owner\"}}",
        &network.name,
    ]);
    assert_eq!(described, "bridge false utopia-node-agent");

    // Renter A serves a secret (a Jupyter token) on 8080, published on loopback only; renter
    // B is its neighbour.
    let mut serve = body(
        &scope.claim("a"),
        &[],
        "while true; do echo secret-of-a | nc -l -p 8080; done",
    );
    let published = common::free_port();
    serve["port_mappings"] = serde_json::json!([{
        "host_port": published, "container_port": 8080
    }]);
    let a = agent.create(&serve);
    let b = agent.create(&body(&scope.claim("b"), &[], "sleep 600"));
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let ip_of = |id: &str| {
        docker_ok(&[
            "container",
            "inspect",
            "--format",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                network.name
            ),
            id,
        ])
    };
    let ip_a = ip_of(a);
    assert!(!ip_a.is_empty(), "A is not on the agent's network");
    assert!(!ip_of(b).is_empty(), "B is not on the agent's network");
    // The service answers where it runs...
    let served = wait_until(Duration::from_secs(10), || {
        exec(a, "nc -w 2 127.0.0.1 8080 </dev/null").contains("secret-of-a")
    });
    assert!(served, "A's service never answered inside A");
    // ...but not to the other renter, by its address on the shared bridge.
    for _ in 0..3 {
        let stolen = exec(b, &format!("nc -w 2 {ip_a} 8080 </dev/null; echo rc=$?"));
        assert!(
            !stolen.contains("secret-of-a"),
            "renter B read renter A's secret: {stolen}"
        );
    }

    // A's port is published on the host's loopback, where the host reads it...
    let on_host = wait_until(Duration::from_secs(10), || {
        use std::io::Read;
        let mut text = String::new();
        std::net::TcpStream::connect(("127.0.0.1", published))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.read_to_string(&mut text)
            })
            .is_ok()
            && text.contains("secret-of-a")
    });
    assert!(on_host, "A's published port never answered on the host");
    // ...but B, aiming at that port through the address the host has on B's bridge (its
    // gateway) or docker's default bridge, gets nothing.
    let through_gateway = exec(
        b,
        &format!(
            "gw=$(ip route | awk '/^default/ {{print $3}}'); \
             for host in \"$gw\" 172.17.0.1; do nc -w 2 \"$host\" {published} </dev/null; done; \
             echo done"
        ),
    );
    assert!(
        !through_gateway.contains("secret-of-a"),
        "renter B read renter A's loopback-published port through the gateway: {through_gateway}"
    );

    // Outbound still works: B reaches a service on the host through its gateway (the way
    // out to the internet, through docker's NAT).
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    // Accepts one connection, reads until the sender is done, closes (so nc ends).
    let host = std::thread::spawn(move || {
        let mut got = None;
        wait_until(Duration::from_secs(10), || match listener.accept() {
            Ok((mut stream, _)) => {
                use std::io::Read;
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut text = String::new();
                let _ = stream.read_to_string(&mut text);
                got = Some(text);
                true
            }
            Err(_) => false,
        });
        got
    });
    let sent = exec(
        b,
        &format!(
            "gw=$(ip route | awk '/^default/ {{print $3}}'); \
             echo hello-from-b | nc -w 3 \"$gw\" {port}; echo rc=$?"
        ),
    );
    let got = host.join().unwrap();
    assert!(got.is_some(), "no connection from B to the host: {sent}");
    let got = got.unwrap_or_default();
    assert_eq!(got.trim(), "hello-from-b");

    // A container the agent did not create, put on its network by hand, is reported.
    let stranger = format!("stranger-{}", scope.claim("x"));
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &stranger,
        "--network",
        &network.name,
        "--label",
        &scope.label,
        common::docker::TEST_IMAGE,
        "sleep",
        "600",
    ]);
    let reported = wait_until(Duration::from_secs(10), || {
        let health = agent.api("GET", "/health", b"").json();
        health["components"]["docker"]
            .as_str()
            .is_some_and(|d| d.starts_with("degraded") && d.contains(&stranger))
    });
    assert!(
        reported,
        "the stranger on the network was not reported: {}",
        agent.api("GET", "/health", b"").text()
    );
    assert!(
        docker(&["container", "inspect", &stranger])
            .status
            .success(),
        "the stranger was touched"
    );
}

#[test]
fn a_network_of_that_name_not_made_by_the_agent_refuses_creates() {
    if !ready("a_network_of_that_name_not_made_by_the_agent_refuses_creates") {
        return;
    }
    // Someone's own network with inter-container traffic on, under the configured name.
    let network = TestNetwork::new();
    docker_ok(&["network", "create", &network.name]);
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.network = network.name.clone());
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("a"), &[], "sleep 600"),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("not created by the agent"),
        "{}",
        r.text()
    );
    assert!(scope.docker_ids().is_empty(), "a container was created");
    let health = agent.api("GET", "/health", b"").json();
    assert!(
        health["components"]["docker"]
            .as_str()
            .is_some_and(|d| d.contains("not created by the agent")),
        "{health}"
    );
}

/// Creates a network through the engine's API with `CheckDuplicate: false`, as two racing
/// `docker network create` calls can end up doing on docker before 23.0. False when the engine
/// refused (it keeps names unique).
fn create_network_unchecked(name: &str) -> bool {
    use std::io::{Read, Write};
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".to_string());
    let body = serde_json::json!({
        "Name": name,
        "CheckDuplicate": false,
        "Driver": "bridge",
        "Options": {"com.docker.network.bridge.enable_icc": "false"},
        "Labels": {"io.utopia.owner": "utopia-node-agent"},
    })
    .to_string();
    let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    write!(
        stream,
        "POST /networks/create HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.starts_with("HTTP/1.0 201") || answer.starts_with("HTTP/1.1 201")
}

/// The ids of the networks named exactly `name`.
fn networks_named(name: &str) -> Vec<String> {
    docker_ok(&[
        "network",
        "ls",
        "--no-trunc",
        "--format",
        "{{.ID}} {{.Name}}",
    ])
    .lines()
    .filter_map(|l| l.split_once(' '))
    .filter(|(_, n)| *n == name)
    .map(|(id, _)| id.to_string())
    .collect()
}

#[test]
fn twin_renters_networks_from_racing_agents_are_merged_and_creates_work() {
    if !ready("twin_renters_networks_from_racing_agents_are_merged_and_creates_work") {
        return;
    }
    let network = TestNetwork::new();
    assert!(create_network_unchecked(&network.name));
    if !create_network_unchecked(&network.name) || networks_named(&network.name).len() != 2 {
        // Newer engines keep network names unique: the race cannot happen there.
        eprintln!("note: this engine refuses a second network of one name; nothing to merge");
        return;
    }
    let older = networks_named(&network.name);
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.network = network.name.clone());
    let health = agent.api("GET", "/health", b"").json();
    assert_eq!(health["components"]["docker"], "ok", "{health}");
    let left = networks_named(&network.name);
    assert_eq!(left.len(), 1, "{left:?}; log:\n{}", agent.log());
    assert!(older.contains(&left[0]));
    assert!(agent.log().contains("exists twice"), "{}", agent.log());
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("a"), &[], "sleep 600"),
    );
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn a_timed_out_create_keeps_its_gpu_until_docker_shows_what_it_made() {
    if !ready("a_timed_out_create_keeps_its_gpu_until_docker_shows_what_it_made") {
        return;
    }
    let scope = Scope::new();
    let (slow, late, other) = (scope.claim("slow"), scope.claim("late"), scope.claim("b"));
    // `docker run` of claim `slow` creates its container, then takes longer than the 2 s
    // deadline; that of claim `late` is carried out 3 s after the CLI was killed (the engine
    // finishing a create its client gave up on).
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "case \"$*\" in *\"--name utopia-{slow} \"*) docker \"$@\"; sleep 5; exit 0;; esac\n\
         case \"$*\" in *\"--name utopia-{late} \"*) setsid sh -c 'sleep 3; docker \"$@\"' sh \"$@\" \
         >/dev/null 2>&1 & sleep 5; exit 0;; esac\n"
    );
    let wrapper = common::docker::docker_wrapper(dir.path(), "docker-slow-run", &script);
    let agent = scope.agent(|c| {
        c.docker.binary = wrapper.clone();
        c.docker.command_timeout_secs = 2;
    });

    let r = agent.post_json("/api/v1/containers", &body(&slow, &[1], "sleep 600"));
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.text().contains("stay reserved"), "{}", r.text());
    // GPU 1 is not handed to another renter, now or once the container turned up.
    for _ in 0..2 {
        let r = agent.post_json("/api/v1/containers", &body(&other, &[1], "sleep 600"));
        assert_eq!(
            (r.status, r.error_code()),
            (409, "gpu_in_use".to_string()),
            "{}",
            r.text()
        );
        let adopted = wait_until(Duration::from_secs(10), || {
            let r = agent.get(&format!("/api/v1/containers/{slow}"));
            r.status == 200 && r.json()["state"] == "running"
        });
        assert!(
            adopted,
            "the late container was not adopted; log:\n{}",
            agent.log()
        );
    }
    let shown = agent.get(&format!("/api/v1/containers/{slow}")).json();
    assert_eq!(shown["gpu_ids"], serde_json::json!([1]));
    assert!(
        shown["warnings"].is_null(),
        "adopted with a conflict: {shown}"
    );
    assert_eq!(
        agent.gpu_holders(),
        vec![(1, slow.clone(), shown["id"].as_str().unwrap().to_string())]
    );

    // Given up before docker made it: the container that turns up is removed, then GPU 0 is
    // free.
    let r = agent.post_json("/api/v1/containers", &body(&late, &[0], "sleep 600"));
    assert_eq!(r.status, 504, "{}", r.text());
    let r = agent.api("DELETE", &format!("/api/v1/containers/{late}"), b"");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["deleted"], false);
    let r = agent.post_json("/api/v1/containers", &body(&other, &[0], "sleep 600"));
    assert_eq!(r.status, 409, "still reserved: {}", r.text());
    let removed = wait_until(Duration::from_secs(20), || {
        agent
            .log()
            .contains("turned up after the claim was deleted")
            && docker(&["container", "inspect", &format!("utopia-{late}")])
                .status
                .code()
                == Some(1)
    });
    assert!(
        removed,
        "the given-up claim's container was not removed; log:\n{}",
        agent.log()
    );
    let freed = wait_until(Duration::from_secs(10), || {
        agent
            .post_json("/api/v1/containers", &body(&other, &[0], "sleep 600"))
            .status
            == 201
    });
    assert!(freed, "GPU 0 never freed; log:\n{}", agent.log());
}

#[test]
fn many_slow_log_reads_never_delay_a_delete() {
    if !ready("many_slow_log_reads_never_delay_a_delete") {
        return;
    }
    // Every `docker logs` takes 4 s (a huge log file on a slow disk).
    let dir = tempfile::tempdir().unwrap();
    let wrapper = common::docker::docker_wrapper(
        dir.path(),
        "docker-slow-logs",
        "if [ \"$1\" = logs ]; then sleep 4; fi\n",
    );
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.binary = wrapper.clone());
    let reader = agent.create(&body(&scope.claim("reader"), &[], "sleep 600"));
    let victim = scope.claim("victim");
    agent.create(&body(&victim, &[0], "sleep 600"));

    let reader_id = reader["id"].as_str().unwrap().to_string();
    let addr = agent.addr;
    let readers: Vec<_> = (0..40)
        .map(|_| {
            let path = format!("/api/v1/containers/{reader_id}/logs?tail=10");
            let auth = format!("Bearer {}", common::TOKEN);
            std::thread::spawn(move || {
                common::try_request(addr, "GET", &path, &[("Authorization", &auth)], b"")
                    .map(|r| r.status)
                    .unwrap_or(0)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    let r = agent.api("DELETE", &format!("/api/v1/containers/{victim}"), b"");
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        took < Duration::from_secs(4),
        "DELETE waited {took:?} behind log reads"
    );
    let statuses: Vec<u16> = readers.into_iter().map(|t| t.join().unwrap()).collect();
    // Log reads beyond the bound are refused at once (503), never queued without limit.
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
}

#[test]
fn a_slow_create_answers_202_and_its_resource_shows_the_outcome() {
    if !ready("a_slow_create_answers_202_and_its_resource_shows_the_outcome") {
        return;
    }
    // `docker run` takes 3 s; pulling the missing image takes 2 s and is refused.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = common::docker::docker_wrapper(
        dir.path(),
        "docker-slow-create",
        "if [ \"$1\" = run ]; then sleep 3; fi\n\
         if [ \"$1\" = pull ]; then sleep 2; echo 'Error response from daemon: pull access \
         denied for utopia-test-missing/x, repository does not exist' >&2; exit 1; fi\n",
    );
    let scope = Scope::new();
    let agent = scope.agent(|c| {
        c.docker.binary = wrapper.clone();
        c.docker.create_wait_secs = 1;
    });
    let claim = scope.claim("slow");
    let started = std::time::Instant::now();
    let r = agent.post_json("/api/v1/containers", &body(&claim, &[0], "sleep 600"));
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let location = format!("/api/v1/containers/{claim}");
    assert_eq!(r.header("location"), Some(location.as_str()));
    let shown = r.json();
    assert_eq!(shown["state"], "creating", "{shown}");
    assert_eq!(shown["gpu_ids"], serde_json::json!([0]));
    assert_eq!(shown["status"], "starting container", "{shown}");
    // The GPU is held meanwhile; then the container is up at the same resource.
    let other = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("b"), &[0], "sleep 600"),
    );
    assert_eq!(other.status, 409, "{}", other.text());
    let up = wait_until(Duration::from_secs(15), || {
        let r = agent.get(&location);
        r.status == 200 && r.json()["state"] == "running"
    });
    assert!(up, "{}", agent.get(&location).text());
    assert_eq!(
        agent.get(&location).json()["id"].as_str().map(str::len),
        Some(64)
    );

    // A create whose pull fails after the answer: the resource shows the error.
    let failing = scope.claim("missing");
    let mut request = body(&failing, &[1], "true");
    request["image"] = "utopia-test-missing/x:1".into();
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 202, "{}", r.text());
    // `docker run --pull=never` finds no image (after the wrapper's 3 s), then the pull runs.
    let location = format!("/api/v1/containers/{failing}");
    let pulling = wait_until(Duration::from_secs(15), || {
        agent.get(&location).json()["status"] == "pulling image utopia-test-missing/x:1"
    });
    assert!(pulling, "{}", agent.get(&location).text());
    let failed = wait_until(Duration::from_secs(15), || {
        agent.get(&location).json()["state"] == "failed"
    });
    let shown = agent.get(&location).json();
    assert!(failed, "{shown}");
    assert!(
        shown["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{shown}"
    );
    // Its GPU is free again.
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("c"), &[1], "sleep 600"),
    );
    assert!(r.status == 201 || r.status == 202, "{}", r.text());
}

#[test]
fn a_fork_bomb_stays_inside_its_pids_limit_and_the_node_keeps_serving() {
    if !ready("a_fork_bomb_stays_inside_its_pids_limit_and_the_node_keeps_serving") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.pids_limit = 48);
    // A bounded fork bomb (an unbounded one would spin the CI host's CPUs for the whole
    // test): 400 background sleepers, far beyond the limit. Forks past it fail inside the
    // container; the node and the other renters see nothing of it.
    let bomb = agent.create(&body(
        &scope.claim("bomb"),
        &[],
        // The inner shell dies at its first failed fork (ash: "can't fork"); the outer
        // one then says so and becomes a sleep without forking.
        "sh -c 'i=0; while [ $i -lt 400 ]; do sleep 600 & i=$((i+1)); done'; \
         echo FORKED rc=$?; exec sleep 600",
    ));
    let bomb = bomb["id"].as_str().unwrap().to_string();
    let limit = docker_ok(&[
        "container",
        "inspect",
        "--format",
        "{{.HostConfig.PidsLimit}}",
        &bomb,
    ]);
    assert_eq!(limit, "48", "docker was not given the pids limit");
    let forked = wait_until(Duration::from_secs(30), || {
        agent
            .get(&format!("/api/v1/containers/{bomb}/logs?tail=20"))
            .text()
            .contains("FORKED rc=2")
    });
    assert!(forked, "the bomb never finished forking");
    // What the engine counts in the container's cgroup: never above the limit, while 400
    // were asked for.
    let top = docker_ok(&["top", &bomb, "-o", "pid"]);
    let processes = top.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
    assert!(
        (2..=48).contains(&processes),
        "{processes} processes in the bomb's container: {top}"
    );
    // The node keeps serving: the API answers and another renter's container starts and runs.
    let health = agent.api("GET", "/health", b"");
    assert_eq!(health.status, 200, "{}", health.text());
    let neighbour = agent.create(&body(&scope.claim("next"), &[], "sleep 600"));
    let neighbour = neighbour["id"].as_str().unwrap();
    let echoed = exec(neighbour, "echo neighbour-ok");
    assert!(echoed.contains("neighbour-ok"), "{echoed}");
    // And deleting the bomb takes its 48 processes with it.
    let deleted = agent.api("DELETE", &format!("/api/v1/containers/{bomb}"), b"");
    assert!(
        deleted.status == 200 || deleted.status == 204,
        "{} {}",
        deleted.status,
        deleted.text()
    );
    assert!(!docker(&["container", "inspect", &bomb]).status.success());
}

#[test]
fn a_claim_deleted_during_its_pull_never_leaves_a_container_running() {
    if !ready("a_claim_deleted_during_its_pull_never_leaves_a_container_running") {
        return;
    }
    // `pull -- IMAGE` takes 3 s, then "pulls" by tagging the test image.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = common::docker::docker_wrapper(
        dir.path(),
        "docker-slow-pull",
        &format!(
            "if [ \"$1\" = pull ]; then sleep 3; exec docker tag {} \"$3\"; fi\n",
            common::docker::TEST_IMAGE
        ),
    );
    let scope = Scope::new();
    let agent = scope.agent(|c| {
        c.docker.binary = wrapper.clone();
        c.docker.create_wait_secs = 1;
    });
    let image = format!("utopia-test-cancelled-{}:latest", scope.claim("img"));
    let claim = scope.claim("cancelled");
    let mut request = body(&claim, &[0], "sleep 600");
    request["image"] = image.clone().into();
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 202, "{}", r.text());
    let location = format!("/api/v1/containers/{claim}");
    // The rental is cancelled during the pull: given up at once (was a 409 "try again once
    // the create has answered"; without a retry the container then ran on GPU 0).
    let r = agent.api("DELETE", &location, b"");
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["deleted"], false, "{}", r.text());
    // Asked again, the same answer; GPU 0 stays held while docker may still make it.
    assert_eq!(agent.api("DELETE", &location, b"").status, 202);
    let other = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("other"), &[0], "sleep 600"),
    );
    assert_eq!(other.status, 409, "{}", other.text());
    // The pull ends, docker makes the container, the agent removes it: nothing of the claim
    // is left, in the API or in docker, and GPU 0 is free again.
    let gone = wait_until(Duration::from_secs(20), || {
        agent.get(&location).status == 404
            && docker_ok(&[
                "ps",
                "-a",
                "--filter",
                &format!("name=utopia-{claim}"),
                "--format",
                "{{.ID}}",
            ])
            .is_empty()
    });
    let _ = docker(&["rmi", &image]);
    assert!(
        gone,
        "{} / {}\nlog:\n{}",
        agent.get(&location).text(),
        docker_ok(&["ps", "-a", "--filter", &format!("name=utopia-{claim}")]),
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains(&format!("given-up claim {claim}")),
        "the removal is not logged:\n{log}"
    );
    // GPU 0 is free again: the next claim gets it. (With `create_wait_secs: 1` a `docker run`
    // slower than a second, as on a loaded machine, answers 202 first: wait for it to run.)
    let next = scope.claim("next");
    let r = agent.post_json("/api/v1/containers", &body(&next, &[0], "sleep 600"));
    assert!(matches!(r.status, 201 | 202), "{}", r.text());
    let running = wait_until(Duration::from_secs(30), || {
        agent.get(&format!("/api/v1/containers/{next}")).json()["state"] == "running"
    });
    assert!(
        running,
        "{}\nlog:\n{}",
        agent.get(&format!("/api/v1/containers/{next}")).text(),
        agent.log()
    );
}

#[test]
fn the_volumes_of_an_images_volume_go_with_its_container() {
    if !ready("the_volumes_of_an_images_volume_go_with_its_container") {
        return;
    }
    // A renter's image declaring a VOLUME: docker gives each container an anonymous volume,
    // on the node's disk. Left behind at delete, every rental could leave gigabytes for good.
    let image = DerivedImage::new(&["VOLUME /data"]);
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let mut request = body(
        &scope.claim("vol"),
        &[],
        "dd if=/dev/zero of=/data/fill bs=1024 count=1024 && echo FILLED; sleep 600",
    );
    request["image"] = image.tag.clone().into();
    let created = agent.create(&request);
    let id = created["id"].as_str().unwrap().to_string();
    let volume = docker_ok(&[
        "container",
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Destination \"/data\"}}{{.Name}}{{end}}{{end}}",
        &id,
    ]);
    assert!(!volume.is_empty(), "no anonymous volume at /data");
    let filled = wait_until(Duration::from_secs(15), || {
        agent
            .get(&format!("/api/v1/containers/{id}/logs?tail=5"))
            .text()
            .contains("FILLED")
    });
    assert!(filled, "the container never wrote its volume");
    let deleted = agent.api("DELETE", &format!("/api/v1/containers/{id}"), b"");
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let left = docker(&["volume", "inspect", &volume]).status.success();
    if left {
        let _ = docker(&["volume", "rm", "--force", &volume]);
    }
    assert!(
        !left,
        "volume {volume} of the deleted container is left on the node"
    );
}
