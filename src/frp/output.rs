//! frpc's output into the agent's log: line by line, prefixed `frpc:`, at frpc's own level
//! (`[E]` error, `[W]` warn, `[I]` info, `[D]`/`[T]` debug), its timestamp dropped (the agent's
//! log has one), every secret the agent gave it (the frps token, the admin password, the stcp
//! secret) replaced before the line goes anywhere. What matters to the supervisor (a login, a
//! failed one) is also sent to it as an [`OutputEvent`].

use crossbeam_channel::Sender;

/// What frpc said that changes the tunnel's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEvent {
    /// frpc logged in to frps.
    LoggedIn,
    /// A login or connection to frps failed (the scrubbed message).
    LoginFailed(String),
    /// An error line (the scrubbed message), kept as the tunnel's last error if frpc exits.
    Error(String),
}

/// Longest message an [`OutputEvent`] carries (bytes; a longer one is cut).
const EVENT_MESSAGE_CAP: usize = 1024;

/// What replaces a secret in frpc's output.
const REDACTED: &str = "[redacted]";

/// Scrubs and classifies frpc's output lines.
#[derive(Clone)]
pub struct OutputFilter {
    secrets: Vec<String>,
}

impl OutputFilter {
    /// `secrets`: every secret frpc was given; empty ones are ignored.
    pub fn new(secrets: Vec<String>) -> OutputFilter {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        OutputFilter { secrets }
    }

    /// The line without secrets.
    pub fn scrub(&self, line: &str) -> String {
        let mut out = line.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        out
    }

    /// Logs one line of frpc's output and returns the event it carries, if any.
    pub fn handle(&self, raw: &str) -> Option<OutputEvent> {
        let mut line = self.scrub(&strip_ansi(raw));
        if raw.len() >= crate::child::MAX_LINE {
            // The line was cut: its end may be the start of a secret, which `scrub` cannot see.
            self.drop_secret_start(&mut line);
            line.push_str(" [cut]");
        }
        let line = line.trim_end();
        if line.is_empty() {
            return None;
        }
        let (level, message) = split_level(line);
        log::log!(target: "frpc", level, "frpc: {message}");
        // What an event carries ends up in `/health` and every heartbeat: kept short.
        let short = || {
            if message.len() <= EVENT_MESSAGE_CAP {
                return message.to_string();
            }
            let mut end = EVENT_MESSAGE_CAP;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &message[..end])
        };
        if message.contains("login to server success") {
            Some(OutputEvent::LoggedIn)
        } else if message.contains("connect to server error")
            || message.contains("login to the server failed")
        {
            Some(OutputEvent::LoginFailed(short()))
        } else if level == log::Level::Error {
            Some(OutputEvent::Error(short()))
        } else {
            None
        }
    }

    /// Removes an end of `line` that is the start of a secret.
    fn drop_secret_start(&self, line: &mut String) {
        for secret in &self.secrets {
            let longest = (1..secret.len())
                .rev()
                .filter(|&k| secret.is_char_boundary(k))
                .find(|&k| line.ends_with(&secret[..k]));
            if let Some(k) = longest {
                line.truncate(line.len() - k);
            }
        }
    }

    /// Reads `source` to its end on a thread of its own, handling every line and sending the
    /// events to `events`.
    pub fn pipe(
        self,
        source: impl std::io::Read + Send + 'static,
        name: &str,
        events: Sender<OutputEvent>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        crate::child::for_each_line(source, name, move |line| {
            if let Some(event) = self.handle(&line) {
                // The supervisor may be gone (shutdown); the line is logged regardless.
                let _ = events.send(event);
            }
            true
        })
    }
}

/// frpc's `2024-01-01 12:00:00.000 [I] [caller] message` as (level, `[caller] message`); any
/// other line (a Go panic, a message printed before logging starts) is a warning as it is.
fn split_level(line: &str) -> (log::Level, &str) {
    let parsed = (|| {
        let start = line.find(" [")?;
        let rest = &line[start + 2..];
        let (letter, message) = rest.split_once("] ")?;
        let level = match letter {
            "E" => log::Level::Error,
            "W" => log::Level::Warn,
            "I" => log::Level::Info,
            "D" | "T" => log::Level::Debug,
            _ => return None,
        };
        // The part before the level is frpc's timestamp: digits, '-', ':', '.', ' '.
        let stamp_ok = line[..start]
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b' ' | b'/'));
        stamp_ok.then_some((level, message))
    })();
    parsed.unwrap_or((log::Level::Warn, line))
}

/// The line without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_kept_and_the_timestamp_dropped() {
        assert_eq!(
            split_level(
                "2024-01-01 12:00:00.000 [W] [client/service.go:298] connect to server error: x"
            ),
            (
                log::Level::Warn,
                "[client/service.go:298] connect to server error: x"
            )
        );
        assert_eq!(
            split_level("2024-01-01 12:00:00.000 [E] [a.go:1] boom").0,
            log::Level::Error
        );
        assert_eq!(
            split_level("2024/01/01 12:00:00 [I] [a.go:1] hi"),
            (log::Level::Info, "[a.go:1] hi")
        );
        assert_eq!(
            split_level("panic: runtime error [x] y"),
            (log::Level::Warn, "panic: runtime error [x] y")
        );
    }

    #[test]
    fn a_cut_line_keeps_no_start_of_a_secret_and_events_stay_short() {
        let secret = "s3cret-frps-token-0123456789";
        let filter = OutputFilter::new(vec![secret.into()]);
        let mut raw =
            "2024-01-01 12:00:00.000 [E] [a.go:1] login to the server failed: ".to_string();
        raw.push_str(&"x".repeat(crate::child::MAX_LINE - raw.len() - 10));
        raw.push_str(&secret[..10]);
        assert_eq!(raw.len(), crate::child::MAX_LINE);
        match filter.handle(&raw) {
            Some(OutputEvent::LoginFailed(message)) => {
                assert!(
                    message.len() <= EVENT_MESSAGE_CAP + '…'.len_utf8(),
                    "{}",
                    message.len()
                );
                assert!(message.starts_with("[a.go:1] login to the server failed: xxx"));
            }
            other => panic!("{other:?}"),
        }
        let mut line = format!("x{}", &secret[..10]);
        filter.drop_secret_start(&mut line);
        assert_eq!(line, "x");
    }

    #[test]
    fn secrets_never_pass_and_events_are_recognised() {
        let filter = OutputFilter::new(vec!["tok".into(), "token-long".into(), String::new()]);
        assert_eq!(
            filter.scrub("token [token-long] and tok"),
            "[redacted]en [[redacted]] and [redacted]"
        );
        assert_eq!(
            filter.handle("\u{1b}[1;32m2024-01-01 12:00:00.000 [I] [client/service.go:287] [ab] login to server success, get run id [ab]\u{1b}[0m"),
            Some(OutputEvent::LoggedIn)
        );
        assert_eq!(
            filter.handle("2024-01-01 12:00:00.000 [W] [client/service.go:298] connect to server error: bad tok"),
            Some(OutputEvent::LoginFailed(
                "[client/service.go:298] connect to server error: bad [redacted]".into()
            ))
        );
        assert_eq!(
            filter.handle("2024-01-01 12:00:00.000 [I] [x.go:1] start proxy success"),
            None
        );
        assert_eq!(filter.handle(""), None);
    }
}
