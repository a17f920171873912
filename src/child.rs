//! Supervised child processes: every program the agent runs (the docker CLI, `docker events`,
//! the frpc tunnel client) is started, watched and ended through this module, which knows
//! nothing about what the program does.
//!
//! - [`Supervised::spawn`] starts a child that leads a process group of its own (so that
//!   whatever it starts, a wrapper script's forked CLI, a credential helper, is ended with it)
//!   and that gets SIGKILL when the thread that started it dies (`PR_SET_PDEATHSIG`), so no
//!   child outlives an agent that was killed without a chance to stop it.
//! - [`Supervised::wait_for`] waits for the exit with a deadline and the shutdown signal,
//!   [`Supervised::terminate`] asks the group to stop (SIGTERM) and kills it (SIGKILL) after a
//!   grace period, [`Supervised::kill`] kills it at once; each of them reaps the child, and a
//!   [`Supervised`] dropped unreaped is killed and reaped too.
//! - [`capture`] reads an output pipe to its end on a thread of its own, keeping a bounded head
//!   or tail of it; [`for_each_line`] and [`stream_lines`] hand a long-running child's output to
//!   a callback or a channel line by line.
//! - [`run`] puts these together for a short command: spawn, read both outputs, wait with a
//!   deadline and the shutdown signal, kill the group, reap, and return what it printed.

use crate::shutdown::Shutdown;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most stderr [`run`] keeps (the rest is read and dropped).
pub const STDERR_CAP: usize = 64 * 1024;

/// How long the output of an exited child is waited for: the pipes close when the child
/// exits, unless something it started keeps them open.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// A running child that leads its own process group and dies with the thread that started it.
/// Until it is reaped its pid, the group's id, cannot be given to another process, which is what
/// makes signalling the group safe.
#[derive(Debug)]
pub struct Supervised {
    child: Child,
    /// Set once the child is reaped; no signal is sent after that.
    status: Option<ExitStatus>,
    /// A pidfd of the child (readable once it exits), so [`Supervised::wait_for`] wakes at the
    /// exit rather than at its next poll; `None` where the kernel has none (before 5.3).
    exit_fd: Option<OwnedFd>,
}

/// How [`Supervised::wait_for`] ended.
#[derive(Debug)]
pub enum Waited {
    /// The child exited (and is reaped); what it left running in its group is killed.
    Exited(ExitStatus),
    /// The time ran out; the child still runs.
    TimedOut,
    /// Shutdown started; the child still runs.
    ShuttingDown,
}

impl Supervised {
    /// Spawns `command` in a process group of its own, with the parent-death signal set. The
    /// caller chooses stdin, stdout and stderr.
    pub fn spawn(mut command: Command) -> std::io::Result<Supervised> {
        die_with_agent(&mut command);
        let spawned = command.spawn();
        // The Command may keep pipe ends given to it (a merged output): drop them here so the
        // reader sees EOF when the child exits.
        drop(command);
        let child = spawned?;
        let exit_fd = pidfd(&child);
        Ok(Supervised {
            child,
            status: None,
            exit_fd,
        })
    }

    /// The child's pid (also its process group id).
    #[allow(dead_code, reason = "for long-running children (the frpc supervisor)")]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child's stdout, when it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's stderr, when it was piped and not taken yet.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// True once the child has exited (reaped or not).
    #[allow(dead_code, reason = "for long-running children (the frpc supervisor)")]
    pub fn has_exited(&self) -> std::io::Result<bool> {
        if self.status.is_some() {
            return Ok(true);
        }
        has_exited(&self.child)
    }

