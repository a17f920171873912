//! Per-component liveness under the systemd watchdog: a component thread blocked in a call (the
//! GPU sampler in an NVML call the fake library makes slow, `FAKE_NVML_SLOW_MS`) goes silent
//! past its deadline; the agent then stops sending `WATCHDOG=1` (so systemd would restart it),
//! says so in `STATUS=`, and its log names the thread. With NVML answering, the petting goes on.

mod common;

use common::{test_config, write_config, Agent, AgentOptions};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn start(slow_ms: Option<u64>) -> (Agent, UnixDatagram) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = test_config(dir.path());
    let path = write_config(dir.path(), &config);
    let notify = dir.path().join("notify");
    let socket = UnixDatagram::bind(&notify).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut env = vec![
        (
            "NOTIFY_SOCKET".to_string(),
            notify.to_string_lossy().into_owned(),
        ),
        // Petted every 500 ms; a component silent for 2 s (at least 5 s) is stuck.
        ("WATCHDOG_USEC".to_string(), "1000000".to_string()),
    ];
    if let Some(ms) = slow_ms {
        env.push(("FAKE_NVML_SLOW_MS".to_string(), ms.to_string()));
    }
    let options = AgentOptions {
        env,
        wait_for_gpu: false,
    };
    (Agent::spawn(dir, path, &config, options), socket)
}

/// The messages received within `window`.
fn messages(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let end = Instant::now() + window;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    seen
}

fn pings(seen: &[String]) -> usize {
    seen.iter().filter(|m| m.as_str() == "WATCHDOG=1").count()
}

#[test]
fn a_component_stuck_in_nvml_stops_the_watchdog_and_is_named() {
    // Every per-GPU NVML call takes 20 s: the sampler's first reading never ends in this test.
    let (agent, socket) = start(Some(20_000));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stuck_status = None;
    while Instant::now() < deadline && stuck_status.is_none() {
        stuck_status = messages(&socket, Duration::from_millis(200))
            .into_iter()
            .find(|m| m.starts_with("STATUS=stuck: "));
    }
    let status =
        stuck_status.unwrap_or_else(|| panic!("no stuck STATUS in 20 s; log:\n{}", agent.log()));
    assert!(status.contains("gpu-sampler"), "{status}");
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("stuck: "))
        .unwrap_or_else(|| panic!("the log names no stuck thread:\n{log}"));
    assert!(
        line.contains("gpu-sampler (silent for ") && line.contains("deadline 5000 ms"),
        "{line}"
    );
    assert!(line.contains("not petting the systemd watchdog"), "{line}");
    // No WATCHDOG=1 while it stays stuck; the API itself still answers.
    let seen = messages(&socket, Duration::from_secs(2));
    assert_eq!(pings(&seen), 0, "{seen:?}");
    assert_eq!(agent.request("GET", "/health", &[], b"").status, 200);
}

#[test]
fn every_component_ticks_so_the_watchdog_keeps_being_petted() {
    let (agent, socket) = start(None);
    // Past the 5 s deadline: every component thread (samplers, docker runner and events,
    // Xid thread) must have ticked meanwhile.
    let seen = messages(&socket, Duration::from_secs(7));
    let late = &seen[seen.len() / 2..];
    assert!(
        pings(late) >= 4,
        "{} WATCHDOG=1 in the last 3.5 s: {late:?}\nlog:\n{}",
        pings(late),
        agent.log()
    );
    assert!(!agent.log().contains("stuck: "), "{}", agent.log());
}
