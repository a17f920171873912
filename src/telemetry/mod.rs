//! Samplers: each reads one part of the machine behind the [`Sampler`] trait, and one
//! [`Driver`] runs each on its own thread, publishing every sample with its health and how long
//! it took through the sampler's [`SampleWriter`].
//!
//! A sampler thread owns its sampler (and what it holds: a `sysinfo::System`, the NVML handle),
//! receives nothing, sends nothing but what it publishes, and stops when the shutdown channel
//! closes (checked between samples; a sample in progress finishes first).
//!
//! - [`system`]: host CPU, memory and load (sysinfo).
//! - [`gpu`]: the GPUs (NVML), alone on its thread because NVML calls can block.
//! - [`xid`]: the Xid event thread (NVML events, waited for with a short timeout).
//! - [`attribution`], [`cgroup`]: which container and claim each GPU process belongs to, and
//!   the GPUs' isolation violations.
//! - [`usage`]: what each claim's container uses (its cgroup files, its GPU processes).
//! - [`gpu_health`]: what each GPU signal and Xid means for its health (the one table), and the
//!   Xid history kept across restarts.

pub mod attribution;
pub mod cgroup;
pub mod gpu;
pub mod gpu_health;
pub mod system;
pub mod usage;
pub mod xid;

use crate::component::{self, StartError};
use crate::reload::LiveDuration;
use crate::shutdown::Shutdown;
use crate::state::{Health, SampleWriter};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Something that reads one part of the machine.
pub trait Sampler: Send + 'static {
    /// What one reading gives.
    type Sample: Send + 'static;
    /// The name of the driver's thread.
    const THREAD: &'static str;
    /// Takes one reading (may block: it runs on the sampler's own thread).
    fn sample(&mut self) -> Self::Sample;
    /// The health a reading shows.
    fn health(sample: &Self::Sample) -> Health;
    /// How long to wait before the next reading.
    fn next_wait(&self, interval: Duration) -> Duration {
        interval
    }
}

/// Runs one sampler: samples, publishes, waits for the interval or shutdown.
pub struct Driver<S: Sampler> {
    sampler: S,
    writer: SampleWriter<S::Sample>,
    interval: LiveDuration,
    /// A sample was just published by [`Driver::sample_now`]: the thread waits first.
    fresh: bool,
}

impl<S: Sampler> Driver<S> {
    /// A driver whose component is `starting` until its first sample.
    pub fn new(
        sampler: S,
        writer: SampleWriter<S::Sample>,
        interval: impl Into<LiveDuration>,
    ) -> Self {
        let interval = interval.into();
        writer.set_health(Health::Starting(None));
        Driver {
            sampler,
            writer,
            interval,
            fresh: false,
        }
    }

    /// Takes and publishes one sample on the calling thread.
    pub fn sample_now(&mut self) {
        let started = Instant::now();
        let sample = self.sampler.sample();
        let took = started.elapsed();
        let health = S::health(&sample);
        if took > self.interval.get() {
            log::debug!(
                "{} took {}ms, longer than its interval",
                S::THREAD,
                took.as_millis()
            );
        }
        self.writer.publish(sample, health, took);
        self.fresh = true;
    }

    /// Starts the sampler's thread; it stops when shutdown starts (checked between samples).
    pub fn spawn(mut self, shutdown: Shutdown) -> Result<JoinHandle<()>, StartError> {
        component::spawn(S::THREAD, move || {
            let stamp = crate::notify::watch(S::THREAD);
            loop {
                if !self.fresh {
                    self.sample_now();
                }
                self.fresh = false;
                if stamp.wait(&shutdown, self.sampler.next_wait(self.interval.get())) {
                    break;
                }
            }
            // Dropped here, on its own thread (NVML's shutdown may block too).
            drop(self);
            log::debug!("{} stopped", S::THREAD);
        })
    }
}

/// Bytes to whole MiB, the unit every `_mb` field uses.
pub fn bytes_to_mb(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

/// `part / whole` as a percentage rounded to one decimal; `None` when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| round1(part as f64 * 100.0 / whole as f64))
}

/// Rounds to one decimal, the precision of every `_percent` field.
pub fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state;

    #[test]
    fn units() {
        assert_eq!(bytes_to_mb(24576 * 1024 * 1024), 24576);
        assert_eq!(percent(1, 3), Some(33.3));
        assert_eq!(percent(1, 0), None);
        assert_eq!(round1(25.46), 25.5);
    }

    /// Counts its samples; unhealthy from the third on.
    struct Counter(u32);

    impl Sampler for Counter {
        type Sample = crate::state::GpuReport;
        const THREAD: &'static str = "test-sampler";
        fn sample(&mut self) -> Self::Sample {
            self.0 += 1;
            std::thread::sleep(Duration::from_millis(5));
            crate::state::GpuReport::unavailable(format!("sample {}", self.0))
        }
        fn health(sample: &Self::Sample) -> Health {
            Health::Unavailable(sample.error().unwrap_or_default())
        }
    }

    #[test]
    fn the_driver_records_duration_and_health_and_stops() {
        let (snapshot, writers) = state::new();
        let mut driver = Driver::new(Counter(0), writers.gpu, Duration::from_millis(20));
        assert_eq!(snapshot.health()["gpu"], "starting");
        driver.sample_now();
        assert_eq!(snapshot.health()["gpu"], "unavailable: sample 1");
        let (trigger, shutdown) = crate::shutdown::channel();
        let thread = driver.spawn(shutdown).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while snapshot.samplers()["gpu"].samples < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let run = snapshot.samplers()["gpu"];
        assert!(run.samples >= 3, "{run:?}");
        assert!(run.last_duration_ms >= 5, "{run:?}");
        trigger.fire();
        thread.join().unwrap();
        let after = snapshot.samplers()["gpu"].samples;
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(snapshot.samplers()["gpu"].samples, after, "stopped");
    }
}
