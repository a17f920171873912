//! Running the docker CLI: the argv of `docker run` built from a validated [`CreateSpec`], and
//! [`DockerCli::run`], which runs one docker command with a deadline, kills the child (with
//! everything it started: its process group) and reaps it when the deadline passes or the agent
//! shuts down, and turns a failure into a [`DockerError`] that carries docker's own message.
//!
//! Nothing from a request is ever placed where docker could read it as a flag: every request
//! value in the argv is either the argument of a flag we chose (`--name utopia-<claim>`), a
//! checked number, or comes after the `--` that ends docker's options (the image and command).
//! The user's environment goes through an `--env-file` (mode 0600, removed right after) rather
//! than the argv, where any local user could read it in `/proc`.

use crate::config::GpuMode;
use crate::docker::spec::{join_ids, CreateSpec};
use crate::shutdown::Shutdown;
use crossbeam_channel::RecvTimeoutError;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Labels the agent sets on every container it creates (besides the managed marker).
pub const LABEL_CLAIM_ID: &str = "io.utopia.claim_id";
pub const LABEL_GPU_IDS: &str = "io.utopia.gpu_ids";
pub const LABEL_GPU_UUIDS: &str = "io.utopia.gpu_uuids";
pub const LABEL_PORTS: &str = "io.utopia.ports";

/// Most stderr kept from a docker command (the rest is read and dropped).
const STDERR_CAP: usize = 64 * 1024;

/// How containers are created: the `docker.*` settings that shape `docker run`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSettings {
    pub gpu_mode: GpuMode,
    pub runtime: String,
    pub cdi_kind: String,
    pub publish_address: String,
    /// The managed marker, `key=value`.
    pub managed_label: String,
    pub pids_limit: u64,
    pub log_max_size: String,
    pub log_max_file: u32,
    pub init: bool,
    pub no_new_privileges: bool,
}

/// The argv (after the binary) of `docker run` for `spec` with the GPUs the ledger assigned.
/// NVIDIA container toolkit features that give a container host devices when an image sets
/// them to `enabled`; every managed container gets them `disabled`.
pub const DISABLED_TOOLKIT_FEATURES: &[&str] = &[
    "NVIDIA_GDS",
    "NVIDIA_MOFED",
    "NVIDIA_NVSWITCH",
    "NVIDIA_GDRCOPY",
];

pub fn run_args(
    spec: &CreateSpec,
    gpus: &[u32],
    gpu_uuids: &[String],
    settings: &RunSettings,
    env_file: Option<&Path>,
) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "--detach".into()];
    let mut flag = |name: &str, value: String| {
        args.push(name.to_string());
        args.push(value);
    };
    flag("--name", spec.container_name());
    flag("--label", settings.managed_label.clone());
    flag("--label", format!("{LABEL_CLAIM_ID}={}", spec.claim_id));
    flag("--label", format!("{LABEL_GPU_IDS}={}", join_ids(gpus)));
    flag(
        "--label",
        format!("{LABEL_GPU_UUIDS}={}", gpu_uuids.join(",")),
    );
    let ports: Vec<String> = spec.ports.iter().map(|p| p.label()).collect();
    flag("--label", format!("{LABEL_PORTS}={}", ports.join(",")));

    if gpus.is_empty() {
        // Where nvidia is the default runtime, a container without this sees every GPU.
        flag("--env", "NVIDIA_VISIBLE_DEVICES=void".into());
    } else {
        match settings.gpu_mode {
            // docker parses the value as CSV: without the inner quotes `device=0,1` would be
            // read as two fields and rejected.
            GpuMode::Gpus => flag("--gpus", format!("\"device={}\"", join_ids(gpus))),
            GpuMode::Cdi => {
                for gpu in gpus {
                    flag("--device", format!("{}={gpu}", settings.cdi_kind));
                }
                // CDI adds the devices. Where nvidia is the default runtime, the image's own
                // NVIDIA_VISIBLE_DEVICES (`all` in every CUDA image) would make it add every
                // GPU on top: switch that path off.
                flag("--env", "NVIDIA_VISIBLE_DEVICES=void".into());
            }
            GpuMode::Env => {
                if !settings.runtime.is_empty() {
                    flag("--runtime", settings.runtime.clone());
                }
                flag(
                    "--env",
                    format!("NVIDIA_VISIBLE_DEVICES={}", join_ids(gpus)),
                );
            }
        }
    }
    // An image may switch these toolkit features on in its own environment (`=enabled`) to be
    // given host devices (/dev/infiniband, NVSwitch, nvidia-fs, gdrdrv); `-e` overrides it.
    for feature in DISABLED_TOOLKIT_FEATURES {
        flag("--env", format!("{feature}=disabled"));
    }
    if let Some(path) = env_file {
        flag("--env-file", path.to_string_lossy().into_owned());
    }
    for port in &spec.ports {
        flag(
            "--publish",
            format!(
                "{}:{}:{}/{}",
                publish_host(&settings.publish_address),
                port.host_port,
                port.container_port,
                port.protocol.as_str()
            ),
        );
    }
    if let Some(mb) = spec.memory_mb {
        flag("--memory", format!("{mb}m"));
    }
    if let Some(cpus) = spec.cpus {
        flag("--cpus", format!("{cpus}"));
    }
    if let Some(mb) = spec.shm_size_mb {
        flag("--shm-size", format!("{mb}m"));
    }
    if settings.no_new_privileges {
        flag("--security-opt", "no-new-privileges".into());
    }
    if settings.pids_limit > 0 {
        flag("--pids-limit", settings.pids_limit.to_string());
    }
    flag("--log-driver", "json-file".into());
    flag("--log-opt", format!("max-size={}", settings.log_max_size));
    flag("--log-opt", format!("max-file={}", settings.log_max_file));
    if settings.init {
        args.push("--init".into());
    }
    args.push("--".into());
    args.push(spec.image.clone());
    args.extend(spec.command.iter().cloned());
    args
}

