//! Image references and docker's failures against the real docker engine: registries on this
//! host are never contacted, docker's own text never reaches an answer, requests docker would
//! refuse are 400s naming the field, and the host-port range and restart policy are applied.

mod common;

use common::docker::{body, docker_ok, ready, wait_until, Scope};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "SECRET-d8f2a1-do-not-leak";

/// An HTTP service that answers every request with a body holding [`SECRET`], and counts
/// the connections it accepted.
struct SecretService {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl SecretService {
    fn start(address: &str) -> SecretService {
        let listener = TcpListener::bind((address, 0)).expect("bind the secret service");
        let port = listener.local_addr().expect("local addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let body = format!("{{\"errors\":[{{\"message\":\"{SECRET}\"}}]}}");
                let _ = write!(
                    stream,
                    "HTTP/1.1 418 I'm a teapot\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        SecretService { port, connections }
    }
}

fn assert_one_line_without_docker_text(answer: &Value) {
    let message = answer["error"]["message"]
        .as_str()
        .or_else(|| answer["message"].as_str())
        .or_else(|| answer["error"].as_str())
        .unwrap_or_default()
        .to_string();
    let text = answer.to_string();
    assert!(!message.is_empty(), "{answer}");
    assert!(!message.contains('\n'), "{message:?}");
    for docker_text in [
        SECRET,
        "Error response from daemon",
        "docker run --help",
        "docker:",
    ] {
        assert!(!text.contains(docker_text), "{docker_text:?} in {text}");
    }
}

#[test]
fn registries_on_this_host_are_refused_and_never_contacted() {
    if !ready("registries_on_this_host_are_refused_and_never_contacted") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let service = SecretService::start("127.0.0.1");
    let port = service.port;
    let v6 = TcpListener::bind(("::1", port)).ok();
    for (i, image) in [
        format!("127.0.0.1:{port}/x"),
        format!("127.0.0.1:{port}/x:latest"),
        format!("localhost:{port}/x"),
        format!("127.1:{port}/x"),
        format!("2130706433:{port}/x"),
        format!("0x7f000001:{port}/x"),
        format!("0177.0.0.1:{port}/x"),
        format!("0.0.0.0:{port}/x"),
        format!("[::1]:{port}/x"),
        format!("[::ffff:127.0.0.1]:{port}/x"),
        format!("[::ffff:7f00:1]:{port}/x"),
        "169.254.169.254/latest/x".to_string(),
        "127.0.0.1:1/x".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let claim = scope.claim(&format!("local{i}"));
        let mut request = body(&claim, &[], "true");
        request["image"] = json!(image);
        let r = agent.post_json("/api/v1/containers", &request);
        assert_eq!(r.status, 400, "{image}: {}", r.text());
        let answer = r.json();
        assert!(
            answer.to_string().contains("image"),
            "{image}: the answer names the field: {answer}"
        );
        assert_one_line_without_docker_text(&answer);
    }
    // Nothing was asked of the engine: no pull reached the service.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(service.connections.load(Ordering::SeqCst), 0);
    drop(v6);
    assert!(scope.docker_ids().is_empty());
    assert!(!agent.log().contains(SECRET));
}

#[test]
fn allowed_registries_restrict_where_images_come_from() {
    if !ready("allowed_registries_restrict_where_images_come_from") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|c| {
        c.docker.allowed_registries = vec!["registry.example.com".into()];
    });
    // The test image is local, under docker.io's name: docker.io is not in the list.
    let claim = scope.claim("dockerio");
    let r = agent.post_json("/api/v1/containers", &body(&claim, &[], "true"));
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("allowed_registries"), "{}", r.text());
    assert!(scope.docker_ids().is_empty());

    let scope = Scope::new();
    let agent = scope.agent(|c| {
        c.docker.allowed_registries = vec!["docker.io".into()];
    });
    let claim = scope.claim("allowed");
    agent.create(&body(&claim, &[], "sleep 60"));
    let mut other = body(&scope.claim("other"), &[], "true");
    other["image"] = json!("registry.example.com/x:1");
    let r = agent.post_json("/api/v1/containers", &other);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("registry.example.com"), "{}", r.text());
}

#[test]
fn a_registry_that_fails_is_answered_in_one_classified_line() {
    if !ready("a_registry_that_fails_is_answered_in_one_classified_line") {
        return;
    }
    // A non-loopback address of this host: the engine tries it (HTTPS) and fails.
    let address = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
                .map(str::to_string)
        });
    let Some(address) = address else {
        assert!(
            !common::in_ci(),
            "no non-loopback IPv4 address on this host"
        );
        eprintln!("SKIPPED: no non-loopback IPv4 address");
        return;
    };
    let service = SecretService::start(&address);
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.pull_timeout_secs = 60);
    let mut request = body(&scope.claim("remote"), &[], "true");
    request["image"] = json!(format!("{address}:{}/x:1", service.port));
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 502, "{}", r.text());
    let answer = r.json();
    assert_one_line_without_docker_text(&answer);
    assert!(
        r.text().contains("could not be reached") || r.text().contains("answered with an error"),
        "{}",
        r.text()
    );
    assert!(scope.docker_ids().is_empty());
}

