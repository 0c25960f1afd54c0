//! Once a second, while any route is attached, the daemon looks at each one
//! from outside the hot path:
//!
//! - **storms on direct routes**: the kernel carries direct interrupts, so
//!   intxd cannot limit them, but it sees them in the host interrupt count
//!   (`/proc/interrupts`, or the emulated device's counter) and reports a
//!   rate above the device's `direct_storm_rate` in status and as an event;
//! - **a safety unmask for direct routes**: when a direct route's host count
//!   stops moving after it moved, one unmask is sent. If an EOI was lost
//!   (INTx masked for good), that unmask recovers the line. Only where an
//!   EOI can be lost: the VMM's own irqchip (split or user) signals the
//!   resample eventfd, while with the in-kernel irqchip KVM's resampler
//!   hands it to vfio-pci inside the kernel (and there the host count is
//!   no progress measure: vfio-pci's re-fires at unmask raise no hard
//!   interrupt, so a healthy chain stops it). Not when the device says its
//!   line is low (the emulated device tells; it went quiet). A route that
//!   stays idle costs nothing;
//! - **a VMM whose irqfd is gone**: when the VMM's irq eventfd holds an
//!   unread count for longer than `irqfd_timeout_ms`, nobody serves it (KVM
//!   dropped the irqfd, or the VMM stopped). The device is detached, so its
//!   INTx is disabled instead of left masked, and the owner is told. A busy
//!   VMM's next signal is often there at each scan: the wait only goes on
//!   while nothing was read (a read empties the count; see `observe`);
//! - **an overdue delivery on a direct route** (`health_overdue.rs`): the
//!   emulated device's line high and INTx masked, with the in-kernel
//!   irqchip, for two scans without an ack or an unmask: the interrupt is
//!   in KVM's late `irqfd_inject` work; the owner is told, so its VMM can
//!   assert the line itself;
//! - **a stuck line on a direct route** (`health_stuck.rs`): the function's
//!   PCI status shows its interrupt asserted scan after scan while the
//!   device makes no progress; reported in status and as an event;
//! - **a VMM eventfd made blocking**: a VMM that cleared `O_NONBLOCK` on its
//!   irq or resample eventfd after the attach (which refuses blocking ones)
//!   is detached the same way (see `ownership.rs`).

use std::time::{Duration, Instant};

use super::events::EventLimiter;
use super::health_overdue::OverdueWatch;
use super::health_stuck::{StuckChange, StuckWatch, STATUS_READS};
use super::Daemon;
use crate::control::proto::{Event, IntxState};
use crate::route::{Irqchip, Mode};
use crate::util::error::chain;
use crate::util::fd::eventfd_count;

/// How often the health scan runs while routes are attached.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Direct-route storm reports go out at most once per this window.
pub const STORM_REPORT_WINDOW: Duration = Duration::from_secs(10);

/// What the scan remembers per device.
#[derive(Debug, Clone)]
pub struct Health {
    last_count: Option<u64>,
    moved_last: bool,
    irq_unread_since: Option<Instant>,
    /// The irq count and the signals written, at the last scan.
    last_irq: (u64, u64),
    storm_reports: EventLimiter,
    /// Seconds with a direct-route rate above `direct_storm_rate`.
    pub storm_seconds: u64,
    /// Safety unmasks sent.
    pub safety_unmasks: u64,
    /// The stuck-line watch of a direct route.
    pub stuck: StuckWatch,
    /// A function gone from vfio-pci whose sysfs node the scan has seen
    /// missing (removed): its return (a rescan) brings it up anew.
    pub removed: bool,
    /// The overdue-delivery watch of a direct route (`health_overdue.rs`).
    pub overdue: OverdueWatch,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            last_count: None,
            moved_last: false,
            irq_unread_since: None,
            last_irq: (0, 0),
            storm_reports: EventLimiter::new(STORM_REPORT_WINDOW),
            storm_seconds: 0,
            safety_unmasks: 0,
            stuck: StuckWatch::default(),
            removed: false,
            overdue: OverdueWatch::default(),
        }
    }
}

/// What the scan sees of one attached route.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The route's mode.
    pub mode: Mode,
    /// The host interrupt count now.
    pub host_count: u64,
    /// The unread count on the VMM's irq eventfd.
    pub irq_unread: u64,
    /// Signals written to that eventfd so far, or a lower bound: the
    /// relay's own writes on a relay route, the host count on a direct one
    /// (each host interrupt signals it once; a re-fire at unmask may too).
    pub irq_writes: u64,
    /// Time since the last scan.
    pub elapsed: Duration,
    /// The device's `direct_storm_rate` (0: off).
    pub storm_rate: u64,
    /// The device's `irqfd_timeout_ms`.
    pub irqfd_timeout: Duration,
    /// Whether the VMM's irqchip signals the resample eventfd from
    /// userspace (split or user), where an EOI can be lost.
    pub eoi_in_userspace: bool,
    /// Whether the device asserts its line, where it can tell (the
    /// emulated device: raised more often than acked).
    pub asserting: Option<bool>,
}

