//! Where log lines go and how they look.
//!
//! simplelog formats and filters each record (`[LEVEL] message`, dependencies whose debug output
//! can hold request headers (tokens) kept out); this module decides the line's frame and writes
//! it to stderr in one write, so lines of two threads never interleave. Under systemd
//! (`JOURNAL_STREAM` names the very stream stderr is) each line is `<N>message`, N the syslog
//! priority (3 error, 4 warning, 6 info, 7 debug and trace), without a timestamp: journald reads
//! the prefix as the line's priority (so `journalctl -p err` works) and stamps the time itself.
//! Elsewhere (a terminal, OpenRC's log file, a pipe) each line is
//! `2026-12-03T08:32:28.493Z [INFO] message`: UTC, milliseconds, the stamp always 24 characters
//! wide. The logger has no thread of its own.

use crate::config::LogLevel;
use crate::timefmt;
use simplelog::{ConfigBuilder, LevelPadding, SharedLogger, WriteLogger};
use std::cell::RefCell;
use std::io::Write;
use std::time::SystemTime;

/// Log targets never written (their debug lines can carry Authorization headers).
const IGNORED_TARGETS: [&str; 2] = ["ureq", "rustls"];

/// Installs the process's logger at `level`, choosing the format from the environment.
pub fn init(level: LogLevel) {
    // The logger passes everything; the level is the `log` crate's maximum, which a reload
    // changes ([`set_level`]).
    let logger = StderrLogger::new(
        log::LevelFilter::Trace,
        stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()),
    );
    log::set_max_level(level.to_filter());
    // Leaked once: the logger lives as long as the process.
    let _ = log::set_logger(Box::leak(Box::new(logger)));
}

/// Changes the level of every later line (a configuration reload).
pub fn set_level(level: LogLevel) {
    log::set_max_level(level.to_filter());
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

/// The terminal and log-file form: the timestamp before simplelog's `[LEVEL] message` line.
pub fn plain_line(time: SystemTime, formatted: &str) -> String {
    format!("{} {formatted}", timefmt::rfc3339_millis(time))
}

thread_local! {
    /// What simplelog formatted for the record this thread is logging.
    static FORMATTED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The writer simplelog formats into: the calling thread's buffer, framed and written by
/// [`StderrLogger`] once the record is complete.
struct ThreadBuffer;

impl Write for ThreadBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        FORMATTED.with(|buffer| buffer.borrow_mut().extend_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct StderrLogger {
    format: Box<WriteLogger<ThreadBuffer>>,
    journal: bool,
}

impl StderrLogger {
    fn new(level: log::LevelFilter, journal: bool) -> Self {
        let mut config = ConfigBuilder::new();
        config
            .set_time_level(log::LevelFilter::Off)
            .set_thread_level(log::LevelFilter::Off)
            .set_target_level(log::LevelFilter::Off)
            .set_location_level(log::LevelFilter::Off)
            .set_level_padding(LevelPadding::Off);
        // The journal carries the level as the `<N>` prefix instead of `[LEVEL]`.
        if journal {
            config.set_max_level(log::LevelFilter::Off);
        }
        for target in IGNORED_TARGETS {
            config.add_filter_ignore_str(target);
        }
        StderrLogger {
            format: WriteLogger::new(level, config.build(), ThreadBuffer),
            journal,
        }
    }

    /// The framed line(s) of `record`, or `None` when the record is filtered out.
    fn render(&self, record: &log::Record) -> Option<String> {
        FORMATTED.with(|buffer| buffer.borrow_mut().clear());
        log::Log::log(&*self.format, record);
        let formatted = FORMATTED.with(|buffer| std::mem::take(&mut *buffer.borrow_mut()));
        if formatted.is_empty() {
            return None;
        }
        let formatted = String::from_utf8_lossy(&formatted);
        Some(if self.journal {
            journal_lines(record.level(), formatted.trim_end_matches('\n'))
        } else {
            plain_line(SystemTime::now(), &formatted)
        })
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.format.level() >= metadata.level()
            && !IGNORED_TARGETS
                .iter()
                .any(|t| metadata.target().starts_with(t))
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(text) = self.render(record) {
            // One write per record, so lines of two threads never interleave.
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
        }
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

    fn record(level: log::Level, target: &'static str, message: &'static str) -> String {
        let plain = StderrLogger::new(log::LevelFilter::Info, false);
        let args = format_args!("{message}");
        let record = log::Record::builder()
            .level(level)
            .target(target)
            .args(args)
            .build();
        plain.render(&record).unwrap_or_default()
    }

    #[test]
    fn plain_lines_start_with_a_fixed_width_timestamp() {
        use std::time::{Duration, UNIX_EPOCH};
        let t = UNIX_EPOCH + Duration::from_millis(1_795_944_011_000);
        assert_eq!(
            plain_line(t, "[WARN] docker unreachable\n"),
            "2026-11-29T09:20:11.000Z [WARN] docker unreachable\n"
        );
        let line = record(log::Level::Warn, "utopia_node_agent", "docker unreachable");
        assert_eq!(
            line.len(),
            24 + " [WARN] docker unreachable\n".len(),
            "{line:?}"
        );
        assert!(line.ends_with("Z [WARN] docker unreachable\n"), "{line:?}");
    }

    #[test]
    fn simplelog_filters_levels_and_token_bearing_targets() {
        assert_eq!(record(log::Level::Debug, "utopia_node_agent", "x"), "");
        assert_eq!(
            record(log::Level::Error, "ureq::unversioned", "Authorization: x"),
            ""
        );
        assert_eq!(record(log::Level::Error, "rustls::client", "x"), "");
        assert!(record(log::Level::Error, "utopia_node_agent", "x").ends_with("[ERROR] x\n"));
    }

    #[test]
    fn the_journal_form_has_no_stamp_and_no_bracketed_level() {
        let journal = StderrLogger::new(log::LevelFilter::Trace, true);
        let args = format_args!("first\nsecond");
        let record = log::Record::builder()
            .level(log::Level::Error)
            .target("utopia_node_agent")
            .args(args)
            .build();
        assert_eq!(
            journal.render(&record).as_deref(),
            Some("<3>first\n<3>second\n")
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
