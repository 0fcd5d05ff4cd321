//! Percentiles from every sample (a sorted vector: exact, no histogram buckets).

use std::time::Duration;

#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// Nearest-rank percentiles over all samples (nanoseconds); sorts in place.
    pub fn of(samples: &mut [u64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let n = samples.len();
        let rank = |q: f64| {
            // Nearest rank: the smallest sample with at least q of all samples at or below it.
            let r = (q * n as f64).ceil() as usize;
            Duration::from_nanos(samples[r.clamp(1, n) - 1])
        };
        Some(Summary {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: Duration::from_nanos(samples[n - 1]),
        })
    }
}

/// Milliseconds with microsecond resolution.
pub fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// A signed difference in milliseconds.
pub fn diff_ms(a: Duration, b: Duration) -> f64 {
    (a.as_secs_f64() - b.as_secs_f64()) * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&mut samples).unwrap_or_default();
        assert_eq!(s.p50, Duration::from_nanos(50));
        assert_eq!(s.p99, Duration::from_nanos(99));
        assert_eq!(s.max, Duration::from_nanos(100));
        let mut one = vec![7];
        let s = Summary::of(&mut one).unwrap_or_default();
        assert_eq!(
            (s.p50, s.p99),
            (Duration::from_nanos(7), Duration::from_nanos(7))
        );
        assert!(Summary::of(&mut []).is_none());
    }
}
