//! The docker CLI as the agent runs it: [`DockerCli::run`] runs one docker command as a
//! supervised child (see [`crate::child`]: deadline, shutdown, process group killed and reaped)
//! and turns a failure into a [`DockerError`] that carries docker's own message, classified
//! (engine unreachable, no such container) in one place.

use crate::child::{self, Keep, RunError, RunLimits};
use crate::shutdown::Shutdown;
use crate::state::Counters;
use std::fmt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Added to a whole create's or action's deadline for the runner's own queueing.
const CALL_SLACK: Duration = Duration::from_secs(5);

/// The docker deadlines (`docker.command_timeout_secs`, `pull_timeout_secs`,
/// `stop_timeout_secs`), shared by every worker and the API's waits, and changed in place by a
/// config reload: a command started after the change gets the new deadline.
#[derive(Debug)]
pub struct DockerTimeouts {
    command_ms: AtomicU64,
    pull_ms: AtomicU64,
    stop_ms: AtomicU64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl DockerTimeouts {
    pub fn new(command: Duration, pull: Duration, stop: Duration) -> Arc<DockerTimeouts> {
        let timeouts = DockerTimeouts {
            command_ms: AtomicU64::new(0),
            pull_ms: AtomicU64::new(0),
            stop_ms: AtomicU64::new(0),
        };
        timeouts.set(command, pull, stop);
        Arc::new(timeouts)
    }

    /// Replaces the three deadlines.
    pub fn set(&self, command: Duration, pull: Duration, stop: Duration) {
        self.command_ms.store(millis(command), Ordering::Relaxed);
        self.pull_ms.store(millis(pull), Ordering::Relaxed);
        self.stop_ms.store(millis(stop), Ordering::Relaxed);
    }

    /// Deadline of every short command.
    pub fn command(&self) -> Duration {
        Duration::from_millis(self.command_ms.load(Ordering::Relaxed))
    }

    /// Deadline of an image pull.
    pub fn pull(&self) -> Duration {
        Duration::from_millis(self.pull_ms.load(Ordering::Relaxed))
    }

    /// `docker stop -t` grace period.
    pub fn stop(&self) -> Duration {
        Duration::from_millis(self.stop_ms.load(Ordering::Relaxed))
    }

    /// How long a create may take in all (pull, run, inspect).
    pub fn create_total(&self) -> Duration {
        self.pull() + self.command() * 4 + CALL_SLACK
    }

    /// How long a stop, start, restart, delete or logs may take in all.
    pub fn action_total(&self) -> Duration {
        self.command() * 3 + self.stop() + CALL_SLACK
    }
}

/// Why a docker command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerError {
    /// The docker binary could not be started.
    Spawn { binary: PathBuf, message: String },
    /// The CLI could not reach the engine.
    Unreachable { message: String },
    /// The command ran past its deadline and was killed.
    Timeout { command: String, after: Duration },
    /// The agent is shutting down; the command was killed.
    Cancelled { command: String },
    /// The command exited non-zero; `stderr` is docker's message.
    Failed {
        command: String,
        code: Option<i32>,
        stderr: String,
    },
    /// The command succeeded but printed something the agent cannot read.
    BadOutput { command: String, message: String },
}

