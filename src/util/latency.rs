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

/// Buckets of the latency histogram a status reply carries
/// ([`latency_buckets`]): bucket 0 is below 1 µs, bucket `i` ≥ 1 holds
/// [2^((i-1)/4), 2^(i/4)) µs (quarter octaves, 19 % wide), and the last
/// one also everything above.
pub const LATENCY_BUCKETS: usize = 85;

/// The upper edge of latency bucket `i`, microseconds: 2^(i/4).
pub fn latency_bucket_upper_us(i: usize) -> f64 {
    (i as f64 / 4.0).exp2()
}

/// `h` (nanoseconds) counted into the [`LATENCY_BUCKETS`] fixed buckets, so
/// that two readings can be subtracted into the histogram of the time
/// between them.
pub fn latency_buckets(h: &LatencyHistogram) -> Vec<u64> {
    let mut out = vec![0u64; LATENCY_BUCKETS];
    for v in h.iter_recorded() {
        let us = v.value_iterated_to() as f64 / 1000.0;
        let i = if us < 1.0 {
            0
        } else {
            ((us.log2() * 4.0).floor() as usize + 1).min(LATENCY_BUCKETS - 1)
        };
        out[i] += u64::from(v.count_at_value());
    }
    out
}