    /// Sends `signal` to the child's process group; nothing once the child is reaped.
    pub fn signal_group(&self, signal: i32) {
        if self.status.is_some() {
            return;
        }
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) with a negative pid signals the process group `pid`, which the
        // unreaped child still owns.
        unsafe {
            libc::kill(-pid, signal);
        }
    }

    /// Waits up to `limit` for the child to exit, returning early when `shutdown` (if given)
    /// starts. When it exits, whatever it left behind in its group is killed (which also lets go
    /// of its pipes, so its output arrives now) and the child is reaped.
    pub fn wait_for(
        &mut self,
        limit: Duration,
        shutdown: Option<&Shutdown>,
    ) -> std::io::Result<Waited> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status {
                return Ok(Waited::Exited(status));
            }
            if has_exited(&self.child)? {
                return self.reap().map(Waited::Exited);
            }
            if started.elapsed() >= limit {
                return Ok(Waited::TimedOut);
            }
            if shutdown.is_some_and(Shutdown::is_triggered) {
                return Ok(Waited::ShuttingDown);
            }
            let step = match &self.exit_fd {
                // The exit wakes the wait at once; the step only bounds how late a shutdown is
                // seen.
                Some(_) => SHUTDOWN_CHECK,
                // Without a pidfd, polled: fast first (short commands finish in tens of
                // milliseconds), then slower.
                None if started.elapsed() < Duration::from_millis(200) => Duration::from_millis(5),
                None => Duration::from_millis(25),
            };
            let step = step.min(limit.saturating_sub(started.elapsed()));
            match &self.exit_fd {
                Some(fd) => wait_readable(fd, step),
                None => std::thread::sleep(step),
            }
        }
    }

    /// Asks the group to stop (SIGTERM), waits up to `grace`, then kills it (SIGKILL); reaps.
    #[allow(dead_code, reason = "for long-running children (the frpc supervisor)")]
    pub fn terminate(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        self.signal_group(libc::SIGTERM);
        match self.wait_for(grace, None)? {
            Waited::Exited(status) => Ok(status),
            Waited::TimedOut | Waited::ShuttingDown => self.kill(),
        }
    }

    /// Kills the group at once (SIGKILL) and reaps the child.
    pub fn kill(&mut self) -> std::io::Result<ExitStatus> {
        self.reap()
    }

    /// Kills what is left of the group and reaps the child.
    fn reap(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        self.signal_group(libc::SIGKILL);
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        let _ = self.reap();
    }
}

/// Makes the child get SIGKILL when the thread that started it dies, so a child (above all a
/// long-running one such as `docker events`) never outlives an agent that was killed without a
/// chance to stop it. Linux delivers it when the spawning *thread* exits; every child is started
/// by a thread that waits for it, so that is when the agent dies.
///
/// The child also leads a process group of its own, so that signalling the group ends whatever
/// it started too.
fn die_with_agent(command: &mut Command) {
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

/// How often [`Supervised::wait_for`] looks at the shutdown signal while it waits on a pidfd.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(25);

/// A pidfd of our unreaped child (its pid cannot name another process yet); `None` when the
/// kernel refuses (before Linux 5.3, or a seccomp filter), and the wait polls instead.
fn pidfd(child: &Child) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(child.id()).ok()?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits up to `limit` for `fd` to become readable (a pidfd: its process exited); returns early
/// on a signal or an error, which the caller's loop checks anyway.
fn wait_readable(fd: &OwnedFd, limit: Duration) {
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Rounded up: a wait of 0 ms would spin until the deadline.
    let ms = i32::try_from(limit.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    // SAFETY: poll(2) on one valid pollfd that lives for the call.
    unsafe {
        libc::poll(&mut poll, 1, ms);
    }
}

/// True once the child has exited, without reaping it (so signalling its group is still safe).
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

/// Which part of a long output is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The first bytes (a JSON document, a message).
    Head,
    /// The last bytes (logs, printed oldest first).
    Tail,
}

/// What [`capture`] read: at most its cap of bytes, and whether more was dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Captured {
    /// The bytes as text, trimmed (a message for an operator).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim().to_string()
    }
}

/// Reads `source` to its end on a thread of its own (so no pipe can fill up and block the
/// child), keeping `cap` bytes of it: the first or the last. The result arrives on the returned
/// channel once the source ends.
pub fn capture(
    mut source: impl Read + Send + 'static,
    cap: usize,
    keep: Keep,
) -> Receiver<Captured> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let spawned = std::thread::Builder::new()
        .name("child-output".into())
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
            let _ = tx.send(Captured {
                bytes: kept,
                truncated,
            });
        });
    if let Err(e) = spawned {
        log::error!("cannot start a thread to read a child's output: {e}");
    }
    rx
}

