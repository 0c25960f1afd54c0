//! The relay's interrupt-to-EOI latency histogram.

use hdrhistogram::Histogram;

/// Interrupt-to-EOI latency in nanoseconds, 1 µs to 60 s at 1% precision,
/// with 32-bit counts: about 10 KB per route, so hundreds of routes stay
/// small. A bucket's count saturates after 4 billion samples.
#[derive(Debug, Clone)]
pub struct EoiLatency {
    ns: Histogram<u32>,
}

/// Lowest and highest trackable values, nanoseconds.
const BOUNDS_NS: (u64, u64) = (1_000, 60_000_000_000);

impl Default for EoiLatency {
    fn default() -> Self {
        EoiLatency::new()
    }
}

impl EoiLatency {
    /// An empty histogram.
    pub fn new() -> EoiLatency {
        let ns = Histogram::new_with_bounds(BOUNDS_NS.0, BOUNDS_NS.1, 2)
            .expect("constant histogram bounds are valid");
        EoiLatency { ns }
    }

    /// Records one interrupt's wait for its EOI.
    #[inline]
    pub fn record(&mut self, wait: std::time::Duration) {
        let ns = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
        self.ns.saturating_record(ns.max(1));
    }

    /// The value at quantile `q`, microseconds (0 when empty).
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        self.ns.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest value, microseconds (0 when empty).
    pub fn max_us(&self) -> f64 {
        self.ns.max() as f64 / 1000.0
    }

    /// The histogram counted into the fixed quarter-octave buckets of
    /// [`crate::util::latency::latency_buckets`].
    pub fn buckets(&self) -> Vec<u64> {
        crate::util::latency::latency_buckets(&self.ns)
    }

    /// The sum of every recorded value, seconds, to the histogram's 1 %
    /// precision (its mean times its count).
    pub fn sum_secs(&self) -> f64 {
        self.ns.mean() * self.ns.len() as f64 / 1e9
    }

    /// Samples recorded.
    pub fn len(&self) -> u64 {
        self.ns.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.ns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn quantiles_are_in_microseconds_and_zero_when_empty() {
        let mut h = EoiLatency::new();
        assert_eq!((h.quantile_us(0.5), h.max_us()), (0.0, 0.0));
        for us in [10, 20, 30, 1000] {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.len(), 4);
        assert!(
            (h.quantile_us(0.5) - 20.0).abs() < 0.5,
            "{}",
            h.quantile_us(0.5)
        );
        assert!((h.max_us() - 1000.0).abs() < 10.0, "{}", h.max_us());
    }

    #[test]
    fn a_zero_wait_still_counts() {
        let mut h = EoiLatency::new();
        h.record(Duration::ZERO);
        assert_eq!(h.len(), 1);
    }
}
