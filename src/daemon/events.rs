//! The one rate limit on owner events: storms, missing EOIs and direct-route
//! storms each tell a device's owner (and the log) at most once per window,
//! and count what they held back. And the `delivery_overdue` event, which
//! goes only to owners that speak protocol version 2.

use std::time::{Duration, Instant};

use super::Daemon;
use crate::control::proto::Event;
use crate::route::Mode;

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

/// The protocol version that brought `delivery_overdue`.
pub const OVERDUE_VERSION: u32 = 2;

impl Daemon {
    /// An interrupt handed to device `i`'s VMM has waited `waited` without
    /// coming back as a resample: tells its owner, whose VMM can assert the
    /// guest's line itself (docs/interrupts.md, "Overdue deliveries"). Its
    /// callers fire at most once per bound (the relay's EOI watchdog, one
    /// health scan), so this needs no limiter of its own. A version-1 owner
    /// is not sent it: that client takes an unknown event for a broken
    /// reply.
    pub(super) fn delivery_overdue(&mut self, i: usize, mode: Mode, waited: Duration) {
        let Some(dev) = self.devices.get(i) else {
            return;
        };
        let version = dev
            .holder()
            .and_then(|h| self.conns.slot_of(h.conn_id))
            .and_then(|ci| self.conns.get(ci))
            .map_or(0, |c| c.version);
        let told = version >= OVERDUE_VERSION;
        log::warn!(
            "{}: an interrupt handed to the VMM's irq eventfd has not come back as a resample for {} ms ({mode}); {}",
            dev.tag(),
            waited.as_millis(),
            if told {
                "told the owner (delivery_overdue), whose VMM can assert the guest's line itself"
            } else {
                "the owner speaks protocol version 1 and is not told (delivery_overdue needs 2)"
            }
        );
        if told {
            let ev = Event::DeliveryOverdue {
                device: dev.cfg.name.clone(),
                mode,
                waited_ms: waited.as_millis() as u64,
            };
            self.send_event(i, &ev);
        }
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