/// Waits up to `limit` for what [`capture`] read; nothing when the reader is still blocked (a
/// grandchild holds the pipe open) or could not start.
pub fn collect(captured: &Receiver<Captured>, limit: Duration) -> Captured {
    match captured.recv_timeout(limit) {
        Ok(out) => out,
        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => Captured::default(),
    }
}

/// Longest line [`for_each_line`] hands on; the rest of a longer one is read and dropped, so a
/// child printing without newlines cannot make the agent hold its output in memory.
pub const MAX_LINE: usize = 64 * 1024;

/// Reads `source` line by line on a thread named `name`, calling `line` for each (without its
/// newline, invalid UTF-8 replaced, cut at [`MAX_LINE`] bytes), until the source ends or `line`
/// returns false. Join the thread after the child is killed: its pipe closes then.
pub fn for_each_line(
    source: impl Read + Send + 'static,
    name: &str,
    mut line: impl FnMut(String) -> bool + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut reader = BufReader::new(source);
            let mut buffer = Vec::new();
            loop {
                buffer.clear();
                match read_line_capped(&mut reader, &mut buffer, MAX_LINE) {
                    Ok(false) => return,
                    Ok(true) => {
                        if !line(String::from_utf8_lossy(&buffer).into_owned()) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        })
}

/// Reads one line into `buffer` (without its newline), keeping at most `cap` bytes of it and
/// dropping the rest; false at the end of the source with nothing read.
fn read_line_capped(
    reader: &mut impl BufRead,
    buffer: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<bool> {
    let mut read_any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(read_any);
        }
        read_any = true;
        let newline = available.iter().position(|&b| b == b'\n');
        let part = &available[..newline.unwrap_or(available.len())];
        let room = cap.saturating_sub(buffer.len());
        buffer.extend_from_slice(&part[..part.len().min(room)]);
        let used = newline.map_or(available.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(true);
        }
    }
}

/// [`for_each_line`] into a channel: each line is sent on `lines` (blocking while it is full);
/// the thread ends when the source ends or the receiver is gone.
pub fn stream_lines(
    source: impl Read + Send + 'static,
    name: &str,
    lines: Sender<String>,
) -> std::io::Result<JoinHandle<()>> {
    for_each_line(source, name, move |line| lines.send(line).is_ok())
}

/// Limits of a short command run by [`run`].
#[derive(Debug, Clone, Copy)]
pub struct RunLimits {
    /// The child is killed when it has not exited by then.
    pub deadline: Duration,
    /// Most stdout bytes kept.
    pub stdout_cap: usize,
    /// Which stdout bytes are kept when there are more.
    pub keep: Keep,
    /// Stderr goes into the stdout pipe, in order, instead of a pipe of its own.
    pub merge_stderr: bool,
}

/// What a short command printed, and how it ended.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Captured,
    /// Empty when stderr was merged into stdout.
    pub stderr: Captured,
}

/// Why [`run`] has no [`Finished`] to return. The child, if it started, is killed and reaped.
#[derive(Debug)]
pub enum RunError {
    /// The program could not be started (or its pipes made).
    Spawn(std::io::Error),
    /// Waiting for the child failed.
    Wait(std::io::Error),
    /// The deadline passed.
    Timeout,
    /// The agent is shutting down.
    Cancelled,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Spawn(e) => write!(f, "cannot start: {e}"),
            RunError::Wait(e) => write!(f, "cannot wait for the child: {e}"),
            RunError::Timeout => write!(f, "ran past its deadline and was killed"),
            RunError::Cancelled => write!(f, "stopped: the agent is shutting down"),
        }
    }
}

impl std::error::Error for RunError {}