/// What the scan found, for the daemon to act on.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Findings {
    /// A direct-route storm to report, at this rate per second.
    pub storm_report: Option<f64>,
    /// A direct route whose interrupts stopped: send one unmask.
    pub safety_unmask: bool,
    /// The VMM's irq eventfd has gone unread this long: detach.
    pub irqfd_lost: Option<Duration>,
}

impl Health {
    /// Starts watching a new route from the host count `now_count`.
    pub fn reset(&mut self, now_count: u64) {
        let (storms, unmasks) = (self.storm_seconds, self.safety_unmasks);
        let mut stuck = std::mem::take(&mut self.stuck);
        stuck.reset();
        *self = Health::default();
        self.storm_seconds = storms;
        self.safety_unmasks = unmasks;
        self.stuck = stuck;
        self.last_count = Some(now_count);
    }

    /// The VMM's irq eventfd has held an unread count since an earlier scan.
    pub fn undelivered(&self) -> bool {
        self.irq_unread_since.is_some()
    }

    /// One scan of one route at `now`.
    pub fn observe(&mut self, s: Sample, now: Instant) -> Findings {
        let mut found = Findings::default();
        let delta = self.last_count.map(|c| s.host_count.saturating_sub(c));
        let moved = delta.is_some_and(|d| d > 0);
        if s.mode == Mode::Direct {
            let rate = delta.unwrap_or(0) as f64 / s.elapsed.as_secs_f64().max(1e-3);
            if s.storm_rate > 0 && rate > s.storm_rate as f64 {
                self.storm_seconds += 1;
                if self.storm_reports.admit(now).is_some() {
                    found.storm_report = Some(rate);
                }
            }
            found.safety_unmask =
                self.moved_last && !moved && s.eoi_in_userspace && s.asserting != Some(false);
        }
        self.moved_last = moved;
        self.last_count = Some(s.host_count);
        // Read since the last scan: less is there than was then plus the
        // signals since (a read empties the count).
        let (last_unread, last_writes) = self.last_irq;
        let written = s.irq_writes.saturating_sub(last_writes);
        let read = s.irq_unread < last_unread.saturating_add(written);
        self.last_irq = (s.irq_unread, s.irq_writes);
        if s.irq_unread == 0 {
            self.irq_unread_since = None;
        } else {
            if read {
                self.irq_unread_since = None;
            }
            let since = *self.irq_unread_since.get_or_insert(now);
            if now - since >= s.irqfd_timeout {
                found.irqfd_lost = Some(now - since);
            }
        }
        found
    }
}

