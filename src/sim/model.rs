//! The hardware half of the emulated function: a line raised on request and
//! lowered by the guest's ack, with a configurable policy for what follows.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// What the device does when the guest acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case", tag = "after_ack")]
pub enum AckPolicy {
    /// Lower the line, then raise it again at once while cycles remain.
    #[default]
    Raise,
    /// Lower the line, then raise it again after `interval_us`.
    RaiseAfter {
        /// Delay before the next raise, microseconds.
        interval_us: u64,
    },
    /// Lower the line and stay low (one-shot): each doorbell cycle raises once.
    StayLow,
    /// Ignore the ack: the line stays high (a stuck line, for storm tests).
    Ignore,
}

/// What the model asks the host to do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing.
    Idle,
    /// Raise the line now.
    RaiseNow,
    /// Raise the line at this time.
    RaiseAt(Instant),
}

/// The device's own state: pending cycles, the line as it drives it, and the
/// raise-to-ack latency of every cycle.
#[derive(Debug)]
pub struct DeviceModel {
    /// The policy after an ack.
    pub policy: AckPolicy,
    budget: u64,
    high: bool,
    raised_at: Option<Instant>,
    timer_pending: bool,
    /// Raises so far.
    pub raised: u64,
    /// Acks that lowered a high line.
    pub acked: u64,
    /// Acks that found the line low.
    pub spurious_acks: u64,
    /// Raise-to-ack latency, nanoseconds.
    pub latency_ns: LatencyHistogram,
}

impl DeviceModel {
    /// A quiet device with `policy`.
    pub fn new(policy: AckPolicy) -> Self {
        DeviceModel {
            policy,
            budget: 0,
            high: false,
            raised_at: None,
            timer_pending: false,
            raised: 0,
            acked: 0,
            spurious_acks: 0,
            latency_ns: new_latency_histogram(),
        }
    }

    /// Clears the counters (a new attach starts a new session).
    pub fn reset_counters(&mut self) {
        self.raised = 0;
        self.acked = 0;
        self.spurious_acks = 0;
        self.latency_ns.reset();
    }

    /// A device reset: no pending cycles, line low, no timer.
    pub fn reset(&mut self) {
        self.budget = 0;
        self.high = false;
        self.raised_at = None;
        self.timer_pending = false;
    }

    /// Cycles requested but not raised yet.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The doorbell asks for `n` more cycles.
    pub fn ring(&mut self, n: u64) -> Next {
        self.budget = self.budget.saturating_add(n);
        if self.high || self.timer_pending {
            Next::Idle
        } else {
            self.take_cycle()
        }
    }

    /// Records that the line went high now.
    pub fn raised_now(&mut self, now: Instant) {
        self.high = true;
        self.timer_pending = false;
        self.raised += 1;
        self.raised_at = Some(now);
    }

    /// The guest acked. Returns whether the line should go low, and what next.
    pub fn ack(&mut self, now: Instant) -> (bool, Next) {
        if !self.high {
            self.spurious_acks += 1;
            return (false, Next::Idle);
        }
        if self.policy == AckPolicy::Ignore {
            return (false, Next::Idle);
        }
        self.high = false;
        self.acked += 1;
        if let Some(t) = self.raised_at.take() {
            let ns = now.saturating_duration_since(t).as_nanos() as u64;
            self.latency_ns.saturating_record(ns.max(1));
        }
        let next = match self.policy {
            AckPolicy::Raise => self.take_cycle(),
            AckPolicy::RaiseAfter { interval_us } if self.budget > 0 => {
                self.timer_pending = true;
                Next::RaiseAt(now + Duration::from_micros(interval_us))
            }
            _ => Next::Idle,
        };
        (true, next)
    }

    /// A `RaiseAt` timer expired.
    pub fn timer_expired(&mut self) -> Next {
        self.timer_pending = false;
        if self.high {
            Next::Idle
        } else {
            self.take_cycle()
        }
    }

    fn take_cycle(&mut self) -> Next {
        if self.budget == 0 {
            return Next::Idle;
        }
        self.budget -= 1;
        Next::RaiseNow
    }
}

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