impl DockerError {
    /// True when docker itself is not usable (binary missing, engine unreachable).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DockerError::Spawn { .. } | DockerError::Unreachable { .. }
        )
    }

    /// Docker's message of a failed command (empty for other errors).
    pub fn stderr(&self) -> &str {
        match self {
            DockerError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }

    pub fn is_no_such_container(&self) -> bool {
        let stderr = self.stderr();
        stderr.contains("No such container") || stderr.contains("no such container")
    }

    /// `docker image inspect`: the image is not there (yet).
    pub fn is_no_such_image(&self) -> bool {
        self.stderr().to_ascii_lowercase().contains("no such image")
    }

    /// Why a `docker pull` failed, read from docker's message (which the agent never repeats:
    /// it may quote what a registry answered).
    pub fn pull_failure(&self) -> PullFailure {
        let lower = self.stderr().to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        if has(&["no space left on device"]) {
            PullFailure::NoSpace
        } else if has(&[
            "pull access denied",
            "unauthorized",
            "authentication required",
            "requested access to the resource is denied",
            "no basic auth credentials",
            "denied:",
        ]) {
            PullFailure::AuthRequired
        } else if has(&["toomanyrequests", "too many requests", "rate limit"]) {
            PullFailure::RateLimited
        } else if has(&[
            "manifest unknown",
            "not found",
            "does not exist",
            "name unknown",
            "no matching manifest",
        ]) {
            PullFailure::NotFound
        } else if has(&[
            "connection refused",
            "no such host",
            "i/o timeout",
            "timeout",
            "dial tcp",
            "network is unreachable",
            "no route to host",
            "connection reset",
            "tls",
            "x509",
            "certificate",
            "http response to https client",
            "eof",
            "server misbehaving",
        ]) {
            PullFailure::Unreachable
        } else {
            PullFailure::Other
        }
    }

    /// Why a `docker run` failed, when docker refused the settings themselves (an invalid
    /// value) rather than failing: which request field, and why in the agent's words.
    pub fn run_refusal(&self) -> Option<(&'static str, &'static str)> {
        let lower = self.stderr().to_ascii_lowercase();
        let has = |needle: &str| lower.contains(needle);
        if has("nvidia") || has("could not select device") {
            // The GPU runtime failing is the host's problem, not the request's.
            None
        } else if has("range of cpus") || has("nanocpus") || has("cpu") && has("invalid") {
            Some((
                "cpus",
                "is more CPUs than docker may give a container on this host",
            ))
        } else if has("minimum memory limit") || has("memory") && has("invalid") {
            Some(("memory_mb", "is a memory limit docker refuses"))
        } else if has("shm") && (has("invalid") || has("size")) {
            Some(("shm_size_mb", "is a shared memory size docker refuses"))
        } else if has("invalid port") || has("invalid hostport") || has("invalid containerport") {
            Some(("port_mappings", "has a port mapping docker refuses"))
        } else if has("invalid reference format") {
            Some(("image", "is an image reference docker refuses"))
        } else if has("invalid argument") || has("invalid value") || has("invalid parameter") {
            Some(("body", "docker refused the container's settings as invalid"))
        } else if has("executable file not found")
            || has("no such file or directory") && has("exec")
        {
            Some(("command", "names a program the image does not have"))
        } else {
            None
        }
    }

    /// One line in the agent's words, without docker's own text (which may quote a registry's
    /// answer or span several lines): what failed and how, for API answers.
    pub fn summary(&self) -> String {
        match self {
            DockerError::Spawn { binary, .. } => format!(
                "the docker CLI ({}, docker.binary) cannot be run",
                binary.display()
            ),
            DockerError::Unreachable { .. } => {
                "the docker engine is unreachable (is dockerd running?)".to_string()
            }
            DockerError::Timeout { .. } | DockerError::Cancelled { .. } => self.to_string(),
            DockerError::Failed { command, code, .. } => {
                let lower = self.stderr().to_ascii_lowercase();
                let why = if lower.contains("no space left on device") {
                    "the host is out of disk space"
                } else if self.is_no_such_container() {
                    "no such container"
                } else if self.is_port_taken() {
                    "a host port is already in use"
                } else if self.is_name_taken() {
                    "the container name is already in use"
                } else if lower.contains("oci runtime") || lower.contains("runc") {
                    "the container runtime could not start the container"
                } else if lower.contains("nvidia") || lower.contains("could not select device") {
                    "the GPU runtime could not give the container its GPUs"
                } else {
                    "docker reported an error (see the agent's log)"
                };
                match code {
                    Some(code) => format!("`{command}` failed (exit {code}): {why}"),
                    None => format!("`{command}` was killed: {why}"),
                }
            }
            DockerError::BadOutput { command, .. } => {
                format!("cannot read the output of `{command}`")
            }
        }
    }

    /// Docker's message on one line, at most 300 characters, for the agent's log.
    pub fn log_line(&self) -> String {
        let text = self.to_string();
        let mut line: String = text
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if line.chars().count() > 300 {
            line = line.chars().take(300).collect::<String>() + "…";
        }
        line
    }

    /// `docker run`: a container with that name exists.
    pub fn is_name_taken(&self) -> bool {
        self.stderr().contains("is already in use")
    }

    /// `docker run`: a host port is taken by something outside docker's view.
    pub fn is_port_taken(&self) -> bool {
        let stderr = self.stderr();
        stderr.contains("port is already allocated") || stderr.contains("address already in use")
    }
}

/// Why an image could not be pulled, in categories the API can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// No such repository, tag or manifest.
    NotFound,
    /// The registry wants credentials, or refused the ones given.
    AuthRequired,
    /// The registry could not be reached (DNS, connection, TLS, timeout).
    Unreachable,
    /// The registry refused for too many requests.
    RateLimited,
    /// The host has no room for the image.
    NoSpace,
    /// Anything else the registry or engine answered.
    Other,
}

