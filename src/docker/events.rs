//! The docker events watcher thread: runs `docker events --format '{{json .}}' --filter
//! type=container --filter label=<managed label>` and forwards each container event to the
//! [`DockerRunner`](crate::docker::runner), so a container that dies, is killed or removed
//! behind the agent's back is seen within moments rather than at the next full reconcile.
//!
//! - Owns: the `docker events` child process and the thread reading its output.
//! - Sends: [`ContainerEvent`]s on the channel it is given (never blocks on it: when the runner
//!   is behind, an event is dropped and the periodic reconcile repairs the view).
//! - Reports: when the stream ends it sends a [`STREAM_ENDED`] event, and the runner
//!   reconciles at once (a dead engine shows in `/health` now, not a reconcile interval later).
//! - Restarts: when the child exits (engine restarted, unreachable), it starts again after a
//!   backoff (1 s doubling to 30 s, back to 1 s once a child has run for 5 s) with `--since` the
//!   last event seen, so nothing in between is lost.
//! - Logs: an outage once when it starts (with docker's message), once when the stream is back,
//!   and in between a reminder at most every 5 minutes ([`OutageLog`]): a docker that is down
//!   for an hour costs about 14 lines, not 360.
//! - Stops: on shutdown it kills the child's process group, reaps the child and joins its
//!   reader thread (the child is a [`Supervised`] one: see [`crate::child`]).

use crate::backoff::Backoff;
use crate::child::{self, Keep, Supervised};
use crate::component::{self, StartError};
use crate::config::ManagedLabel;
use crate::shutdown::Shutdown;
use crossbeam_channel::{select, Sender};
use serde::Deserialize;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the watcher restarts `docker events` and reports an outage.
#[derive(Debug, Clone, Copy)]
struct Pacing {
    /// First restart delay; it doubles per failure up to `cap`.
    initial: Duration,
    cap: Duration,
    /// A child that runs this long is a working stream: the outage (if any) is over.
    healthy_after: Duration,
    /// Longest silence in the log while the outage lasts.
    reminder: Duration,
}

const PACING: Pacing = Pacing {
    initial: Duration::from_secs(1),
    cap: Duration::from_secs(30),
    healthy_after: Duration::from_secs(5),
    reminder: Duration::from_secs(300),
};

/// What the log says about an outage of the `docker events` stream: its start, a reminder at
/// most every `reminder`, and its end; every other failed attempt is a debug line.
#[derive(Debug)]
pub struct OutageLog {
    reminder: Duration,
    outage: Option<Outage>,
}

#[derive(Debug)]
struct Outage {
    since: Instant,
    last_report: Instant,
    attempts: u64,
}

impl OutageLog {
    pub fn new(reminder: Duration) -> OutageLog {
        OutageLog {
            reminder,
            outage: None,
        }
    }

    /// An attempt failed (`problem` says how); the warning to log, if this one deserves one.
    pub fn failed(&mut self, now: Instant, problem: &str, retry_in: Duration) -> Option<String> {
        match &mut self.outage {
            None => {
                self.outage = Some(Outage {
                    since: now,
                    last_report: now,
                    attempts: 1,
                });
                Some(format!(
                    "docker events stream lost: {problem}; retrying in {} (backing off up to \
                     {}s; the next report comes when it is back, or in {} minutes)",
                    secs(retry_in),
                    PACING.cap.as_secs(),
                    self.reminder.as_secs() / 60
                ))
            }
            Some(outage) => {
                outage.attempts += 1;
                if now.duration_since(outage.last_report) < self.reminder {
                    return None;
                }
                outage.last_report = now;
                Some(format!(
                    "docker events stream still down after {} ({} attempts): {problem}",
                    minutes(now.duration_since(outage.since)),
                    outage.attempts
                ))
            }
        }
    }

