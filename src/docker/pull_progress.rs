//! An image pull's progress, read from the docker CLI's own output.
//!
//! `docker pull` prints one status line per layer (`<id>: Pulling fs layer`, `Downloading`,
//! `Verifying Checksum`, `Download complete`, `Extracting`, `Pull complete`, `Already exists`);
//! only when its stdout is a terminal does it add the byte figures (`Downloading [==>   ]
//! 12.35MB/45.6MB 3s`, redrawn in place with `ESC[<n>A`, `ESC[2K` and `\r`; see the CLI's
//! `jsonmessage.Display`). So [`run_in_terminal`] gives the pull a pseudo-terminal as its stdout
//! (stderr stays a pipe: the error text is classified as for every command), and
//! [`PullReader`] turns what it prints into a [`PullProgress`]: layers seen and done, bytes
//! downloaded and to download. Without a terminal (`openpty` failed) the pull's stdout is a
//! pipe: the layers are still counted, the bytes are `null`.
//!
//! The output is untrusted text: the reader never panics, keeps at most [`MAX_LINE`] bytes of a
//! line and [`MAX_LAYERS`] layers, and ignores what it does not recognize. The pull runs on the
//! create worker that ran it before, within the same deadline; its output is read on a thread
//! of its own that ends when the terminal closes (the pull's whole process group is killed and
//! reaped when it exits, times out or the agent shuts down).

use crate::child::{self, Captured, Finished, Keep, RunError, Supervised, Waited, STDERR_CAP};
use crate::shutdown::Shutdown;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest line kept; the rest of a longer one is dropped (and the line ignored).
pub const MAX_LINE: usize = 1024;
/// Most layers counted; more are ignored.
pub const MAX_LAYERS: usize = 1000;
/// Longest escape sequence followed; a longer one ends where it was cut.
const MAX_ESCAPE: usize = 16;
/// How long the output of an exited pull is still read.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What `GET` of a create in progress shows of its image pull.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PullProgress {
    /// Layers the pull has listed so far (it lists them all at its start).
    pub layers_total: u32,
    /// Of those, the ones pulled (`Pull complete`) or already on the node (`Already exists`).
    pub layers_done: u32,
    /// Bytes downloaded, as docker's progress bars print them (4 significant digits); `null`
    /// when the pull printed no byte figures.
    pub bytes_done: Option<u64>,
    /// The compressed size of the layers whose download has started (docker shows a layer's
    /// size only then); `null` like `bytes_done`.
    pub bytes_total: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Waiting,
    Downloading,
    Downloaded,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Layer {
    step: Step,
    current: u64,
    total: Option<u64>,
}

/// Where the reader is in an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Started,
    /// After `ESC [`: parameters until a final byte; how many bytes so far.
    Csi(usize),
}

/// Reads a pull's output (terminal or not) as it arrives, in chunks cut anywhere.
#[derive(Debug)]
pub struct PullReader {
    line: Vec<u8>,
    /// The current line was longer than [`MAX_LINE`]: ignored up to its end.
    overlong: bool,
    escape: Escape,
    layers: BTreeMap<String, Layer>,
    /// The output carried byte figures (a terminal's progress bars).
    saw_bytes: bool,
}

impl Default for PullReader {
    fn default() -> Self {
        PullReader {
            line: Vec::with_capacity(128),
            overlong: false,
            escape: Escape::None,
            layers: BTreeMap::new(),
            saw_bytes: false,
        }
    }
}

