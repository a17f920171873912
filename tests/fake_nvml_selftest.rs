//! Self-test of the fake NVML library (`tests/fake_nvml/fake_nvml.c`), loaded
//! through nvml-wrapper 0.13 exactly as the agent loads the real one.
//!
//! Findings about nvml-wrapper 0.13.0 / nvml-wrapper-sys 0.10.0 that these
//! tests pin down:
//! * `NvmlLib::new` resolves every symbol into a `Result` field; a missing
//!   symbol does NOT fail `Nvml::init` (only `nvmlInit_v2` is required there,
//!   or `nvmlInitWithFlags` when flags are given). The wrapper method using a
//!   missing symbol fails at call time with
//!   `NvmlError::FailedToLoadSymbol(String)` (the string is libloading's
//!   dlsym message, which names the symbol). Exception: `Drop for Nvml` calls
//!   `nvmlShutdown` through the sys crate's `.expect(..)`, so a library
//!   without `nvmlShutdown` panics on drop.
//! * `Device::memory_info()` calls ONLY `nvmlDeviceGetMemoryInfo_v2` (with
//!   `version = sizeof(nvmlMemory_v2_t) | 2 << 24`); on an old driver without
//!   that symbol it returns `Err(NvmlError::FailedToLoadSymbol(_))`. The
//!   wrapper has no safe v1 method: the v1 fallback has to go through
//!   `nvml.lib().nvmlDeviceGetMemoryInfo` (a pub `Result<unsafe extern "C"
//!   fn(..)>` field) with `device.handle()`; see `raw_memory_info_v1` below,
//!   which works without naming the unexported `nvmlMemory_t` type.
//! * NVML_ERROR_GPU_IS_LOST -> `NvmlError::GpuLost`;
//!   NVML_ERROR_NOT_SUPPORTED -> `NvmlError::NotSupported`;
//!   NVML_ERROR_DRIVER_NOT_LOADED (from init) -> `NvmlError::DriverNotLoaded`.
//!
//! The fake library reads its `FAKE_NVML_*` knobs from the environment, which
//! is process-wide, so every test here re-runs itself in a child process (the
//! test binary, filtered with `--exact`) with a clean `FAKE_NVML_*`
//! environment plus the knobs it needs.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::fake_nvml::{library, Variant};
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

const MIB: u64 = 1024 * 1024;
const TOTAL: u64 = 81559 * MIB;
const RESERVED: u64 = 512 * MIB;

/// Set (to the test's name) in the child process that runs a test body.
const CHILD_ENV: &str = "FAKE_NVML_SELFTEST_CHILD";

/// Returns `true` when called inside the child process: the caller then runs
/// its test body. In the parent, re-runs test `name` of this binary in a
/// child with the `FAKE_NVML_*` variables cleared and `env` set, asserts that
/// exactly that test ran and passed, and returns `false`.
fn in_child(name: &str, env: &[(&str, &str)]) -> bool {
    if let Some(child) = std::env::var_os(CHILD_ENV) {
        assert_eq!(child, OsString::from(name), "child ran the wrong test");
        return true;
    }
    // Build both variants once here, so children don't race to compile.
    library(Variant::Standard);
    library(Variant::NoMemoryV2);

    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--test-threads=1"]);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FAKE_NVML_") {
            cmd.env_remove(key);
        }
    }
    cmd.env(CHILD_ENV, name).envs(env.iter().copied());
    let out = cmd.output().expect("spawn test child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child for {name} with {env:?} failed ({})\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    false
}

fn init_at(path: &Path) -> Result<Nvml, NvmlError> {
    Nvml::builder().lib_path(path.as_os_str()).init()
}

fn init(variant: Variant) -> Nvml {
    let path = library(variant);
    init_at(&path).unwrap_or_else(|e| panic!("init {}: {e:?}", path.display()))
}

fn uuid_of(i: u32) -> String {
    format!("GPU-00000000-0000-4000-8000-{i:012x}")
}

