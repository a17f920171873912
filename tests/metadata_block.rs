//! `docker.block_metadata` on the real docker engine and the real iptables: a renter's
//! container reaches link-local services (a cloud's metadata service beyond the host, and one on
//! the host itself) with the option off and cannot with it on; a rule flushed by someone else is
//! put back at the next reconcile; the rules stay when the agent stops; switched off, the agent
//! removes its own rules and nothing else.
//!
//! The "cloud" is a network namespace behind a veth pair: 169.254.N.2 there serves HTTP (so the
//! container's packets are forwarded by the host, through `DOCKER-USER`), and the host's end,
//! 169.254.N.1, serves HTTP from this test (delivered locally, through `INPUT`). Everything is
//! removed on drop, even when the test fails: the namespace, the veth, the rules of the test's
//! network (whose name, unique to the test, is in the rules' comment).

mod common;

use common::docker::{body, docker_ok, ready, wait_until, Scope, TestNetwork};
use common::in_ci;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const COMMENT_PREFIX: &str = "utopia-node-agent:block-metadata";

fn run(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run {program}: {e}")),
    }
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out) = run(program, args);
    assert!(ok, "{program} {args:?} failed: {out}");
    out
}

/// The `-A` lines of `chain` that carry `comment` (a whole word), unquoted.
fn rules_with(chain: &str, comment: &str) -> Vec<String> {
    let (_, out) = run("iptables", &["-w", "5", "-S", chain]);
    out.lines()
        .filter(|l| l.starts_with("-A "))
        .map(|l| l.replace('"', ""))
        .filter(|l| l.split_whitespace().any(|w| w == comment))
        .collect()
}

/// Deletes the `-A` lines of `chain` that carry `comment`.
fn delete_rules(chain: &str, comment: &str) {
    for line in rules_with(chain, comment) {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        words[0] = "-D";
        let mut args = vec!["-w", "5"];
        args.extend(words);
        let _ = run("iptables", &args);
    }
}

/// True when this machine can run the test (root, iptables with docker's chain, `ip netns`,
/// busybox); else prints why it is skipped, or panics under `CI=true`.
fn firewall_ready(test: &str) -> bool {
    let checks: [(&str, &[&str]); 3] = [
        ("iptables", &["-w", "5", "-S", "DOCKER-USER"]),
        ("ip", &["netns", "list"]),
        ("busybox", &["true"]),
    ];
    for (program, args) in checks {
        let (ok, out) = run(program, args);
        if !ok {
            let reason = format!("{program} {args:?} failed: {out}");
            assert!(!in_ci(), "{test}: {reason} (CI=true: this test must run)");
            eprintln!("skipping {test}: {reason}");
            return false;
        }
    }
    true
}

/// The link-local services and the namespace they live in; removed on drop.
struct LinkLocal {
    namespace: String,
    host_if: String,
    /// Beyond the host (forwarded): 169.254.N.2, port 8080.
    remote: String,
    /// On the host (local): 169.254.N.1.
    local: String,
    local_port: u16,
    server: Option<Child>,
    stop: Arc<AtomicBool>,
    _files: tempfile::TempDir,
}