impl PullFailure {
    /// One line in the agent's words.
    pub fn describe(self) -> &'static str {
        match self {
            PullFailure::NotFound => "the image was not found in its registry",
            PullFailure::AuthRequired => {
                "the registry refused access (the image is private or does not exist; give \
                 registry_auth for a private image)"
            }
            PullFailure::Unreachable => "the registry could not be reached",
            PullFailure::RateLimited => "the registry refused: too many requests, try later",
            PullFailure::NoSpace => "the host is out of disk space for the image",
            PullFailure::Other => "the registry or the engine answered with an error",
        }
    }
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerError::Spawn { binary, message } => write!(
                f,
                "cannot run {} (docker.binary): {message}",
                binary.display()
            ),
            DockerError::Unreachable { message } => {
                write!(f, "docker engine unreachable: {message}")
            }
            DockerError::Timeout { command, after } => write!(
                f,
                "`{command}` did not finish within {}s and was killed",
                after.as_secs()
            ),
            DockerError::Cancelled { command } => {
                write!(f, "`{command}` was stopped: the agent is shutting down")
            }
            DockerError::Failed {
                command,
                code,
                stderr,
            } => match code {
                Some(code) => write!(f, "`{command}` failed (exit {code}): {stderr}"),
                None => write!(f, "`{command}` was killed by a signal: {stderr}"),
            },
            DockerError::BadOutput { command, message } => {
                write!(f, "cannot read the output of `{command}`: {message}")
            }
        }
    }
}

impl std::error::Error for DockerError {}

/// What a successful docker command printed.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    /// True when stdout was longer than the cap and cut.
    pub truncated: bool,
}

/// The docker CLI as the agent runs it: binary, deadlines, and the shutdown that cancels.
#[derive(Clone)]
pub struct DockerCli {
    pub binary: PathBuf,
    timeouts: Arc<DockerTimeouts>,
    shutdown: Shutdown,
    /// Where each command's duration is counted (`GET /metrics`).
    counters: Option<Arc<Counters>>,
    /// `DOCKER_CONFIG` of every command (`docker.config_dir`); `None`: the CLI's default.
    config_dir: Option<PathBuf>,
}

impl DockerCli {
    pub fn new(binary: PathBuf, timeouts: Arc<DockerTimeouts>, shutdown: Shutdown) -> Self {
        DockerCli {
            binary,
            timeouts,
            shutdown,
            counters: None,
            config_dir: None,
        }
    }

    /// Gives every command `DOCKER_CONFIG=dir` (`docker.config_dir`).
    pub fn with_config_dir(mut self, dir: PathBuf) -> Self {
        self.config_dir = Some(dir);
        self
    }

    /// Counts every command's duration in `counters`.
    pub fn with_counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Deadline of every short command.
    pub fn command_timeout(&self) -> Duration {
        self.timeouts.command()
    }

    /// Deadline of an image pull.
    pub fn pull_timeout(&self) -> Duration {
        self.timeouts.pull()
    }

    /// `docker stop -t` grace period.
    pub fn stop_timeout(&self) -> Duration {
        self.timeouts.stop()
    }

    /// Runs `docker <args>` and returns its stdout (at most `stdout_cap` bytes kept).
    pub fn run(
        &self,
        args: &[String],
        deadline: Duration,
        stdout_cap: usize,
    ) -> Result<Output, DockerError> {
        self.execute(args, deadline, stdout_cap, false, None)
    }

    /// Like [`DockerCli::run`], with stderr written into the same pipe as stdout, in order
    /// (`docker logs` prints the container's stderr on its own stderr), and the *last*
    /// `stdout_cap` bytes kept (logs print oldest first: the newest lines matter most).
    pub fn run_merged(
        &self,
        args: &[String],
        deadline: Duration,
        stdout_cap: usize,
    ) -> Result<Output, DockerError> {
        self.execute(args, deadline, stdout_cap, true, None)
    }

    fn execute(
        &self,
        args: &[String],
        deadline: Duration,
        stdout_cap: usize,
        merged: bool,
        config_override: Option<&std::path::Path>,
    ) -> Result<Output, DockerError> {
        let limits = RunLimits {
            deadline,
            stdout_cap,
            keep: if merged { Keep::Tail } else { Keep::Head },
            merge_stderr: merged,
        };
        self.execute_with(args, deadline, merged, config_override, |cmd, shutdown| {
            child::run(cmd, limits, shutdown)
        })
    }