    /// A child has been running long enough: the line to log if this ends an outage.
    pub fn healthy(&mut self, now: Instant) -> Option<String> {
        let outage = self.outage.take()?;
        Some(format!(
            "docker events stream is back after {} ({} failed attempts)",
            minutes(now.duration_since(outage.since)),
            outage.attempts
        ))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `2m05s`, or `12s` under a minute.
fn minutes(d: Duration) -> String {
    let total = d.as_secs();
    if total < 60 {
        format!("{total}s")
    } else {
        format!("{}m{:02}s", total / 60, total % 60)
    }
}

/// The `action` of the [`ContainerEvent`] (with an empty id) the watcher sends when the
/// `docker events` stream ended: a sign the engine may be gone, which the runner checks at once.
pub const STREAM_ENDED: &str = "utopia:events-stream-ended";

/// A state change of one managed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub id: String,
    /// docker's action: create, start, die, stop, kill, oom, pause, unpause, destroy, ...
    pub action: String,
    /// When it happened, in nanoseconds since the epoch.
    pub time_nano: i64,
    /// The container's name (docker's `name` attribute); empty when the event has none.
    pub name: String,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(rename = "Action", default)]
    action: String,
    #[serde(rename = "Actor", default)]
    actor: Option<RawActor>,
    #[serde(default)]
    id: String,
    #[serde(rename = "timeNano", default)]
    time_nano: i64,
}

#[derive(Deserialize)]
struct RawActor {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Attributes", default)]
    attributes: Option<RawAttributes>,
}

#[derive(Deserialize)]
struct RawAttributes {
    #[serde(default)]
    name: String,
}

/// Parses one line of `docker events --format '{{json .}}'`; `None` for anything that is not a
/// container event.
pub fn parse_event(line: &str) -> Option<ContainerEvent> {
    let raw: RawEvent = serde_json::from_str(line).ok()?;
    if raw.kind != "container" {
        return None;
    }
    let (actor_id, name) = raw
        .actor
        .map(|a| (a.id, a.attributes.map(|at| at.name).unwrap_or_default()))
        .unwrap_or_default();
    let id = Some(actor_id).filter(|id| !id.is_empty()).unwrap_or(raw.id);
    if id.is_empty() || raw.action.is_empty() {
        return None;
    }
    Some(ContainerEvent {
        id,
        action: raw.action,
        time_nano: raw.time_nano,
        name,
    })
}

/// `--since` value for a time in nanoseconds since the epoch.
pub fn since_arg(time_nano: i64) -> String {
    format!(
        "{}.{:09}",
        time_nano.div_euclid(1_000_000_000),
        time_nano.rem_euclid(1_000_000_000)
    )
}