impl LinkLocal {
    fn new() -> LinkLocal {
        let tag = std::process::id() % 100_000;
        let namespace = format!("utopia-meta-{tag}");
        let host_if = format!("utm{tag}h");
        let peer_if = format!("utm{tag}n");
        let n = 100 + tag % 100;
        let (local, remote) = (format!("169.254.{n}.1"), format!("169.254.{n}.2"));
        let files = tempfile::tempdir().expect("temp dir");
        let mut this = LinkLocal {
            namespace: namespace.clone(),
            host_if: host_if.clone(),
            remote: remote.clone(),
            local: local.clone(),
            local_port: 0,
            server: None,
            stop: Arc::new(AtomicBool::new(false)),
            _files: files,
        };
        // Leftovers of a killed run of this pid's namespace.
        this.remove();
        must("ip", &["netns", "add", &namespace]);
        must(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns",
                &namespace,
            ],
        );
        must(
            "ip",
            &["addr", "add", &format!("{local}/30"), "dev", &host_if],
        );
        must("ip", &["link", "set", &host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["netns", "exec", namespace.as_str()];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{remote}/30"),
            "dev",
            &peer_if,
        ]);
        in_ns(&["ip", "link", "set", &peer_if, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        in_ns(&["ip", "route", "add", "default", "via", &local]);

        // The "cloud metadata service": busybox httpd in the namespace.
        let root = this._files.path().join("www");
        std::fs::create_dir_all(root.join("latest")).unwrap();
        std::fs::write(root.join("latest/meta-data"), "cloud-credentials\n").unwrap();
        let root = root.to_string_lossy().to_string();
        this.server = Some(
            Command::new("ip")
                .args([
                    "netns", "exec", &namespace, "busybox", "httpd", "-f", "-p", "8080", "-h",
                    &root,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start busybox httpd"),
        );

        // The host's own link-local service: answers every connection with a line of HTTP.
        let listener = TcpListener::bind((local.as_str(), 0)).expect("bind the host's address");
        this.local_port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::clone(&this.stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 1024];
                        let _ = stream.read(&mut buf);
                        let _ = stream.write_all(
                            b"HTTP/1.0 200 OK\r\nContent-Length: 12\r\n\r\nhost-secret\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        this
    }

    fn remove(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
        }
        let (_, pids) = run("ip", &["netns", "pids", &self.namespace]);
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
        let _ = run("ip", &["link", "del", &self.host_if]);
        let _ = run("ip", &["netns", "del", &self.namespace]);
    }
}

impl Drop for LinkLocal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.remove();
    }
}

/// Removes the test network's rules (and the decoy's) even when the test fails.
struct RulesGuard(Vec<String>);

impl Drop for RulesGuard {
    fn drop(&mut self) {
        for comment in &self.0 {
            for chain in ["DOCKER-USER", "INPUT"] {
                delete_rules(chain, comment);
            }
        }
    }
}

/// `doctor --json`'s `metadata` check on `config`, with `path` as `PATH`: (status, message).
fn doctor_metadata(config: &std::path::Path, path: &str) -> (String, String) {
    let out = Command::new(common::agent_binary())
        .args(["doctor", "--json", "--config"])
        .arg(config)
        .env("PATH", path)
        .output()
        .expect("run doctor");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let check = report
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == "metadata"))
        .unwrap_or_else(|| panic!("no metadata check: {report}"));
    (
        check["status"].as_str().unwrap_or_default().to_string(),
        check["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// What the container `id` gets for `GET <path>` from `address` (`host port`; busybox nc,
/// 3 s).
fn fetch(id: &str, address: &str) -> String {
    let (host_port, path) = address.rsplit_once(' ').unwrap_or((address, "/"));
    let (_, out) = run(
        "docker",
        &[
            "exec",
            id,
            "sh",
            "-c",
            &format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host_port}; echo rc=$?"),
        ],
    );
    out
}

#[test]
fn link_local_addresses_are_blocked_only_while_the_option_is_on() {
    let test = "link_local_addresses_are_blocked_only_while_the_option_is_on";
    if !ready(test) || !firewall_ready(test) {
        return;
    }
    // Declared first, dropped last: the rules, the services, then the network and containers.
    let network = TestNetwork::new();
    let comment = format!("{COMMENT_PREFIX}:{}", network.name);
    // Someone else's rule whose comment only starts like ours: never touched.
    let decoy = format!("{comment}-decoy");
    let _rules = RulesGuard(vec![comment.clone(), decoy.clone()]);
    let services = LinkLocal::new();
    let scope = Scope::new();
    // `host port path` for `fetch`.
    let remote_url = format!("{} 8080 /latest/meta-data", services.remote);
    let local_url = format!("{} {} /", services.local, services.local_port);

    // Off (the default): the container reaches both.
    let mut agent = scope.agent(|c| c.docker.network = network.name.clone());
    let created = agent.create(&body(&scope.claim("a"), &[], "sleep 600"));
    let id = created["id"].as_str().unwrap().to_string();
    let mut seen = String::new();
    let reached = wait_until(Duration::from_secs(15), || {
        seen = format!("{} {}", fetch(&id, &remote_url), fetch(&id, &local_url));
        seen.contains("cloud-credentials") && seen.contains("host-secret")
    });
    assert!(
        reached,
        "without the option the services were not reachable: {seen}"
    );
    assert!(rules_with("DOCKER-USER", &comment).is_empty());
    agent.terminate();

    // On: one rule in each chain for the network's bridge; neither service answers any more.
    let network_id = docker_ok(&["network", "inspect", "--format", "{{.Id}}", &network.name]);
    let bridge = format!("br-{}", &network_id[..12]);
    let decoy_rule = [
        "-w",
        "5",
        "-I",
        "DOCKER-USER",
        "-i",
        "utm-decoy0",
        "-m",
        "comment",
        "--comment",
        &decoy,
        "-j",
        "RETURN",
    ];
    must("iptables", &decoy_rule);
    let mut agent = scope.agent(|c| {
        c.docker.network = network.name.clone();
        c.docker.block_metadata = true;
    });
    let installed = wait_until(Duration::from_secs(15), || {
        ["DOCKER-USER", "INPUT"]
            .iter()
            .all(|chain| rules_with(chain, &comment).len() == 1)
    });
    assert!(installed, "rules not installed; log:\n{}", agent.log());
    for chain in ["DOCKER-USER", "INPUT"] {
        let rules = rules_with(chain, &comment);
        assert!(
            rules[0].contains(&format!("-i {bridge}"))
                && rules[0].contains("-d 169.254.0.0/16")
                && rules[0].contains("-j REJECT"),
            "{rules:?}"
        );
    }
    for _ in 0..2 {
        let got = format!("{} {}", fetch(&id, &remote_url), fetch(&id, &local_url));
        assert!(
            !got.contains("cloud-credentials") && !got.contains("host-secret"),
            "a link-local service answered with the option on: {got}"
        );
    }
    // Outbound elsewhere is not affected: the network is usable, creates work.
    let health = agent.get("/health").json();
    assert_eq!(health["components"]["docker"], "ok", "{health}");
    agent.create(&body(&scope.claim("b"), &[], "sleep 600"));
    // doctor sees the rules; without iptables it fails the check.
    let path = std::env::var("PATH").unwrap_or_default();
    let (status, message) = doctor_metadata(&agent.config_path, &path);
    assert_eq!(status, "pass", "{message}");
    let (status, message) = doctor_metadata(&agent.config_path, "/nonexistent");
    assert_eq!(status, "fail", "{message}");
    assert!(message.contains("iptables"), "{message}");

    // Flushed by someone else: put back at the next reconcile, with a log line.
    delete_rules("DOCKER-USER", &comment);
    assert!(rules_with("DOCKER-USER", &comment).is_empty());
    let restored = wait_until(Duration::from_secs(15), || {
        rules_with("DOCKER-USER", &comment).len() == 1
            && agent
                .log()
                .matches("inserted the firewall rule DOCKER-USER")
                .count()
                >= 2
    });
    assert!(
        restored,
        "the flushed rule was not re-added, with a log line; rules {:?}; log:\n{}",
        rules_with("DOCKER-USER", &comment),
        agent.log()
    );

    // Stopped: the containers run on, and so do the rules.
    agent.terminate();
    assert_eq!(rules_with("DOCKER-USER", &comment).len(), 1);
    assert_eq!(rules_with("INPUT", &comment).len(), 1);
    assert!(!fetch(&id, &remote_url).contains("cloud-credentials"));

    // Switched off: the agent removes its rules, and only them.
    let agent = scope.agent(|c| c.docker.network = network.name.clone());
    let removed = wait_until(Duration::from_secs(15), || {
        ["DOCKER-USER", "INPUT"]
            .iter()
            .all(|chain| rules_with(chain, &comment).is_empty())
    });
    assert!(removed, "the rules were not removed; log:\n{}", agent.log());
    assert_eq!(
        rules_with("DOCKER-USER", &decoy).len(),
        1,
        "the decoy rule was touched"
    );
    let reached = wait_until(Duration::from_secs(15), || {
        seen = format!("{} {}", fetch(&id, &remote_url), fetch(&id, &local_url));
        seen.contains("cloud-credentials") && seen.contains("host-secret")
    });
    assert!(
        reached,
        "the services stayed blocked after switching off: {seen}"
    );
}

#[test]
fn without_iptables_the_option_refuses_creates_and_degrades_health() {
    let test = "without_iptables_the_option_refuses_creates_and_degrades_health";
    if !ready(test) {
        return;
    }
    // The agent finds docker by its full path and nothing else: no iptables in PATH.
    let docker_path = ["/usr/bin/docker", "/usr/local/bin/docker", "/bin/docker"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("the docker CLI");
    let empty = tempfile::tempdir().unwrap();
    let network = TestNetwork::new();
    let _rules = RulesGuard(vec![format!("{COMMENT_PREFIX}:{}", network.name)]);
    let scope = Scope::new();
    let agent = scope.agent_with(
        |c| {
            c.docker.network = network.name.clone();
            c.docker.binary = docker_path.into();
            c.docker.block_metadata = true;
        },
        common::AgentOptions {
            env: vec![("PATH".into(), empty.path().to_string_lossy().into_owned())],
            ..Default::default()
        },
    );
    let mut health = serde_json::Value::Null;
    let degraded = wait_until(Duration::from_secs(15), || {
        health = agent.get("/health").json();
        health["components"]["docker"]
            .as_str()
            .is_some_and(|d| d.starts_with("degraded"))
    });
    assert!(degraded, "{health}");
    let detail = health["components"]["docker"].as_str().unwrap_or_default();
    assert!(
        detail.contains("docker.block_metadata") && detail.contains("install iptables"),
        "{health}"
    );
    let r = agent.post_json(
        "/api/v1/containers",
        &body(&scope.claim("a"), &[], "sleep 600"),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("block_metadata"), "{}", r.text());
    assert!(scope.docker_ids().is_empty(), "a container was created");
}