    /// Runs `docker <args>` through `run` (which spawns, waits within `deadline` and the
    /// shutdown, and reaps), with the same `DOCKER_CONFIG`, counting and error classification
    /// as every other command: an image pull read through a terminal
    /// ([`pull_progress`](super::pull_progress)).
    pub(crate) fn execute_with(
        &self,
        args: &[String],
        deadline: Duration,
        merged: bool,
        config_override: Option<&std::path::Path>,
        run: impl FnOnce(Command, &Shutdown) -> Result<child::Finished, RunError>,
    ) -> Result<Output, DockerError> {
        let command = describe(args);
        let mut cmd = Command::new(&self.binary);
        cmd.args(args);
        if let Some(dir) = config_override.or(self.config_dir.as_deref()) {
            cmd.env("DOCKER_CONFIG", dir);
        }
        let started = Instant::now();
        let outcome = run(cmd, &self.shutdown);
        if let Some(counters) = &self.counters {
            let subcommand = command.strip_prefix("docker ").unwrap_or(&command);
            counters.docker_command(subcommand, started.elapsed());
        }
        let finished = match outcome {
            Ok(finished) => finished,
            Err(RunError::Spawn(e)) => {
                return Err(DockerError::Spawn {
                    binary: self.binary.clone(),
                    message: e.to_string(),
                })
            }
            Err(RunError::Wait(e)) => {
                return Err(DockerError::Failed {
                    command,
                    code: None,
                    stderr: format!("cannot wait for the child: {e}"),
                })
            }
            Err(RunError::Timeout) => {
                return Err(DockerError::Timeout {
                    command,
                    after: deadline,
                })
            }
            Err(RunError::Cancelled) => return Err(DockerError::Cancelled { command }),
        };
        if finished.status.success() {
            return Ok(Output {
                stdout: finished.stdout.bytes,
                truncated: finished.stdout.truncated,
            });
        }
        let message = if merged {
            finished.stdout.text()
        } else {
            finished.stderr.text()
        };
        if is_unreachable_message(&message) {
            return Err(DockerError::Unreachable { message });
        }
        Err(DockerError::Failed {
            command,
            code: finished.status.code(),
            stderr: message,
        })
    }
}

/// `docker run`, `docker container inspect`: the subcommand words, never request values.
fn describe(args: &[String]) -> String {
    let words: Vec<&str> = args
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .take(2)
        .map(String::as_str)
        .collect();
    format!("docker {}", words.join(" "))
}

