//! Stuck lines on direct routes, seen by the health scan.
//!
//! On a direct route a line that never drops (the guest's handler does not
//! clear the device's interrupt) is re-fired by vfio-pci at every unmask,
//! inside the kernel and with no hard interrupt: the host count stays
//! still and nothing else shows it. The scan reads the function's PCI
//! status bit 3 ("Interrupt Status", set while the function asserts INTx,
//! masked or not) [`STATUS_READS`] times in a row, and calls the line
//! asserted in that scan only when every read showed it set.
//!
//! A healthy fast device shows the bit often too. What tells them apart is
//! progress: a healthy device's line drops when its driver acks it, so its
//! next interrupt is a new hard interrupt on the host line (the emulated
//! device: its own ack count moves); a stuck line makes none. The line is
//! stuck when it was asserted in [`STUCK_SCANS`] scans in a row while the
//! progress count did not move. A real function that is re-raised before
//! every single EOI for that long (a saturated device, or the exerciser
//! soak's chain, which re-raises from the guest's handler) cannot be told
//! from a stuck one by the host, and is reported too.

use std::time::Instant;

use crate::route::Mode;

/// Scans in a row (one a second) with the line asserted and no progress
/// before a line counts as stuck.
pub const STUCK_SCANS: u32 = 3;

/// Status reads per scan: the line counts as asserted in a scan only when
/// all of them show it, so a line that drops between interrupts is seen
/// low more often.
pub const STATUS_READS: usize = 4;

/// What the scan remembers of one route's line.
#[derive(Debug, Clone, Default)]
pub struct StuckWatch {
    last_progress: Option<u64>,
    scans: u32,
    since: Option<Instant>,
    /// Stuck-line episodes found.
    pub stuck_lines: u64,
}

/// A change the scan reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckChange {
    /// The line became stuck: it has been asserted without progress for
    /// this many scans.
    Began(u32),
    /// It is no longer stuck (seen low, or progress).
    Ended,
}

impl StuckWatch {
    /// Starts watching a new route (the episode count stays).
    pub fn reset(&mut self) {
        *self = StuckWatch {
            stuck_lines: self.stuck_lines,
            ..StuckWatch::default()
        };
    }

    /// One scan: the route's `mode`, whether its line was `asserted` in
    /// every status read (`None`: unreadable), and its progress count (hard
    /// interrupts on the host line; the emulated device's acks).
    pub fn observe(
        &mut self,
        mode: Mode,
        asserted: Option<bool>,
        progress: u64,
        now: Instant,
    ) -> Option<StuckChange> {
        let moved = self.last_progress.is_some_and(|p| p != progress);
        self.last_progress = Some(progress);
        let held = mode == Mode::Direct && asserted == Some(true) && !moved;
        self.scans = if held { self.scans + 1 } else { 0 };
        match (self.scans >= STUCK_SCANS, self.since) {
            (true, None) => {
                self.since = Some(now);
                self.stuck_lines += 1;
                Some(StuckChange::Began(self.scans))
            }
            (false, Some(_)) => {
                self.since = None;
                Some(StuckChange::Ended)
            }
            _ => None,
        }
    }

    /// Seconds the line has been stuck (the scans before it was called
    /// stuck included); 0 when it is not.
    pub fn stuck_secs(&self, now: Instant) -> u64 {
        match self.since {
            Some(t) => (now - t).as_secs() + u64::from(STUCK_SCANS - 1),
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn asserted_without_progress_for_three_scans_is_stuck_once_until_it_drops() {
        let t0 = Instant::now();
        let mut w = StuckWatch::default();
        let mut seen = Vec::new();
        for (i, asserted) in [true, true, true, true, false, true]
            .into_iter()
            .enumerate()
        {
            seen.push(w.observe(Mode::Direct, Some(asserted), 5, t0 + SEC * i as u32));
        }
        assert_eq!(
            seen,
            [
                None,
                None,
                Some(StuckChange::Began(3)),
                None,
                Some(StuckChange::Ended),
                None
            ]
        );
        assert_eq!(w.stuck_lines, 1);
    }

    #[test]
    fn a_fast_healthy_device_asserted_at_every_scan_makes_progress_and_is_not_stuck() {
        let t0 = Instant::now();
        let mut w = StuckWatch::default();
        for i in 0..10u32 {
            let progress = u64::from(i) * 10_000;
            assert_eq!(
                w.observe(Mode::Direct, Some(true), progress, t0 + SEC * i),
                None
            );
        }
        assert_eq!((w.stuck_lines, w.stuck_secs(t0 + SEC * 10)), (0, 0));
    }

    #[test]
    fn a_relay_route_or_an_unreadable_status_is_never_stuck() {
        let t0 = Instant::now();
        let mut w = StuckWatch::default();
        for i in 0..5u32 {
            assert_eq!(w.observe(Mode::Relay, Some(true), 0, t0 + SEC * i), None);
            assert_eq!(w.observe(Mode::Direct, None, 0, t0 + SEC * i), None);
        }
    }

    #[test]
    fn progress_ends_an_episode_and_reset_keeps_the_count() {
        let t0 = Instant::now();
        let mut w = StuckWatch::default();
        for i in 0..3u32 {
            w.observe(Mode::Direct, Some(true), 1, t0 + SEC * i);
        }
        assert_eq!(w.stuck_secs(t0 + SEC * 4), 4);
        assert_eq!(
            w.observe(Mode::Direct, Some(true), 2, t0 + SEC * 3),
            Some(StuckChange::Ended)
        );
        w.reset();
        assert_eq!((w.stuck_lines, w.stuck_secs(t0)), (1, 0));
    }
}
