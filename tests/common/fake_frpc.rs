//! The fake frpc (tests/fake_frpc/fake_frpc.rs, its header documents the behaviour and knobs):
//! building it, and reading the journal it writes (`FAKE_FRPC_JOURNAL`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the fake frpc binary, built once per test process with `cargo build --example`.
pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
            let out = Command::new(cargo)
                .args([
                    "build",
                    "--quiet",
                    "--example",
                    "fake_frpc",
                    "--manifest-path",
                ])
                .arg(&manifest)
                .output()
                .expect("run cargo build --example fake_frpc");
            assert!(
                out.status.success(),
                "cargo build --example fake_frpc failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Integration tests live in target/<profile>/deps; the example one level up.
            let exe = std::env::current_exe().expect("current_exe");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test binary in target/<profile>/deps");
            let path = profile_dir.join("examples").join("fake_frpc");
            assert!(path.is_file(), "{} was not built", path.display());
            path
        })
        .clone()
}

/// The events a fake frpc wrote to its journal file, one JSON object per line.
pub struct Journal {
    path: PathBuf,
}

impl Journal {
    /// A journal at `dir/frpc-journal.jsonl` (the file appears with the first event).
    pub fn in_dir(dir: &Path) -> Journal {
        Journal {
            path: dir.join("frpc-journal.jsonl"),
        }
    }

    /// The value to put in `FAKE_FRPC_JOURNAL`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("journal line {l:?}: {e}")))
            .collect()
    }

    /// The events named `event` (`start`, `reload`, `api`, `proxy`, `login`, `exit`, ...).
    pub fn of(&self, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// Waits up to `timeout` for an event named `event` that satisfies `pred`; panics with the
    /// whole journal when none comes.
    pub fn wait_for(&self, event: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.of(event).into_iter().find(|e| pred(e)) {
                return e;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {event} event in the fake frpc journal within {timeout:?}:\n{}",
                    std::fs::read_to_string(&self.path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The `Authorization` header value for HTTP Basic auth (what the agent sends frpc's admin API).
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
