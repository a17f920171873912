//! What a GPU's signals mean for its health, in one place: the Xid table ([`XID_TABLE`],
//! grounded in NVIDIA's Xid catalogue, docs.nvidia.com/deploy/xid-errors), the counter rules
//! ([`CounterRule`] constants) and [`assess`], which turns a sample and its Xid history into
//! `healthy`, `degraded` or `failed` with one reason per finding. The README's "GPU health" tables are
//! these tables; a unit test keeps them in step.
//!
//! Also the Xid history ([`XidHistory`]): the Xid errors the event thread received, per GPU
//! UUID, persisted beside the identity file (`<identity_file_path>.gpu-health.json`) so a
//! restart does not forget a GPU that fell off the bus. Only an operator clears it
//! (`POST /api/v1/gpus/{index}/health/reset`).

use crate::platform::identity::{read_regular_file, write_atomic, FileProblem};
use crate::state::{GpuHealth, GpuSample, XidView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What an Xid or a counter does to a GPU's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Recorded and shown, not a GPU fault (the application's own error).
    None,
    Degraded,
    Failed,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::None => "none",
            Severity::Degraded => "degraded",
            Severity::Failed => "failed",
        }
    }

    fn health(self) -> GpuHealth {
        match self {
            Severity::None => GpuHealth::Healthy,
            Severity::Degraded => GpuHealth::Degraded,
            Severity::Failed => GpuHealth::Failed,
        }
    }
}

/// One row of the Xid table.
pub struct XidRule {
    pub xids: &'static [u64],
    pub severity: Severity,
    pub meaning: &'static str,
}

/// Xid → severity. An Xid not listed here counts as `degraded` ([`UNLISTED_XID`]).
pub const XID_TABLE: &[XidRule] = &[
    XidRule {
        xids: &[13, 31, 43, 45],
        severity: Severity::None,
        meaning: "application error (graphics engine exception, memory page fault, stopped \
                  channel, preemptive cleanup): not a GPU fault",
    },
    XidRule {
        xids: &[48],
        severity: Severity::Failed,
        meaning: "double-bit ECC error",
    },
    XidRule {
        xids: &[61],
        severity: Severity::Degraded,
        meaning: "internal micro-controller breakpoint",
    },
    XidRule {
        xids: &[62],
        severity: Severity::Failed,
        meaning: "internal micro-controller halt",
    },
    XidRule {
        xids: &[63],
        severity: Severity::Degraded,
        meaning: "ECC page retirement or row remapping recorded (reset the GPU to apply)",
    },
    XidRule {
        xids: &[64],
        severity: Severity::Failed,
        meaning: "ECC page retirement or row remapping recording failed",
    },
    XidRule {
        xids: &[74],
        severity: Severity::Degraded,
        meaning: "NVLink error",
    },
    XidRule {
        xids: &[79],
        severity: Severity::Failed,
        meaning: "GPU has fallen off the bus",
    },
    XidRule {
        xids: &[92],
        severity: Severity::Degraded,
        meaning: "high single-bit ECC error rate",
    },
    XidRule {
        xids: &[94],
        severity: Severity::Degraded,
        meaning: "contained ECC error (the application was stopped; reset the GPU soon)",
    },
    XidRule {
        xids: &[95],
        severity: Severity::Failed,
        meaning: "uncontained ECC error",
    },
    XidRule {
        xids: &[119, 120],
        severity: Severity::Failed,
        meaning: "GSP (GPU System Processor) timeout or error",
    },
];

/// How an Xid missing from [`XID_TABLE`] counts.
pub const UNLISTED_XID: XidRule = XidRule {
    xids: &[],
    severity: Severity::Degraded,
    meaning: "critical Xid not in the agent's table",
};

/// One counter or state read every sample, and what it does to health.
pub struct CounterRule {
    /// The signal, as the README's table names it.
    #[cfg_attr(
        not(test),
        allow(dead_code, reason = "the README's column, checked by a test")
    )]
    pub signal: &'static str,
    pub severity: Severity,
    /// The reason shown (for counts and widths, an example of it).
    pub reason: &'static str,
}

const fn counter(signal: &'static str, severity: Severity, reason: &'static str) -> CounterRule {
    CounterRule {
        signal,
        severity,
        reason,
    }
}

