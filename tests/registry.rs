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