#[test]
fn requests_docker_would_refuse_are_400_naming_the_field() {
    if !ready("requests_docker_would_refuse_are_400_naming_the_field") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let cpus: usize = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .map(|s| {
            s.trim()
                .split(',')
                .map(|p| match p.split_once('-') {
                    Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
                    None => 1,
                })
                .sum()
        })
        .unwrap_or(1);
    let mut request = body(&scope.claim("cpus"), &[], "true");
    request["cpus"] = json!(cpus as f64 + 1.0);
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("cpus"), "{}", r.text());
    assert_one_line_without_docker_text(&r.json());

    let mut request = body(&scope.claim("memory"), &[], "true");
    request["memory_mb"] = json!(16 * 1024 * 1024);
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("memory_mb"), "{}", r.text());

    // Type errors are in the user's words.
    let mut request = body(&scope.claim("types"), &[], "true");
    request["port_mappings"] = json!([{"host_port": "eighty", "container_port": 80}]);
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("a port number (1-65535)"), "{}", r.text());
    for body in [json!([1]), json!({"claim_id": "x", "image": 5})] {
        let r = agent.post_json("/api/v1/containers", &body);
        assert_eq!(r.status, 400, "{}", r.text());
        for rust in ["i64", "u16", "struct", "CreateRequest", "sequence"] {
            assert!(!r.text().contains(rust), "{}", r.text());
        }
    }
}

#[test]
fn host_ports_outside_the_range_are_400_and_udp_may_share_the_agents_port() {
    if !ready("host_ports_outside_the_range_are_400_and_udp_may_share_the_agents_port") {
        return;
    }
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.host_port_range = "20000-29999".into());
    let mut request = body(&scope.claim("ssh"), &[], "sleep 60");
    request["port_mappings"] = json!([{"host_port": 22, "container_port": 22}]);
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("20000-29999"), "{}", r.text());
    assert!(scope.docker_ids().is_empty());

    let free = (20000..30000)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in the range");
    let mut request = body(&scope.claim("inrange"), &[], "sleep 60");
    request["port_mappings"] = json!([{"host_port": free, "container_port": 80}]);
    agent.create(&request);

    // Without a range: the agent's own TCP port is refused, UDP on that number is fine.
    let scope = Scope::new();
    let agent = scope.agent(|_| {});
    let api_port = agent.addr.port();
    let mut request = body(&scope.claim("tcp"), &[], "sleep 60");
    request["port_mappings"] = json!([{"host_port": api_port, "container_port": 80}]);
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 409, "{}", r.text());
    let mut request = body(&scope.claim("udp"), &[], "sleep 60");
    request["port_mappings"] =
        json!([{"host_port": api_port, "container_port": 53, "protocol": "udp"}]);
    agent.create(&request);
}

