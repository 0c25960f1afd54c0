//! The loop's timers, folded into the `epoll_wait` timeout: the relay
//! scan, the health scan, the systemd watchdog ping and the metrics
//! textfile. Pure: every method takes the time, so tests drive them with
//! their own clock.

use std::time::{Duration, Instant};

use crate::daemon::health::HEALTH_INTERVAL;

/// How often the relay timers are checked while an EOI is outstanding.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(50);

/// When each timer is next due.
#[derive(Debug, Clone)]
pub struct Timers {
    scan: Option<Instant>,
    ping: Option<Instant>,
    last_health: Instant,
    /// The next metrics textfile write (`None` while there is none to do).
    textfile: Option<Instant>,
    /// Whether the last textfile write failed.
    textfile_failed: bool,
}

impl Timers {
    /// Timers starting at `now`; the first ping is due at once when systemd
    /// asked for pings.
    pub fn new(now: Instant, pings: bool) -> Timers {
        Timers {
            scan: None,
            ping: pings.then_some(now),
            last_health: now,
            // Due at once: the first turn writes it, or finds it off.
            textfile: Some(now),
            textfile_failed: false,
        }
    }

    /// How long the loop may wait at `now`: at most `cap`, and no later
    /// than the next due timer. The health scan counts only while a route
    /// is attached.
    pub fn timeout(
        &self,
        now: Instant,
        any_route: bool,
        cap: Option<Duration>,
    ) -> Option<Duration> {
        let health = any_route.then(|| self.last_health + HEALTH_INTERVAL);
        [self.scan, self.ping, health, self.textfile]
            .into_iter()
            .flatten()
            .map(|due| due.saturating_duration_since(now))
            .fold(cap, |w, left| Some(w.map_or(left, |w| w.min(left))))
    }

    /// An interrupt went to a VMM: scan within [`SCAN_INTERVAL`] unless a
    /// scan is already due.
    pub fn scan_soon(&mut self, now: Instant) {
        if self.scan.is_none() {
            self.scan = Some(now + SCAN_INTERVAL);
        }
    }

    /// A scan is needed no later than `at` (a storm back-off ends).
    pub fn scan_by(&mut self, at: Instant) {
        self.scan = Some(self.scan.map_or(at, |t| t.min(at)));
    }

    /// Whether the relay scan is due.
    pub fn scan_due(&self, now: Instant) -> bool {
        self.scan.is_some_and(|t| now >= t)
    }

    /// After a scan: the next one, if anything is pending.
    pub fn set_scan(&mut self, next: Option<Instant>) {
        self.scan = next;
    }

    /// Whether the health interval has passed; if so, starts the next one
    /// and returns the time since the last.
    pub fn health_due(&mut self, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last_health);
        (elapsed >= HEALTH_INTERVAL).then(|| {
            self.last_health = now;
            elapsed
        })
    }

    /// Whether a watchdog ping is due (systemd asked for one every
    /// `interval`); if so, schedules the next.
    pub fn ping_due(&mut self, now: Instant, interval: Option<Duration>) -> bool {
        match (self.ping, interval) {
            (Some(t), Some(iv)) if now >= t => {
                self.ping = Some(now + iv);
                true
            }
            _ => false,
        }
    }
}

impl Timers {
    /// Whether the metrics textfile is due (`[metrics]` asks for a write
    /// every `interval`); if so, schedules the next. Off (`None`) clears
    /// it; turned on (a reload), it is due at once.
    pub fn textfile_due(&mut self, now: Instant, interval: Option<Duration>) -> bool {
        let Some(iv) = interval else {
            self.textfile = None;
            return false;
        };
        match self.textfile {
            Some(t) if now < t => false,
            _ => {
                self.textfile = Some(now + iv);
                true
            }
        }
    }

    /// Records whether the textfile write failed; true when that changed
    /// (a failure starts or ends: the one time to log it).
    pub fn textfile_failing(&mut self, failed: bool) -> bool {
        std::mem::replace(&mut self.textfile_failed, failed) != failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_wait_is_the_nearest_due_timer_or_the_cap() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0, false);
        assert!(!t.textfile_due(t0, None), "no metrics textfile");
        assert_eq!(
            t.timeout(t0, false, None),
            None,
            "nothing due: wait for events"
        );
        assert_eq!(t.timeout(t0, false, Some(MS * 7)), Some(MS * 7));
        assert_eq!(t.timeout(t0, true, None), Some(HEALTH_INTERVAL));
        t.scan_soon(t0);
        assert_eq!(t.timeout(t0, true, None), Some(SCAN_INTERVAL));
        assert_eq!(t.timeout(t0, true, Some(MS)), Some(MS));
        assert_eq!(
            t.timeout(t0 + MS * 80, true, None),
            Some(Duration::ZERO),
            "overdue"
        );
    }

    #[test]
    fn a_pending_scan_is_not_pushed_back_but_a_backoff_may_bring_it_forward() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0, false);
        t.scan_soon(t0);
        t.scan_soon(t0 + MS * 40);
        assert!(!t.scan_due(t0 + MS * 49) && t.scan_due(t0 + SCAN_INTERVAL));
        t.scan_by(t0 + MS * 10);
        assert!(t.scan_due(t0 + MS * 10));
        t.scan_by(t0 + MS * 500);
        assert!(t.scan_due(t0 + MS * 10), "the earlier deadline stays");
        t.set_scan(None);
        assert!(!t.scan_due(t0 + MS * 1000));
    }

    #[test]
    fn the_health_scan_runs_once_per_interval_with_the_time_since_the_last() {
        let t0 = Instant::now();
        let mut t = Timers::new(t0, false);
        assert_eq!(t.health_due(t0 + MS * 999), None);
        assert_eq!(t.health_due(t0 + MS * 1200), Some(MS * 1200));
        assert_eq!(t.health_due(t0 + MS * 1300), None);
        assert_eq!(t.health_due(t0 + MS * 2300), Some(MS * 1100));
    }

    #[test]
    fn the_textfile_is_due_at_once_then_every_interval_and_never_when_off() {
        let t0 = Instant::now();
        let iv = Some(MS * 15_000);
        let mut t = Timers::new(t0, false);
        assert_eq!(t.timeout(t0, false, None), Some(Duration::ZERO));
        assert!(!t.textfile_due(t0, None), "off");
        assert_eq!(t.timeout(t0, false, None), None, "off: no wakeups for it");
        assert!(t.textfile_due(t0 + MS, iv), "turned on: due at once");
        assert!(!t.textfile_due(t0 + MS * 15_000, iv));
        assert_eq!(t.timeout(t0 + MS, false, None), Some(MS * 15_000));
        assert!(t.textfile_due(t0 + MS * 15_001, iv));
        assert!(!t.textfile_failing(false), "still fine: nothing to log");
        assert!(t.textfile_failing(true), "a failure starts");
        assert!(!t.textfile_failing(true), "and lasts, logged once");
        assert!(t.textfile_failing(false), "and ends");
    }

    #[test]
    fn pings_start_at_once_and_follow_the_interval_and_none_without_one() {
        let t0 = Instant::now();
        let iv = Some(MS * 500);
        let mut t = Timers::new(t0, true);
        assert!(t.ping_due(t0, iv));
        assert!(!t.ping_due(t0 + MS * 499, iv));
        assert!(t.ping_due(t0 + MS * 500, iv));
        let mut off = Timers::new(t0, false);
        assert!(!off.ping_due(t0 + MS * 5000, iv));
        assert!(!t.ping_due(t0 + MS * 5000, None));
    }
}
