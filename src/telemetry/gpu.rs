//! The GPU sampler thread: owns the NVML handle and publishes a [`GpuReport`], and its health
//! (`components.gpu`), through its [`SampleWriter`] every `gpu.sample_interval_ms` (run by the
//! sampler [`Driver`]).
//!
//! It runs alone because NVML calls can block for seconds (a GPU falling off the bus, a driver
//! reset): nothing else ever waits on it, and the API only reads the last published report.
//!
//! - NVML init failing (no driver, library missing, driver loaded late) is not fatal: the report
//!   says why, and init is retried every `gpu.init_retry_secs`.
//! - One metric failing on one GPU leaves that field `null` and says why in that GPU's `errors`;
//!   a GPU that fell off the bus is reported with `lost: true`, keeping the name and UUID it had.
//! - Where the driver lacks `nvmlDeviceGetMemoryInfo_v2`, the v1 call is used.
//! - Health signals (ECC, retired pages, remapped rows, throttling, PCIe link, fan, clocks,
//!   power limit, pstate) are read every sample; with the Xid history the event thread
//!   ([`super::xid`]) keeps, [`gpu_health::assess`] makes each GPU `healthy`, `degraded` or
//!   `failed`; a change is logged once.
//!
//! It receives nothing; it stops when the shutdown channel closes (checked between samples), and
//! dropping the NVML handle calls `nvmlShutdown`.

use crate::component::StartError;
use crate::config::GpuSettings;
use crate::reload::LiveDuration;
use crate::shutdown::Shutdown;
use crate::state::{
    GpuHealth, GpuProcess, GpuReport, GpuSample, Health, NvmlState, RemappedRows, SampleWriter,
    Snapshot,
};
use crate::telemetry::gpu_health::{self, gpu_key, XidHistory};
use crate::telemetry::{attribution, cgroup};
use crate::telemetry::{bytes_to_mb, percent, round1, Driver, Sampler};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Loads and initialises NVML (`library_path`, else the system's) on a short-lived thread and
/// hands the handle over boxed. Loading builds nvml-wrapper's table of the library's functions
/// by value and moves it several times: about 100 KiB of stack, which a long-lived thread would
/// keep resident for good (the sampler's and the Xid thread's stacks were 140 and 92 KiB at
/// idle, every other thread's 8-20 KiB); a thread that ends gives its stack back. Where no
/// thread can be started, it runs on the caller's.
pub(crate) fn init_nvml(library_path: Option<&OsStr>) -> Result<Box<Nvml>, NvmlError> {
    fn load(library_path: Option<&OsStr>) -> Result<Box<Nvml>, NvmlError> {
        let mut builder = Nvml::builder();
        if let Some(path) = library_path {
            builder.lib_path(path);
        }
        builder.init().map(Box::new)
    }
    std::thread::scope(|scope| {
        match std::thread::Builder::new()
            .name("nvml-init".into())
            .spawn_scoped(scope, move || load(library_path))
        {
            Ok(thread) => thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(_) => load(library_path),
        }
    })
}

/// Keeps the value, or records in `sample` why it is missing. A metric the GPU or driver does
/// not support is only noted; any other error also counts as a failed query (the GPU component
/// is degraded while queries fail).
fn take<T>(
    sample: &mut GpuSample,
    metric: &'static str,
    result: Result<T, NvmlError>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            match error {
                NvmlError::GpuLost => sample.lost = true,
                _ if unsupported(&error) => {}
                _ => sample.failed_queries.push(metric),
            }
            sample.errors.insert(metric, describe(&error));
            None
        }
    }
}

/// The GPU or its driver does not have this query (not a failure).
fn unsupported(error: &NvmlError) -> bool {
    matches!(
        error,
        NvmlError::NotSupported | NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound
    )
}

/// Starts the sampler thread (`components.gpu` is `starting` until its first report).
pub fn start(
    config: &GpuSettings,
    history: XidHistory,
    snapshot: Arc<Snapshot>,
    writer: SampleWriter<GpuReport>,
    interval: LiveDuration,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    let mut sampler = GpuSampler::new(config, history);
    sampler.snapshot = Some(snapshot);
    Driver::new(sampler, writer, interval).spawn(shutdown)
}

impl Sampler for GpuSampler {
    type Sample = GpuReport;
    const THREAD: &'static str = "gpu-sampler";

    fn sample(&mut self) -> GpuReport {
        GpuSampler::sample(self)
    }

    fn health(report: &GpuReport) -> Health {
        report.health()
    }