impl PullReader {
    /// Reads more output.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match self.escape {
                Escape::Started => {
                    self.escape = if b == b'[' {
                        Escape::Csi(0)
                    } else {
                        Escape::None
                    };
                    continue;
                }
                Escape::Csi(n) => {
                    // A final byte ends it (`A`, `B`, `K`, ...); a line end too (cut output).
                    if (0x40..=0x7e).contains(&b) || n >= MAX_ESCAPE {
                        self.escape = Escape::None;
                        continue;
                    }
                    if b != b'\r' && b != b'\n' {
                        self.escape = Escape::Csi(n + 1);
                        continue;
                    }
                    self.escape = Escape::None;
                }
                Escape::None => {}
            }
            match b {
                0x1b => self.escape = Escape::Started,
                b'\r' | b'\n' => self.end_line(),
                _ if self.line.len() < MAX_LINE => self.line.push(b),
                _ => self.overlong = true,
            }
        }
    }

    fn end_line(&mut self) {
        if !self.overlong {
            let line = std::mem::take(&mut self.line);
            self.read_line(&String::from_utf8_lossy(&line));
            self.line = line;
        }
        self.line.clear();
        self.overlong = false;
    }

    /// One status line: `<layer id>: <status>[ <progress>]`; anything else is ignored.
    fn read_line(&mut self, line: &str) {
        let Some((id, status)) = line.trim().split_once(": ") else {
            return;
        };
        // Layer ids are short hex digests; `latest: Pulling from ...`, `Digest: ...` and
        // `Status: ...` are not layers.
        if id.is_empty() || id.len() > 64 || !id.bytes().all(|c| c.is_ascii_hexdigit()) {
            return;
        }
        let status = status.trim();
        let (step, figures) = if status == "Pulling fs layer" || status == "Waiting" {
            (Step::Waiting, None)
        } else if let Some(rest) = status.strip_prefix("Downloading") {
            (Step::Downloading, Some(rest))
        } else if status == "Verifying Checksum"
            || status == "Download complete"
            || status.starts_with("Extracting")
        {
            (Step::Downloaded, None)
        } else if status == "Pull complete" || status == "Already exists" {
            (Step::Done, None)
        } else {
            return;
        };
        if !self.layers.contains_key(id) && self.layers.len() >= MAX_LAYERS {
            return;
        }
        let layer = self.layers.entry(id.to_string()).or_insert(Layer {
            step: Step::Waiting,
            current: 0,
            total: None,
        });
        if let Some((current, total)) = figures.and_then(progress_figures) {
            self.saw_bytes = true;
            layer.current = current;
            if total.is_some() {
                layer.total = total;
            }
        }
        // A layer never goes back a step (a retried download restarts its bytes only).
        let rank = |s: Step| s as u8;
        if rank(step) >= rank(layer.step) {
            layer.step = step;
        }
    }

    /// The progress so far.
    pub fn progress(&self) -> PullProgress {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut done = 0u64;
        let mut total = 0u64;
        for layer in self.layers.values() {
            let size = layer.total.unwrap_or(0);
            total = total.saturating_add(size);
            let got = match layer.step {
                Step::Waiting | Step::Downloading => layer.current,
                Step::Downloaded | Step::Done => size.max(layer.current),
            };
            done = done.saturating_add(got);
        }
        PullProgress {
            layers_total: count(self.layers.len()),
            layers_done: count(
                self.layers
                    .values()
                    .filter(|l| l.step == Step::Done)
                    .count(),
            ),
            bytes_done: self.saw_bytes.then_some(done),
            bytes_total: self.saw_bytes.then_some(total),
        }
    }
}

/// The byte figures after `Downloading`: ` [==>   ]  12.35MB/45.6MB 3s` (the bar only on a
/// terminal wider than 110 columns, the time left only while it is known), or the current size
/// alone once it passed the total.
fn progress_figures(rest: &str) -> Option<(u64, Option<u64>)> {
    for word in rest.split_whitespace() {
        if let Some((current, total)) = word.split_once('/') {
            if let (Some(c), Some(t)) = (parse_size(current), parse_size(total)) {
                return Some((c, Some(t)));
            }
        } else if let Some(c) = parse_size(word) {
            return Some((c, None));
        }
    }
    None
}

/// A size as `go-units.HumanSize` prints it: `%.4g` and a decimal unit (`512B`, `1.049kB`,
/// `12.35MB`).
fn parse_size(word: &str) -> Option<u64> {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let split = word.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = word.split_at(split);
    let power = UNITS.iter().position(|u| *u == unit)?;
    if number.is_empty() || !number.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let exponent = i32::try_from(power).ok()?.saturating_mul(3);
    let bytes = value * 10f64.powi(exponent);
    // `as` saturates; a value past u64 is not a real pull.
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes.round() as u64)
}

