//! The system sampler thread: owns a `sysinfo::System` and publishes host CPU usage, memory and
//! load average through its [`SampleWriter`] every [`SAMPLE_INTERVAL`] (run by the sampler
//! [`Driver`]).
//!
//! It receives nothing and sends nothing but the published sample (`components.system` is `ok`
//! from the first sample on); it stops when the shutdown channel closes (checked between
//! samples, so within one interval).

use crate::component::StartError;
use crate::shutdown::Shutdown;
use crate::state::{CpuTimes, Health, LoadAverage, MemoryBytes, SampleWriter, SystemSample};
use crate::telemetry::{bytes_to_mb, percent, round1, Driver, Sampler};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often host CPU and memory are sampled. CPU usage is the average over this interval.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Reads the host through its own `sysinfo::System`.
struct SystemSampler {
    system: sysinfo::System,
    /// CPU readings taken so far, counted up to 2 (the second is the first with usage).
    readings: u8,
}

impl Sampler for SystemSampler {
    type Sample = SystemSample;
    const THREAD: &'static str = "system-sampler";

    fn sample(&mut self) -> SystemSample {
        let sample = sample(&mut self.system, self.readings > 0);
        self.readings = self.readings.saturating_add(1).min(2);
        sample
    }

    /// The second sample, the first with CPU usage, comes as soon as sysinfo can give it.
    fn next_wait(&self, interval: Duration) -> Duration {
        if self.readings < 2 {
            sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.min(interval)
        } else {
            interval
        }
    }

    /// Reading the host cannot fail once sysinfo is set up.
    fn health(_: &SystemSample) -> Health {
        Health::Ok
    }
}

/// Starts the sampler. The first sample (memory and load; CPU usage `null`, as it needs two
/// readings apart) is published before this returns, without waiting: the API can listen at
/// once. The second follows after sysinfo's minimum CPU interval, then one per interval.
pub fn start(
    writer: SampleWriter<SystemSample>,
    shutdown: Shutdown,
) -> Result<JoinHandle<()>, StartError> {
    let system = sysinfo::System::new()
        .map_err(|e| StartError::new(format!("cannot read host statistics: {e}")))?;
    let sampler = SystemSampler {
        system,
        readings: 0,
    };
    let mut driver = Driver::new(sampler, writer, SAMPLE_INTERVAL);
    driver.sample_now();
    driver.spawn(shutdown)
}

/// One reading; CPU usage only when `primed` (a CPU reading was taken one interval before).
fn sample(system: &mut sysinfo::System, primed: bool) -> SystemSample {
    system.refresh_cpu_usage();
    system.refresh_memory();
    let total = system.total_memory();
    let used = system.used_memory();
    SystemSample {
        cpu_usage_percent: primed.then(|| round1(f64::from(system.global_cpu_usage()))),
        memory_usage_percent: percent(used, total).unwrap_or(0.0),
        memory_total_mb: bytes_to_mb(total),
        memory_used_mb: bytes_to_mb(used),
        load_average: sysinfo::System::load_average().ok().map(|l| LoadAverage {
            one: l.one,
            five: l.five,
            fifteen: l.fifteen,
        }),
        memory_bytes: MemoryBytes {
            total,
            available: system.available_memory(),
            free: system.free_memory(),
        },
        cpu_times: std::fs::read_to_string("/proc/stat")
            .map(|text| cpu_times(&text, clock_ticks()))
            .unwrap_or_default(),
    }
}

/// Clock ticks per second, the unit of `/proc/stat` (`USER_HZ`, 100 nearly everywhere).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The per-CPU lines of `/proc/stat` (`cpu0 user nice system idle iowait irq softirq steal
/// ...`), in seconds.
fn cpu_times(stat: &str, ticks_per_second: f64) -> Vec<CpuTimes> {
    const MODES: [&str; 8] = [
        "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
    ];
    stat.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let cpu = fields.next()?.strip_prefix("cpu")?.parse::<u32>().ok()?;
            let modes = MODES
                .iter()
                .zip(fields)
                .filter_map(|(mode, ticks)| {
                    let ticks = ticks.parse::<u64>().ok()?;
                    Some((*mode, ticks as f64 / ticks_per_second))
                })
                .collect();
            Some(CpuTimes { cpu, modes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_reads_this_host() {
        let mut system = sysinfo::System::new().unwrap();
        let first = sample(&mut system, false);
        assert_eq!(first.cpu_usage_percent, None, "one reading gives no usage");
        assert!(first.memory_total_mb > 0);
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = sample(&mut system, true);
        assert!(s.memory_total_mb > 0);
        assert!(s.memory_used_mb <= s.memory_total_mb);
        assert!((0.0..=100.0).contains(&s.memory_usage_percent));
        let cpu = s.cpu_usage_percent.unwrap();
        assert!((0.0..=100.0).contains(&cpu));
        assert!(s.load_average.is_some(), "Linux has /proc/loadavg");
        assert!(s.memory_bytes.total >= s.memory_bytes.available);
        assert!(!s.cpu_times.is_empty(), "Linux has /proc/stat");
    }

    #[test]
    fn proc_stat_lines_become_seconds_per_cpu_and_mode() {
        let stat = "cpu  10 0 20 300 0 0 0 0 0 0\n\
                    cpu0 100 5 200 3000 40 1 2 3 0 0\n\
                    cpu1 7 0 0 9\n\
                    intr 123\n\
                    cpuX 1 2\n";
        let times = cpu_times(stat, 100.0);
        assert_eq!(times.len(), 2, "the total line and junk are skipped");
        assert_eq!(times[0].cpu, 0);
        assert_eq!(times[0].modes.len(), 8);
        assert_eq!(times[0].modes[0], ("user", 1.0));
        assert_eq!(times[0].modes[3], ("idle", 30.0));
        assert_eq!(times[0].modes[7], ("steal", 0.03));
        // An old kernel with fewer columns gives the modes it has.
        assert_eq!(
            times[1].modes,
            vec![
                ("user", 0.07),
                ("nice", 0.0),
                ("system", 0.0),
                ("idle", 0.09)
            ]
        );
    }
}
