//! Latency histograms (nanoseconds) and their percentiles: shared by the
//! relay's hot path and the emulated device, so neither imports the other.

use hdrhistogram::Histogram;

/// Latency histogram: nanoseconds, 1 µs to 60 s, 2 significant digits (1%),
/// 32-bit counts: about 10 KB, so a daemon with hundreds of routes stays
/// small. Counts saturate after 4 billion samples in one bucket.
pub type LatencyHistogram = Histogram<u32>;

/// A new [`LatencyHistogram`].
pub fn new_latency_histogram() -> LatencyHistogram {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 2)
        .expect("constant histogram bounds are valid")
}

/// p50, p99 and max of a nanosecond histogram, in microseconds.
pub fn percentiles_us(h: &LatencyHistogram) -> (f64, f64, f64) {
    if h.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    )
}
