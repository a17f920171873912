//! `GET /metrics` as a Prometheus server scrapes it: checked by `promtool check metrics`
//! (Debian's `prometheus` package), its values held to the fake NVML's, the token asked for
//! unless `prometheus.auth: false`, and a GPU a real managed container holds labelled with its
//! claim.

mod common;

use common::docker::{body, ready, wait_until, Scope};
use common::platform::PlatformServer;
use common::{in_ci, Agent, AgentOptions, HttpResponse, TOKEN};
use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn scrape(agent: &Agent) -> HttpResponse {
    let auth = format!("Bearer {TOKEN}");
    let response = agent.request("GET", "/metrics", &[("Authorization", &auth)], b"");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    response
}

/// The value of the one sample of `name` whose labels include every pair of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let have = parse_labels(rest);
            labels
                .iter()
                .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
                .then(|| value.parse().ok())?
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name}{labels:?} matches {} samples",
        matching.len()
    );
    matching.first().copied()
}

/// `a="x",b="y"` (values without escapes, as the fake's are) into a map.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (k, v) = pair.split_once("=\"")?;
            Some((k.to_string(), v.trim_end_matches('"').to_string()))
        })
        .collect()
}

/// Runs `promtool check metrics` on `text`; `None` when promtool is missing outside CI.
fn promtool(text: &str) -> Option<(i32, String)> {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                !in_ci(),
                "promtool is required in CI (Debian package prometheus): {e}"
            );
            eprintln!("SKIP promtool check: promtool not installed (apt install prometheus)");
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool runs");
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    Some((output.status.code().unwrap_or(-1), said))
}

/// What promtool's linter says about names kept for compatibility: dcgm-exporter's
/// (`modelName` label, counters without `_total`) and node_exporter's (`node_memory_MemTotal_bytes`).
/// Anything else it says is a failure.
fn compatibility_lint(line: &str) -> bool {
    let name = line.split(' ').next().unwrap_or("");
    (name.starts_with("DCGM_FI_DEV_")
        && (line.ends_with("label names should be written in 'snake_case' not 'camelCase'")
            || line.ends_with("counter metrics should have \"_total\" suffix")))
        || (name.starts_with("node_memory_Mem")
            && line.ends_with("metric names should be written in 'snake_case' not 'camelCase'"))
}

fn check_with_promtool(text: &str) {
    let Some((code, said)) = promtool(text) else {
        return;
    };
    // Exit 1 is a parse error; 3 lint problems only, each of which must be a known name.
    assert!(
        code == 0 || code == 3,
        "promtool exit {code}: {said}\n{text}"
    );
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !compatibility_lint(l))
        .collect();
    assert!(problems.is_empty(), "promtool: {problems:#?}\n{text}");
}