/// An IPv6 publish address needs brackets in `--publish`.
fn publish_host(address: &str) -> String {
    if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
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

    pub fn is_no_such_container(&self) -> bool {
        matches!(self, DockerError::Failed { stderr, .. }
            if stderr.contains("No such container") || stderr.contains("no such container"))
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
    /// Deadline of every short command.
    pub command_timeout: Duration,
    /// Deadline of an image pull.
    pub pull_timeout: Duration,
    /// `docker stop -t` grace period.
    pub stop_timeout: Duration,
    shutdown: Shutdown,
}

impl DockerCli {
    pub fn new(
        binary: PathBuf,
        command_timeout: Duration,
        pull_timeout: Duration,
        stop_timeout: Duration,
        shutdown: Shutdown,
    ) -> Self {
        DockerCli {
            binary,
            command_timeout,
            pull_timeout,
            stop_timeout,
            shutdown,
        }
    }

    /// Runs `docker <args>` and returns its stdout (at most `stdout_cap` bytes kept).
    pub fn run(
        &self,
        args: &[String],
        deadline: Duration,
        stdout_cap: usize,
    ) -> Result<Output, DockerError> {
        self.execute(args, deadline, stdout_cap, false)
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
        self.execute(args, deadline, stdout_cap, true)
    }

    fn execute(
        &self,
        args: &[String],
        deadline: Duration,
        stdout_cap: usize,
        merged: bool,
    ) -> Result<Output, DockerError> {
        let command = describe(args);
        let mut cmd = Command::new(&self.binary);
        cmd.args(args).stdin(Stdio::null());
        die_with_agent(&mut cmd);
        let mut stderr_reader = None;
        if merged {
            let (read, write) = pipe().map_err(|e| self.spawn_error(e))?;
            let write2 = write.try_clone().map_err(|e| self.spawn_error(e))?;
            cmd.stdout(Stdio::from(write)).stderr(Stdio::from(write2));
            stderr_reader = Some(read);
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        let spawned = cmd.spawn();
        // The Command keeps the merged pipe's write ends: drop it so the reader sees EOF.
        drop(cmd);
        let mut child = spawned.map_err(|e| self.spawn_error(e))?;
        let (stdout_rx, stderr_rx) = if let Some(read) = stderr_reader {
            (read_in_thread(read, stdout_cap, Keep::Tail), None)
        } else {
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            (
                match stdout {
                    Some(s) => read_in_thread(s, stdout_cap, Keep::Head),
                    None => closed(),
                },
                stderr.map(|s| read_in_thread(s, STDERR_CAP, Keep::Head)),
            )
        };

        let started = Instant::now();
        let status = loop {
            match has_exited(&child) {
                // Whatever the child left behind in its group goes with it (and lets go of the
                // pipes, so its output arrives now).
                Ok(true) => {
                    kill_group(&child);
                    match child.wait() {
                        Ok(status) => break status,
                        Err(e) => {
                            return Err(DockerError::Failed {
                                command,
                                code: None,
                                stderr: format!("cannot wait for the child: {e}"),
                            })
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    kill_and_reap(&mut child);
                    return Err(DockerError::Failed {
                        command,
                        code: None,
                        stderr: format!("cannot wait for the child: {e}"),
                    });
                }
            }
            if started.elapsed() >= deadline {
                kill_and_reap(&mut child);
                return Err(DockerError::Timeout {
                    command,
                    after: deadline,
                });
            }
            if self.shutdown.is_triggered() {
                kill_and_reap(&mut child);
                return Err(DockerError::Cancelled { command });
            }
            // Short commands finish in tens of milliseconds: poll fast first, then slower.
            let step = if started.elapsed() < Duration::from_millis(200) {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(25)
            };
            std::thread::sleep(step);
        };

        // The pipes close when the child exits, unless something it started keeps them open:
        // do not wait forever for that.
        let collect = |rx: crossbeam_channel::Receiver<(Vec<u8>, bool)>| match rx
            .recv_timeout(Duration::from_secs(2))
        {
            Ok(out) => out,
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                (Vec::new(), false)
            }
        };
        let (stdout, truncated) = collect(stdout_rx);
        let stderr = stderr_rx
            .map(|rx| collect(rx).0)
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
            .unwrap_or_default();

        if status.success() {
            return Ok(Output { stdout, truncated });
        }
        let message = if merged {
            String::from_utf8_lossy(&stdout).trim().to_string()
        } else {
            stderr
        };
        if is_unreachable_message(&message) {
            return Err(DockerError::Unreachable { message });
        }
        Err(DockerError::Failed {
            command,
            code: status.code(),
            stderr: message,
        })
    }

    fn spawn_error(&self, e: std::io::Error) -> DockerError {
        DockerError::Spawn {
            binary: self.binary.clone(),
            message: e.to_string(),
        }
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

/// Makes the child get SIGKILL when the thread that started it dies, so a docker CLI (above all
/// the endless `docker events`) never outlives an agent that was killed without a chance to
/// stop it. Linux delivers it when the spawning *thread* exits; every docker child is started
/// by a thread that waits for it (a worker, the events watcher), so that is when the agent dies.
///
/// The child also leads a process group of its own, so that [`kill_group`] ends whatever it
/// started too (a `docker.binary` wrapper script that forks the real CLI, a credential helper).
pub(crate) fn die_with_agent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: getpid is async-signal-safe.
    let agent = unsafe { libc::getpid() };
    // SAFETY: the hook runs in the forked child before exec and calls only async-signal-safe
    // functions (prctl, getppid); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The agent died between fork and prctl: do not run orphaned.
            if libc::getppid() != agent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

fn kill_and_reap(child: &mut Child) {
    kill_group(child);
    let _ = child.wait();
}

/// SIGKILL to the process group the child leads (see [`die_with_agent`]). Only while the child
/// is not reaped yet: until then its pid, the group's id, cannot be given to another process.
pub(crate) fn kill_group(child: &Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals the process group `pid`, which the unreaped
    // child still owns.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

/// True once the child has exited, without reaping it (so [`kill_group`] is still safe).
fn has_exited(child: &Child) -> std::io::Result<bool> {
    // SAFETY: siginfo_t is plain data; all zeroes is a valid value for waitid to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child's pid, writing into `info`; WNOWAIT leaves it unreaped.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            child.id() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (si_pid stays 0 while the child runs).
    Ok(unsafe { info.si_pid() } != 0)
}

fn closed() -> crossbeam_channel::Receiver<(Vec<u8>, bool)> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send((Vec::new(), false));
    rx
}

/// Which part of a long output is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// The first bytes (a JSON document, a message).
    Head,
    /// The last bytes (logs, printed oldest first).
    Tail,
}

/// Reads `source` to its end on a thread of its own (so neither pipe can fill up and block the
/// child), keeping `cap` bytes of it: the first or the last.
pub(crate) fn read_in_thread(
    mut source: impl Read + Send + 'static,
    cap: usize,
    keep: Keep,
) -> crossbeam_channel::Receiver<(Vec<u8>, bool)> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("docker-output".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut truncated = false;
            let mut buffer = [0u8; 8192];
            loop {
                match source.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(n) if keep == Keep::Head => {
                        let room = cap.saturating_sub(kept.len());
                        kept.extend_from_slice(&buffer[..n.min(room)]);
                        truncated |= n > room;
                    }
                    Ok(n) => {
                        kept.extend_from_slice(&buffer[..n]);
                        // Drop the oldest bytes in large steps (amortized, not per read).
                        if kept.len() >= cap.saturating_mul(2).max(cap + buffer.len()) {
                            kept.drain(..kept.len() - cap);
                            truncated = true;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if kept.len() > cap {
                kept.drain(..kept.len() - cap);
                truncated = true;
            }
            let _ = tx.send((kept, truncated));
        });
    if let Err(e) = spawned {
        log::error!("cannot start a thread to read docker's output: {e}");
    }
    rx
}

/// A pipe whose both ends are closed on exec (only the dup'ed child ends survive).
fn pipe() -> std::io::Result<(std::fs::File, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two new file descriptors into `fds`, which we then own.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((std::fs::File::from(read), write))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::spec::{GpuRequest, PortMapping, Protocol};

    fn settings(mode: GpuMode) -> RunSettings {
        RunSettings {
            gpu_mode: mode,
            runtime: String::new(),
            cdi_kind: "nvidia.com/gpu".into(),
            publish_address: "127.0.0.1".into(),
            managed_label: "io.utopia.managed=true".into(),
            pids_limit: 4096,
            log_max_size: "50m".into(),
            log_max_file: 3,
            init: true,
            no_new_privileges: true,
        }
    }

    fn spec() -> CreateSpec {
        CreateSpec {
            claim_id: "claim-1".into(),
            image: "nvidia/cuda:12".into(),
            gpus: GpuRequest::Ids(vec![0, 1]),
            ports: vec![PortMapping {
                host_port: 8888,
                container_port: 80,
                protocol: Protocol::Tcp,
            }],
            env: vec![("SECRET".into(), "hunter2".into())],
            command: vec!["--privileged".into(), "sleep".into()],
            memory_mb: Some(2048),
            cpus: Some(1.5),
            shm_size_mb: Some(4096),
            requested_visible_devices: None,
        }
    }

    fn pairs(args: &[String], flag: &str) -> Vec<String> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    }

    /// The `--env` values that set NVIDIA_VISIBLE_DEVICES.
    fn visible(args: &[String]) -> Vec<String> {
        pairs(args, "--env")
            .into_iter()
            .filter(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
            .collect()
    }

    fn uuids() -> Vec<String> {
        vec!["GPU-a".into(), "GPU-b".into()]
    }

    #[test]
    fn gpus_mode_quotes_the_device_list() {
        let args = run_args(
            &spec(),
            &[0, 1],
            &uuids(),
            &settings(GpuMode::Gpus),
            Some(Path::new("/run/env")),
        );
        assert_eq!(pairs(&args, "--gpus"), vec!["\"device=0,1\""]);
        assert!(pairs(&args, "--device").is_empty());
        assert!(pairs(&args, "--runtime").is_empty());
        assert!(!args.iter().any(|a| a.contains("NVIDIA_VISIBLE_DEVICES")));
        assert_eq!(
            pairs(&args, "--env"),
            vec![
                "NVIDIA_GDS=disabled",
                "NVIDIA_MOFED=disabled",
                "NVIDIA_NVSWITCH=disabled",
                "NVIDIA_GDRCOPY=disabled",
            ],
            "an image cannot switch on toolkit features that hand out host devices"
        );
        assert_eq!(pairs(&args, "--env-file"), vec!["/run/env"]);
        // The image comes right after `--`, followed by the command, even one that looks like
        // a flag.
        let dash = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            &args[dash + 1..],
            &["nvidia/cuda:12", "--privileged", "sleep"]
        );
        assert_eq!(args[..2], ["run", "--detach"]);
        assert!(
            !args.iter().any(|a| a.contains("hunter2")),
            "env stays off the argv"
        );
    }

    #[test]
    fn cdi_mode_names_one_device_per_gpu() {
        let mut s = settings(GpuMode::Cdi);
        s.cdi_kind = "example.com/gpu".into();
        let args = run_args(&spec(), &[0, 1], &uuids(), &s, None);
        assert_eq!(
            pairs(&args, "--device"),
            vec!["example.com/gpu=0", "example.com/gpu=1"]
        );
        assert!(pairs(&args, "--gpus").is_empty());
        assert!(pairs(&args, "--env-file").is_empty());
        // The devices come from CDI: an image's own NVIDIA_VISIBLE_DEVICES=all (every CUDA
        // image has it) must not make a default nvidia runtime add every GPU on top.
        assert_eq!(visible(&args), vec!["NVIDIA_VISIBLE_DEVICES=void"]);
    }

    #[test]
    fn env_mode_sets_visible_devices_and_runtime() {
        let args = run_args(&spec(), &[0, 1], &uuids(), &settings(GpuMode::Env), None);
        assert_eq!(visible(&args), vec!["NVIDIA_VISIBLE_DEVICES=0,1"]);
        assert!(pairs(&args, "--runtime").is_empty());
        let mut s = settings(GpuMode::Env);
        s.runtime = "nvidia".into();
        let args = run_args(&spec(), &[1], &uuids()[..1], &s, None);
        assert_eq!(pairs(&args, "--runtime"), vec!["nvidia"]);
        assert_eq!(visible(&args), vec!["NVIDIA_VISIBLE_DEVICES=1"]);
    }

    #[test]
    fn no_gpus_means_void_in_every_mode() {
        for mode in [GpuMode::Gpus, GpuMode::Cdi, GpuMode::Env] {
            let mut s = settings(mode);
            s.runtime = "nvidia".into();
            let args = run_args(&spec(), &[], &[], &s, None);
            assert_eq!(visible(&args), vec!["NVIDIA_VISIBLE_DEVICES=void"]);
            assert!(pairs(&args, "--gpus").is_empty());
            assert!(pairs(&args, "--device").is_empty());
            assert!(pairs(&args, "--runtime").is_empty());
        }
    }

    #[test]
    fn labels_limits_and_safe_defaults() {
        let args = run_args(&spec(), &[0, 1], &uuids(), &settings(GpuMode::Gpus), None);
        assert_eq!(pairs(&args, "--name"), vec!["utopia-claim-1"]);
        assert_eq!(
            pairs(&args, "--label"),
            vec![
                "io.utopia.managed=true",
                "io.utopia.claim_id=claim-1",
                "io.utopia.gpu_ids=0,1",
                "io.utopia.gpu_uuids=GPU-a,GPU-b",
                "io.utopia.ports=8888:80/tcp",
            ]
        );
        assert_eq!(pairs(&args, "--publish"), vec!["127.0.0.1:8888:80/tcp"]);
        assert_eq!(pairs(&args, "--memory"), vec!["2048m"]);
        assert_eq!(pairs(&args, "--cpus"), vec!["1.5"]);
        assert_eq!(pairs(&args, "--shm-size"), vec!["4096m"]);
        assert_eq!(pairs(&args, "--security-opt"), vec!["no-new-privileges"]);
        assert_eq!(pairs(&args, "--pids-limit"), vec!["4096"]);
        assert_eq!(pairs(&args, "--log-driver"), vec!["json-file"]);
        assert_eq!(
            pairs(&args, "--log-opt"),
            vec!["max-size=50m", "max-file=3"]
        );
        assert!(args.contains(&"--init".to_string()));
        for forbidden in [
            "--privileged",
            "--network",
            "--pid",
            "--ipc",
            "--cap-add",
            "--volume",
            "-v",
        ] {
            let dash = args.iter().position(|a| a == "--").unwrap();
            assert!(
                !args[..dash].contains(&forbidden.to_string()),
                "{forbidden}"
            );
        }

        let mut s = settings(GpuMode::Gpus);
        s.init = false;
        s.no_new_privileges = false;
        s.pids_limit = 0;
        s.publish_address = "::1".into();
        let args = run_args(&spec(), &[0], &uuids()[..1], &s, None);
        assert!(!args.contains(&"--init".to_string()));
        assert!(pairs(&args, "--security-opt").is_empty());
        assert!(pairs(&args, "--pids-limit").is_empty());
        assert_eq!(pairs(&args, "--publish"), vec!["[::1]:8888:80/tcp"]);
    }

    fn shell_cli(timeout_ms: u64) -> (DockerCli, crate::shutdown::ShutdownTrigger) {
        let (trigger, shutdown) = crate::shutdown::channel();
        let cli = DockerCli::new(
            PathBuf::from("/bin/sh"),
            Duration::from_millis(timeout_ms),
            Duration::from_millis(timeout_ms),
            Duration::from_secs(1),
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
                cli.command_timeout,
                1024,
            )
            .unwrap();
        assert_eq!(out.stdout, b"hello");
        let out = cli
            .run(&sh("printf 0123456789"), cli.command_timeout, 4)
            .unwrap();
        assert_eq!((out.stdout.as_slice(), out.truncated), (&b"0123"[..], true));
        let e = cli
            .run(
                &sh("echo 'Error: No such container: x' >&2; exit 1"),
                cli.command_timeout,
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
                cli.command_timeout,
                1024,
            )
            .unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        let merged = cli
            .run_merged(
                &sh("echo out; echo err >&2; echo out2"),
                cli.command_timeout,
                1024,
            )
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&merged.stdout), "out\nerr\nout2\n");
        let missing = DockerCli::new(
            PathBuf::from("/nonexistent/docker"),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
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
            .run_merged(&sh("printf 0123456789"), cli.command_timeout, 4)
            .unwrap();
        assert_eq!((out.stdout.as_slice(), out.truncated), (&b"6789"[..], true));
        let out = cli
            .run_merged(&sh("seq 1 100000"), cli.command_timeout, 100)
            .unwrap();
        assert!(out.truncated);
        assert_eq!(out.stdout.len(), 100);
        assert!(out.stdout.ends_with(b"\n99999\n100000\n"));
        let out = cli
            .run_merged(&sh("printf abc"), cli.command_timeout, 100)
            .unwrap();
        assert_eq!((out.stdout.as_slice(), out.truncated), (&b"abc"[..], false));
    }

    #[test]
    fn deadline_kills_and_reaps_the_child() {
        let (cli, _trigger) = shell_cli(300);
        let started = Instant::now();
        // The child writes its pid, then sleeps far past the deadline.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let e = cli
            .run(&sh(&script), cli.command_timeout, 1024)
            .unwrap_err();
        assert!(matches!(e, DockerError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Reaped: the pid no longer exists (not even as a zombie of ours).
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} still exists");
    }

    /// True while `pid` exists and is not a zombie waiting for its (new) parent.
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                let state = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
                !state.starts_with('Z')
            })
            .unwrap_or(false)
    }

    fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn what_the_child_started_dies_with_it() {
        // A wrapper script in front of docker forks (`sleep` here) rather than exec'ing: on the
        // deadline the whole process group goes, not only the shell, and nothing the child
        // started is left holding its pipes (and a reader thread) or running as an orphan.
        let (cli, _trigger) = shell_cli(300);
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let e = cli
            .run(&sh(&script), cli.command_timeout, 1024)
            .unwrap_err();
        assert!(matches!(e, DockerError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let grandchild = read_pid(&pid_file);
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !running(grandchild)
        });
        assert!(
            gone,
            "the child's own child {grandchild} outlived the deadline"
        );

        // A child that exits but leaves something behind holding stdout: its output still
        // arrives at once, and the leftover is ended.
        let (cli, _trigger) = shell_cli(5000);
        let script = format!("sleep 30 & echo $! > {}; echo done", pid_file.display());
        let started = Instant::now();
        let out = cli.run(&sh(&script), cli.command_timeout, 1024).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let leftover = read_pid(&pid_file);
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !running(leftover)
        });
        assert!(gone, "the child's leftover {leftover} is still running");
    }

    #[test]
    fn shutdown_cancels_a_running_command() {
        let (cli, trigger) = shell_cli(30_000);
        let started = Instant::now();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            trigger.fire();
        });
        let e = cli
            .run(&sh("exec sleep 30"), cli.command_timeout, 1024)
            .unwrap_err();
        killer.join().unwrap();
        assert!(matches!(e, DockerError::Cancelled { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
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