    fn next_wait(&self, interval: Duration) -> Duration {
        GpuSampler::next_wait(self, interval)
    }
}

/// Owns the NVML handle and what it learned about each GPU.
pub struct GpuSampler {
    library_path: Option<OsString>,
    retry: Duration,
    nvml: Option<Box<Nvml>>,
    last_init_attempt: Option<Instant>,
    last_init_error: Option<String>,
    /// Name and UUID by index, kept so a GPU that is lost later is still named.
    identities: HashMap<u32, (Option<String>, Option<String>)>,
    /// Set once the driver has shown it lacks `nvmlDeviceGetMemoryInfo_v2`.
    memory_v1_only: bool,
    /// The Xid errors the event thread received, per GPU.
    history: XidHistory,
    /// Each GPU's health at the last sample, to log transitions once.
    last_health: HashMap<u32, GpuHealth>,
    /// Read for the managed containers (process → claim attribution).
    snapshot: Option<Arc<Snapshot>>,
    /// The isolation violations already logged (each is logged once while it lasts).
    reported_violations: BTreeSet<String>,
}

impl GpuSampler {
    pub fn new(config: &GpuSettings, history: XidHistory) -> Self {
        GpuSampler {
            library_path: config
                .nvml_library_path
                .as_ref()
                .map(|p| OsString::from(p.as_os_str())),
            retry: config.init_retry,
            nvml: None,
            last_init_attempt: None,
            last_init_error: None,
            identities: HashMap::new(),
            memory_v1_only: false,
            history,
            last_health: HashMap::new(),
            snapshot: None,
            reported_violations: BTreeSet::new(),
        }
    }

    /// Maps each GPU process to its container and claim; logs each new isolation violation.
    fn attribute(&mut self, gpus: &mut [GpuSample]) {
        let containers = self
            .snapshot
            .as_ref()
            .map(|s| s.containers())
            .unwrap_or_default();
        attribution::attribute(gpus, &containers, |pid| {
            cgroup::container_of_pid(Path::new("/proc"), pid)
        });
        let now: BTreeSet<String> = gpus
            .iter()
            .flat_map(|g| g.isolation_violations.iter().cloned())
            .collect();
        for violation in now.difference(&self.reported_violations) {
            log::warn!("GPU isolation violation: {violation}");
        }
        self.reported_violations = now;
    }

