//! The relay's hot path in the loop: a device's VFIO trigger fired, or its
//! VMM's resample did (the guest's EOI), and the relay timers (storm
//! back-offs, overdue EOIs). The data path itself is `relay::RelayPath`.
//!
//! One interrupt on a relay route: VFIO's trigger fires; the trigger watch
//! (`relay::TriggerWatch`) posts it to its completion queue and the loop
//! wakes (`Tok::Watch`, or `epoll_wait`'s `EINTR`), or, without the watch,
//! `Tok::Trigger(i)` → [`Daemon::on_trigger`] → `RelayPath::on_trigger`
//! (write the VMM's irq); the guest EOIs; `Tok::Resample(i)` →
//! [`Daemon::on_resample`] → `RelayPath::on_resample` (unmask INTx through
//! the backend's `VFIO_DEVICE_SET_IRQS`; if the watch says the unmask
//! re-fired the trigger, write the VMM's irq). In steady state that is one
//! wakeup and three syscalls per interrupt: `epoll_wait`, the unmask, the
//! irq write; four where io_uring is refused, with a read of the trigger
//! (`relay::Carrier`).

use std::io;
use std::time::{Duration, Instant};

use super::event_loop::SCAN_INTERVAL;
use super::Daemon;
use crate::control::proto::Event;
use crate::relay::{RelayDevice, ResampleOutcome, TimerOutcome, WatchdogPolicy};
use crate::route::Mode;
use crate::vfio::IntxDevice;

/// A route's backend, as the relay's hot path sees it.
struct Backend<'a>(&'a mut Box<dyn IntxDevice>);

impl RelayDevice for Backend<'_> {
    #[inline]
    fn unmask(&mut self) -> io::Result<()> {
        self.0.unmask().map_err(io::Error::other)
    }

    fn acks(&mut self) -> Option<u64> {
        self.0.sim_counters().map(|c| c.acked)
    }
}

impl Daemon {
    /// Device `i`'s VFIO trigger fired: carry it to the VMM.
    #[inline]
    pub(super) fn on_trigger(&mut self, i: usize, now: Instant) {
        let Some((_, path)) = self.devices.get_mut(i).and_then(|d| d.state.relay_mut()) else {
            // No relay there any more: a firing the watch kept is dropped.
            self.lp.carrier.discard(i);
            return;
        };
        path.woken(self.lp.stats.wakeups);
        match path.on_trigger(i, now, &mut self.lp.carrier) {
            Ok(_) => self.lp.timers.scan_soon(now),
            // A full counter (EAGAIN) or any other failure: the VMM's fd,
            // not the daemon, ends; only this device is detached.
            Err(e) => self.peer_fd_failed(i, "irq", &format!("could not take a signal ({e})")),
        }
    }

    /// The trigger watch's firings that no unmask of this turn took (a
    /// device that raised its line while the loop slept): carry each.
    pub(super) fn on_watched(&mut self, now: Instant) {
        let mut fired = std::mem::take(&mut self.lp.fired);
        self.lp.carrier.fired(&mut fired);
        for &i in &fired {
            self.on_trigger(i, now);
        }
        self.lp.fired = fired;
    }

    /// Device `i`'s VMM resample fired (the guest's EOI): unmask, unless a
    /// storm holds the line.
    #[inline]
    pub(super) fn on_resample(&mut self, i: usize, now: Instant) {
        let Some((open, path)) = self.devices.get_mut(i).and_then(|d| d.state.relay_mut()) else {
            return;
        };
        path.woken(self.lp.stats.wakeups);
        match path.on_resample(
            i,
            now,
            &mut Backend(&mut open.backend),
            &mut self.lp.carrier,
        ) {
            Ok(ResampleOutcome::Refired) => self.lp.timers.scan_soon(now),
            Ok(ResampleOutcome::Backoff(until)) => {
                let storms = path.stats().storms;
                self.lp.timers.scan_by(until);
                self.storm_limited(i, until.saturating_duration_since(now), storms, now);
            }
            Ok(_) => {}
            Err(e) => log::error!(
                "{}: relay could not unmask INTx: {e}",
                self.devices[i].tag()
            ),
        }
    }

    fn storm_limited(&mut self, i: usize, backoff: Duration, storms: u64, now: Instant) {
        let dev = &mut self.devices[i];
        let Some(held_back) = dev.storm_events.admit(now) else {
            return;
        };
        log::warn!(
            "{}: stuck line (re-fires at every unmask, never seen serviced) above {}/s; INTx held masked for {} ms ({held_back} more limited since the last report)",
            dev.tag(),
            dev.cfg.relay.storm_rate,
            backoff.as_millis(),
        );
        let ev = Event::StormLimited {
            device: dev.cfg.name.clone(),
            rate_limit: dev.cfg.relay.storm_rate,
            backoff_ms: backoff.as_millis() as u64,
            storms,
        };
        self.send_event(i, &ev);
    }

    /// Relay timers: storm back-offs that ended, overdue EOIs.
    pub(super) fn scan(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut fired = Vec::new();
        for (i, dev) in self.devices.iter_mut().enumerate() {
            let tag = dev.tag();
            let Some((_, path)) = dev.state.relay_mut() else {
                continue;
            };
            match path.on_timer(now) {
                Ok(TimerOutcome::Watchdog { waited, policy }) => fired.push((i, waited, policy)),
                Ok(_) => {}
                Err(e) => log::error!("{tag}: relay timer could not unmask INTx: {e}"),
            }
            let due = path
                .next_deadline()
                .or_else(|| path.eoi_pending().then(|| now + SCAN_INTERVAL));
            if let Some(d) = due {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        self.lp.timers.set_scan(next);
        for (i, waited, policy) in fired {
            self.delivery_overdue(i, Mode::Relay, waited);
            let dev = &mut self.devices[i];
            if dev.watchdog_events.admit(now).is_none() {
                continue;
            }
            let rearmed = policy == WatchdogPolicy::Rearm;
            log::warn!(
                "{}: no EOI from the guest for {} ms; {}",
                dev.tag(),
                waited.as_millis(),
                if rearmed {
                    "re-armed INTx with an unmask"
                } else {
                    "INTx left masked (watchdog = \"log\")"
                }
            );
            let ev = Event::EoiWatchdog {
                device: dev.cfg.name.clone(),
                waited_ms: waited.as_millis() as u64,
                rearmed,
            };
            self.send_event(i, &ev);
        }
    }
}