#[test]
fn the_exposition_passes_promtool_and_shows_the_fake_gpus_host_and_agent() {
    let agent = Agent::start(|_| {});
    // Some traffic for the request counters: one unauthenticated, one unknown route.
    assert_eq!(agent.request("GET", "/metrics", &[], b"").status, 401);
    assert_eq!(agent.get("/api/v1/nope").status, 404);
    assert_eq!(agent.get("/api/v1/metrics").status, 200);
    // CPU seconds come with the first host sample; a second one is a fraction of a second away.
    let mut text = String::new();
    let complete = wait_until(Duration::from_secs(5), || {
        text = scrape(&agent).text();
        text.contains("node_cpu_seconds_total{") && text.contains("DCGM_FI_DEV_GPU_TEMP{")
    });
    assert!(complete, "{text}");
    check_with_promtool(&text);

    let host = text
        .lines()
        .find_map(|l| l.split("Hostname=\"").nth(1))
        .and_then(|rest| rest.split('"').next())
        .expect("a Hostname label")
        .to_string();
    assert!(!host.is_empty());
    for i in 0..2u32 {
        let gpu = i.to_string();
        let uuid = format!("GPU-00000000-0000-4000-8000-{i:012x}");
        let device = format!("nvidia{i}");
        let labels = [
            ("gpu", gpu.as_str()),
            ("UUID", uuid.as_str()),
            ("device", device.as_str()),
            ("modelName", "NVIDIA Fake H100 80GB HBM3"),
            ("Hostname", host.as_str()),
        ];
        let v = |name| value(&text, name, &labels).unwrap_or_else(|| panic!("{name}\n{text}"));
        let n = f64::from(i);
        assert_eq!(v("DCGM_FI_DEV_GPU_TEMP"), 40.0 + n);
        assert_eq!(v("DCGM_FI_DEV_GPU_UTIL"), 10.0 * (n + 1.0));
        assert_eq!(v("DCGM_FI_DEV_MEM_COPY_UTIL"), 5.0 * (n + 1.0));
        assert_eq!(v("DCGM_FI_DEV_FB_USED"), 1024.0 * (n + 1.0));
        assert_eq!(v("DCGM_FI_DEV_FB_TOTAL"), 81559.0);
        // The fake's v2 memory call reserves 512 MiB: free = total - used - reserved.
        assert_eq!(
            v("DCGM_FI_DEV_FB_FREE"),
            81559.0 - 1024.0 * (n + 1.0) - 512.0
        );
        assert_eq!(v("DCGM_FI_DEV_POWER_USAGE"), 100.0 + n);
        assert!(v("DCGM_FI_DEV_SM_CLOCK") > 0.0);
        assert!(v("DCGM_FI_DEV_MEM_CLOCK") > 0.0);
        assert_eq!(
            value(
                &text,
                "DCGM_FI_DEV_GPU_TEMP",
                &[("gpu", &gpu), ("claim_id", "x")]
            ),
            None,
            "no claim holds GPU {i}"
        );
        assert_eq!(
            value(
                &text,
                "utopia_agent_gpu_health",
                &[("gpu", &gpu), ("state", "healthy")]
            ),
            Some(1.0)
        );
    }
    assert_eq!(
        value(
            &text,
            "utopia_agent_gpu_driver_info",
            &[("driver_version", "550.54.15")]
        ),
        Some(1.0)
    );

    // Host series with node_exporter's names.
    let total = value(&text, "node_memory_MemTotal_bytes", &[]).expect("MemTotal");
    let available = value(&text, "node_memory_MemAvailable_bytes", &[]).expect("MemAvailable");
    assert!(total > 0.0 && available <= total, "{text}");
    assert!(value(&text, "node_load1", &[]).is_some());
    assert!(
        value(
            &text,
            "node_cpu_seconds_total",
            &[("cpu", "0"), ("mode", "idle")]
        )
        .unwrap()
            > 0.0
    );

    // The agent's own series.
    assert_eq!(
        value(
            &text,
            "utopia_agent_api_requests_total",
            &[("route", "/metrics"), ("code", "401")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "utopia_agent_api_requests_total",
            &[("route", "unmatched"), ("code", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "utopia_agent_api_requests_total",
            &[("route", "/api/v1/metrics"), ("code", "200")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "utopia_agent_platform_registered", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "utopia_agent_nvml_errors_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &text,
            "utopia_agent_component_status",
            &[("component", "gpu"), ("status", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "utopia_agent_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
}

#[test]
fn failing_nvml_queries_are_counted() {
    let knob_dir = tempfile::tempdir().expect("temp dir");
    let knobs = knob_dir.path().join("knobs");
    common::fake_nvml::write_knobs(&knobs, "gpu.1.fail = temperature\n");
    let agent = Agent::start_with(
        |_| {},
        AgentOptions {
            env: vec![(
                "FAKE_NVML_KNOB_FILE".into(),
                knobs.to_string_lossy().into_owned(),
            )],
            ..AgentOptions::default()
        },
    );
    let mut text = String::new();
    let counted = wait_until(Duration::from_secs(5), || {
        text = scrape(&agent).text();
        value(&text, "utopia_agent_nvml_errors_total", &[]).is_some_and(|n| n >= 2.0)
    });
    assert!(counted, "{text}");
    // The failing GPU has no temperature series; the other still has.
    assert_eq!(value(&text, "DCGM_FI_DEV_GPU_TEMP", &[("gpu", "1")]), None);
    assert_eq!(
        value(&text, "DCGM_FI_DEV_GPU_TEMP", &[("gpu", "0")]),
        Some(40.0)
    );
    check_with_promtool(&text);
}

#[test]
fn the_token_is_asked_for_unless_prometheus_auth_is_off() {
    let agent = Agent::start(|_| {});
    let denied = agent.request("GET", "/metrics", &[], b"");
    assert_eq!(denied.status, 401);
    assert_eq!(denied.header("WWW-Authenticate"), Some("Bearer"));
    let wrong = agent.request(
        "GET",
        "/metrics",
        &[("Authorization", "Bearer wrong-token-0123456789")],
        b"",
    );
    assert_eq!(wrong.status, 401);

    let open = Agent::start(|c| c.prometheus.auth = false);
    let scraped = open.request("GET", "/metrics", &[], b"");
    assert_eq!(scraped.status, 200, "{}", scraped.text());
    assert!(scraped.text().contains("DCGM_FI_DEV_GPU_TEMP{"));
    // The rest of the API still wants the token.
    assert_eq!(open.request("GET", "/api/v1/metrics", &[], b"").status, 401);
    assert_eq!(open.request("POST", "/metrics", &[], b"").status, 405);
}

#[test]
fn a_gpu_held_by_a_managed_container_carries_its_claim_and_docker_and_heartbeats_are_counted() {
    if !ready("prometheus_claim_labels") {
        return;
    }
    let platform = PlatformServer::start();
    let scope = Scope::new();
    let agent = scope.agent_beating_to(&platform, "node-prom", AgentOptions::default());
    let claim = scope.claim("prom");
    let created = agent.create(&body(&claim, &[1], "sleep 600"));
    let id = created["id"].as_str().expect("container id").to_string();

    let mut text = String::new();
    let labelled = wait_until(Duration::from_secs(10), || {
        text = scrape(&agent).text();
        value(
            &text,
            "DCGM_FI_DEV_GPU_TEMP",
            &[("gpu", "1"), ("claim_id", &claim), ("container", &id)],
        )
        .is_some()
            && value(
                &text,
                "utopia_agent_heartbeats_total",
                &[("result", "accepted")],
            )
            .is_some_and(|n| n >= 1.0)
            && value(
                &text,
                "utopia_agent_claim_memory_bytes",
                &[("claim_id", &claim)],
            )
            .is_some()
    });
    assert!(labelled, "{text}\nlog:\n{}", agent.log());
    assert_eq!(
        value(
            &text,
            "DCGM_FI_DEV_GPU_TEMP",
            &[("gpu", "1"), ("claim_id", &claim), ("container", &id)]
        ),
        Some(41.0)
    );
    assert_eq!(
        value(&text, "utopia_agent_platform_registered", &[]),
        Some(1.0)
    );
    assert!(value(&text, "utopia_agent_last_heartbeat_timestamp_seconds", &[]).is_some());
    // `docker run` was timed.
    let runs = value(
        &text,
        "utopia_agent_docker_command_duration_seconds_count",
        &[("command", "run")],
    );
    assert!(runs.is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(
        value(&text, "utopia_agent_containers", &[("state", "running")]),
        Some(1.0)
    );
    check_with_promtool(&text);
}