    /// Judges the GPU's health from its signals and Xid history; logs a change once.
    fn assess(&mut self, sample: &mut GpuSample) {
        let key = gpu_key(sample.index, sample.uuid.as_deref());
        gpu_health::assess(sample, &self.history.get(&key));
        let before = self
            .last_health
            .insert(sample.index, sample.health)
            .unwrap_or(GpuHealth::Healthy);
        if before != sample.health {
            let reasons = if sample.health_reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", sample.health_reasons.join("; "))
            };
            let line = format!(
                "GPU {} ({key}) is now {} (was {}){reasons}",
                sample.index,
                sample.health.as_str(),
                before.as_str()
            );
            if sample.health == GpuHealth::Healthy {
                log::info!("{line}");
            } else {
                log::warn!("{line}");
            }
        }
    }

    /// Adds NVML calls that failed (not metrics a GPU lacks) to the agent's counters.
    fn count_nvml_errors(&self, n: u64) {
        if let (Some(snapshot), true) = (&self.snapshot, n > 0) {
            snapshot.counters().nvml_errors(n);
        }
    }

    /// How long to sleep before the next sample: the interval, or until the next init retry.
    fn next_wait(&self, interval: Duration) -> Duration {
        match (&self.nvml, self.last_init_attempt) {
            (None, Some(at)) => self
                .retry
                .saturating_sub(at.elapsed())
                .max(interval.min(self.retry)),
            _ => interval,
        }
    }

    /// Takes one report: initialises NVML when due, then reads every GPU.
    pub fn sample(&mut self) -> GpuReport {
        if self.nvml.is_none() {
            let due = self
                .last_init_attempt
                .is_none_or(|at| at.elapsed() >= self.retry);
            if !due {
                let reason = self.last_init_error.clone().unwrap_or_default();
                return GpuReport::unavailable(reason);
            }
            if let Err(reason) = self.init() {
                self.count_nvml_errors(1);
                return GpuReport::unavailable(reason);
            }
        }
        let Some(nvml) = &self.nvml else {
            return GpuReport::unavailable("NVML is not initialised".to_string());
        };
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(error) => {
                // The driver itself went away (unloaded, reset): start over with a fresh init.
                let reason = format!("NVML stopped answering: {}", describe(&error));
                log::warn!("{reason}; will re-initialise NVML");
                self.count_nvml_errors(1);
                self.nvml = None;
                self.last_init_attempt = Some(Instant::now());
                self.last_init_error = Some(reason.clone());
                return GpuReport::unavailable(reason);
            }
        };
        let driver_version = nvml.sys_driver_version().ok();
        let mut gpus = Vec::with_capacity(count as usize);
        let mut v1_only = self.memory_v1_only;
        for index in 0..count {
            let known = self.identities.get(&index).cloned();
            let sample = sample_device(nvml, index, known.as_ref(), &mut v1_only);
            if sample.name.is_some() || sample.uuid.is_some() {
                self.identities
                    .insert(index, (sample.name.clone(), sample.uuid.clone()));
            }
            gpus.push(sample);
        }
        let failed = gpus
            .iter()
            .map(|g| g.failed_queries.len() as u64 + u64::from(g.lost))
            .sum();
        self.count_nvml_errors(failed);
        for sample in &mut gpus {
            self.assess(sample);
        }
        self.attribute(&mut gpus);
        if v1_only && !self.memory_v1_only {
            log::info!("driver has no nvmlDeviceGetMemoryInfo_v2; using the v1 memory call");
        }
        self.memory_v1_only = v1_only;
        GpuReport {
            state: NvmlState::Ok,
            driver_version,
            gpus,
        }
    }

    fn init(&mut self) -> Result<(), String> {
        self.last_init_attempt = Some(Instant::now());
        match init_nvml(self.library_path.as_deref()) {
            Ok(nvml) => {
                let version = nvml.sys_driver_version().unwrap_or_default();
                let count = nvml.device_count().unwrap_or(0);
                log::info!("NVML ready: driver {version}, {count} GPU(s)");
                self.nvml = Some(nvml);
                self.last_init_error = None;
                Ok(())
            }
            Err(error) => {
                let reason = self.init_failure(&error);
                if self.last_init_error.as_deref() != Some(reason.as_str()) {
                    log::warn!(
                        "GPU metrics unavailable: {reason}; retrying every {}s",
                        self.retry.as_secs()
                    );
                }
                self.last_init_error = Some(reason.clone());
                Err(reason)
            }
        }
    }

    fn init_failure(&self, error: &NvmlError) -> String {
        let library = self
            .library_path
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "libnvidia-ml.so.1 (system)".to_string());
        match error {
            NvmlError::LibloadingError(e) => {
                format!("cannot load the NVML library {library}: {e}")
            }
            NvmlError::FailedToLoadSymbol(e) => {
                format!("NVML library {library} is missing a required function: {e}")
            }
            other => format!("NVML init failed: {}", describe(other)),
        }
    }
}

fn sample_device(
    nvml: &Nvml,
    index: u32,
    known: Option<&(Option<String>, Option<String>)>,
    memory_v1_only: &mut bool,
) -> GpuSample {
    let mut sample = GpuSample::empty(index);
    if let Some((name, uuid)) = known {
        sample.name = name.clone();
        sample.uuid = uuid.clone();
    }
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(error) => {
            take::<()>(&mut sample, "device", Err(error));
            return sample;
        }
    };
    if sample.name.is_none() {
        sample.name = take(&mut sample, "name", device.name());
    }
    if sample.uuid.is_none() {
        sample.uuid = take(&mut sample, "uuid", device.uuid());
    }
    sample.temperature_c = take(
        &mut sample,
        "temperature_c",
        device.temperature(TemperatureSensor::Gpu),
    );
    if sample.lost {
        // Every further call would wait on a dead GPU and fail the same way.
        return sample;
    }
    if let Some((total, used, free)) =
        take(&mut sample, "memory", memory_info(&device, memory_v1_only))
    {
        sample.memory_total_mb = Some(bytes_to_mb(total));
        sample.memory_used_mb = Some(bytes_to_mb(used));
        sample.memory_free_mb = Some(bytes_to_mb(free));
        sample.memory_usage_percent = percent(used, total);
    }
    if let Some(rates) = take(&mut sample, "usage_percent", device.utilization_rates()) {
        sample.usage_percent = Some(f64::from(rates.gpu));
        sample.memory_utilization_percent = Some(f64::from(rates.memory));
    }
    if let Some(milliwatts) = take(&mut sample, "power_watts", device.power_usage()) {
        sample.power_watts = Some(round1(f64::from(milliwatts) / 1000.0));
    }
    sample.processes = take(&mut sample, "processes", device.running_compute_processes())
        .map(|list| processes(list, "compute"));
    // Graphics processes join the list where the GPU reports them (many compute GPUs do not).
    if let (Some(list), Ok(graphics)) = (
        sample.processes.as_mut(),
        device.running_graphics_processes(),
    ) {
        list.extend(processes(graphics, "graphics"));
    }
    sample_health_signals(&device, &mut sample);
    sample
}

