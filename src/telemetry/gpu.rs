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
//!
//! It receives nothing; it stops when the shutdown channel closes (checked between samples), and
//! dropping the NVML handle calls `nvmlShutdown`.

use crate::component::StartError;
use crate::config::GpuSettings;
use crate::shutdown::Shutdown;
use crate::state::{GpuProcess, GpuReport, GpuSample, Health, NvmlState, SampleWriter};
use crate::telemetry::{bytes_to_mb, percent, round1, Driver, Sampler};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};
use std::collections::HashMap;
use std::ffi::OsString;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Keeps the value, or records in `sample` why it is missing.
fn take<T>(
    sample: &mut GpuSample,
    metric: &'static str,
    result: Result<T, NvmlError>,
) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(error) => {
            if matches!(error, NvmlError::GpuLost) {
                sample.lost = true;
            }
            sample.errors.insert(metric, describe(&error));
            None
        }
    }
}

/// Starts the sampler thread (`components.gpu` is `starting` until its first report).
pub fn start(
    config: &GpuSettings,
    writer: SampleWriter<GpuReport>,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    Driver::new(GpuSampler::new(config), writer, config.sample_interval).spawn(shutdown)
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
    nvml: Option<Nvml>,
    last_init_attempt: Option<Instant>,
    last_init_error: Option<String>,
    /// Name and UUID by index, kept so a GPU that is lost later is still named.
    identities: HashMap<u32, (Option<String>, Option<String>)>,
    /// Set once the driver has shown it lacks `nvmlDeviceGetMemoryInfo_v2`.
    memory_v1_only: bool,
}

impl GpuSampler {
    pub fn new(config: &GpuSettings) -> Self {
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
        let mut builder = Nvml::builder();
        if let Some(path) = &self.library_path {
            builder.lib_path(path);
        }
        match builder.init() {
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
    if let Some((total, used)) = take(&mut sample, "memory", memory_info(&device, memory_v1_only)) {
        sample.memory_total_mb = Some(bytes_to_mb(total));
        sample.memory_used_mb = Some(bytes_to_mb(used));
        sample.memory_usage_percent = percent(used, total);
    }
    if let Some(rates) = take(&mut sample, "usage_percent", device.utilization_rates()) {
        sample.usage_percent = Some(f64::from(rates.gpu));
    }
    if let Some(milliwatts) = take(&mut sample, "power_watts", device.power_usage()) {
        sample.power_watts = Some(round1(f64::from(milliwatts) / 1000.0));
    }
    sample.processes =
        take(&mut sample, "processes", device.running_compute_processes()).map(|list| {
            list.into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    used_memory_mb: match p.used_gpu_memory {
                        UsedGpuMemory::Used(bytes) => Some(bytes_to_mb(bytes)),
                        UsedGpuMemory::Unavailable => None,
                    },
                })
                .collect()
        });
    sample
}

/// Total and used memory in bytes: the v2 call, or the v1 call on drivers without v2.
fn memory_info(device: &Device<'_>, v1_only: &mut bool) -> Result<(u64, u64), NvmlError> {
    if !*v1_only {
        match device.memory_info() {
            Ok(info) => return Ok((info.total, info.used)),
            Err(NvmlError::FailedToLoadSymbol(_) | NvmlError::FunctionNotFound) => {
                *v1_only = true;
            }
            Err(other) => return Err(other),
        }
    }
    memory_info_v1(device)
}

fn memory_info_v1(device: &Device<'_>) -> Result<(u64, u64), NvmlError> {
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
    Ok((info.total, info.used))
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
        let mut sampler = GpuSampler::new(&config("/nonexistent/libnvidia-ml.so.1"));
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
        assert_eq!(take::<u32>(&mut s, "memory", Err(NvmlError::GpuLost)), None);
        assert!(s.lost);
    }
}