/// Now, in nanoseconds since the epoch (the watcher's first `--since`).
pub fn now_nano() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Starts the watcher thread, reporting events from `since_nano` on (taken before the runner's
/// start-up rebuild, so a change between the rebuild and the watcher's start is not missed).
pub fn start(
    binary: PathBuf,
    config_dir: PathBuf,
    managed_label: ManagedLabel,
    since_nano: i64,
    events: Sender<Box<ContainerEvent>>,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    component::spawn("docker-events", move || {
        watch(
            &binary,
            Some(&config_dir),
            &managed_label,
            since_nano,
            &events,
            &shutdown,
            PACING,
        )
    })
}

fn watch(
    binary: &PathBuf,
    config_dir: Option<&PathBuf>,
    label: &ManagedLabel,
    since_nano: i64,
    events: &Sender<Box<ContainerEvent>>,
    shutdown: &Shutdown,
    pacing: Pacing,
) {
    let mut since = since_nano;
    let mut backoff = Backoff::exact(pacing.initial, pacing.cap);
    let mut outage = OutageLog::new(pacing.reminder);
    let stamp = crate::notify::watch("docker-events");
    let ticker = crossbeam_channel::tick(crate::notify::TICK);
    loop {
        let filter = format!("label={label}");
        let mut command = Command::new(binary);
        if let Some(dir) = config_dir {
            command.env("DOCKER_CONFIG", dir);
        }
        command
            .args([
                "events",
                "--format",
                "{{json .}}",
                "--filter",
                "type=container",
                "--filter",
                &filter,
                "--since",
                &since_arg(since),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = match Supervised::spawn(command) {
            Ok(child) => child,
            Err(e) => {
                let delay = backoff.next_delay();
                let problem = format!("cannot start `{}`: {e}", binary.display());
                match outage.failed(Instant::now(), &problem, delay) {
                    Some(line) => log::warn!("{line}"),
                    None => log::debug!("docker events: {problem}"),
                }
                if stamp.wait(shutdown, delay) {
                    return;
                }
                continue;
            }
        };
        let stderr = child
            .take_stderr()
            .map(|s| child::capture(s, 4096, Keep::Head));
        let (lines_tx, lines) = crossbeam_channel::bounded::<String>(256);
        let reader = child
            .take_stdout()
            .and_then(|stdout| child::stream_lines(stdout, "docker-events-reader", lines_tx).ok());

        let mut healthy_timer = crossbeam_channel::after(pacing.healthy_after);
        let stopping = loop {
            stamp.tick();
            select! {
                recv(ticker) -> _ => {}
                recv(healthy_timer) -> _ => {
                    backoff.reset();
                    if let Some(line) = outage.healthy(Instant::now()) {
                        log::info!("{line}");
                    }
                    healthy_timer = crossbeam_channel::never();
                }
                recv(lines) -> line => match line {
                    Ok(line) => {
                        if let Some(event) = parse_event(&line) {
                            since = since.max(event.time_nano);
                            log::debug!(
                                "docker event: {} {}",
                                event.action,
                                crate::docker::ledger::short_id(&event.id)
                            );
                            if events.try_send(Box::new(event)).is_err() {
                                log::debug!("runner busy; event dropped (reconcile repairs)");
                            }
                        }
                    }
                    Err(_) => break false,
                },
                recv(shutdown.receiver()) -> _ => break true,
            }
        };
        // The whole group: a wrapper's forked CLI would otherwise keep the reader blocked.
        let status = child.kill();
        drop(lines);
        if let Some(reader) = reader {
            let _ = reader.join();
        }
        if stopping {
            return;
        }
        // The engine may have died: the runner re-checks docker at once rather than at its next
        // reconcile (so /health says so now).
        let ended = ContainerEvent {
            id: String::new(),
            action: STREAM_ENDED.to_string(),
            time_nano: now_nano(),
            name: String::new(),
        };
        // A full channel drops it: the runner is busy, and its periodic reconcile still runs.
        let _ = events.try_send(Box::new(ended));
        let message = stderr
            .map(|rx| child::collect(&rx, Duration::from_secs(1)).text())
            .unwrap_or_default();
        let delay = backoff.next_delay();
        let problem = format!(
            "`docker events` exited ({}){}",
            status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string()),
            if message.is_empty() {
                String::new()
            } else {
                format!(": {}", message.trim())
            },
        );
        match outage.failed(Instant::now(), &problem, delay) {
            Some(line) => log::warn!("{line}"),
            None => log::debug!("{problem}; restarting in {}", secs(delay)),
        }
        if stamp.wait(shutdown, delay) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_container_events() {
        let line = r#"{"status":"die","id":"abc","from":"busybox","Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"exitCode":"137","name":"utopia-c1"}},"scope":"local","time":1795944011,"timeNano":1795944011123456789}"#;
        assert_eq!(
            parse_event(line),
            Some(ContainerEvent {
                id: "abc".into(),
                action: "die".into(),
                time_nano: 1_795_944_011_123_456_789,
                name: "utopia-c1".into(),
            })
        );
        assert_eq!(
            parse_event(r#"{"Type":"network","Action":"connect","Actor":{"ID":"n"}}"#),
            None
        );
        assert_eq!(parse_event("not json"), None);
        assert_eq!(since_arg(1_795_944_011_000_000_001), "1795944011.000000001");
    }

    /// Starts the watcher on a fake `docker` in `dir` that runs `script`.
    fn watch_fake(
        dir: &std::path::Path,
        script: &str,
    ) -> (
        crate::shutdown::ShutdownTrigger,
        crossbeam_channel::Receiver<Box<ContainerEvent>>,
        JoinHandle<()>,
    ) {
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.join("docker");
        std::fs::write(&fake, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        let (tx, rx) = crossbeam_channel::bounded(16);
        let label = ManagedLabel::parse("a=b").unwrap();
        let thread = start(
            fake,
            dir.join("docker-config"),
            label,
            now_nano(),
            tx,
            shutdown,
        )
        .unwrap();
        (trigger, rx, thread)
    }

    #[test]
    fn an_hour_of_outage_is_a_handful_of_lines() {
        // docker down for an hour, the watcher retrying on its backoff: the log gets the start,
        // a reminder every 5 minutes and the end, not a line per attempt.
        let mut log = OutageLog::new(PACING.reminder);
        let start = Instant::now();
        let mut backoff = Backoff::exact(PACING.initial, PACING.cap);
        let mut at = Duration::ZERO;
        let mut lines = Vec::new();
        let mut attempts = 0;
        while at < Duration::from_secs(3600) {
            let delay = backoff.next_delay();
            lines.extend(log.failed(start + at, "Cannot connect to the Docker daemon", delay));
            attempts += 1;
            at += delay;
        }
        assert!(attempts > 100, "{attempts}");
        assert!(lines[0].starts_with("docker events stream lost: Cannot connect"));
        assert!(lines[1].contains("still down after 5m"), "{lines:?}");
        assert!((12..=13).contains(&lines.len()), "{lines:#?}");
        let end = log.healthy(start + at).unwrap();
        assert!(
            end.contains("is back after 60m") || end.contains("is back after 59m"),
            "{end}"
        );
        assert!(
            end.contains(&format!("{attempts} failed attempts")),
            "{end}"
        );
        // A working stream says nothing; the next outage is reported at once again.
        assert_eq!(log.healthy(start + at), None);
        assert!(log.failed(start + at, "x", Duration::ZERO).is_some());
        assert_eq!(log.failed(start + at, "x", Duration::ZERO), None);
    }

    #[test]
    fn the_backoff_restarts_from_the_start_once_the_stream_works() {
        // A fake docker that fails 3 times, then runs: the watcher keeps retrying, and once a
        // child ran for `healthy_after` the next failure is retried after `initial` again.
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let script = format!(
            "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
             if [ $n -le 3 ] || [ $n -ge 5 ]; then echo down >&2; exit 1; fi\nsleep 0.5",
            c = count.display()
        );
        use std::os::unix::fs::PermissionsExt;
        let fake = dir.path().join("docker");
        std::fs::write(&fake, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (trigger, shutdown) = crate::shutdown::channel();
        let (tx, _rx) = crossbeam_channel::bounded(16);
        let label = ManagedLabel::parse("a=b").unwrap();
        let pacing = Pacing {
            initial: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            healthy_after: Duration::from_millis(200),
            reminder: Duration::from_secs(60),
        };
        let thread = std::thread::spawn(move || {
            watch(&fake, None, &label, now_nano(), &tx, &shutdown, pacing)
        });
        let read = || {
            std::fs::read_to_string(&count)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while read() < 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let fifth = Instant::now();
        // Without the reset the sixth attempt waits at least 800 ms (100·2³ after four
        // failures); with it, 100 ms. The margin leaves room for a loaded machine's fork.
        while read() < 6 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(read() >= 6, "the watcher stopped retrying");
        assert!(
            fifth.elapsed() < Duration::from_millis(700),
            "{:?}",
            fifth.elapsed()
        );
        trigger.fire();
        thread.join().unwrap();
    }

    #[test]
    fn restarts_the_child_and_stops_on_shutdown() {
        // A fake `docker` that prints one event and exits: the watcher forwards it, then
        // restarts the child (a second copy of the event arrives) until shutdown. Each end of
        // the stream is reported, for the runner to check docker at once.
        let dir = tempfile::tempdir().unwrap();
        let (trigger, rx, thread) = watch_fake(
            dir.path(),
            "echo '{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{\"ID\":\"c1\"},\"timeNano\":5}'",
        );
        for _ in 0..2 {
            let event = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!((event.id.as_str(), event.action.as_str()), ("c1", "die"));
            let ended = rx.recv_timeout(Duration::from_secs(5)).unwrap();
            assert_eq!(
                (ended.id.as_str(), ended.action.as_str()),
                ("", STREAM_ENDED)
            );
        }
        trigger.fire();
        let started = Instant::now();
        thread.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn shutdown_ends_a_wrapper_that_forked_its_docker() {
        // A `docker` wrapper whose child (`sleep`, standing for the real CLI) holds the pipes:
        // killing the shell alone would leave the reader blocked and the thread unjoinable.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let (trigger, _rx, thread) = watch_fake(
            dir.path(),
            &format!("sleep 20 & echo $! > {}\nwait", pid_file.display()),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(50));
        let sleeper: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        trigger.fire();
        let started = Instant::now();
        while !thread.is_finished() && started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(thread.is_finished(), "the watcher did not stop");
        thread.join().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{sleeper}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
        assert!(
            stat.is_empty() || state.starts_with('Z'),
            "the wrapper's child outlived the watcher: {stat}"
        );
    }
}
