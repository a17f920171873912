//! The real binary as systemd runs it. Notify: the test binds the `NOTIFY_SOCKET` datagram
//! socket (a path, or an abstract name) as systemd would, starts the agent with it, and reads
//! `READY=1` (only once the API answers), `STATUS=` lines, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC`, and `STOPPING=1` at SIGTERM. Journal: with `JOURNAL_STREAM` naming its
//! stderr, log lines carry `<N>` priorities and no timestamps; elsewhere a fixed-width stamp.

mod common;

use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The agent binary with `config` and exactly these notify variables; stdout and stderr go to
/// `dir/agent.log`.
fn spawn(
    dir: &Path,
    edit: impl FnOnce(&mut utopia_node_agent::config::Config),
    env: &[(&str, &str)],
) -> (Child, std::net::SocketAddr) {
    let mut config = common::test_config(dir);
    edit(&mut config);
    let path = common::write_config(dir, &config);
    // Truncated, not replaced, when it exists: a test may have named its inode in JOURNAL_STREAM.
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut command = Command::new(common::agent_binary());
    command
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (key, _) in std::env::vars() {
        let proxy = key.to_ascii_lowercase().ends_with("_proxy");
        if key.starts_with("PHOENIX_") || key.starts_with("FAKE_NVML_") || proxy {
            command.env_remove(key);
        }
    }
    for var in [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
    ] {
        command.env_remove(var);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn().expect("start the agent");
    (child, config.agent_api.listen_address.parse().unwrap())
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

/// The next datagram within `timeout`, or None.
fn next(socket: &UnixDatagram, timeout: Duration) -> Option<String> {
    socket.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    socket
        .recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Reads datagrams until one satisfies `want` (returned) or 15 s pass; the others go to `seen`.
fn wait_for(
    socket: &UnixDatagram,
    seen: &mut Vec<String>,
    dir: &Path,
    want: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Some(message) = next(socket, Duration::from_millis(200)) {
            if want(&message) {
                return message;
            }
            seen.push(message);
        }
    }
    panic!("message not received; got {seen:?}; log:\n{}", log(dir));
}

fn terminate(child: &mut Child, dir: &Path) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent did not stop; log:\n{}", log(dir));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ready_after_the_api_listens_then_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let (mut child, addr) = spawn(
        dir.path(),
        |_| {},
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    let ready = wait_for(&socket, &mut seen, dir.path(), |m| m.starts_with("READY=1"));
    // The API answers the moment READY=1 is out (a service ordered after this one may call it).
    let health = common::try_request(addr, "GET", "/health", &[], b"").expect("API up at READY");
    assert_eq!(health.status, 200);
    assert_eq!(
        ready,
        format!("READY=1\nSTATUS=ready; API on http://{addr}")
    );
    assert_eq!(seen, ["STATUS=starting"], "before READY=1");

    // The components' states (the platform is not configured here), then the watchdog at half
    // of WATCHDOG_USEC: about 5 in a second.
    let mut seen = Vec::new();
    let status = wait_for(&socket, &mut seen, dir.path(), |m| m.starts_with("STATUS="));
    assert!(status.contains("platform: disabled"), "{status}");
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1000) {
        if next(&socket, Duration::from_millis(100)).as_deref() == Some("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        (3..=8).contains(&pings),
        "{pings} WATCHDOG=1 in 1 s; log:\n{}",
        log(dir.path())
    );

    let status = terminate(&mut child, dir.path());
    let mut seen = Vec::new();
    let stopping = wait_for(&socket, &mut seen, dir.path(), |m| {
        m.starts_with("STOPPING=1")
    });
    assert_eq!(stopping, "STOPPING=1\nSTATUS=stopping");
    assert!(status.success(), "{status}; log:\n{}", log(dir.path()));
    assert!(log(dir.path()).contains("systemd watchdog: 400 ms, petted every 200 ms"));
}

#[test]
fn an_abstract_socket_gets_ready_and_no_watchdog_unless_asked() {
    use std::os::linux::net::SocketAddrExt;
    let dir = tempfile::tempdir().unwrap();
    let name = format!("utopia-notify-test-{}", std::process::id());
    let socket =
        UnixDatagram::bind_addr(&UnixAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let notify = format!("@{name}");
    let (mut child, _) = spawn(dir.path(), |_| {}, &[("NOTIFY_SOCKET", &notify)]);
    let mut seen = Vec::new();
    wait_for(&socket, &mut seen, dir.path(), |m| m.starts_with("READY=1"));
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        assert_ne!(
            next(&socket, Duration::from_millis(100)).as_deref(),
            Some("WATCHDOG=1")
        );
    }
    assert!(terminate(&mut child, dir.path()).success());
}

#[test]
fn the_docker_cli_does_not_inherit_the_notify_socket() {
    // A docker stand-in that records its environment (and fails: docker is unavailable).
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("docker-env");
    let fake = dir.path().join("docker");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\nenv >> '{}'\nexit 1\n", record.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let docker = fake.to_string_lossy().into_owned();
    let (mut child, _) = spawn(
        dir.path(),
        |config| config.docker.binary = docker.into(),
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
            ("WATCHDOG_PID", &std::process::id().to_string()),
        ],
    );
    let mut seen = Vec::new();
    wait_for(&socket, &mut seen, dir.path(), |m| m.starts_with("READY=1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !record.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // WATCHDOG_PID named another process (this test): the agent does not pet for it.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(600) {
        assert_ne!(
            next(&socket, Duration::from_millis(100)).as_deref(),
            Some("WATCHDOG=1")
        );
    }
    assert!(terminate(&mut child, dir.path()).success());
    let env = std::fs::read_to_string(&record).expect("the agent ran docker");
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        assert!(!env.contains(var), "docker inherited {var}:\n{env}");
    }
}