fn processes(
    list: Vec<nvml_wrapper::struct_wrappers::device::ProcessInfo>,
    kind: &'static str,
) -> Vec<GpuProcess> {
    list.into_iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            used_memory_mb: match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes_to_mb(bytes)),
                UsedGpuMemory::Unavailable => None,
            },
            kind,
            container_id: None,
            claim_id: None,
        })
        .collect()
}

/// ECC, retired pages, remapped rows, throttling, PCIe, fan, clocks, power limit, pstate: each
/// `None` where the GPU does not report it.
fn sample_health_signals(device: &Device<'_>, sample: &mut GpuSample) {
    use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, PerformanceState};
    // Without ECC (or with it off) the first count says NotSupported: the others would too.
    let first = device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile);
    let ecc_supported = !matches!(&first, Err(e) if unsupported(e));
    sample.ecc_errors.volatile_uncorrected = take(sample, "ecc_errors", first);
    if ecc_supported {
        for (error, counter, slot) in [
            (MemoryError::Corrected, EccCounter::Volatile, 0),
            (MemoryError::Corrected, EccCounter::Aggregate, 1),
            (MemoryError::Uncorrected, EccCounter::Aggregate, 2),
        ] {
            let value = take(
                sample,
                "ecc_errors",
                device.total_ecc_errors(error, counter),
            );
            let counts = &mut sample.ecc_errors;
            *[
                &mut counts.volatile_corrected,
                &mut counts.aggregate_corrected,
                &mut counts.aggregate_uncorrected,
            ][slot] = value;
        }
    }
    sample.retired_pages_pending = take(
        sample,
        "retired_pages_pending",
        device.are_pages_pending_retired(),
    );
    sample.remapped_rows = take(sample, "remapped_rows", remapped_rows(device));
    sample.throttle_reasons = take(
        sample,
        "throttle_reasons",
        device.current_throttle_reasons(),
    )
    .map(|reasons| throttle_names(reasons.bits()));
    sample.pcie.generation = take(sample, "pcie", device.current_pcie_link_gen());
    sample.pcie.max_generation = take(sample, "pcie", device.max_pcie_link_gen());
    sample.pcie.width = take(sample, "pcie", device.current_pcie_link_width());
    sample.pcie.max_width = take(sample, "pcie", device.max_pcie_link_width());
    sample.fan_speed_percent = take(sample, "fan_speed_percent", device.fan_speed(0));
    sample.clock_sm_mhz = take(sample, "clock_sm_mhz", device.clock_info(Clock::SM));
    sample.clock_memory_mhz = take(sample, "clock_memory_mhz", device.clock_info(Clock::Memory));
    sample.power_limit_watts = take(sample, "power_limit_watts", device.enforced_power_limit())
        .map(|milliwatts| round1(f64::from(milliwatts) / 1000.0));
    sample.performance_state = take(sample, "performance_state", device.performance_state())
        .filter(|state| *state != PerformanceState::Unknown)
        .map(|state| format!("P{}", state.as_c()));
}

/// The throttle reason bits NVML reports, by name (nvml.h's nvmlClocksThrottleReason*).
pub const THROTTLE_REASONS: &[(u64, &str)] = &[
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
];

fn throttle_names(bits: u64) -> Vec<&'static str> {
    THROTTLE_REASONS
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// `nvmlDeviceGetRemappedRows` (nvml-wrapper has no method for it).
fn remapped_rows(device: &Device<'_>) -> Result<RemappedRows, NvmlError> {
    let symbol = device
        .nvml()
        .lib()
        .nvmlDeviceGetRemappedRows
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let (mut corrected, mut uncorrected, mut pending, mut failed) = (0, 0, 0, 0);
    // SAFETY: the handle comes from a live `Device` of this `Nvml`; four valid out-pointers.
    let code = unsafe {
        symbol(
            device.handle(),
            &mut corrected,
            &mut uncorrected,
            &mut pending,
            &mut failed,
        )
    };
    nvml_wrapper::error::nvml_try(code)?;
    Ok(RemappedRows {
        corrected,
        uncorrected,
        pending: pending != 0,
        failed: failed != 0,
    })
}