pub const GPU_LOST: CounterRule = counter(
    "GPU lost (NVML: GPU_IS_LOST)",
    Severity::Failed,
    "GPU lost (fell off the bus)",
);
pub const UNCORRECTABLE_ECC: CounterRule = counter(
    "volatile uncorrected ECC errors > 0",
    Severity::Failed,
    "uncorrectable ECC errors: N",
);
pub const REMAP_FAILED: CounterRule = counter(
    "row remapping failure",
    Severity::Failed,
    "row remapping failed",
);
pub const REMAP_PENDING: CounterRule = counter(
    "row remapping pending",
    Severity::Degraded,
    "row remapping pending (reset the GPU)",
);
pub const RETIRED_PAGES_PENDING: CounterRule = counter(
    "retired pages pending",
    Severity::Degraded,
    "retired pages pending (reset the GPU)",
);
pub const PCIE_NARROW: CounterRule = counter(
    "PCIe link narrower than its maximum",
    Severity::Degraded,
    "PCIe x16 → x4",
);
pub const HW_SLOWDOWN: CounterRule = counter(
    "throttle: HW slowdown",
    Severity::Degraded,
    "hardware slowdown",
);
pub const THERMAL_SLOWDOWN: CounterRule = counter(
    "throttle: HW or SW thermal slowdown",
    Severity::Degraded,
    "thermal slowdown",
);
pub const POWER_BRAKE: CounterRule = counter(
    "throttle: HW power brake",
    Severity::Degraded,
    "power brake slowdown",
);

/// Every counter rule, in the README's order (and the order of `health_reasons`).
#[cfg(test)]
pub const COUNTER_RULES: &[&CounterRule] = &[
    &GPU_LOST,
    &UNCORRECTABLE_ECC,
    &REMAP_FAILED,
    &REMAP_PENDING,
    &RETIRED_PAGES_PENDING,
    &PCIE_NARROW,
    &HW_SLOWDOWN,
    &THERMAL_SLOWDOWN,
    &POWER_BRAKE,
];

/// The rule for `xid`.
pub fn classify(xid: u64) -> &'static XidRule {
    XID_TABLE
        .iter()
        .find(|rule| rule.xids.contains(&xid))
        .unwrap_or(&UNLISTED_XID)
}

/// One Xid as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct XidRecord {
    pub xid: u64,
    /// RFC 3339, when the agent received it.
    pub at: String,
}

impl XidRecord {
    pub fn view(&self) -> XidView {
        let rule = classify(self.xid);
        XidView {
            xid: self.xid,
            at: self.at.clone(),
            severity: rule.severity.as_str(),
            meaning: rule.meaning,
        }
    }
}

/// Sets `sample.health` and `sample.health_reasons` from its signals and its Xid history.
pub fn assess(sample: &mut GpuSample, xids: &[XidRecord]) {
    let mut findings: Vec<(Severity, String)> = Vec::new();
    let mut found = |rule: &CounterRule, reason: Option<String>| {
        findings.push((
            rule.severity,
            reason.unwrap_or_else(|| rule.reason.to_string()),
        ));
    };
    if sample.lost {
        found(&GPU_LOST, None);
    }
    if let Some(n) = sample.ecc_errors.volatile_uncorrected.filter(|n| *n > 0) {
        found(
            &UNCORRECTABLE_ECC,
            Some(format!("uncorrectable ECC errors: {n}")),
        );
    }
    if let Some(rows) = sample.remapped_rows {
        if rows.failed {
            found(&REMAP_FAILED, None);
        } else if rows.pending {
            found(&REMAP_PENDING, None);
        }
    }
    if sample.retired_pages_pending == Some(true) {
        found(&RETIRED_PAGES_PENDING, None);
    }
    if let (Some(width), Some(max)) = (sample.pcie.width, sample.pcie.max_width) {
        if width > 0 && width < max {
            found(&PCIE_NARROW, Some(format!("PCIe x{max} → x{width}")));
        }
    }
    if let Some(reasons) = &sample.throttle_reasons {
        let has = |r: &str| reasons.contains(&r);
        if has("hw_slowdown") {
            found(&HW_SLOWDOWN, None);
        }
        if has("hw_thermal_slowdown") || has("sw_thermal_slowdown") {
            found(&THERMAL_SLOWDOWN, None);
        }
        if has("hw_power_brake_slowdown") {
            found(&POWER_BRAKE, None);
        }
    }
    // Xids first: they are why a GPU failed, the counters often follow from them.
    let mut xid_findings: Vec<(Severity, String)> = xids
        .iter()
        .filter_map(|record| {
            let rule = classify(record.xid);
            (rule.severity != Severity::None).then(|| {
                (
                    rule.severity,
                    format!("xid {} at {}: {}", record.xid, record.at, rule.meaning),
                )
            })
        })
        .collect();
    xid_findings.extend(findings);
    sample.health = xid_findings
        .iter()
        .map(|(severity, _)| severity.health())
        .max()
        .unwrap_or(GpuHealth::Healthy);
    sample.health_reasons = xid_findings.into_iter().map(|(_, reason)| reason).collect();
    sample.xid_errors = xids.iter().map(XidRecord::view).collect();
}

