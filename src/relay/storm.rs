//! The storm limiter: a stuck-high line must not eat a core.
//!
//! Interrupts are counted in windows of 100 ms. When a window holds more
//! than `rate / 10`, the next unmask is held back for a back-off that
//! doubles while the storm lasts. The rate the daemon serves is therefore
//! bounded by the configured rate, whatever the line does.

use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_millis(100);

/// Per-device storm limiter.
#[derive(Debug, Clone)]
pub struct StormLimiter {
    limit: u64,
    base: Duration,
    max: Duration,
    backoff: Duration,
    window_start: Instant,
    count: u64,
    /// Times the limiter engaged.
    pub engaged: u64,
}

impl StormLimiter {
    /// A limiter for `rate` interrupts per second (0: off).
    pub fn new(rate: u64, base: Duration, max: Duration, now: Instant) -> Self {
        StormLimiter {
            limit: if rate == 0 {
                u64::MAX
            } else {
                (rate / 10).max(1)
            },
            base,
            max: max.max(base),
            backoff: base,
            window_start: now,
            count: 0,
            engaged: 0,
        }
    }

    /// Counts one interrupt; returns when to unmask if the storm limit is hit.
    #[inline]
    pub fn admit(&mut self, now: Instant) -> Option<Instant> {
        if now.saturating_duration_since(self.window_start) >= WINDOW {
            if self.count <= self.limit {
                self.backoff = self.base;
            }
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        if self.count <= self.limit {
            return None;
        }
        self.engaged += 1;
        let until = now + self.backoff;
        self.backoff = (self.backoff * 2).min(self.max);
        self.window_start = until;
        self.count = 0;
        Some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn limiter(rate: u64, t0: Instant) -> StormLimiter {
        StormLimiter::new(rate, MS * 10, MS * 40, t0)
    }

    #[test]
    fn a_window_under_the_limit_admits_everything() {
        let t0 = Instant::now();
        let mut l = limiter(1000, t0);
        // 1000/s is 100 per 100 ms window.
        for i in 0..100 {
            assert_eq!(l.admit(t0 + MS * (i % 90)), None, "interrupt {i}");
        }
        assert_eq!(l.engaged, 0);
    }

    #[test]
    fn the_first_interrupt_over_the_limit_backs_off_and_the_back_off_doubles_to_the_cap() {
        let t0 = Instant::now();
        let mut l = limiter(1000, t0);
        for _ in 0..100 {
            assert_eq!(l.admit(t0), None);
        }
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            let until = l.admit(now).expect("over the limit");
            waits.push(until - now);
            // The storm goes on: the line is still high when the back-off ends.
            now = until;
            for _ in 0..100 {
                assert_eq!(l.admit(now), None);
            }
        }
        assert_eq!(waits, [MS * 10, MS * 20, MS * 40, MS * 40]);
        assert_eq!(l.engaged, 4);
    }

    #[test]
    fn a_quiet_window_resets_the_back_off() {
        let t0 = Instant::now();
        let mut l = limiter(1000, t0);
        for _ in 0..100 {
            l.admit(t0);
        }
        let until = l.admit(t0).expect("limited");
        assert_eq!(until - t0, MS * 10);
        // One quiet window after the back-off, then a new storm.
        let later = until + MS * 100;
        assert_eq!(l.admit(later), None);
        let later = later + MS * 100;
        for _ in 0..100 {
            assert_eq!(l.admit(later), None);
        }
        assert_eq!(
            l.admit(later).map(|u| u - later),
            Some(MS * 10),
            "back to the base"
        );
    }

    #[test]
    fn rate_zero_never_limits_and_a_tiny_rate_still_admits_one_per_window() {
        let t0 = Instant::now();
        let mut off = limiter(0, t0);
        assert!((0..100_000).all(|_| off.admit(t0).is_none()));
        let mut tiny = limiter(1, t0);
        assert_eq!(tiny.admit(t0), None);
        assert!(tiny.admit(t0).is_some());
    }
}
