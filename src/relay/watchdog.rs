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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_eoi_in_time_never_fires_and_gives_the_send_time_back() {
        let t0 = Instant::now();
        let mut w = EoiWatchdog::new(MS * 100, WatchdogPolicy::Rearm);
        assert!(!w.pending());
        w.armed(t0);
        w.armed(t0 + MS * 5);
        assert!(w.pending());
        assert_eq!(w.check(t0 + MS * 99), Overdue::No);
        assert_eq!(w.eoi(), Some(t0), "the first interrupt of the wait counts");
        assert_eq!(w.check(t0 + MS * 500), Overdue::No);
        assert_eq!(w.fired, 0);
    }

    #[test]
    fn rearm_fires_once_per_wait_and_starts_a_new_one() {
        let t0 = Instant::now();
        let mut w = EoiWatchdog::new(MS * 100, WatchdogPolicy::Rearm);
        w.armed(t0);
        assert_eq!(w.check(t0 + MS * 100), Overdue::Rearm(MS * 100));
        assert!(!w.pending(), "the unmask starts a new wait");
        assert_eq!(w.check(t0 + MS * 300), Overdue::No);
        w.armed(t0 + MS * 300);
        assert_eq!(w.check(t0 + MS * 450), Overdue::Rearm(MS * 150));
        assert_eq!(w.fired, 2);
    }

    #[test]
    fn log_reports_once_until_the_eoi_comes() {
        let t0 = Instant::now();
        let mut w = EoiWatchdog::new(MS * 100, WatchdogPolicy::Log);
        w.armed(t0);
        assert_eq!(w.check(t0 + MS * 120), Overdue::Report(MS * 120));
        assert_eq!(w.check(t0 + MS * 500), Overdue::No, "reported already");
        assert!(w.pending(), "INTx is left masked");
        assert_eq!(w.eoi(), Some(t0));
        w.armed(t0 + MS * 600);
        assert_eq!(w.check(t0 + MS * 700), Overdue::Report(MS * 100));
        assert_eq!(w.fired, 2);
    }
}