#[test]
fn containers_come_back_after_they_die_and_after_an_agent_restart() {
    if !ready("containers_come_back_after_they_die_and_after_an_agent_restart") {
        return;
    }
    let scope = Scope::new();
    let mut agent = scope.agent(|_| {});
    let created = agent.create(&body(&scope.claim("back"), &[1], "sleep 600"));
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        docker_ok(&[
            "container",
            "inspect",
            "--format",
            "{{.HostConfig.RestartPolicy.Name}}",
            &id
        ]),
        "unless-stopped"
    );
    // The main process dies as in a crash (not a `docker stop`): docker starts it again.
    let pid = docker_ok(&["container", "inspect", "--format", "{{.State.Pid}}", &id]);
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let restarted = wait_until(Duration::from_secs(20), || {
        docker_ok(&[
            "container",
            "inspect",
            "--format",
            "{{.RestartCount}} {{.State.Status}}",
            &id,
        ]) == "1 running"
    });
    assert!(restarted, "docker did not bring the container back");
    let seen = wait_until(Duration::from_secs(10), || {
        let r = agent.get(&format!("/api/v1/containers/{id}"));
        r.status == 200 && r.json()["state"] == "running"
    });
    assert!(
        seen,
        "the agent's view: {}",
        agent.get("/api/v1/containers").text()
    );
    let view = agent.get(&format!("/api/v1/containers/{id}")).json();
    assert_eq!(view["gpu_ids"], json!([1]), "{view}");

    // After an agent restart, the table and the GPU ledger are rebuilt from the labels.
    agent.restart(true, common::AgentOptions::default());
    agent.wait_for_docker();
    let view = agent.get(&format!("/api/v1/containers/{id}")).json();
    assert_eq!(view["state"], "running", "{view}");
    assert_eq!(view["gpu_ids"], json!([1]), "{view}");
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("same-gpu"), &[1], "sleep 60"),
    );
    assert_eq!(r.status, 409, "GPU 1 is still held: {}", r.text());

    // The policy comes from docker.restart_policy.
    let scope = Scope::new();
    let agent = scope.agent(|c| c.docker.restart_policy = "on-failure:2".into());
    let created = agent.create(&body(&scope.claim("fails"), &[], "exit 3"));
    let id = created["id"].as_str().unwrap().to_string();
    let policy = docker_ok(&[
        "container",
        "inspect",
        "--format",
        "{{.HostConfig.RestartPolicy.Name}}:{{.HostConfig.RestartPolicy.MaximumRetryCount}}",
        &id,
    ]);
    assert_eq!(policy, "on-failure:2");
    let gave_up = wait_until(Duration::from_secs(30), || {
        docker_ok(&[
            "container",
            "inspect",
            "--format",
            "{{.RestartCount}} {{.State.Status}}",
            &id,
        ]) == "2 exited"
    });
    assert!(gave_up, "on-failure:2 retried twice, then stopped");
}

/// A non-loopback IPv4 address of this host (a registry there is tried, and refuses).
fn host_address() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
}

/// A docker wrapper that writes, for every call, its argv, its own `/proc` command line, the
/// `DOCKER_CONFIG` it got and (when there is one) that config's modes and content into
/// `journal`, then runs the real docker. `before_pull` runs first on a pull.
fn recording_docker(dir: &std::path::Path, before_pull: &str) -> std::path::PathBuf {
    let journal = dir.join("journal");
    common::docker::docker_wrapper(
        dir,
        "docker",
        &format!(
            r#"entry="$(
  echo "CALL $1"
  echo "ARGV $*"
  echo "CMDLINE $(tr '\0' ' ' < /proc/$$/cmdline)"
  echo "DOCKER_CONFIG=$DOCKER_CONFIG"
  if [ -f "$DOCKER_CONFIG/config.json" ]; then
    echo "DIRMODE $(stat -c %a "$DOCKER_CONFIG")"
    echo "FILEMODE $(stat -c %a "$DOCKER_CONFIG/config.json")"
    echo "CONFIG $(cat "$DOCKER_CONFIG/config.json")"
  fi
)"
# One write per call: concurrent calls do not interleave.
printf '%s\n' "$entry" >> '{}'
if [ "$1" = pull ]; then {before_pull}; fi
"#,
            journal.display()
        ),
    )
}

