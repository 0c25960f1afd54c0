//! The hardware half of the emulated function: a line raised on request and
//! lowered by the guest's ack, with a configurable policy for what follows.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The histogram lives in [`crate::util::latency`]; named here for the model's users.
pub use crate::util::latency::{new_latency_histogram, percentiles_us, LatencyHistogram};

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

    /// Whether a raise-after timer is pending.
    pub fn timer_pending(&self) -> bool {
        self.timer_pending
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
