//! Where log lines go and how they look.
//!
//! Under systemd (`JOURNAL_STREAM` names the very stream stderr is) each line is `<N>message`,
//! N the syslog priority (3 error, 4 warning, 6 info, 7 debug and trace), without a timestamp:
//! journald reads the prefix as the line's priority (so `journalctl -p err` works) and stamps
//! the time itself. Elsewhere (a terminal, OpenRC's log file, a pipe) each line is
//! `2026-12-03T08:32:28.493Z [INFO] message`: UTC, milliseconds, the stamp always 24
//! characters wide. One write per line to stderr; the logger has no thread of its own.
//! Dependencies whose debug output can hold request headers (tokens) are kept out in both.

use crate::config::LogLevel;
use crate::timefmt;
use std::io::Write;
use std::time::SystemTime;

/// Log targets never written (their debug lines can carry Authorization headers).
const IGNORED_TARGETS: [&str; 2] = ["ureq", "rustls"];

/// Installs the process's logger at `level`, choosing the format from the environment.
pub fn init(level: LogLevel) {
    let logger = StderrLogger {
        level: level.to_filter(),
        journal: stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
    };
    log::set_max_level(logger.level);
    // Leaked once: the logger lives as long as the process.
    let _ = log::set_logger(Box::leak(Box::new(logger)));
}

/// Whether `journal_stream` (`JOURNAL_STREAM`, "DEV:INODE") is the stream stderr is connected
/// to; systemd sets it for the service's own stderr, and a redirected stderr must not get the
/// journal's format.
pub fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    journal_stream.is_some_and(|value| fd_is_stream(2, value))
}

fn fd_is_stream(fd: i32, value: &str) -> bool {
    let Some((dev, ino)) = value.trim().split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat(2) writes into the zeroed struct we own; fd is only read.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return false;
    }
    stat.st_dev == dev && stat.st_ino == ino
}

/// syslog priority of a log level.
fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// The journal form of a message: every line carries the prefix (journald reads each line as
/// its own entry).
pub fn journal_lines(level: log::Level, message: &str) -> String {
    let prefix = priority(level);
    let mut out = String::with_capacity(message.len() + 4);
    for line in message.lines() {
        out.push_str(&format!("<{prefix}>{line}\n"));
    }
    if out.is_empty() {
        out.push_str(&format!("<{prefix}>\n"));
    }
    out
}

/// The terminal and log-file form: `2026-12-03T08:32:28.493Z [INFO] message`.
pub fn plain_line(time: SystemTime, level: log::Level, message: &str) -> String {
    format!("{} [{level}] {message}\n", timefmt::rfc3339_millis(time))
}

struct StderrLogger {
    level: log::LevelFilter,
    journal: bool,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
            && !IGNORED_TARGETS
                .iter()
                .any(|t| metadata.target().starts_with(t))
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let message = record.args().to_string();
        let text = if self.journal {
            journal_lines(record.level(), &message)
        } else {
            plain_line(SystemTime::now(), record.level(), &message)
        };
        // One write per record, so lines of two threads never interleave.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn priorities_prefix_every_line() {
        assert_eq!(journal_lines(log::Level::Error, "boom"), "<3>boom\n");
        assert_eq!(journal_lines(log::Level::Warn, "a\nb"), "<4>a\n<4>b\n");
        assert_eq!(journal_lines(log::Level::Info, "up"), "<6>up\n");
        assert_eq!(journal_lines(log::Level::Debug, ""), "<7>\n");
        assert_eq!(journal_lines(log::Level::Trace, "t"), "<7>t\n");
    }

    #[test]
    fn plain_lines_start_with_a_fixed_width_timestamp() {
        use std::time::{Duration, UNIX_EPOCH};
        let t = UNIX_EPOCH + Duration::from_millis(1_795_944_011_000);
        assert_eq!(
            plain_line(t, log::Level::Warn, "docker unreachable"),
            "2026-11-29T09:20:11.000Z [WARN] docker unreachable\n"
        );
    }

    #[test]
    fn journal_stream_must_name_the_stream_itself() {
        let file = tempfile::tempfile().unwrap();
        let meta = file.metadata().unwrap();
        let fd = file.as_raw_fd();
        assert!(fd_is_stream(fd, &format!("{}:{}", meta.dev(), meta.ino())));
        assert!(!fd_is_stream(
            fd,
            &format!("{}:{}", meta.dev(), meta.ino() + 1)
        ));
        assert!(!fd_is_stream(fd, "garbage"));
        assert!(!fd_is_stream(fd, ""));
        assert!(!stderr_is_journal(None));
    }
}