fn pull_dirs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("utopia-pull-"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn registry_auth_reaches_only_that_pulls_docker_config() {
    if !ready("registry_auth_reaches_only_that_pulls_docker_config") {
        return;
    }
    let Some(address) = host_address() else {
        assert!(
            !common::in_ci(),
            "no non-loopback IPv4 address on this host"
        );
        return;
    };
    const PASSWORD: &str = "pw-7c1e9b-registry-secret";
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path().join("agent-tmp");
    let operator = work.path().join("operator-docker");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::create_dir_all(&operator).unwrap();
    let wrapper = recording_docker(work.path(), "true");
    let scope = Scope::new();
    let options = common::AgentOptions {
        env: vec![("TMPDIR".into(), tmp.display().to_string())],
        ..Default::default()
    };
    let (w, o) = (wrapper.clone(), operator.clone());
    let agent = scope.agent_with(
        move |c| {
            c.docker.binary = w;
            c.docker.config_dir = o;
            c.docker.pull_timeout_secs = 30;
        },
        options,
    );

    // A private image on a registry that refuses connections: the pull fails, but the
    // credentials reached the docker CLI, and only through that pull's DOCKER_CONFIG.
    let registry = format!("{address}:1");
    let mut request = body(&scope.claim("private"), &[], "true");
    request["image"] = json!(format!("{registry}/team/private:1"));
    request["registry_auth"] = json!({"username": "alice", "password": PASSWORD});
    let r = agent.post_json("/api/v1/containers", &request);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(!r.text().contains(PASSWORD), "{}", r.text());
    assert_one_line_without_docker_text(&r.json());

    let journal = std::fs::read_to_string(work.path().join("journal")).unwrap();
    let calls: Vec<&str> = journal.split("CALL ").skip(1).collect();
    let pull = calls
        .iter()
        .find(|c| c.starts_with("pull"))
        .unwrap_or_else(|| panic!("no pull in {journal}"));
    let pull_dir = pull
        .lines()
        .find_map(|l| l.strip_prefix("DOCKER_CONFIG="))
        .unwrap();
    assert!(
        pull_dir.starts_with(&format!("{}/utopia-pull-", tmp.display())),
        "{pull}"
    );
    assert!(pull.contains("DIRMODE 700\n"), "{pull}");
    assert!(pull.contains("FILEMODE 600\n"), "{pull}");
    let config: Value = serde_json::from_str(
        pull.lines()
            .find_map(|l| l.strip_prefix("CONFIG "))
            .unwrap(),
    )
    .unwrap();
    let expected = {
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf 'alice:{PASSWORD}' | base64 -w0")])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        config["auths"][&registry]["auth"],
        expected.as_str(),
        "{config}"
    );
    for line in journal.lines() {
        if line.starts_with("ARGV") || line.starts_with("CMDLINE") {
            assert!(
                !line.contains(PASSWORD),
                "the password is on a command line: {line}"
            );
        }
    }
    // Every other docker command gets the operator's docker.config_dir.
    for call in calls.iter().filter(|c| !c.starts_with("pull")) {
        assert!(
            call.contains(&format!("DOCKER_CONFIG={}\n", operator.display())),
            "{call}"
        );
    }
    assert!(pull_dirs(&tmp).is_empty(), "removed after the pull");
    assert!(!std::path::Path::new(pull_dir).exists());

    // With an image docker has, the credentials go nowhere: not in labels, inspect, the view.
    let mut request = body(&scope.claim("local"), &[], "sleep 60");
    request["registry_auth"] =
        json!({"server": "docker.io", "username": "alice", "password": PASSWORD});
    let created = agent.create(&request);
    let id = created["id"].as_str().unwrap();
    assert!(!created.to_string().contains(PASSWORD));
    let inspect = docker_ok(&["container", "inspect", id]);
    assert!(!inspect.contains(PASSWORD), "in docker inspect");
    assert!(!agent
        .get(&format!("/api/v1/containers/{id}"))
        .text()
        .contains(PASSWORD));
    assert!(!agent.log().contains(PASSWORD), "in the agent's log");
}

#[test]
fn a_crashed_pulls_credentials_are_removed_at_the_next_start() {
    if !ready("a_crashed_pulls_credentials_are_removed_at_the_next_start") {
        return;
    }
    let Some(address) = host_address() else {
        assert!(
            !common::in_ci(),
            "no non-loopback IPv4 address on this host"
        );
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tmp = work.path().join("agent-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // The pull hangs: the agent is killed while the credentials are on disk.
    let wrapper = recording_docker(work.path(), "sleep 20");
    let scope = Scope::new();
    let options = || common::AgentOptions {
        env: vec![("TMPDIR".into(), tmp.display().to_string())],
        ..Default::default()
    };
    let w = wrapper.clone();
    let mut agent = scope.agent_with(move |c| c.docker.binary = w, options());
    let mut request = body(&scope.claim("crash"), &[], "true");
    request["image"] = json!(format!("{address}:1/team/private:1"));
    request["registry_auth"] = json!({"identity_token": "tok-crash-secret"});
    let addr = agent.addr;
    let payload = request.to_string();
    std::thread::spawn(move || {
        let auth = format!("Bearer {}", common::TOKEN);
        let _ = common::try_request(
            addr,
            "POST",
            "/api/v1/containers",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            payload.as_bytes(),
        );
    });
    assert!(
        wait_until(Duration::from_secs(10), || pull_dirs(&tmp).len() == 1),
        "the pull's config was written"
    );
    agent.kill();
    assert_eq!(pull_dirs(&tmp).len(), 1, "left behind by the crash");
    agent.restart(true, options());
    agent.wait_for_docker();
    assert!(
        wait_until(Duration::from_secs(10), || pull_dirs(&tmp).is_empty()),
        "the next start removed it: {:?}",
        pull_dirs(&tmp)
    );
    assert!(agent
        .log()
        .contains("removed a crashed agent's registry credentials"));
}
