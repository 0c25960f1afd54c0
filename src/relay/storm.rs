//! The storm limiter: a stuck-high line must not eat a core, and a fast
//! device that is being served must not be throttled like one.
//!
//! Interrupts are counted in windows of 100 ms with a budget of
//! `rate / 10` each. A window that spends its budget is judged:
//!
//! - **serviced** when the line was seen low in it (an unmask that did not
//!   re-fire: the guest's ISR made the device drop its line), or when the
//!   device itself counts acks that lowered the line (the emulated device
//!   does; a real function cannot tell the host) and they moved since the
//!   window began. A serviced line is a busy device, not a storm: it is
//!   admitted for the rest of the window.
//! - **stuck** otherwise: every unmask in the window found the line still
//!   high and re-fired, and nothing says the device was ever acknowledged.
//!   The unmask is held back until the window ends (at least the shortest
//!   hold, at most the longest), and counting starts again then.
//!
//! A stuck line is therefore served at the configured rate, not below it:
//! the hold is the rest of the window, so each window carries its budget
//! and no more. (The limiter this replaced doubled a back-off up to a cap
//! and stayed there, which served 97/s for a limit of 200/s.)

use std::time::{Duration, Instant};

/// The counting window.
pub const WINDOW: Duration = Duration::from_millis(100);

/// Per-device storm limiter.
#[derive(Debug, Clone)]
pub struct StormLimiter {
    limit: u64,
    min_hold: Duration,
    max_hold: Duration,
    window_start: Instant,
    fresh: bool,
    count: u64,
    seen_low: bool,
    serviced: bool,
    acks_at_start: Option<u64>,
    /// Times the limiter held a stuck line masked.
    pub engaged: u64,
    /// Windows that spent their budget but were admitted as serviced.
    pub serviced_windows: u64,
}

impl StormLimiter {
    /// A limiter for `rate` interrupts per second (0: off); a hold lasts
    /// the rest of its window, at least `min_hold` and at most `max_hold`.
    pub fn new(rate: u64, min_hold: Duration, max_hold: Duration, now: Instant) -> Self {
        StormLimiter {
            limit: if rate == 0 {
                u64::MAX
            } else {
                (rate / 10).max(1)
            },
            min_hold,
            max_hold: max_hold.max(min_hold),
            window_start: now,
            fresh: true,
            count: 0,
            seen_low: false,
            serviced: false,
            acks_at_start: None,
            engaged: 0,
            serviced_windows: 0,
        }
    }

    /// Whether the limiter is on.
    pub fn enabled(&self) -> bool {
        self.limit != u64::MAX
    }

    /// Counts one EOI at `now`; returns until when to hold the unmask if
    /// the line is storming stuck. `acks` asks the device for its count of
    /// acks that lowered the line, where it keeps one; it is called at most
    /// twice per window (when a window starts, and when its budget is
    /// spent), never per interrupt.
    #[inline]
    pub fn admit(
        &mut self,
        now: Instant,
        acks: &mut dyn FnMut() -> Option<u64>,
    ) -> Option<Instant> {
        if !self.enabled() {
            return None;
        }
        if self.fresh || now.saturating_duration_since(self.window_start) >= WINDOW {
            self.start_window(now, acks());
        }
        self.count += 1;
        if self.count <= self.limit || self.serviced {
            return None;
        }
        let acked = matches!((self.acks_at_start, acks()), (Some(a), Some(b)) if b > a);
        if self.seen_low || acked {
            self.serviced = true;
            self.serviced_windows += 1;
            return None;
        }
        self.engaged += 1;
        let rest = (self.window_start + WINDOW).saturating_duration_since(now);
        let until = now + rest.clamp(self.min_hold, self.max_hold);
        // The next window starts with the first EOI after the hold, which
        // also takes its ack baseline.
        self.fresh = true;
        Some(until)
    }

    /// The unmask after an admitted EOI found the line `refired` (still
    /// high) or not (low: the device was serviced).
    #[inline]
    pub fn unmasked(&mut self, refired: bool) {
        if !refired {
            self.seen_low = true;
        }
    }

