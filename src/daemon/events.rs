//! The one rate limit on owner events: storms, missing EOIs and direct-route
//! storms each tell a device's owner (and the log) at most once per window,
//! and count what they held back.

use std::time::{Duration, Instant};

/// Lets one event through per `window`.
#[derive(Debug, Clone)]
pub struct EventLimiter {
    window: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl EventLimiter {
    /// A limiter that lets one event through per `window`.
    pub fn new(window: Duration) -> EventLimiter {
        EventLimiter {
            window,
            last: None,
            held_back: 0,
        }
    }

    /// Whether an event at `now` may go out. When it may, returns how many
    /// were held back since the last one that went out (and starts counting
    /// again); when not, counts it.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.window)
        {
            self.held_back += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_per_window_with_the_count_of_those_held_back() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut l = EventLimiter::new(Duration::from_secs(1));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(ms(10)), None);
        assert_eq!(l.admit(ms(999)), None);
        assert_eq!(l.admit(ms(1000)), Some(2), "the window has passed");
        assert_eq!(l.admit(ms(1500)), None);
        assert_eq!(l.admit(ms(2000)), Some(1));
    }

    #[test]
    fn a_clock_that_goes_back_holds_events_back() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut l = EventLimiter::new(Duration::from_secs(10));
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 - Duration::from_secs(1)), None);
    }
}