pub fn is_unreachable_message(message: &str) -> bool {
    message.contains("Cannot connect to the Docker daemon")
        || message.contains("Is the docker daemon running")
        || message.contains("error during connect")
        || message.contains("permission denied while trying to connect")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn shell_cli(timeout_ms: u64) -> (DockerCli, crate::shutdown::ShutdownTrigger) {
        let (trigger, shutdown) = crate::shutdown::channel();
        let cli = DockerCli::new(
            PathBuf::from("/bin/sh"),
            DockerTimeouts::new(
                Duration::from_millis(timeout_ms),
                Duration::from_millis(timeout_ms),
                Duration::from_secs(1),
            ),
            shutdown,
        );
        (cli, trigger)
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[test]
    fn output_failure_and_unreachable() {
        let (cli, _trigger) = shell_cli(5000);
        let out = cli
            .run(
                &sh("printf hello; echo noise >&2"),
                cli.command_timeout(),
                1024,
            )
            .unwrap();
        assert_eq!(out.stdout, b"hello");
        let out = cli
            .run(&sh("printf 0123456789"), cli.command_timeout(), 4)
            .unwrap();
        assert_eq!((out.stdout.as_slice(), out.truncated), (&b"0123"[..], true));
        let e = cli
            .run(
                &sh("echo 'Error: No such container: x' >&2; exit 1"),
                cli.command_timeout(),
                1024,
            )
            .unwrap_err();
        assert!(e.is_no_such_container(), "{e}");
        assert!(
            matches!(&e, DockerError::Failed { code: Some(1), stderr, .. }
            if stderr == "Error: No such container: x")
        );
        let e = cli
            .run(
                &sh("echo 'Cannot connect to the Docker daemon at unix:///x.sock. Is the docker daemon running?' >&2; exit 1"),
                cli.command_timeout(),
                1024,
            )
            .unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        let merged = cli
            .run_merged(
                &sh("echo out; echo err >&2; echo out2"),
                cli.command_timeout(),
                1024,
            )
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&merged.stdout), "out\nerr\nout2\n");
        let missing = DockerCli::new(
            PathBuf::from("/nonexistent/docker"),
            DockerTimeouts::new(
                Duration::from_secs(1),
                Duration::from_secs(1),
                Duration::from_secs(1),
            ),
            crate::shutdown::channel().1,
        );
        assert!(missing
            .run(&[], Duration::from_secs(1), 10)
            .unwrap_err()
            .is_unavailable());
    }

    #[test]
    fn merged_output_keeps_the_newest_bytes() {
        // `docker logs --tail N` prints oldest first: when it is cut, the end is what matters.
        let (cli, _trigger) = shell_cli(5000);
        let out = cli
            .run_merged(&sh("printf 0123456789"), cli.command_timeout(), 4)
            .unwrap();
        assert_eq!((out.stdout.as_slice(), out.truncated), (&b"6789"[..], true));
        let out = cli
            .run_merged(&sh("seq 1 100000"), cli.command_timeout(), 100)
            .unwrap();
        assert!(out.truncated);
        assert_eq!(out.stdout.len(), 100);
        assert!(out.stdout.ends_with(b"\n99999\n100000\n"));
        let out = cli
            .run_merged(&sh("printf abc"), cli.command_timeout(), 100)
            .unwrap();
        assert_eq!((out.stdout.as_slice(), out.truncated), (&b"abc"[..], false));
    }

    #[test]
    fn deadline_and_shutdown_become_docker_errors() {
        // The supervision itself is tested in `child`; here, that it reads as docker's error.
        let (cli, trigger) = shell_cli(300);
        let started = Instant::now();
        let e = cli
            .run(&sh("exec sleep 30"), cli.command_timeout(), 1024)
            .unwrap_err();
        assert!(matches!(e, DockerError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        trigger.fire();
        let e = cli
            .run(&sh("exec sleep 30"), Duration::from_secs(30), 1024)
            .unwrap_err();
        assert!(matches!(e, DockerError::Cancelled { .. }), "{e}");
    }

    fn failed(stderr: &str) -> DockerError {
        DockerError::Failed {
            command: "docker pull".into(),
            code: Some(1),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn pull_failures_are_classified_and_never_quoted() {
        let cases = [
            ("Error response from daemon: manifest for x:nope not found: manifest unknown", PullFailure::NotFound),
            ("Error response from daemon: pull access denied for x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied", PullFailure::AuthRequired),
            ("Error response from daemon: Head \"https://r.example/v2/x/manifests/1\": unauthorized: authentication required", PullFailure::AuthRequired),
            ("Error response from daemon: Get \"https://10.0.0.1:1/v2/\": dial tcp 10.0.0.1:1: connect: connection refused", PullFailure::Unreachable),
            ("Error response from daemon: Get \"https://nope.invalid/v2/\": dial tcp: lookup nope.invalid: no such host", PullFailure::Unreachable),
            ("Error response from daemon: toomanyrequests: You have reached your pull rate limit", PullFailure::RateLimited),
            ("write /var/lib/docker/tmp/x: no space left on device", PullFailure::NoSpace),
            ("Error response from daemon: error parsing HTTP 418 response body: invalid character 'S' looking for beginning of value: \"SECRET-BODY\"", PullFailure::Other),
        ];
        for (stderr, want) in cases {
            let e = failed(stderr);
            assert_eq!(e.pull_failure(), want, "{stderr}");
            assert!(!e.summary().contains("SECRET"), "{}", e.summary());
            assert!(!e.summary().contains('\n'));
        }
        let multi = failed("docker: Error response from daemon: boom SECRET.\n\nRun 'docker run --help' for more information");
        assert!(!multi.summary().contains("SECRET"), "{}", multi.summary());
        assert!(!multi.log_line().contains('\n'), "{}", multi.log_line());
    }

    #[test]
    fn run_refusals_name_the_field() {
        let refusal = |stderr: &str| failed(stderr).run_refusal().map(|(field, _)| field);
        assert_eq!(
            refusal("docker: Error response from daemon: Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available.\nSee 'docker run --help'."),
            Some("cpus")
        );
        assert_eq!(
            refusal("docker: Error response from daemon: Minimum memory limit allowed is 6MB."),
            Some("memory_mb")
        );
        assert_eq!(
            refusal("docker: Error response from daemon: failed to create shim: OCI runtime create failed: runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH: unknown."),
            Some("command")
        );
        assert_eq!(
            refusal("docker: Error response from daemon: failed to create shim: OCI runtime create failed: nvidia-container-cli: invalid device: unknown"),
            None
        );
        assert_eq!(refusal("docker: Error response from daemon: driver failed programming external connectivity"), None);
    }

    #[test]
    fn describe_names_only_the_subcommand() {
        assert_eq!(
            describe(&["run".into(), "--detach".into(), "x".into()]),
            "docker run"
        );
        assert_eq!(
            describe(&["container".into(), "inspect".into(), "abc".into()]),
            "docker container inspect"
        );
    }
}