    fn start_window(&mut self, now: Instant, acks: Option<u64>) {
        self.window_start = now;
        self.fresh = false;
        self.count = 0;
        self.seen_low = false;
        self.serviced = false;
        self.acks_at_start = acks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limiter(rate: u64, t0: Instant) -> StormLimiter {
        StormLimiter::new(rate, MS * 10, MS * 1000, t0)
    }

    fn no_acks() -> Option<u64> {
        None
    }

    /// Drives a line for `secs` seconds: EOIs come every `gap` unless held;
    /// each unmask re-fires (`refire`), and `acks` is the device's count.
    /// Returns the interrupts served.
    fn drive(
        l: &mut StormLimiter,
        t0: Instant,
        secs: u32,
        gap: Duration,
        refire: bool,
        acks: &mut dyn FnMut() -> Option<u64>,
    ) -> u64 {
        let end = t0 + Duration::from_secs(secs.into());
        let (mut now, mut served) = (t0, 0);
        while now < end {
            match l.admit(now, acks) {
                None => {
                    l.unmasked(refire);
                    served += 1;
                    now += gap;
                }
                Some(until) => now = until,
            }
        }
        served
    }

    #[test]
    fn a_window_within_the_budget_admits_everything() {
        let t0 = Instant::now();
        let mut l = limiter(1000, t0);
        // 1000/s is 100 per 100 ms window.
        for i in 0..100 {
            assert_eq!(
                l.admit(t0 + MS * (i % 90), &mut no_acks),
                None,
                "interrupt {i}"
            );
            l.unmasked(true);
        }
        assert_eq!(l.engaged, 0);
    }

    #[test]
    fn a_stuck_line_is_held_for_the_rest_of_its_window() {
        let t0 = Instant::now();
        let mut l = limiter(1000, t0);
        assert_eq!(l.admit(t0, &mut no_acks), None, "the window starts");
        l.unmasked(true);
        for _ in 1..100 {
            assert_eq!(l.admit(t0 + MS * 3, &mut no_acks), None);
            l.unmasked(true);
        }
        let until = l.admit(t0 + MS * 3, &mut no_acks).expect("stuck: held");
        assert_eq!(until, t0 + WINDOW, "held to the window's end");
        assert_eq!(l.engaged, 1);
        // The next window starts at the hold's end with a full budget.
        for _ in 0..100 {
            assert_eq!(l.admit(until, &mut no_acks), None);
            l.unmasked(true);
        }
        assert_eq!(l.admit(until, &mut no_acks), Some(until + WINDOW));
    }

    #[test]
    fn the_served_rate_of_a_stuck_line_tracks_the_limit() {
        for rate in [200u64, 1000, 5000] {
            let t0 = Instant::now();
            let mut l = limiter(rate, t0);
            // A stuck line EOI'd every 20 µs: 50 000/s if nothing held it.
            let served = drive(
                &mut l,
                t0,
                10,
                Duration::from_micros(20),
                true,
                &mut no_acks,
            );
            let per_s = served as f64 / 10.0;
            assert!(
                per_s >= rate as f64 * 0.95 && per_s <= rate as f64 * 1.05,
                "limit {rate}/s: served {per_s}/s"
            );
            assert!(l.engaged >= 95, "held once per window: {}", l.engaged);
        }
    }

    #[test]
    fn the_hold_is_at_least_the_shortest_and_at_most_the_longest() {
        let t0 = Instant::now();
        let mut l = StormLimiter::new(10, MS * 30, MS * 40, t0);
        // A budget of 1 per window: the second EOI of a window is held.
        assert_eq!(l.admit(t0, &mut no_acks), None);
        l.unmasked(true);
        assert_eq!(l.admit(t0, &mut no_acks), Some(t0 + MS * 40), "capped");
        let t1 = t0 + MS * 40;
        assert_eq!(l.admit(t1, &mut no_acks), None, "a new window");
        l.unmasked(true);
        assert_eq!(
            l.admit(t1 + MS * 95, &mut no_acks),
            Some(t1 + MS * 125),
            "5 ms left in the window: held the shortest hold"
        );
    }

    #[test]
    fn a_fast_device_whose_line_goes_low_is_not_throttled() {
        let t0 = Instant::now();
        let mut l = limiter(1000, t0);
        // 50 000/s, every unmask but every tenth re-fires: the guest serves
        // it and it raises again at once, but its line is seen low.
        let end = t0 + Duration::from_secs(2);
        let (mut now, mut n) = (t0, 0u64);
        while now < end {
            assert_eq!(l.admit(now, &mut no_acks), None, "at {n}");
            l.unmasked(n % 10 != 0);
            n += 1;
            now += Duration::from_micros(20);
        }
        assert_eq!(l.engaged, 0);
        assert!(l.serviced_windows >= 19, "{}", l.serviced_windows);
    }

    #[test]
    fn a_fast_device_that_acks_is_not_throttled_though_every_unmask_refires() {
        let t0 = Instant::now();
        let mut l = limiter(1000, t0);
        // The emulated device counts acks: a saturated device re-fires at
        // every unmask, but its acks move.
        let mut acked = 0u64;
        let served = drive(&mut l, t0, 2, Duration::from_micros(20), true, &mut || {
            acked += 500;
            Some(acked)
        });
        assert_eq!(l.engaged, 0);
        assert!(served >= 99_000, "{served}");
    }

    #[test]
    fn a_device_whose_acks_stand_still_is_stuck() {
        let t0 = Instant::now();
        let mut l = limiter(1000, t0);
        let served = drive(&mut l, t0, 2, Duration::from_micros(20), true, &mut || {
            Some(7)
        });
        assert!((1900..=2100).contains(&served), "{served}");
        assert!(l.engaged >= 19);
    }

    #[test]
    fn rate_zero_never_limits_and_never_asks_the_device() {
        let t0 = Instant::now();
        let mut off = limiter(0, t0);
        let mut asked = 0;
        assert!((0..100_000).all(|i| off
            .admit(t0 + MS * (i / 100), &mut || {
                asked += 1;
                None
            })
            .is_none()));
        assert_eq!(asked, 0);
        let mut tiny = limiter(1, t0);
        assert_eq!(tiny.admit(t0, &mut no_acks), None);
        tiny.unmasked(true);
        assert!(tiny.admit(t0, &mut no_acks).is_some());
    }
}