/// Total and used memory in bytes: the v2 call, or the v1 call on drivers without v2.
/// (total, used, free) bytes of frame buffer memory.
fn memory_info(device: &Device<'_>, v1_only: &mut bool) -> Result<(u64, u64, u64), NvmlError> {
    if !*v1_only {
        match device.memory_info() {
            Ok(info) => return Ok((info.total, info.used, info.free)),
            Err(NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound) => {
                *v1_only = true;
            }
            Err(other) => return Err(other),
        }
    }
    memory_info_v1(device)
}

fn memory_info_v1(device: &Device<'_>) -> Result<(u64, u64, u64), NvmlError> {
    let symbol = device
        .nvml()
        .lib()
        .nvmlDeviceGetMemoryInfo
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let mut info = nvml_wrapper_sys::bindings::nvmlMemory_t {
        total: 0,
        free: 0,
        used: 0,
    };
    // SAFETY: the handle comes from a live `Device` of this `Nvml`, and `info` is the v1 struct
    // the symbol writes into.
    let code = unsafe { symbol(device.handle(), &mut info) };
    nvml_wrapper::error::nvml_try(code)?;
    Ok((info.total, info.used, info.free))
}

/// An NVML error in words an operator can act on.
fn describe(error: &NvmlError) -> String {
    match error {
        NvmlError::NotSupported => "not supported by this GPU or driver".to_string(),
        NvmlError::GpuLost => {
            "GPU has fallen off the bus or is otherwise inaccessible (check dmesg for Xid errors)"
                .to_string()
        }
        NvmlError::DriverNotLoaded => "NVIDIA driver is not loaded".to_string(),
        NvmlError::NoPermission => "no permission to query NVML".to_string(),
        NvmlError::LibRmVersionMismatch => {
            "NVML library and kernel driver versions differ (reboot or reload the driver)"
                .to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(path: &str) -> GpuSettings {
        GpuSettings {
            nvml_library_path: Some(path.into()),
            sample_interval: Duration::from_millis(100),
            init_retry: Duration::from_secs(60),
        }
    }

    #[test]
    fn missing_library_is_reported_and_not_retried_before_due() {
        let mut sampler = GpuSampler::new(
            &config("/nonexistent/libnvidia-ml.so.1"),
            XidHistory::in_memory(),
        );
        let report = sampler.sample();
        let reason = report.error().unwrap();
        assert!(
            reason.contains("/nonexistent/libnvidia-ml.so.1"),
            "{reason}"
        );
        assert!(report.gpus.is_empty());
        assert!(report
            .health()
            .render(crate::state::Component::Gpu)
            .starts_with("unavailable: "));
        let first_attempt = sampler.last_init_attempt;
        let again = sampler.sample();
        assert_eq!(again.error(), Some(reason));
        assert_eq!(
            sampler.last_init_attempt, first_attempt,
            "retry waits for init_retry_secs"
        );
        assert!(sampler.next_wait(Duration::from_millis(100)) > Duration::from_secs(30));
    }

    #[test]
    fn throttle_bits_have_names() {
        assert!(throttle_names(0).is_empty());
        assert_eq!(
            throttle_names(0x8 | 0x10 | 0x40 | 0x80),
            [
                "hw_slowdown",
                "sync_boost",
                "hw_thermal_slowdown",
                "hw_power_brake_slowdown"
            ]
        );
        assert_eq!(throttle_names(1 << 40), Vec::<&str>::new(), "unknown bits");
    }

    #[test]
    fn take_records_why_a_metric_is_missing() {
        let mut s = GpuSample::empty(0);
        assert_eq!(
            take::<u32>(&mut s, "power_watts", Err(NvmlError::NotSupported)),
            None
        );
        assert!(!s.lost);
        assert_eq!(
            s.errors["power_watts"],
            "not supported by this GPU or driver"
        );
        assert!(s.failed_queries.is_empty(), "unsupported is not a failure");
        assert_eq!(
            take::<u32>(&mut s, "clock_sm_mhz", Err(NvmlError::Unknown)),
            None
        );
        assert_eq!(s.failed_queries, ["clock_sm_mhz"]);
        assert_eq!(take::<u32>(&mut s, "memory", Err(NvmlError::GpuLost)), None);
        assert!(s.lost);
    }
}