/// `DEV:INODE` of a file, as systemd writes JOURNAL_STREAM for the service's stderr.
fn journal_stream_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

/// Starts an agent that warns (its docker CLI is missing), lets it log, stops it; its log.
fn run_and_stop(dir: &Path, env: &[(&str, &str)]) -> String {
    let (mut child, addr) = spawn(
        dir,
        |config| config.docker.binary = "/nonexistent/docker".into(),
        env,
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while common::try_request(addr, "GET", "/health", &[], b"").is_err() {
        assert!(Instant::now() < deadline, "no API; log:\n{}", log(dir));
        std::thread::sleep(Duration::from_millis(25));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log(dir).contains("docker") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(terminate(&mut child, dir).success(), "{}", log(dir));
    log(dir)
}

/// Whether `line` starts with `2026-12-03T08:34:12.926Z ` (24 characters and a space).
fn starts_with_fixed_stamp(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 25
        && b[..24].iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
        && b[24] == b' '
}

#[test]
fn under_journald_lines_carry_priorities_and_no_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.log");
    std::fs::write(&path, "").unwrap();
    let stream = journal_stream_of(&path);
    let text = run_and_stop(dir.path(), &[("JOURNAL_STREAM", &stream)]);
    assert!(text.lines().count() >= 3, "{text}");
    for line in text.lines() {
        let priority = line.get(..3).unwrap_or_default();
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "no priority prefix: {line:?}"
        );
        assert!(
            !starts_with_fixed_stamp(&line[3..]),
            "a timestamp: {line:?}"
        );
        assert!(
            !line.contains("[INFO]") && !line.contains("[WARN]"),
            "{line:?}"
        );
    }
    assert!(text.contains("<6>utopia-node-agent "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("<4>") && l.contains("docker")),
        "the missing docker CLI is a warning: {text}"
    );
}

#[test]
fn elsewhere_lines_start_with_a_fixed_width_timestamp() {
    // No JOURNAL_STREAM; then one that names another stream (stderr was redirected).
    for journal in [None, Some("1:1")] {
        let dir = tempfile::tempdir().unwrap();
        let env: Vec<(&str, &str)> = journal.map(|j| ("JOURNAL_STREAM", j)).into_iter().collect();
        let text = run_and_stop(dir.path(), &env);
        assert!(text.lines().count() >= 3, "{text}");
        for line in text.lines() {
            assert!(starts_with_fixed_stamp(line), "{journal:?}: {line:?}");
            assert!(!line.starts_with('<'), "{line:?}");
        }
        assert!(
            text.lines()
                .any(|l| l[25..].starts_with("[WARN] ") && l.contains("docker")),
            "{text}"
        );
    }
}
