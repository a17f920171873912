//! Samplers: each runs in its own thread and publishes what it reads into the [`Snapshot`].
//!
//! [`Snapshot`]: crate::snapshot::Snapshot

pub mod gpu;
pub mod system;

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

    #[test]
    fn units() {
        assert_eq!(bytes_to_mb(24576 * 1024 * 1024), 24576);
        assert_eq!(percent(1, 3), Some(33.3));
        assert_eq!(percent(1, 0), None);
        assert_eq!(round1(25.46), 25.5);
    }
}