/// Runs `command` (stdin from /dev/null) to its end within `limits.deadline`, killing its
/// process group and reaping it on the deadline or when `shutdown` starts.
pub fn run(
    mut command: Command,
    limits: RunLimits,
    shutdown: &Shutdown,
) -> Result<Finished, RunError> {
    command.stdin(Stdio::null());
    let mut merged_output = None;
    if limits.merge_stderr {
        let (read, write) = pipe().map_err(RunError::Spawn)?;
        let write2 = write.try_clone().map_err(RunError::Spawn)?;
        command
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write2));
        merged_output = Some(read);
    } else {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = Supervised::spawn(command).map_err(RunError::Spawn)?;
    let (stdout, stderr) = match merged_output {
        Some(read) => (capture(read, limits.stdout_cap, limits.keep), None),
        None => (
            match child.take_stdout() {
                Some(s) => capture(s, limits.stdout_cap, limits.keep),
                None => closed(),
            },
            child
                .take_stderr()
                .map(|s| capture(s, STDERR_CAP, Keep::Head)),
        ),
    };
    let status = match child.wait_for(limits.deadline, Some(shutdown)) {
        Ok(Waited::Exited(status)) => status,
        Ok(Waited::TimedOut) => {
            let _ = child.kill();
            return Err(RunError::Timeout);
        }
        Ok(Waited::ShuttingDown) => {
            let _ = child.kill();
            return Err(RunError::Cancelled);
        }
        Err(e) => {
            let _ = child.kill();
            return Err(RunError::Wait(e));
        }
    };
    Ok(Finished {
        status,
        stdout: collect(&stdout, OUTPUT_GRACE),
        stderr: stderr
            .map(|rx| collect(&rx, OUTPUT_GRACE))
            .unwrap_or_default(),
    })
}

fn closed() -> Receiver<Captured> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let _ = tx.send(Captured::default());
    rx
}

