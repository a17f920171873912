//! Health that tells the truth: `/health` stays 200 while the process serves but says
//! `degraded` when a component is unavailable, and `/health/ready` answers 503 until the node
//! can do its work (API up, docker reachable, NVML ready, registered when a platform is set).

mod common;

use common::{Agent, AgentOptions, HttpResponse};
use std::time::{Duration, Instant};

/// `GET path` without a token, until `done` holds (or 15 s pass); the last answer.
fn poll(agent: &Agent, path: &str, done: impl Fn(&HttpResponse) -> bool) -> HttpResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let response = agent.request("GET", path, &[], b"");
        if done(&response) || Instant::now() > deadline {
            return response;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn waiting_for(response: &HttpResponse) -> Vec<String> {
    response.json()["waiting_for"]
        .as_array()
        .unwrap_or_else(|| panic!("no waiting_for in {}", response.text()))
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn docker_unavailable_makes_health_degraded_and_the_node_not_ready() {
    let agent = Agent::start(|config| config.docker.binary = "/nonexistent/docker".into());
    let health = poll(&agent, "/health", |r| {
        r.json()["components"]["docker"]
            .as_str()
            .is_some_and(|s| s.starts_with("unavailable"))
    });
    assert_eq!(health.status, 200, "still alive: {}", health.text());
    assert_eq!(health.json()["status"], "degraded", "{}", health.text());

    let ready = agent.request("GET", "/health/ready", &[], b"");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(ready.json()["ready"], false);
    let waiting = waiting_for(&ready);
    assert!(
        waiting.iter().any(|w| w.starts_with("docker: unavailable")),
        "{waiting:?}"
    );
    assert!(!waiting.iter().any(|w| w.starts_with("gpu")), "{waiting:?}");
    assert_eq!(ready.header("Content-Type"), Some("application/json"));

    // Without the token: the states alone; the reasons (paths, claim and container ids,
    // excerpts of the platform's answers) need the token. A wrong token is no token.
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong-token-0123456789")],
    ] {
        let public = agent.request("GET", "/health", &headers, b"").json();
        assert_eq!(public["components"]["docker"], "unavailable", "{public}");
        assert!(!public.to_string().contains("nonexistent"), "{public}");
        let ready = agent.request("GET", "/health/ready", &headers, b"");
        assert!(
            waiting_for(&ready).contains(&"docker: unavailable".to_string()),
            "{}",
            ready.text()
        );
        assert!(!ready.text().contains("nonexistent"), "{}", ready.text());
    }
    let detailed = agent.get("/health").json();
    assert!(
        detailed["components"]["docker"]
            .as_str()
            .is_some_and(|d| d.starts_with("unavailable: ") && d.contains("/nonexistent/docker")),
        "{detailed}"
    );
    let ready = agent.api("GET", "/health/ready", b"");
    assert!(
        ready.text().contains("/nonexistent/docker"),
        "{}",
        ready.text()
    );
}

#[test]
fn nvml_unavailable_makes_the_node_not_ready() {
    let options = AgentOptions {
        env: vec![("FAKE_NVML_INIT_FAIL".into(), "1".into())],
        ..AgentOptions::default()
    };
    let agent = Agent::start_with(|_| {}, options);
    let ready = poll(&agent, "/health/ready", |r| {
        waiting_for(r)
            .iter()
            .any(|w| w.starts_with("gpu: unavailable"))
    });
    assert_eq!(ready.status, 503, "{}", ready.text());
    let health = agent.request("GET", "/health", &[], b"");
    assert_eq!(health.json()["status"], "degraded", "{}", health.text());
}

#[test]
fn an_unregistered_node_is_not_ready() {
    // A platform that refuses connections: the node keeps registering.
    let port = common::free_port();
    let agent = Agent::start(|config| {
        config.central_platform.api_url = format!("http://127.0.0.1:{port}");
        config.central_platform.backoff_initial_ms = 100;
        config.central_platform.backoff_max_ms = 400;
    });
    let ready = poll(&agent, "/health/ready", |r| {
        waiting_for(r)
            .iter()
            .any(|w| w.starts_with("platform: registering"))
    });
    assert_eq!(ready.status, 503, "{}", ready.text());
    // Registering is not trouble: nothing is unavailable because of it.
    assert!(
        agent.request("GET", "/health", &[], b"").json()["components"]["platform"]
            .as_str()
            .is_some_and(|s| s.starts_with("registering"))
    );
}

#[test]
fn ready_once_api_docker_and_nvml_work() {
    if !common::docker::ready("ready_once_api_docker_and_nvml_work") {
        return;
    }
    let agent = Agent::start(|_| {});
    let ready = poll(&agent, "/health/ready", |r| r.status == 200);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["ready"], true);
    assert!(waiting_for(&ready).is_empty());
    let health = agent.request("GET", "/health", &[], b"");
    assert_eq!(health.json()["status"], "ok", "{}", health.text());
    // GET only, like /health.
    let post = agent.request("POST", "/health/ready", &[], b"{}");
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET"));
}

#[test]
fn a_dead_engine_shows_in_health_at_once_not_at_the_next_reconcile() {
    use common::docker::{docker_wrapper, ready, Scope};
    if !ready("a_dead_engine_shows_in_health_at_once") {
        return;
    }
    // A docker CLI that behaves like a dead engine once `dead` exists: `docker events` ends,
    // every other command cannot connect.
    let dir = tempfile::tempdir().unwrap();
    let dead = dir.path().join("dead");
    let script = format!(
        "if [ -e {dead} ]; then echo 'Cannot connect to the Docker daemon at \
         unix:///var/run/docker.sock. Is the docker daemon running?' >&2; exit 1; fi\n\
         if [ \"$1\" = events ]; then docker \"$@\" & pid=$!; \
         while [ ! -e {dead} ]; do sleep 0.1; done; kill $pid; exit 1; fi\n",
        dead = dead.display()
    );
    let wrapper = docker_wrapper(dir.path(), "docker-dies", &script);
    let scope = Scope::new();
    let agent = scope.agent(|c| {
        c.docker.binary = wrapper.clone();
        // The periodic reconcile would notice only after an hour.
        c.docker.reconcile_interval_secs = 3600;
    });
    let docker_of = |r: &HttpResponse| {
        r.json()["components"]["docker"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let before = agent.api("GET", "/health", b"");
    assert_eq!(docker_of(&before), "ok", "{}", before.text());
    // Let `docker events` run.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&dead, "").unwrap();
    let started = Instant::now();
    let after = poll(&agent, "/health", |r| {
        docker_of(r).starts_with("unavailable")
    });
    assert!(
        docker_of(&after).starts_with("unavailable"),
        "docker still {:?} {:?} after the engine died; log:\n{}",
        docker_of(&after),
        started.elapsed(),
        agent.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
