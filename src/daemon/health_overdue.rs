//! Overdue deliveries on direct routes, seen by the health scan.
//!
//! With the in-kernel irqchip a direct route's trigger is the VMM's KVM
//! irqfd, and KVM asserts a resampling irqfd's GSI from a work item
//! (`irqfd_inject`) that a loaded host may run seconds late. Meanwhile the
//! device's line is high with INTx masked, the irq eventfd reads 0 (KVM took
//! the signal) and no resample comes. The rule, for a backend that reports
//! its line (the emulated device): the line high and INTx masked in two
//! scans in a row with neither an ack nor an unmask between them, and the
//! irq eventfd empty (an unread count is the irqfd rule's, `health.rs`).
//! It is reported at the second scan and at every scan after while it lasts
//! (once per [`super::health::HEALTH_INTERVAL`]), as `delivery_overdue`.
//!
//! A real function cannot be told apart this way: KVM's resample unmasks it
//! inside the kernel, so no host count shows an unmask; its masked, high,
//! idle line is the stuck-line watch's (`health_stuck.rs`).

use std::time::{Duration, Instant};

/// What the scan remembers of one direct route's waiting line.
#[derive(Debug, Clone, Default)]
pub struct OverdueWatch {
    last: Option<(u64, u64)>,
    since: Option<Instant>,
    /// Scans that found a delivery overdue.
    pub reports: u64,
}

impl OverdueWatch {
    /// One scan: whether the line is `waiting` (high, INTx masked, the irq
    /// eventfd empty) and the route's progress counts (acks, unmasks).
    /// Returns how long it has waited when that is overdue.
    pub fn observe(
        &mut self,
        waiting: bool,
        progress: (u64, u64),
        now: Instant,
    ) -> Option<Duration> {
        let still = self.last == Some(progress);
        self.last = Some(progress);
        if !waiting {
            self.since = None;
            return None;
        }
        match self.since {
            Some(since) if still => {
                self.reports += 1;
                Some(now.saturating_duration_since(since))
            }
            _ => {
                self.since = Some(now);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_line_without_progress_is_overdue_from_the_second_scan_on() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut w = OverdueWatch::default();
        assert_eq!(w.observe(true, (5, 5), s(0)), None, "first sight");
        assert_eq!(w.observe(true, (5, 5), s(1)), Some(Duration::from_secs(1)));
        assert_eq!(w.observe(true, (5, 5), s(2)), Some(Duration::from_secs(2)));
        assert_eq!(w.reports, 2);
    }

    #[test]
    fn progress_or_a_low_line_starts_over() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut w = OverdueWatch::default();
        w.observe(true, (5, 5), s(0));
        assert_eq!(w.observe(true, (6, 6), s(1)), None, "acked and unmasked");
        assert_eq!(w.observe(true, (6, 7), s(2)), None, "an unmask moved");
        assert_eq!(w.observe(false, (6, 7), s(3)), None, "line low");
        assert_eq!(w.observe(true, (6, 7), s(4)), None, "first sight again");
        assert_eq!(w.observe(true, (6, 7), s(5)), Some(Duration::from_secs(1)));
    }
}
