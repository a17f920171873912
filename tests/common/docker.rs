//! Helpers for the tests that run against the real docker engine: a per-test managed label (so
//! parallel test agents never see each other's containers), unique claim ids, a guard that
//! removes every container carrying the label even when the test fails, and a skip (or, under
//! `CI=true`, a failure) when the engine or the test image is missing.
#![allow(dead_code)]

use super::{Agent, AgentOptions, HttpResponse};
use serde_json::{json, Value};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use utopia_node_agent::config::{Config, GpuMode};

/// The image `scripts/test-image.sh` builds (busybox-static, no registry needed).
pub const TEST_IMAGE: &str = "utopia-test-busybox:latest";

/// The renters' network of the test agents (`docker.network`): one for all of them, so that
/// parallel tests do not use up docker's address pools. A test of the network itself uses a
/// [`TestNetwork`] of its own.
pub const TEST_NETWORK: &str = "utopia-test-renters";

/// Label key every test container carries; the value is unique per test.
pub const TEST_LABEL_KEY: &str = "io.utopia.test-run";

/// Runs `docker <args>`.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run the docker CLI")
}

/// `docker <args>`, which must succeed; returns trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// True when the engine answers and the test image exists. Otherwise prints why the test is
/// skipped, or panics under `CI=true`.
pub fn ready(test: &str) -> bool {
    let reason = if !docker(&["info", "--format", "{{.ServerVersion}}"])
        .status
        .success()
    {
        "the docker engine is not reachable".to_string()
    } else if !docker(&["image", "inspect", TEST_IMAGE]).status.success() {
        format!("the test image {TEST_IMAGE} is missing (run scripts/test-image.sh)")
    } else {
        return true;
    };
    if super::in_ci() {
        panic!("{test}: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}

fn unique() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{:x}{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// One test's containers: a unique managed label and claim ids, removed on drop.
pub struct Scope {
    /// `key=value` for `docker.managed_label`.
    pub label: String,
    prefix: String,
}

impl Scope {
    pub fn new() -> Scope {
        let run = unique();
        Scope {
            label: format!("{TEST_LABEL_KEY}={run}"),
            prefix: format!("t{run}"),
        }
    }

    /// An agent registered with `platform` as `node_id` (every registration answered so),
    /// beating every second, with `options`.
    pub fn agent_beating_to(
        &self,
        platform: &super::platform::PlatformServer,
        node_id: &str,
        options: AgentOptions,
    ) -> Agent {
        platform.set_register_default(super::platform::Reply::registered(node_id));
        let url = platform.url();
        self.agent_with(
            move |c| {
                c.central_platform.api_url = url;
                c.central_platform.heartbeat_interval_secs = 1;
                c.central_platform.request_timeout_secs = 2;
            },
            options,
        )
    }

    /// A guard for containers a test starts itself with `label` (`key=value`).
    pub fn with_label(label: &str) -> Scope {
        Scope {
            label: label.to_string(),
            prefix: format!("t{}", unique()),
        }
    }

    /// A claim id unique to this test run.
    pub fn claim(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Full ids of the containers docker has with this scope's label.
    pub fn docker_ids(&self) -> Vec<String> {
        let filter = format!("label={}", self.label);
        let mut ids: Vec<String> =
            docker_ok(&["ps", "-a", "-q", "--no-trunc", "--filter", &filter])
                .split_whitespace()
                .map(str::to_string)
                .collect();
        ids.sort();
        ids
    }

    /// Removes every container of this scope.
    pub fn clean(&self) {
        let ids = self.docker_ids();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
    }

    /// Starts an agent managing this scope's containers: `env` GPU mode, fake NVML, short
    /// stop timeout; `edit` may change more.
    pub fn agent(&self, edit: impl FnOnce(&mut Config)) -> Agent {
        self.agent_with(edit, AgentOptions::default())
    }

    pub fn agent_with(&self, edit: impl FnOnce(&mut Config), options: AgentOptions) -> Agent {
        let label = self.label.clone();
        let agent = Agent::start_with(
            move |c| {
                configure(c, &label);
                edit(c);
            },
            options,
        );
        agent.wait_for_docker();
        agent
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.clean();
    }
}

/// The docker settings every container test uses.
pub fn configure(config: &mut Config, label: &str) {
    config.docker.gpu_mode = GpuMode::Env;
    config.docker.managed_label = label.to_string();
    config.docker.network = TEST_NETWORK.to_string();
    config.docker.stop_timeout_secs = 1;
    config.docker.command_timeout_secs = 30;
    config.docker.reconcile_interval_secs = 1;
    config.docker.workers = 4;
}

/// A create body running `sh -c script` in the test image.
pub fn body(claim: &str, gpu_ids: &[u32], script: &str) -> Value {
    json!({
        "claim_id": claim,
        "image": TEST_IMAGE,
        "gpu_ids": gpu_ids,
        "command": ["sh", "-c", script],
    })
}

impl Agent {
    /// Waits until the container runner has finished its first reconcile (its health is no
    /// longer `starting`): `ok`, or why docker is unavailable.
    pub fn wait_for_docker(&self) {
        let settled = wait_until(Duration::from_secs(15), || {
            let health = self.request("GET", "/health", &[], b"").json();
            let docker = health["components"]["docker"]
                .as_str()
                .unwrap_or("starting");
            docker != "starting"
        });
        assert!(
            settled,
            "the docker component stayed `starting`; log:\n{}",
            self.log()
        );
    }

    pub fn post_json(&self, path: &str, body: &Value) -> HttpResponse {
        self.api("POST", path, body.to_string().as_bytes())
    }

    /// `POST /api/v1/containers`, which must answer 201; returns the container JSON.
    pub fn create(&self, body: &Value) -> Value {
        let r = self.post_json("/api/v1/containers", body);
        assert_eq!(
            r.status,
            201,
            "create {body}: {}\nlog:\n{}",
            r.text(),
            self.log()
        );
        let view = r.json();
        // The new resource is named in `Location`.
        let id = view["id"].as_str().unwrap_or_default();
        assert_eq!(
            r.header("location"),
            Some(format!("/api/v1/containers/{id}").as_str()),
            "create {body}"
        );
        view
    }

    /// The managed containers the agent lists.
    pub fn containers(&self) -> Vec<Value> {
        let r = self.get("/api/v1/containers");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json().as_array().cloned().unwrap_or_default()
    }

    /// After a create that failed: the list holds nothing but that claim's failed create (kept
    /// a while, as `GET` of the claim shows it), with no container id and no GPU.
    pub fn only_failed_creates_listed(&self, claim: &str) {
        for listed in self.containers() {
            assert!(
                listed["claim_id"] == claim
                    && listed["state"] == "failed"
                    && listed["id"].is_null(),
                "{listed}"
            );
        }
        assert!(self.gpu_holders().is_empty(), "{:?}", self.gpu_holders());
    }

    /// GPU index → (claim_id, container_id) from `/api/v1/metrics`, for busy GPUs held by a
    /// container.
    pub fn gpu_holders(&self) -> Vec<(u64, String, String)> {
        let metrics = self.get("/api/v1/metrics").json();
        metrics["gpus"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|g| !g["claim_id"].is_null())
            .map(|g| {
                assert_eq!(g["busy"], true, "{g}");
                (
                    g["id"].as_u64().unwrap_or(u64::MAX),
                    g["claim_id"].as_str().unwrap_or("").to_string(),
                    g["container_id"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes an executable `docker` stand-in in `dir`: `script` (shell lines that may act on
/// "$@" first), then the real docker with the same arguments. The agent uses it through
/// `docker.binary` to slow down or reshape one subcommand.
pub fn docker_wrapper(dir: &std::path::Path, name: &str, script: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{script}exec docker \"$@\"\n"))
        .expect("write the docker wrapper");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the docker wrapper");
    path
}

/// An image derived from the test image with `docker import --change` (an `ENV` line, ...),
/// under a tag unique to one test; removed on drop.
pub struct DerivedImage {
    pub tag: String,
}

impl DerivedImage {
    pub fn new(changes: &[&str]) -> DerivedImage {
        use std::process::Stdio;
        let tag = format!("utopia-test-derived:{}", unique());
        let source = docker_ok(&["create", "--label", "io.utopia.test-run=derive", TEST_IMAGE]);
        let mut export = Command::new("docker")
            .args(["export", &source])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker export");
        let mut import = Command::new("docker");
        import.arg("import");
        for change in ["ENV PATH=/bin"].iter().chain(changes) {
            import.args(["--change", change]);
        }
        let out = import
            .args(["-", &tag])
            .stdin(export.stdout.take().expect("export's stdout"))
            .output()
            .expect("docker import");
        let _ = export.wait();
        let _ = docker(&["rm", "-f", &source]);
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        DerivedImage { tag }
    }
}

impl Drop for DerivedImage {
    fn drop(&mut self) {
        let _ = docker(&["image", "rm", "-f", &self.tag]);
    }
}

/// A docker network name unique to one test, removed on drop (after the test's containers:
/// declare it before the [`Scope`]).
pub struct TestNetwork {
    pub name: String,
}

impl TestNetwork {
    pub fn new() -> TestNetwork {
        TestNetwork {
            name: format!("utopia-test-net-{}", unique()),
        }
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        // By id: a test of twin networks may leave two of this name.
        let listed = docker(&[
            "network",
            "ls",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Name}}",
        ]);
        for line in String::from_utf8_lossy(&listed.stdout).lines() {
            if let Some((id, name)) = line.split_once(' ') {
                if name == self.name {
                    let _ = docker(&["network", "rm", id]);
                }
            }
        }
    }
}
