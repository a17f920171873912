//! The Xid event thread: waits on an NVML event set for critical Xid errors of every GPU that
//! reports them and records each one in the [`XidHistory`] (the GPU sampler turns the history
//! into health at its next sample).
//!
//! - Owns: its own NVML handle (NVML counts its users; the sampler's handle is not shared) and
//!   the event set.
//! - Receives: Xid events from NVML, waited for at most [`WAIT_MS`] at a time, so shutdown is
//!   seen within that.
//! - Sends: nothing; writes the history (which writes its file through).
//! - Stops: when the shutdown channel closes. When NVML cannot be initialised or the wait fails
//!   (the driver went away), it starts over after `gpu.init_retry_secs`.

use crate::component::StartError;
use crate::config::GpuSettings;
use crate::shutdown::Shutdown;
use crate::telemetry::gpu::init_nvml;
use crate::telemetry::gpu_health::{classify, gpu_key, Severity, XidHistory};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enums::event::XidError;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{EventSet, Nvml};
use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Longest single wait on the event set: how long shutdown may wait for this thread.
pub const WAIT_MS: u32 = 250;
/// How often the GPUs are looked at again when none reports Xid events.
const NO_EVENTS_RECHECK: Duration = Duration::from_secs(60);

/// Starts the Xid event thread.
pub fn start(
    config: &GpuSettings,
    history: XidHistory,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    let watcher = Watcher {
        library_path: config
            .nvml_library_path
            .as_ref()
            .map(|p| OsString::from(p.as_os_str())),
        retry: config.init_retry.max(Duration::from_secs(1)),
        history,
        last_problem: None,
        logged: HashMap::new(),
    };
    crate::component::spawn("gpu-xid-events", move || watcher.run(&shutdown))
}

/// Why watching stopped.
enum Stop {
    Shutdown,
    /// Start over after the retry interval; the text says why (logged once while it repeats).
    Retry(String),
    /// Nothing to watch now; look again later.
    Idle(String),
    /// NVML is unavailable (reported by the sampler): try again after the retry interval.
    Quiet,
}

struct Watcher {
    library_path: Option<OsString>,
    retry: Duration,
    history: XidHistory,
    last_problem: Option<String>,
    /// (GPU, Xid) → when it was last logged and how many arrived since without a log line, so
    /// a storm of one Xid (an application faulting in a loop) is one log line a minute.
    logged: HashMap<(u32, u64), (Instant, u64)>,
}

/// How often one Xid of one GPU is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// A GPU registered on the event set.
struct Watched {
    handle: nvml_wrapper_sys::bindings::nvmlDevice_t,
    index: u32,
    key: String,
}