impl Daemon {
    /// One health scan over every attached device.
    pub(super) fn health_tick(&mut self, now: Instant, elapsed: Duration) {
        self.check_intx_wiring();
        self.look_for_removed();
        let mut lost = Vec::new();
        let mut storms = Vec::new();
        let mut blocking = Vec::new();
        let mut stuck = Vec::new();
        let mut overdue = Vec::new();
        for (i, dev) in self.devices.iter_mut().enumerate() {
            let tag = format!("{} {}", dev.cfg.name, dev.cfg.pci);
            let Some((open, att)) = dev
                .state
                .attached_mut()
                .filter(|(_, a)| a.route.intx() == IntxState::Enabled)
            else {
                continue;
            };
            let irq = std::os::fd::AsRawFd::as_raw_fd(&att.route.vmm().irq);
            let sim = open.backend.sim_counters();
            let host_count = open.backend.host_count();
            let sample = Sample {
                mode: att.route.mode(),
                host_count,
                irq_unread: eventfd_count(irq).unwrap_or(0),
                irq_writes: match att.route.relay_stats() {
                    Some(r) => r.relayed,
                    None => host_count,
                },
                elapsed,
                storm_rate: dev.cfg.relay.direct_storm_rate,
                irqfd_timeout: Duration::from_millis(dev.cfg.irqfd_timeout_ms),
                eoi_in_userspace: att.irqchip != Irqchip::Kernel,
                asserting: sim.as_ref().map(|c| c.raised > c.acked),
            };
            if let Some(role) = super::ownership::blocking_vmm_fd(&att.route) {
                blocking.push((i, role));
                continue;
            }
            let found = dev.health.observe(sample, now);
            // An interrupt the VMM has not taken (its irq count unread since
            // the last scan) is not re-firing: the irqfd rule above owns it.
            if sample.mode == Mode::Direct && !dev.health.undelivered() {
                // Progress: the emulated device's acks, a real one's hard
                // interrupts (`health_stuck.rs`).
                let progress = sim.as_ref().map_or(host_count, |c| c.acked);
                if let (Some(c), Irqchip::Kernel) = (&sim, att.irqchip) {
                    let waiting = c.state.enabled && c.state.masked && c.state.high;
                    let waiting = waiting && sample.irq_unread == 0;
                    if let Some(w) = dev
                        .health
                        .overdue
                        .observe(waiting, (c.acked, c.unmasks), now)
                    {
                        // No unmask came either: not a line re-fired at
                        // every EOI (a stuck one), one never delivered.
                        overdue.push((i, w));
                        continue;
                    }
                }
                // The emulated device's counters already hold its status
                // bit (its line's level); a real one is read a few times.
                let asserted = match &sim {
                    Some(c) => Some(c.state.high),
                    None => (0..STATUS_READS)
                        .map(|_| open.backend.intx_status())
                        .try_fold(true, |all, s| s.map(|s| all && s)),
                };
                match dev
                    .health
                    .stuck
                    .observe(sample.mode, asserted, progress, now)
                {
                    Some(StuckChange::Began(_)) => {
                        let secs = dev.health.stuck.stuck_secs(now);
                        log::warn!("{tag}: stuck line on a direct route: the function's PCI status has shown its interrupt asserted for {secs} s while it made no progress; vfio-pci re-fires it at every unmask (no hard interrupt, so only this scan sees it). Check that the guest's driver clears the device's interrupt, or attach in relay mode, where the storm limiter bounds it");
                        stuck.push((i, secs));
                    }
                    Some(StuckChange::Ended) => log::info!("{tag}: the line is no longer stuck"),
                    None => {}
                }
            }
            if let Some(rate) = found.storm_report {
                let limit = sample.storm_rate;
                log::warn!("{tag}: interrupt storm on a direct route: {rate:.0}/s in the host counts (direct_storm_rate {limit}); the kernel carries it, intxd reports it");
                storms.push((i, rate as u64, limit));
            }
            if found.safety_unmask {
                match open.backend.unmask() {
                    Ok(()) => {
                        dev.health.safety_unmasks += 1;
                        log::debug!("{tag}: interrupts stopped; safety unmask sent");
                    }
                    Err(e) => log::warn!("{tag}: safety unmask failed: {}", chain(&e)),
                }
            }
            if let Some(waited) = found.irqfd_lost {
                lost.push((i, waited));
            }
        }
        for (i, waited) in overdue {
            self.delivery_overdue(i, Mode::Direct, waited);
        }
        for (i, seconds) in stuck {
            let ev = Event::StuckLine {
                device: self.devices[i].cfg.name.clone(),
                seconds,
            };
            self.send_event(i, &ev);
        }
        for (i, rate, rate_limit) in storms {
            let ev = Event::StormDetected {
                device: self.devices[i].cfg.name.clone(),
                rate,
                rate_limit,
            };
            self.send_event(i, &ev);
        }
        for (i, role) in blocking {
            self.peer_fd_failed(
                i,
                role,
                "was made blocking (O_NONBLOCK cleared) after the attach",
            );
        }
        for (i, waited) in lost {
            let tag = self.devices[i].tag();
            log::warn!(
                "{tag}: the VMM's irq eventfd has gone unread for {} ms: KVM dropped its irqfd or the VMM stopped serving it; detaching so INTx is not left masked",
                waited.as_millis()
            );
            let ev = Event::DeviceGone {
                device: self.devices[i].cfg.name.clone(),
                reason: format!(
                    "the irq eventfd went unread for {} ms (irqfd_timeout_ms); the device was detached",
                    waited.as_millis()
                ),
            };
            self.send_event(i, &ev);
            self.detach_device(i, "its VMM stopped reading the irq eventfd");
        }
    }

    /// The device signalled its request interrupt: it is going away.
    pub(super) fn on_request(&mut self, i: usize) {
        let Some(dev) = self.devices.get_mut(i) else {
            return;
        };
        if let Some(r) = dev.state.open().and_then(|o| o.request.as_ref()) {
            let _ = r.read();
        }
        let tag = dev.tag();
        log::warn!("{tag}: the device is going away (surprise removal, or the host wants it back)");
        if dev.holder().is_some() {
            let ev = Event::DeviceGone {
                device: dev.cfg.name.clone(),
                reason: "the device is going away (surprise removal, or the host wants it back); it has been detached".into(),
            };
            self.send_event(i, &ev);
        }
        self.detach_device(i, "the device is going away");
        let (gone, record) = self.devices[i].go_away(format!(
            "{tag}: the device went away; an attach or `systemctl reload intxd` looks for it again"
        ));
        if let Some(r) = gone.as_ref().and_then(|o| o.request.as_ref()) {
            self.lp.unwatch(r);
        }
        // Closing VFIO's fds lets the host's unbind finish; then the function
        // is the host's: its driver_override must not keep its own driver out.
        drop(gone);
        self.hand_back(record);
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
