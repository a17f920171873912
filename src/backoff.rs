//! Retry delays: the one exponential backoff every component uses.
//!
//! The n-th retry (counting from 0) may wait up to `min(cap, initial·2ⁿ)`. With full jitter
//! ([`Backoff::new`], for the platform) it waits a uniformly random time in `[0, that]`: full
//! jitter is what keeps a fleet from hammering the platform in lockstep, thousands of agents that
//! lost the platform at the same moment retry at scattered times instead of together. Without
//! jitter ([`Backoff::exact`], for local children such as `docker events`, where no crowd is to
//! be spread) it waits exactly that ceiling.

use std::time::Duration;

/// One retry schedule; [`Backoff::reset`] after a success.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    attempt: u32,
    /// `None`: no jitter, every delay is the ceiling.
    rng: Option<fastrand::Rng>,
}

impl Backoff {
    /// A schedule seeded from the process's random source.
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff::with_rng(initial, cap, fastrand::Rng::new())
    }

    /// A schedule with a given random source (for tests).
    pub fn with_rng(initial: Duration, cap: Duration, rng: fastrand::Rng) -> Backoff {
        Backoff {
            initial,
            cap: cap.max(initial),
            attempt: 0,
            rng: Some(rng),
        }
    }

    /// A schedule without jitter: `initial`, doubling up to `cap`.
    pub fn exact(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial,
            cap: cap.max(initial),
            attempt: 0,
            rng: None,
        }
    }

    /// The longest the next [`Backoff::next_delay`] can be.
    pub fn ceiling(&self) -> Duration {
        // 2^20 · initial is far past any cap; stopping the exponent there avoids overflow.
        let factor = 1u32 << self.attempt.min(20);
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// The wait before the next retry; each call moves one step up the schedule.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.uniform(Duration::ZERO, ceiling)
    }

    /// A wait near the cap, for failures that a quick retry cannot fix (the platform rejected
    /// the token): between half the cap and the cap, still jittered.
    pub fn delay_at_cap(&mut self) -> Duration {
        self.uniform(self.cap / 2, self.cap)
    }

    /// Back to the start of the schedule.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A uniformly random duration in `[low, high]`, to the millisecond.
    /// Without jitter, `high`.
    fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        let Some(rng) = &mut self.rng else {
            return high.max(low);
        };
        let low_ms = low.as_millis() as u64;
        let high_ms = (high.as_millis() as u64).max(low_ms);
        Duration::from_millis(rng.u64(low_ms..=high_ms))
    }
}

/// A random offset in `[0, interval)`, so that agents started together do not send their
/// heartbeats together.
pub fn random_offset(interval: Duration) -> Duration {
    let ms = interval.as_millis() as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(fastrand::u64(0..ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped config's schedule (`central_platform.backoff_initial_ms`, `backoff_max_ms`):
    /// the first retry within 1 s, growing to at most 5 min.
    const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
    const DEFAULT_CAP: Duration = Duration::from_secs(300);

    #[test]
    fn delays_stay_within_the_doubling_ceiling_and_the_cap() {
        let mut backoff =
            Backoff::with_rng(DEFAULT_INITIAL, DEFAULT_CAP, fastrand::Rng::with_seed(7));
        let ceilings: Vec<u64> = (0..14)
            .map(|_| {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay();
                assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
                ceiling.as_secs()
            })
            .collect();
        assert_eq!(
            ceilings,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300, 300]
        );
        // Far along the schedule nothing overflows and the cap holds.
        for _ in 0..100 {
            assert!(backoff.next_delay() <= DEFAULT_CAP);
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), DEFAULT_INITIAL);
    }

    #[test]
    fn delays_reach_across_the_whole_range() {
        // Full jitter: late in the schedule, some waits are short and some near the cap.
        let mut backoff =
            Backoff::with_rng(DEFAULT_INITIAL, DEFAULT_CAP, fastrand::Rng::with_seed(1));
        for _ in 0..12 {
            backoff.next_delay();
        }
        let delays: Vec<Duration> = (0..200).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_secs(60)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(240)));
    }

    #[test]
    fn delay_at_cap_is_between_half_the_cap_and_the_cap() {
        let mut backoff = Backoff::new(DEFAULT_INITIAL, DEFAULT_CAP);
        for _ in 0..200 {
            let delay = backoff.delay_at_cap();
            assert!(
                (DEFAULT_CAP / 2..=DEFAULT_CAP).contains(&delay),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn many_agents_first_retries_spread_out() {
        // 1000 agents, each with its own random source as in production, lose the platform at
        // the same moment: their first retries must not coincide.
        let first: Vec<u64> = (0..1000)
            .map(|_| {
                let mut backoff = Backoff::new(DEFAULT_INITIAL, DEFAULT_CAP);
                backoff.next_delay().as_millis() as u64
            })
            .collect();
        assert!(first.iter().all(|ms| *ms <= 1000));
        // Spread over the whole first second: every tenth of it gets a fair share.
        let mut buckets = [0u32; 10];
        for ms in &first {
            buckets[(*ms as usize / 100).min(9)] += 1;
        }
        assert!(
            buckets.iter().all(|n| (50..=150).contains(n)),
            "{buckets:?}"
        );
        // And no single millisecond holds more than a handful of them.
        let mut per_ms = std::collections::HashMap::new();
        for ms in &first {
            *per_ms.entry(ms).or_insert(0u32) += 1;
        }
        assert!(
            per_ms.values().all(|n| *n <= 10),
            "a crowd retried in the same millisecond"
        );
    }

    #[test]
    fn an_exact_schedule_doubles_to_the_cap() {
        let mut backoff = Backoff::exact(Duration::from_secs(1), Duration::from_secs(10));
        let delays: Vec<u64> = (0..6).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        assert_eq!(backoff.delay_at_cap(), Duration::from_secs(10));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn heartbeat_offsets_fall_inside_the_interval() {
        let interval = Duration::from_secs(30);
        let offsets: Vec<Duration> = (0..500).map(|_| random_offset(interval)).collect();
        assert!(offsets.iter().all(|o| *o < interval));
        assert!(offsets.iter().any(|o| *o < Duration::from_secs(10)));
        assert!(offsets.iter().any(|o| *o > Duration::from_secs(20)));
        assert_eq!(random_offset(Duration::ZERO), Duration::ZERO);
    }
}
