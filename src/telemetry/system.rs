//! The system sampler thread: owns a `sysinfo::System` and publishes host CPU usage, memory and
//! load average through its [`SampleWriter`] every [`SAMPLE_INTERVAL`] (run by the sampler
//! [`Driver`]).
//!
//! It receives nothing and sends nothing but the published sample (`components.system` is `ok`
//! from the first sample on); it stops when the shutdown channel closes (checked between
//! samples, so within one interval).

use crate::component::StartError;
use crate::shutdown::Shutdown;
use crate::state::{Health, LoadAverage, SampleWriter, SystemSample};
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
    }
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
    }
}
