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