/// How many Xids are kept per GPU (the oldest are dropped).
const MAX_PER_GPU: usize = 32;
/// The history file is small; anything larger is not ours.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Default, Serialize, Deserialize)]
struct HistoryFile {
    /// GPU key (its UUID, or `index-N` when it has none) → its Xids, oldest first.
    gpus: BTreeMap<String, Vec<XidRecord>>,
}

/// Where the Xid history of the agent whose identity file is `identity_path` is kept.
pub fn history_path(identity_path: &Path) -> PathBuf {
    let mut name = identity_path.as_os_str().to_os_string();
    name.push(".gpu-health.json");
    PathBuf::from(name)
}

/// The key a GPU's Xids are kept under: its UUID, or its index when NVML gives no UUID.
pub fn gpu_key(index: u32, uuid: Option<&str>) -> String {
    match uuid.filter(|u| !u.is_empty()) {
        Some(uuid) => uuid.to_string(),
        None => format!("index-{index}"),
    }
}

/// The Xid history, shared by the event thread (records), the GPU sampler (reads) and the API
/// (resets). Every change is written through to its file (when it has one).
#[derive(Clone, Default)]
pub struct XidHistory {
    inner: Arc<Mutex<(Option<PathBuf>, HistoryFile)>>,
}

impl XidHistory {
    /// A history kept in memory only.
    #[cfg(test)]
    pub fn in_memory() -> Self {
        XidHistory::default()
    }

    /// Loads the history kept at `path`; a missing file is an empty history, a damaged one is
    /// logged and replaced at the next change.
    pub fn load(path: PathBuf) -> Self {
        let file = match read_regular_file(&path, MAX_FILE_BYTES) {
            Ok(bytes) => match serde_json::from_slice::<HistoryFile>(&bytes) {
                Ok(file) => {
                    let count: usize = file.gpus.values().map(Vec::len).sum();
                    if count > 0 {
                        log::info!(
                            "GPU Xid history: {count} Xid error(s) on {} GPU(s) kept from before \
                             the restart ({}); clear with POST /api/v1/gpus/<index>/health/reset",
                            file.gpus.len(),
                            path.display()
                        );
                    }
                    file
                }
                Err(e) => {
                    log::warn!(
                        "GPU Xid history {} is damaged ({e}); starting with an empty one",
                        path.display()
                    );
                    HistoryFile::default()
                }
            },
            Err(FileProblem::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                HistoryFile::default()
            }
            Err(problem) => {
                let why = match problem {
                    FileProblem::Io(e) => e.to_string(),
                    FileProblem::NotRegular(what) => what.to_string(),
                };
                log::warn!(
                    "cannot read the GPU Xid history {}: {why}; starting with an empty one",
                    path.display()
                );
                HistoryFile::default()
            }
        };
        XidHistory {
            inner: Arc::new(Mutex::new((Some(path), file))),
        }
    }

    fn with<R>(&self, change: impl FnOnce(&mut HistoryFile) -> (R, bool)) -> R {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (path, file) = &mut *guard;
        let (result, changed) = change(file);
        if changed {
            if let Some(path) = path {
                let mut json = serde_json::to_vec_pretty(&*file).unwrap_or_default();
                json.push(b'\n');
                if let Err(e) = write_atomic(path, &json) {
                    log::warn!("cannot keep the GPU Xid history: {e}");
                }
            }
        }
        result
    }

    /// Records Xid `xid` of the GPU keyed `key`, received `at`; written to the file now when
    /// `persist` (otherwise with the next change that is).
    pub fn record(&self, key: &str, xid: u64, at: String, persist: bool) {
        self.with(|file| {
            let list = file.gpus.entry(key.to_string()).or_default();
            list.push(XidRecord { xid, at });
            if list.len() > MAX_PER_GPU {
                let excess = list.len() - MAX_PER_GPU;
                list.drain(..excess);
            }
            ((), persist)
        });
    }

    /// The Xids of the GPU keyed `key`, oldest first.
    pub fn get(&self, key: &str) -> Vec<XidRecord> {
        self.with(|file| (file.gpus.get(key).cloned().unwrap_or_default(), false))
    }