/// A pseudo-terminal: the reading end, and the end the child gets as its stdout.
fn open_terminal() -> std::io::Result<(std::fs::File, std::os::fd::OwnedFd)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut master = -1;
    let mut slave = -1;
    // Wide enough for docker to draw the whole bar on one line.
    let size = libc::winsize {
        ws_row: 50,
        ws_col: 200,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two new descriptors into `master` and `slave`; the name is not
    // asked for and the termios is the default.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are new and owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    for fd in [&master, &slave] {
        use std::os::fd::AsRawFd;
        // SAFETY: fcntl on a descriptor we own; the child gets the slave through dup2 (which
        // clears close-on-exec), nothing else leaks into it.
        unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok((std::fs::File::from(master), slave))
}

/// Runs a `docker pull` to its end within `deadline`, with a pseudo-terminal as its stdout
/// (a pipe if none can be opened), handing every piece of its output to `output` as it
/// arrives; killed and reaped on the deadline or when `shutdown` starts, like [`child::run`].
pub fn run_in_terminal(
    mut command: Command,
    deadline: Duration,
    shutdown: &Shutdown,
    output: &mut dyn FnMut(&[u8]),
) -> Result<Finished, RunError> {
    command.stdin(Stdio::null()).stderr(Stdio::piped());
    let terminal = match open_terminal() {
        Ok((master, slave)) => {
            command.stdout(Stdio::from(slave));
            Some(master)
        }
        Err(e) => {
            log::debug!("no pseudo-terminal for the pull's progress ({e}); reading a pipe");
            command.stdout(Stdio::piped());
            None
        }
    };
    // `spawn` drops the command, and with it the parent's copy of the terminal's child end:
    // reading the terminal ends when the pull's group is gone.
    let mut child = Supervised::spawn(command).map_err(RunError::Spawn)?;
    let source: Box<dyn Read + Send> = match (terminal, child.take_stdout()) {
        (Some(master), _) => Box::new(master),
        (None, Some(stdout)) => Box::new(stdout),
        (None, None) => Box::new(std::io::empty()),
    };
    let stderr = child
        .take_stderr()
        .map(|s| child::capture(s, STDERR_CAP, Keep::Head));
    let chunks = read_chunks(source).map_err(RunError::Spawn)?;
    let started = Instant::now();
    let status = loop {
        match chunks.recv_timeout(Duration::from_millis(50)) {
            Ok(chunk) => output(&chunk),
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            // The output ended; the loop still waits for the exit.
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20))
            }
        }
        let left = deadline.saturating_sub(started.elapsed());
        match child.wait_for(Duration::ZERO, Some(shutdown)) {
            Ok(Waited::Exited(status)) => break status,
            Ok(Waited::ShuttingDown) => {
                let _ = child.kill();
                return Err(RunError::Cancelled);
            }
            Ok(Waited::TimedOut) if left.is_zero() => {
                let _ = child.kill();
                return Err(RunError::Timeout);
            }
            Ok(Waited::TimedOut) => {}
            Err(e) => {
                let _ = child.kill();
                return Err(RunError::Wait(e));
            }
        }
    };
    // What it printed before it exited.
    let until = Instant::now() + OUTPUT_GRACE;
    while let Ok(chunk) = chunks.recv_deadline(until) {
        output(&chunk);
    }
    Ok(Finished {
        status,
        stdout: Captured::default(),
        stderr: stderr
            .map(|rx| child::collect(&rx, OUTPUT_GRACE))
            .unwrap_or_default(),
    })
}

/// Reads `source` on a thread of its own into a channel of chunks; the thread ends at the end of
/// the source (a terminal whose other end closed reads as an error: the end too) or when the
/// receiver is gone.
fn read_chunks(
    mut source: Box<dyn Read + Send>,
) -> std::io::Result<crossbeam_channel::Receiver<Vec<u8>>> {
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(64);
    std::thread::Builder::new()
        .name("pull-output".into())
        .spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                match source.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.send(buffer[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return,
                }
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests;
