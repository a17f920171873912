//! Builds the fake NVML library (`tests/fake_nvml/fake_nvml.c`) for tests.
//!
//! The library is compiled with `gcc` into
//! `$CARGO_TARGET_TMPDIR/fake_nvml/<variant>/libnvidia-ml.so.1`, once per test
//! process and variant, and only when the `.so` is missing or older than the
//! `.c` file. Several test binaries may build at the same time: each compiles
//! to a unique temporary name in the same directory and renames it into place
//! (atomic on the same file system), so a reader never sees a partial file.
//!
//! Load it with `Nvml::builder().lib_path(path.as_os_str()).init()`. The
//! environment knobs understood by the library (`FAKE_NVML_GPU_COUNT`, ...) are
//! documented at the top of the C file; they are read at call time, so set
//! them on a child process (or before the first NVML call) rather than from a
//! test thread of a shared test process. `FAKE_NVML_KNOB_FILE` names a knob file the library
//! re-reads on every call (Xid events, ECC counts, remapped rows, throttling, PCIe, processes,
//! unsupported and failing calls, ...): a test changes the GPUs while the agent runs by
//! rewriting it with [`write_knobs`].
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Which build of the fake library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// All symbols, including `nvmlDeviceGetMemoryInfo_v2`.
    Standard,
    /// Built with `-DFAKE_NVML_NO_MEMORY_V2`: no `nvmlDeviceGetMemoryInfo_v2`
    /// symbol at all (an old driver); only the v1 `nvmlDeviceGetMemoryInfo`.
    NoMemoryV2,
}

impl Variant {
    fn dir_name(self) -> &'static str {
        match self {
            Variant::Standard => "standard",
            Variant::NoMemoryV2 => "no-memory-v2",
        }
    }

    fn defines(self) -> &'static [&'static str] {
        match self {
            Variant::Standard => &[],
            Variant::NoMemoryV2 => &["-DFAKE_NVML_NO_MEMORY_V2"],
        }
    }
}

/// File name of the library inside the per-variant directory.
pub const LIB_NAME: &str = "libnvidia-ml.so.1";

/// Path of the C source of the fake library.
pub fn source_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_nvml/fake_nvml.c")
}

/// Compiles `tests/fake_nvml/fake_nvml.c` with gcc (once per test process and
/// variant; rebuilt when the `.c` file is newer than the `.so`) and returns the
/// path of `libnvidia-ml.so.1` in a per-variant directory under
/// `CARGO_TARGET_TMPDIR`.
///
/// Panics with gcc's output if gcc is missing or fails.
pub fn library(variant: Variant) -> PathBuf {
    static STANDARD: OnceLock<PathBuf> = OnceLock::new();
    static NO_MEMORY_V2: OnceLock<PathBuf> = OnceLock::new();
    let cell = match variant {
        Variant::Standard => &STANDARD,
        Variant::NoMemoryV2 => &NO_MEMORY_V2,
    };
    cell.get_or_init(|| build(variant)).clone()
}

fn build(variant: Variant) -> PathBuf {
    // Serialize builds inside this process (the per-variant OnceLock already
    // does, this also keeps two variants from interleaving their gcc output).
    static BUILD_LOCK: Mutex<()> = Mutex::new(());
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());

    let src = source_path();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fake_nvml")
        .join(variant.dir_name());
    let out = dir.join(LIB_NAME);

    let src_mtime = std::fs::metadata(&src)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("fake NVML: cannot stat C source {}: {e}", src.display()));
    if let Ok(lib_mtime) = std::fs::metadata(&out).and_then(|m| m.modified()) {
        if lib_mtime >= src_mtime {
            return out;
        }
    }

    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("fake NVML: cannot create {}: {e}", dir.display()));

    // Unique per process, per call and per moment: several test binaries may
    // build concurrently into the same directory.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{LIB_NAME}.tmp.{}.{}.{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let mut cmd = Command::new("gcc");
    cmd.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-O2",
        "-g",
        "-fPIC",
        "-shared",
        "-fvisibility=hidden",
        "-Wl,-Bsymbolic",
    ])
    .args(variant.defines())
    .arg("-o")
    .arg(&tmp)
    .arg(&src);

    let output = match cmd.output() {
        Ok(output) => output,
        Err(e) => panic!(
            "fake NVML: cannot run gcc ({e}); gcc is required to build {} for the tests",
            src.display()
        ),
    };
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "fake NVML: gcc failed ({}) building {} ({variant:?}): {:?}\n--- gcc stderr ---\n{}\n--- gcc stdout ---\n{}",
            output.status,
            src.display(),
            cmd,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout),
        );
    }

    if let Err(e) = std::fs::rename(&tmp, &out) {
        let _ = std::fs::remove_file(&tmp);
        panic!(
            "fake NVML: cannot rename {} to {}: {e}",
            tmp.display(),
            out.display()
        );
    }
    out
}

/// Replaces the knob file (`FAKE_NVML_KNOB_FILE`) at `path` with `text` atomically (a temporary
/// file renamed into place), so the library, which re-reads it on every call, never sees half
/// of it.
pub fn write_knobs(path: &Path, text: &str) {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text)
        .unwrap_or_else(|e| panic!("fake NVML: cannot write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("fake NVML: cannot rename to {}: {e}", path.display()));
}

/// A knob file named `name` in a fresh temp dir (kept as long as the dir lives), holding `text`.
pub fn knob_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    write_knobs(&path, text);
    (dir, path)
}

/// Agent options pointing the fake NVML at `knobs`.
pub fn knob_options(knobs: &Path) -> super::AgentOptions {
    super::AgentOptions {
        env: vec![(
            "FAKE_NVML_KNOB_FILE".to_string(),
            knobs.to_string_lossy().into_owned(),
        )],
        ..super::AgentOptions::default()
    }
}
