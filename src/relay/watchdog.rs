//! The EOI watchdog: an interrupt that is never EOI'd leaves INTx masked
//! and the device hung. After the bound passes the watchdog logs it and, by
//! policy, re-arms the line with one unmask.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What to do when an EOI is overdue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchdogPolicy {
    /// Log it and unmask, so a lost EOI does not hang the device.
    Rearm,
    /// Log it and leave INTx masked (for debugging a guest).
    Log,
}

/// Per-device EOI watchdog.
#[derive(Debug, Clone)]
pub struct EoiWatchdog {
    bound: Duration,
    policy: WatchdogPolicy,
    pending_since: Option<Instant>,
    reported: bool,
    /// Times the watchdog fired.
    pub fired: u64,
}

/// What the watchdog wants done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// Nothing is overdue.
    No,
    /// Overdue; log it and unmask.
    Rearm(Duration),
    /// Overdue; log it only.
    Report(Duration),
}

impl EoiWatchdog {
    /// A watchdog with `bound` and `policy`.
    pub fn new(bound: Duration, policy: WatchdogPolicy) -> Self {
        EoiWatchdog {
            bound,
            policy,
            pending_since: None,
            reported: false,
            fired: 0,
        }
    }

    /// An interrupt went to the VMM.
    #[inline]
    pub fn armed(&mut self, now: Instant) {
        if self.pending_since.is_none() {
            self.pending_since = Some(now);
        }
    }

    /// The VMM's EOI arrived. Returns when the interrupt was sent.
    #[inline]
    pub fn eoi(&mut self) -> Option<Instant> {
        self.reported = false;
        self.pending_since.take()
    }

    /// Whether an EOI is outstanding.
    pub fn pending(&self) -> bool {
        self.pending_since.is_some()
    }

    /// Checks the bound at `now`.
    pub fn check(&mut self, now: Instant) -> Overdue {
        let Some(since) = self.pending_since else {
            return Overdue::No;
        };
        let waited = now.saturating_duration_since(since);
        if waited < self.bound {
            return Overdue::No;
        }
        match self.policy {
            WatchdogPolicy::Rearm => {
                self.fired += 1;
                // Start a new wait: the unmask may re-fire and re-arm.
                self.pending_since = None;
                Overdue::Rearm(waited)
            }
            WatchdogPolicy::Log if !self.reported => {
                self.fired += 1;
                self.reported = true;
                Overdue::Report(waited)
            }
            WatchdogPolicy::Log => Overdue::No,
        }
    }
}