/// Calls the v1 `nvmlDeviceGetMemoryInfo` through the raw function table;
/// returns (total, free, used) or the NVML error. The struct type
/// (`nvmlMemory_t`) is not re-exported by nvml-wrapper, so it is inferred
/// from the function pointer's signature.
fn raw_memory_info_v1(nvml: &Nvml, device: &Device) -> Result<(u64, u64, u64), NvmlError> {
    fn zeroed_arg<D, T, R>(_f: &unsafe extern "C" fn(D, *mut T) -> R) -> T {
        // SAFETY: NVML structs are plain C data; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }
    let f = nvml
        .lib()
        .nvmlDeviceGetMemoryInfo
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let mut mem = zeroed_arg(f);
    // SAFETY: valid handle from nvml-wrapper, valid out-pointer.
    let rc = unsafe { f(device.handle(), &mut mem) };
    if rc != 0 {
        return Err(NvmlError::from(rc));
    }
    Ok((mem.total, mem.free, mem.used))
}

/// Calls `nvmlDeviceGetMemoryInfo_v2` through the raw function table with an
/// explicit struct version; returns the raw NVML return code.
fn raw_memory_info_v2_rc(nvml: &Nvml, device: &Device, version: u32) -> u32 {
    fn zeroed_arg<D, T, R>(_f: &unsafe extern "C" fn(D, *mut T) -> R) -> T {
        // SAFETY: NVML structs are plain C data; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }
    let f = nvml
        .lib()
        .nvmlDeviceGetMemoryInfo_v2
        .as_ref()
        .expect("v2 symbol");
    let mut mem = zeroed_arg(f);
    mem.version = version;
    // SAFETY: valid handle from nvml-wrapper, valid out-pointer.
    unsafe { f(device.handle(), &mut mem) }
}

fn assert_default_gpu(nvml: &Nvml, i: u32) {
    let d = nvml.device_by_index(i).expect("device_by_index");
    assert_eq!(d.index().unwrap(), i);
    assert_eq!(d.name().unwrap(), "NVIDIA Fake H100 80GB HBM3");
    assert_eq!(d.uuid().unwrap(), uuid_of(i));
    assert_eq!(d.temperature(TemperatureSensor::Gpu).unwrap(), 40 + i);

    let mem = d.memory_info().expect("memory_info (v2)");
    let used = 1024 * (u64::from(i) + 1) * MIB;
    assert_eq!(mem.total, TOTAL);
    assert_eq!(mem.used, used);
    assert_eq!(mem.reserved, RESERVED);
    assert_eq!(mem.free, TOTAL - used - RESERVED);
    assert_eq!(
        raw_memory_info_v1(nvml, &d).unwrap(),
        (TOTAL, TOTAL - used, used)
    );

    let util = d.utilization_rates().unwrap();
    assert_eq!(util.gpu, (10 * (i + 1)).min(100));
    assert_eq!(util.memory, (5 * (i + 1)).min(100));
    assert_eq!(d.power_usage().unwrap(), 100_000 + 1000 * i);

    let procs = d.running_compute_processes().unwrap();
    if i == 0 {
        assert_eq!(d.running_compute_processes_count().unwrap(), 1);
        assert_eq!(procs.len(), 1);
        assert_eq!(procs[0].pid, 4242);
        assert_eq!(procs[0].used_gpu_memory, UsedGpuMemory::Used(512 * MIB));
        assert_eq!(procs[0].gpu_instance_id, None);
        assert_eq!(procs[0].compute_instance_id, None);
    } else {
        assert_eq!(d.running_compute_processes_count().unwrap(), 0);
        assert!(procs.is_empty(), "{procs:?}");
    }
}

fn pids(d: &Device) -> Vec<(u32, UsedGpuMemory)> {
    d.running_compute_processes()
        .unwrap()
        .into_iter()
        .map(|p| (p.pid, p.used_gpu_memory))
        .collect()
}

#[test]
fn defaults_two_gpus() {
    if !in_child("defaults_two_gpus", &[]) {
        return;
    }
    let nvml = init(Variant::Standard);
    assert_eq!(nvml.sys_driver_version().unwrap(), "550.54.15");
    assert_eq!(nvml.sys_nvml_version().unwrap(), "12.550.54.15");
    assert_eq!(nvml.sys_cuda_driver_version().unwrap(), 12040);
    assert_eq!(nvml.device_count().unwrap(), 2);
    for i in 0..2 {
        assert_default_gpu(&nvml, i);
    }
    assert!(matches!(
        nvml.device_by_index(2),
        Err(NvmlError::InvalidArg)
    ));
    let d1 = nvml.device_by_uuid(uuid_of(1)).unwrap();
    assert_eq!(d1.index().unwrap(), 1);
    assert!(matches!(
        nvml.device_by_uuid(uuid_of(7)),
        Err(NvmlError::NotFound)
    ));

    // The v2 struct version is enforced.
    let d0 = nvml.device_by_index(0).unwrap();
    let v2 = (40 | (2 << 24)) as u32; // sizeof(nvmlMemory_v2_t) == 40
    assert_eq!(raw_memory_info_v2_rc(&nvml, &d0, v2), 0);
    assert_eq!(raw_memory_info_v2_rc(&nvml, &d0, 0), 25); // ARGUMENT_VERSION_MISMATCH
    assert_eq!(raw_memory_info_v2_rc(&nvml, &d0, 40 | (1 << 24)), 25);

    // Init is reference counted; explicit shutdown succeeds.
    let second = init(Variant::Standard);
    drop(second);
    assert_eq!(nvml.device_count().unwrap(), 2);
    nvml.shutdown().expect("shutdown");
}

#[test]
fn gpu_count_zero() {
    if !in_child("gpu_count_zero", &[("FAKE_NVML_GPU_COUNT", "0")]) {
        return;
    }
    let nvml = init(Variant::Standard);
    assert_eq!(nvml.device_count().unwrap(), 0);
    assert!(matches!(
        nvml.device_by_index(0),
        Err(NvmlError::InvalidArg)
    ));
}

#[test]
fn gpu_count_sixteen() {
    if !in_child("gpu_count_sixteen", &[("FAKE_NVML_GPU_COUNT", "16")]) {
        return;
    }
    let nvml = init(Variant::Standard);
    assert_eq!(nvml.device_count().unwrap(), 16);
    for i in 0..16 {
        let d = nvml.device_by_index(i).unwrap();
        assert_eq!(d.uuid().unwrap(), uuid_of(i));
        assert_eq!(d.utilization_rates().unwrap().gpu, (10 * (i + 1)).min(100));
    }
    assert_eq!(
        nvml.device_by_index(15).unwrap().uuid().unwrap(),
        "GPU-00000000-0000-4000-8000-00000000000f"
    );
}

#[test]
fn init_fail() {
    if !in_child("init_fail", &[("FAKE_NVML_INIT_FAIL", "1")]) {
        return;
    }
    let path = library(Variant::Standard);
    assert!(matches!(init_at(&path), Err(NvmlError::DriverNotLoaded)));
    let flags = nvml_wrapper::bitmasks::InitFlags::NO_GPUS;
    let with_flags = Nvml::builder()
        .lib_path(path.as_os_str())
        .flags(flags)
        .init();
    assert!(matches!(with_flags, Err(NvmlError::DriverNotLoaded)));
}

#[test]
fn init_fail_file() {
    // The parent picks a unique path; the child reads it back from its env.
    let marker = match std::env::var(CHILD_ENV) {
        Ok(_) => std::env::var("FAKE_NVML_INIT_FAIL_FILE").expect("marker path"),
        Err(_) => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fake_nvml_init_fail_{}", std::process::id()))
            .to_str()
            .expect("utf-8 path")
            .to_owned(),
    };
    if !in_child("init_fail_file", &[("FAKE_NVML_INIT_FAIL_FILE", &marker)]) {
        return;
    }
    let marker = Path::new(&marker);
    let path = library(Variant::Standard);
    std::fs::write(marker, b"driver not loaded yet").unwrap();
    assert!(matches!(init_at(&path), Err(NvmlError::DriverNotLoaded)));
    std::fs::remove_file(marker).unwrap();
    let nvml = init_at(&path).expect("init after the file is gone");
    assert_eq!(nvml.device_count().unwrap(), 2);
}

#[test]
fn lost_gpu() {
    if !in_child("lost_gpu", &[("FAKE_NVML_LOST_GPU", "1")]) {
        return;
    }
    let nvml = init(Variant::Standard);
    assert_eq!(nvml.device_count().unwrap(), 2);
    let d = nvml
        .device_by_index(1)
        .expect("a lost GPU still has a handle");
    let lost = |r: Result<(), NvmlError>| assert!(matches!(r, Err(NvmlError::GpuLost)), "{r:?}");
    lost(d.index().map(drop));
    lost(d.name().map(drop));
    lost(d.uuid().map(drop));
    lost(d.temperature(TemperatureSensor::Gpu).map(drop));
    lost(d.memory_info().map(drop));
    lost(raw_memory_info_v1(&nvml, &d).map(drop));
    lost(d.utilization_rates().map(drop));
    lost(d.power_usage().map(drop));
    lost(d.running_compute_processes().map(drop));
    assert_default_gpu(&nvml, 0);
}

#[test]
fn unsupported_all() {
    let all = "temperature,power,utilization,processes,memory,name,uuid";
    if !in_child("unsupported_all", &[("FAKE_NVML_UNSUPPORTED", all)]) {
        return;
    }
    let nvml = init(Variant::Standard);
    for i in 0..2 {
        let d = nvml.device_by_index(i).unwrap();
        let ns =
            |r: Result<(), NvmlError>| assert!(matches!(r, Err(NvmlError::NotSupported)), "{r:?}");
        ns(d.name().map(drop));
        ns(d.uuid().map(drop));
        ns(d.temperature(TemperatureSensor::Gpu).map(drop));
        ns(d.memory_info().map(drop));
        ns(raw_memory_info_v1(&nvml, &d).map(drop));
        ns(d.utilization_rates().map(drop));
        ns(d.power_usage().map(drop));
        ns(d.running_compute_processes().map(drop));
        assert_eq!(d.index().unwrap(), i);
    }
}

#[test]
fn unsupported_some() {
    if !in_child(
        "unsupported_some",
        &[("FAKE_NVML_UNSUPPORTED", "temperature, power")],
    ) {
        return;
    }
    let nvml = init(Variant::Standard);
    let d = nvml.device_by_index(0).unwrap();
    assert!(matches!(
        d.temperature(TemperatureSensor::Gpu),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(d.power_usage(), Err(NvmlError::NotSupported)));
    assert_eq!(d.utilization_rates().unwrap().gpu, 10);
    assert_eq!(d.memory_info().unwrap().total, TOTAL);
    assert_eq!(d.name().unwrap(), "NVIDIA Fake H100 80GB HBM3");
}

#[test]
fn procs_override() {
    let spec = "0:100:10;1:200:20;1:201:30;garbage;1:2:3:4;5:1:1;";
    if !in_child("procs_override", &[("FAKE_NVML_PROCS", spec)]) {
        return;
    }
    let nvml = init(Variant::Standard);
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    assert_eq!(pids(&d0), vec![(100, UsedGpuMemory::Used(10 * MIB))]);
    assert_eq!(
        pids(&d1),
        vec![
            (200, UsedGpuMemory::Used(20 * MIB)),
            (201, UsedGpuMemory::Used(30 * MIB)),
        ]
    );
    assert_eq!(d1.running_compute_processes_count().unwrap(), 2);
}

#[test]
fn procs_empty() {
    if !in_child("procs_empty", &[("FAKE_NVML_PROCS", "")]) {
        return;
    }
    let nvml = init(Variant::Standard);
    for i in 0..2 {
        let d = nvml.device_by_index(i).unwrap();
        assert!(pids(&d).is_empty());
        assert_eq!(d.running_compute_processes_count().unwrap(), 0);
    }
}

#[test]
fn slow_ms() {
    if !in_child("slow_ms", &[("FAKE_NVML_SLOW_MS", "150")]) {
        return;
    }
    let nvml = init(Variant::Standard);
    let start = Instant::now();
    assert_eq!(nvml.device_count().unwrap(), 2);
    assert!(start.elapsed() >= Duration::from_millis(150));
    let d = nvml.device_by_index(0).unwrap();
    let start = Instant::now();
    assert_eq!(d.power_usage().unwrap(), 100_000);
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[test]
fn temp_base() {
    if !in_child("temp_base", &[("FAKE_NVML_TEMP_BASE", "70")]) {
        return;
    }
    let nvml = init(Variant::Standard);
    for i in 0..2 {
        let d = nvml.device_by_index(i).unwrap();
        assert_eq!(d.temperature(TemperatureSensor::Gpu).unwrap(), 70 + i);
    }
}

#[test]
fn no_memory_v2_variant() {
    if !in_child("no_memory_v2_variant", &[]) {
        return;
    }
    // A missing symbol does not fail init ...
    let nvml = init(Variant::NoMemoryV2);
    assert_eq!(nvml.device_count().unwrap(), 2);
    for i in 0..2 {
        let d = nvml.device_by_index(i).unwrap();
        // ... only the call that needs it, with FailedToLoadSymbol.
        match d.memory_info() {
            Err(NvmlError::FailedToLoadSymbol(msg)) => {
                assert!(msg.contains("nvmlDeviceGetMemoryInfo_v2"), "{msg}")
            }
            other => panic!("expected FailedToLoadSymbol, got {other:?}"),
        }
        // The v1 call still works.
        let used = 1024 * (u64::from(i) + 1) * MIB;
        assert_eq!(
            raw_memory_info_v1(&nvml, &d).unwrap(),
            (TOTAL, TOTAL - used, used)
        );
        assert_eq!(d.name().unwrap(), "NVIDIA Fake H100 80GB HBM3");
    }
}

/// A knob file path unique to this test: picked by the parent, read back in the child.
fn knob_path(test: &str) -> String {
    match std::env::var(CHILD_ENV) {
        Ok(_) => std::env::var("FAKE_NVML_KNOB_FILE").expect("knob file path"),
        Err(_) => Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("fake_nvml_knobs_{test}_{}", std::process::id()))
            .to_str()
            .expect("utf-8 path")
            .to_owned(),
    }
}

/// The remapped-rows call through the raw function table (nvml-wrapper has no method for it):
/// (corrected, uncorrected, pending, failed).
fn raw_remapped_rows(device: &Device) -> Result<(u32, u32, u32, u32), NvmlError> {
    let f = device
        .nvml()
        .lib()
        .nvmlDeviceGetRemappedRows
        .as_ref()
        .map_err(|e| NvmlError::FailedToLoadSymbol(e.to_string()))?;
    let (mut c, mut u, mut p, mut x) = (0, 0, 0, 0);
    // SAFETY: valid handle from nvml-wrapper, four valid out-pointers.
    let rc = unsafe { f(device.handle(), &mut c, &mut u, &mut p, &mut x) };
    if rc != 0 {
        return Err(NvmlError::from(rc));
    }
    Ok((c, u, p, x))
}

#[test]
fn knob_file_health_signals_change_while_loaded() {
    use nvml_wrapper::bitmasks::device::ThrottleReasons;
    use nvml_wrapper::enum_wrappers::device::{Clock, EccCounter, MemoryError, PerformanceState};
    let knobs = knob_path("health");
    if !in_child(
        "knob_file_health_signals_change_while_loaded",
        &[("FAKE_NVML_KNOB_FILE", &knobs)],
    ) {
        return;
    }
    let _ = std::fs::remove_file(&knobs);
    let nvml = init(Variant::Standard);
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    // Defaults, with no knob file at all.
    for (error, counter) in [
        (MemoryError::Corrected, EccCounter::Volatile),
        (MemoryError::Uncorrected, EccCounter::Aggregate),
    ] {
        assert_eq!(d0.total_ecc_errors(error, counter).unwrap(), 0);
    }
    assert!(!d0.are_pages_pending_retired().unwrap());
    assert_eq!(raw_remapped_rows(&d0).unwrap(), (0, 0, 0, 0));
    assert!(d0.current_throttle_reasons().unwrap().is_empty());
    assert_eq!(d0.current_pcie_link_gen().unwrap(), 5);
    assert_eq!(d0.max_pcie_link_gen().unwrap(), 5);
    assert_eq!(d0.current_pcie_link_width().unwrap(), 16);
    assert_eq!(d0.max_pcie_link_width().unwrap(), 16);
    assert_eq!(d0.fan_speed(0).unwrap(), 30);
    assert_eq!(d0.clock_info(Clock::SM).unwrap(), 1980);
    assert_eq!(d0.clock_info(Clock::Memory).unwrap(), 2619);
    assert_eq!(d0.enforced_power_limit().unwrap(), 700_000);
    assert_eq!(d0.performance_state().unwrap(), PerformanceState::Zero);
    assert!(d0.running_graphics_processes().unwrap().is_empty());

    // Changed while the library stays loaded: every call re-reads the file.
    std::fs::write(
        &knobs,
        "# GPU 1 is in trouble\n\
         gpu.1.ecc.volatile.uncorrected = 3\n\
         gpu.1.ecc.aggregate.corrected = 12\n\
         gpu.1.retired_pages_pending = 1\n\
         gpu.1.remapped.uncorrected = 2\n\
         gpu.1.remapped.pending = 1\n\
         gpu.1.remapped.failed = 1\n\
         gpu.*.throttle = 0x48\n\
         gpu.0.throttle = 0x10\n\
         gpu.1.pcie.width = 4\n\
         gpu.1.pcie.gen = 3\n\
         gpu.1.fan = 95\n\
         gpu.1.clock.sm = 700\n\
         gpu.1.power_limit_mw = 300000\n\
         gpu.1.pstate = 8\n\
         gpu.1.temperature = 91\n\
         gpu.0.unsupported = fan, remapped_rows\n\
         gpu.0.fail = ecc\n\
         gpu.0.procs.compute = 77:100, 78:200\n\
         gpu.1.procs.compute =\n\
         gpu.1.procs.graphics = 99:64\n",
    )
    .unwrap();
    assert_eq!(
        d1.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
            .unwrap(),
        3
    );
    assert_eq!(
        d1.total_ecc_errors(MemoryError::Corrected, EccCounter::Aggregate)
            .unwrap(),
        12
    );
    assert!(d1.are_pages_pending_retired().unwrap());
    assert_eq!(raw_remapped_rows(&d1).unwrap(), (0, 2, 1, 1));
    assert_eq!(
        d1.current_throttle_reasons().unwrap(),
        ThrottleReasons::HW_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN
    );
    assert_eq!(
        d0.current_throttle_reasons().unwrap(),
        ThrottleReasons::SYNC_BOOST,
        "a gpu.<i> line wins over gpu.*"
    );
    assert_eq!(d1.current_pcie_link_width().unwrap(), 4);
    assert_eq!(d1.current_pcie_link_gen().unwrap(), 3);
    assert_eq!(d1.max_pcie_link_width().unwrap(), 16);
    assert_eq!(d1.fan_speed(0).unwrap(), 95);
    assert_eq!(d1.clock_info(Clock::SM).unwrap(), 700);
    assert_eq!(d1.enforced_power_limit().unwrap(), 300_000);
    assert_eq!(d1.performance_state().unwrap(), PerformanceState::Eight);
    assert_eq!(d1.temperature(TemperatureSensor::Gpu).unwrap(), 91);
    assert!(matches!(d0.fan_speed(0), Err(NvmlError::NotSupported)));
    assert!(matches!(
        raw_remapped_rows(&d0),
        Err(NvmlError::NotSupported)
    ));
    assert!(matches!(
        d0.total_ecc_errors(MemoryError::Corrected, EccCounter::Volatile),
        Err(NvmlError::Unknown)
    ));
    assert_eq!(
        pids(&d0),
        vec![
            (77, UsedGpuMemory::Used(100 * MIB)),
            (78, UsedGpuMemory::Used(200 * MIB))
        ]
    );
    assert!(pids(&d1).is_empty(), "an empty list means none");
    let graphics = d1.running_graphics_processes().unwrap();
    assert_eq!(graphics.len(), 1);
    assert_eq!(graphics[0].pid, 99);
    assert_eq!(graphics[0].used_gpu_memory, UsedGpuMemory::Used(64 * MIB));

    // A lost GPU through the knob file; removing the file brings the defaults back.
    std::fs::write(&knobs, "gpu.1.lost = 1\n").unwrap();
    assert!(matches!(d1.fan_speed(0), Err(NvmlError::GpuLost)));
    std::fs::remove_file(&knobs).unwrap();
    assert_eq!(d1.fan_speed(0).unwrap(), 30);
    assert_eq!(pids(&d0), vec![(4242, UsedGpuMemory::Used(512 * MIB))]);
}

#[test]
fn knob_file_xid_events() {
    use nvml_wrapper::bitmasks::event::EventTypes;
    use nvml_wrapper::enums::event::XidError;
    let knobs = knob_path("xid");
    if !in_child("knob_file_xid_events", &[("FAKE_NVML_KNOB_FILE", &knobs)]) {
        return;
    }
    std::fs::write(&knobs, "gpu.1.unsupported = events\n").unwrap();
    let nvml = init(Variant::Standard);
    let d0 = nvml.device_by_index(0).unwrap();
    let d1 = nvml.device_by_index(1).unwrap();
    assert!(d0
        .supported_event_types()
        .unwrap()
        .contains(EventTypes::CRITICAL_XID_ERROR));
    assert!(matches!(
        d1.supported_event_types(),
        Err(NvmlError::NotSupported)
    ));
    let set = nvml.create_event_set().unwrap();
    let set = d0
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .unwrap();
    // Nothing yet: the wait times out after (about) its timeout.
    let started = Instant::now();
    assert!(matches!(set.wait(150), Err(NvmlError::Timeout)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(140) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    // GPU 1 is not registered: its event is skipped; GPU 0's come in order.
    std::fs::write(
        &knobs,
        "gpu.1.unsupported = events\nxid_events = 1:48, 0:79, 0:13\n",
    )
    .unwrap();
    for expected in [79, 13] {
        let event = set.wait(1000).expect("an Xid event");
        assert_eq!(event.device.index().unwrap(), 0);
        assert!(event.event_type.contains(EventTypes::CRITICAL_XID_ERROR));
        assert_eq!(event.event_data, Some(XidError::Value(expected)));
    }
    assert!(matches!(set.wait(50), Err(NvmlError::Timeout)));
    // Appending delivers one more, while a wait is in progress.
    let writer = {
        let knobs = knobs.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(
                &knobs,
                "gpu.1.unsupported = events\nxid_events = 1:48, 0:79, 0:13, 0:94\n",
            )
            .unwrap();
        })
    };
    let event = set.wait(5000).expect("the appended event");
    assert_eq!(event.event_data, Some(XidError::Value(94)));
    writer.join().unwrap();
    set.release_events().expect("nvmlEventSetFree");
    // Registering an unsupported GPU fails (and nvml-wrapper frees the set).
    let set = nvml.create_event_set().unwrap();
    assert!(d1
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .is_err());
    std::fs::remove_file(&knobs).unwrap();
}