impl Watcher {
    fn run(mut self, shutdown: &Shutdown) {
        let stamp = crate::notify::watch("gpu-xid-events");
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let stop = match self.init() {
                Ok(nvml) => self.watch(&nvml, shutdown, &stamp),
                Err(why) => {
                    // The GPU sampler already says why NVML is unavailable.
                    log::debug!("Xid events: {why}");
                    Stop::Quiet
                }
            };
            let wait = match stop {
                Stop::Shutdown => break,
                Stop::Retry(why) => {
                    if self.last_problem.as_deref() != Some(why.as_str()) {
                        log::warn!(
                            "Xid events unavailable: {why}; retrying every {}s",
                            self.retry.as_secs()
                        );
                        self.last_problem = Some(why);
                    }
                    self.retry
                }
                Stop::Quiet => self.retry,
                Stop::Idle(why) => {
                    if self.last_problem.as_deref() != Some(why.as_str()) {
                        log::info!("{why}");
                        self.last_problem = Some(why);
                    }
                    NO_EVENTS_RECHECK
                }
            };
            if stamp.wait(shutdown, wait) {
                break;
            }
        }
        log::debug!("gpu-xid-events stopped");
    }

    fn init(&self) -> Result<Box<Nvml>, String> {
        init_nvml(self.library_path.as_deref()).map_err(|e| format!("NVML init failed: {e}"))
    }

    /// Registers every GPU that reports Xid events, then waits for events until shutdown or a
    /// failure.
    fn watch(
        &mut self,
        nvml: &Nvml,
        shutdown: &Shutdown,
        stamp: &crate::notify::LivenessStamp,
    ) -> Stop {
        let mut skip = BTreeSet::new();
        let (set, watched) = loop {
            match register(nvml, &skip) {
                Ok(done) => break done,
                Err(Registration::Skip(index, why)) => {
                    log::warn!("GPU {index}: cannot watch for Xid errors: {why}");
                    skip.insert(index);
                }
                Err(Registration::Failed(why)) => return Stop::Retry(why),
            }
        };
        if watched.is_empty() {
            return Stop::Idle(
                "no GPU reports Xid events through NVML; Xid errors will not be seen".into(),
            );
        }
        self.last_problem = None;
        let indices: Vec<String> = watched.iter().map(|w| w.index.to_string()).collect();
        log::info!("watching GPU(s) {} for Xid errors", indices.join(", "));
        loop {
            stamp.tick();
            match set.wait(WAIT_MS) {
                Ok(event) => {
                    let xid = match event.event_data {
                        Some(XidError::Value(xid)) => xid,
                        Some(XidError::Unknown) => 999,
                        None => continue,
                    };
                    // SAFETY: only compared with the handles registered above, never used.
                    let handle = unsafe { event.device.handle() };
                    let (index, key) = match watched.iter().find(|w| w.handle == handle) {
                        Some(w) => (w.index, w.key.clone()),
                        None => match event.device.index() {
                            Ok(index) => {
                                (index, gpu_key(index, event.device.uuid().ok().as_deref()))
                            }
                            Err(_) => continue,
                        },
                    };
                    self.record(index, &key, xid);
                }
                Err(NvmlError::Timeout) => {}
                Err(e) => return Stop::Retry(format!("waiting for Xid events failed: {e}")),
            }
            if shutdown.is_triggered() {
                return Stop::Shutdown;
            }
        }
    }

    fn record(&mut self, index: u32, key: &str, xid: u64) {
        let rule = classify(xid);
        let at = crate::timefmt::rfc3339(SystemTime::now());
        // Only Xids that change health must survive a restart (and cost a file write).
        self.history
            .record(key, xid, at, rule.severity != Severity::None);
        let now = Instant::now();
        let suppressed = match self.logged.get_mut(&(index, xid)) {
            Some((last, count)) if now.duration_since(*last) < LOG_EVERY => {
                *count += 1;
                return;
            }
            Some((_, count)) => *count,
            None => 0,
        };
        self.logged.insert((index, xid), (now, 0));
        let again = if suppressed > 0 {
            format!(" (and {suppressed} more in the last minute, not logged)")
        } else {
            String::new()
        };
        if rule.severity == Severity::None {
            log::info!(
                "GPU {index} ({key}): Xid {xid}{again}: {} (health unchanged)",
                rule.meaning
            );
        } else {
            log::error!(
                "GPU {index} ({key}): Xid {xid}{again}: {}; GPU marked {}",
                rule.meaning,
                rule.severity.as_str()
            );
        }
    }
}

enum Registration {
    /// This GPU cannot be registered: build the set again without it.
    Skip(u32, String),
    Failed(String),
}

/// A fresh event set with every GPU (but `skip`) that supports critical Xid events.
fn register<'n>(
    nvml: &'n Nvml,
    skip: &BTreeSet<u32>,
) -> Result<(EventSet<'n>, Vec<Watched>), Registration> {
    let failed = |what: &str, e: NvmlError| Registration::Failed(format!("{what}: {e}"));
    let count = nvml
        .device_count()
        .map_err(|e| failed("counting GPUs", e))?;
    let mut set = nvml
        .create_event_set()
        .map_err(|e| failed("creating an event set", e))?;
    let mut watched = Vec::new();
    for index in (0..count).filter(|i| !skip.contains(i)) {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        match device.supported_event_types() {
            Ok(types) if types.contains(EventTypes::CRITICAL_XID_ERROR) => {}
            Ok(_) | Err(NvmlError::NotSupported) => continue,
            Err(e) => return Err(Registration::Skip(index, e.to_string())),
        }
        let key = gpu_key(index, device.uuid().ok().as_deref());
        // SAFETY: only kept to compare with the device of an event, never used.
        let handle = unsafe { device.handle() };
        // On failure nvml-wrapper frees the set: the caller builds a new one without this GPU.
        set = device
            .register_events(EventTypes::CRITICAL_XID_ERROR, set)
            .map_err(|e| Registration::Skip(index, e.error.to_string()))?;
        watched.push(Watched { handle, index, key });
    }
    Ok((set, watched))
}