/// A pipe whose both ends are closed on exec (only the dup'ed child ends survive).
fn pipe() -> std::io::Result<(std::fs::File, std::os::fd::OwnedFd)> {
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
    use std::path::Path;

    #[test]
    fn a_line_without_end_is_cut_and_the_next_one_still_arrives() {
        let mut input = vec![b'x'; 10 * MAX_LINE];
        input.extend_from_slice(b"\nnext\nlast");
        let (tx, rx) = crossbeam_channel::unbounded();
        let reader = stream_lines(std::io::Cursor::new(input), "test-long", tx).unwrap();
        reader.join().unwrap();
        let lines: Vec<String> = rx.try_iter().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1..], ["next".to_string(), "last".to_string()]);
        let mut buffer = Vec::new();
        let mut empty = std::io::Cursor::new(b"\n".to_vec());
        assert!(read_line_capped(&mut empty, &mut buffer, 4).unwrap());
        assert!(buffer.is_empty());
        assert!(!read_line_capped(&mut empty, &mut buffer, 4).unwrap());
    }

    fn sh(script: &str) -> Command {
        let mut command = Command::new("/bin/sh");
        command.args(["-c", script]);
        command
    }

    fn limits(deadline_ms: u64) -> RunLimits {
        RunLimits {
            deadline: Duration::from_millis(deadline_ms),
            stdout_cap: 1024,
            keep: Keep::Head,
            merge_stderr: false,
        }
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

    fn wait_for_file(path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The writer may not have finished the line yet.
        std::thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn the_wait_wakes_at_the_exit_through_a_pidfd() {
        let mut command = sh("exec sleep 0.3");
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = Supervised::spawn(command).unwrap();
        assert!(
            child.exit_fd.is_some(),
            "no pidfd (Linux 5.3 or later has one)"
        );
        let started = Instant::now();
        // Far longer than the shutdown check: the wait is woken by the exit.
        let status = match child.wait_for(Duration::from_secs(30), None).unwrap() {
            Waited::Exited(status) => status,
            other => panic!("{other:?}"),
        };
        assert!(status.success());
        assert!(started.elapsed() < Duration::from_secs(10));
        // An exited child: the pidfd stays readable, the wait answers at once.
        match child.wait_for(Duration::from_secs(30), None).unwrap() {
            Waited::Exited(again) => assert_eq!(again, status),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn output_of_both_pipes_and_the_exit_status() {
        let (_trigger, shutdown) = crate::shutdown::channel();
        let out = run(
            sh("printf hello; echo noise >&2; exit 3"),
            limits(5000),
            &shutdown,
        )
        .unwrap();
        assert_eq!(out.stdout.bytes, b"hello");
        assert_eq!(out.stderr.text(), "noise");
        assert_eq!(out.status.code(), Some(3));
        let merged = RunLimits {
            merge_stderr: true,
            keep: Keep::Tail,
            stdout_cap: 8,
            ..limits(5000)
        };
        let out = run(sh("echo out; echo err >&2; echo out2"), merged, &shutdown).unwrap();
        assert_eq!(out.stdout.bytes, b"rr\nout2\n");
        assert!(out.stdout.truncated);
        assert!(out.stderr.bytes.is_empty());
        assert!(matches!(
            run(
                Command::new("/nonexistent/program"),
                limits(1000),
                &shutdown
            ),
            Err(RunError::Spawn(_))
        ));
    }

    #[test]
    fn deadline_kills_and_reaps_the_child() {
        let (_trigger, shutdown) = crate::shutdown::channel();
        let started = Instant::now();
        // The child writes its pid, then sleeps far past the deadline.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let e = run(sh(&script), limits(300), &shutdown).unwrap_err();
        assert!(matches!(e, RunError::Timeout), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = read_pid(&pid_file);
        // Reaped: the pid no longer exists (not even as a zombie of ours).
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "child {pid} still exists");
    }

    #[test]
    fn what_the_child_started_dies_with_it() {
        // A wrapper script in front of docker forks (`sleep` here) rather than exec'ing: on the
        // deadline the whole process group goes, not only the shell, and nothing the child
        // started is left holding its pipes (and a reader thread) or running as an orphan.
        let (_trigger, shutdown) = crate::shutdown::channel();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let e = run(sh(&script), limits(300), &shutdown).unwrap_err();
        assert!(matches!(e, RunError::Timeout), "{e}");
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
        let script = format!("sleep 30 & echo $! > {}; echo done", pid_file.display());
        let started = Instant::now();
        let out = run(sh(&script), limits(5000), &shutdown).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout.bytes), "done\n");
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
        let (trigger, shutdown) = crate::shutdown::channel();
        let started = Instant::now();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            trigger.fire();
        });
        let e = run(sh("exec sleep 30"), limits(30_000), &shutdown).unwrap_err();
        killer.join().unwrap();
        assert!(matches!(e, RunError::Cancelled), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_long_running_child_streams_lines_and_stops_on_sigterm() {
        // The shape of a tunnel client's supervisor: spawn, stream both outputs line by line,
        // ask the group to stop, reap.
        let mut command = sh("echo first; echo warn >&2; printf 'bad \\377\\n'; exec sleep 30");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Supervised::spawn(command).unwrap();
        let (tx, lines) = crossbeam_channel::unbounded();
        let out = stream_lines(child.take_stdout().unwrap(), "test-out", tx.clone()).unwrap();
        let err = for_each_line(child.take_stderr().unwrap(), "test-err", move |line| {
            tx.send(format!("stderr: {line}")).is_ok()
        })
        .unwrap();
        let mut seen: Vec<String> = (0..3)
            .map(|_| lines.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, ["bad \u{fffd}", "first", "stderr: warn"]);
        assert!(matches!(
            child.wait_for(Duration::from_millis(100), None).unwrap(),
            Waited::TimedOut
        ));
        let started = Instant::now();
        let status = child.terminate(Duration::from_secs(5)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        out.join().unwrap();
        err.join().unwrap();
        assert!(child.has_exited().unwrap());
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!(
            "trap '' TERM; sleep 30 & echo $! > {}; while :; do sleep 1; done",
            pid_file.display()
        );
        let mut child = Supervised::spawn(sh(&script)).unwrap();
        wait_for_file(&pid_file);
        let grandchild = read_pid(&pid_file);
        let started = Instant::now();
        let status = child.terminate(Duration::from_millis(300)).unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !running(grandchild)
        });
        assert!(gone, "the group's {grandchild} survived");
    }

    #[test]
    fn shutdown_ends_a_wait_and_drop_reaps() {
        let (trigger, shutdown) = crate::shutdown::channel();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let child = Supervised::spawn(sh(&script)).unwrap();
        wait_for_file(&pid_file);
        let pid = read_pid(&pid_file);
        trigger.fire();
        let mut child = child;
        assert!(matches!(
            child
                .wait_for(Duration::from_secs(30), Some(&shutdown))
                .unwrap(),
            Waited::ShuttingDown
        ));
        drop(child);
        // SAFETY: kill with signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "a dropped child {pid} was not reaped");
    }
}