    /// Forgets the Xids of the GPU keyed `key`; returns how many there were.
    pub fn reset(&self, key: &str) -> usize {
        self.with(|file| match file.gpus.remove(key) {
            Some(list) => (list.len(), true),
            None => (0, false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RemappedRows;

    #[test]
    fn the_readme_tables_are_these_tables() {
        let readme = include_str!("../../README.md");
        let ids = |xids: &[u64]| {
            xids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for rule in XID_TABLE.iter().chain([&UNLISTED_XID]) {
            let xids = if rule.xids.is_empty() {
                "any other".to_string()
            } else {
                ids(rule.xids)
            };
            let row = format!("| {xids} | {} | {} |", rule.severity.as_str(), rule.meaning);
            assert!(readme.contains(&row), "README lacks the Xid row\n{row}");
        }
        for rule in COUNTER_RULES {
            let row = format!(
                "| {} | {} | `{}` |",
                rule.signal,
                rule.severity.as_str(),
                rule.reason
            );
            assert!(readme.contains(&row), "README lacks the counter row\n{row}");
        }
    }

    #[test]
    fn xids_classify_as_the_catalogue_says() {
        assert_eq!(classify(79).severity, Severity::Failed);
        assert_eq!(classify(48).severity, Severity::Failed);
        assert_eq!(classify(95).severity, Severity::Failed);
        assert_eq!(classify(120).severity, Severity::Failed);
        assert_eq!(classify(63).severity, Severity::Degraded);
        assert_eq!(classify(94).severity, Severity::Degraded);
        for app in [13, 31, 43] {
            assert_eq!(classify(app).severity, Severity::None, "xid {app}");
        }
        assert_eq!(classify(12345).severity, Severity::Degraded);
        // Every Xid appears once.
        let mut all: Vec<u64> = XID_TABLE
            .iter()
            .flat_map(|r| r.xids.iter().copied())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn assessment_takes_the_worst_finding_and_lists_every_reason() {
        let mut gpu = GpuSample::empty(0);
        assess(&mut gpu, &[]);
        assert_eq!(gpu.health, GpuHealth::Healthy);
        assert!(gpu.health_reasons.is_empty());

        gpu.pcie.width = Some(4);
        gpu.pcie.max_width = Some(16);
        gpu.throttle_reasons = Some(vec!["sync_boost", "hw_thermal_slowdown"]);
        let app = XidRecord {
            xid: 13,
            at: "t0".into(),
        };
        assess(&mut gpu, std::slice::from_ref(&app));
        assert_eq!(gpu.health, GpuHealth::Degraded);
        assert_eq!(gpu.health_reasons, ["PCIe x16 → x4", "thermal slowdown"]);
        assert_eq!(gpu.xid_errors.len(), 1, "application Xids are still shown");
        assert_eq!(gpu.xid_errors[0].severity, "none");

        gpu.ecc_errors.volatile_uncorrected = Some(3);
        gpu.remapped_rows = Some(RemappedRows {
            corrected: 0,
            uncorrected: 2,
            pending: true,
            failed: true,
        });
        let fallen = XidRecord {
            xid: 79,
            at: "2026-01-01T00:00:00Z".into(),
        };
        assess(&mut gpu, &[app, fallen]);
        assert_eq!(gpu.health, GpuHealth::Failed);
        assert_eq!(
            gpu.health_reasons[..3],
            [
                "xid 79 at 2026-01-01T00:00:00Z: GPU has fallen off the bus",
                "uncorrectable ECC errors: 3",
                "row remapping failed"
            ]
        );
    }

    #[test]
    fn history_survives_a_reload_and_reset_clears_one_gpu() {
        let dir = tempfile::tempdir().unwrap();
        let path = history_path(&dir.path().join("node_id"));
        assert!(path.ends_with("node_id.gpu-health.json"));
        let history = XidHistory::load(path.clone());
        assert!(history.get("GPU-a").is_empty());
        history.record("GPU-a", 79, "t1".into(), true);
        history.record("GPU-b", 48, "t2".into(), true);
        let again = XidHistory::load(path.clone());
        assert_eq!(
            again.get("GPU-a"),
            [XidRecord {
                xid: 79,
                at: "t1".into()
            }]
        );
        assert_eq!(again.reset("GPU-a"), 1);
        assert_eq!(again.reset("GPU-a"), 0);
        let third = XidHistory::load(path.clone());
        assert!(third.get("GPU-a").is_empty());
        assert_eq!(third.get("GPU-b").len(), 1);
        // An application Xid is kept in memory, written with the next one that matters.
        third.record("GPU-b", 13, "t3".into(), false);
        assert_eq!(XidHistory::load(path.clone()).get("GPU-b").len(), 1);
        assert_eq!(third.get("GPU-b").len(), 2);
        for n in 0..40 {
            third.record("GPU-b", n, format!("t{n}"), true);
        }
        assert_eq!(third.get("GPU-b").len(), MAX_PER_GPU);
        assert_eq!(third.get("GPU-b")[MAX_PER_GPU - 1].xid, 39);
        // A damaged file is an empty history, not a refusal to start.
        std::fs::write(&path, b"{not json").unwrap();
        assert!(XidHistory::load(path).get("GPU-b").is_empty());
        assert_eq!(gpu_key(3, None), "index-3");
        assert_eq!(gpu_key(3, Some("GPU-x")), "GPU-x");
    }
}
