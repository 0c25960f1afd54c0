//! Once a second, while any route is attached, the daemon looks at each one
//! from outside the hot path:
//!
//! - **storms on direct routes**: the kernel carries direct interrupts, so
//!   intxd cannot limit them, but it sees them in the host interrupt count
//!   (`/proc/interrupts`, or the emulated device's counter) and reports a
//!   rate above the device's `storm_rate` in status and as an event;
//! - **a safety unmask for direct routes**: when a direct route's host count
//!   stops moving after it moved, one unmask is sent. If an EOI was lost
//!   (INTx masked for good), that unmask recovers the line; if the device
//!   simply went quiet it is a no-op. A route that stays idle costs nothing;
//! - **a VMM whose irqfd is gone**: when the VMM's irq eventfd holds an
//!   unread count for longer than `irqfd_timeout_ms`, nobody serves it (KVM
//!   dropped the irqfd, or the VMM stopped). The device is detached, so its
//!   INTx is disabled instead of left masked, and the owner is told.

use std::time::{Duration, Instant};

use super::Daemon;
use crate::control::proto::Event;
use crate::route::Mode;
use crate::util::fd::eventfd_count;

/// How often the health scan runs while routes are attached.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// What the scan remembers per device.
#[derive(Debug, Default, Clone)]
pub struct Health {
    last_count: Option<u64>,
    moved_last: bool,
    irq_unread_since: Option<Instant>,
    last_storm_event: Option<Instant>,
    /// Seconds with a direct-route rate above `storm_rate`.
    pub storm_seconds: u64,
    /// Safety unmasks sent.
    pub safety_unmasks: u64,
}

impl Health {
    /// Starts watching a new route from the host count `now_count`.
    pub fn reset(&mut self, now_count: u64) {
        let (storms, unmasks) = (self.storm_seconds, self.safety_unmasks);
        *self = Health::default();
        self.storm_seconds = storms;
        self.safety_unmasks = unmasks;
        self.last_count = Some(now_count);
    }
}

impl Daemon {
    /// One health scan over every attached device.
    pub(super) fn health_tick(&mut self, now: Instant, elapsed: Duration) {
        let mut lost = Vec::new();
        let mut storms = Vec::new();
        for (i, dev) in self.devices.iter_mut().enumerate() {
            let (Some(route), Some(backend)) = (dev.route.as_ref(), dev.backend.as_mut()) else {
                continue;
            };
            let tag = format!("{} {}", dev.cfg.name, dev.cfg.pci);
            let count = backend.host_count();
            let delta = dev.health.last_count.map(|c| count.saturating_sub(c));
            let moved = delta.is_some_and(|d| d > 0);
            if route.mode() == Mode::Direct {
                let rate = delta.unwrap_or(0) as f64 / elapsed.as_secs_f64().max(1e-3);
                let limit = dev.cfg.relay.storm_rate;
                if limit > 0 && rate > limit as f64 {
                    dev.health.storm_seconds += 1;
                    if dev
                        .health
                        .last_storm_event
                        .is_none_or(|t| now - t >= Duration::from_secs(10))
                    {
                        dev.health.last_storm_event = Some(now);
                        log::warn!("{tag}: interrupt storm on a direct route: {rate:.0}/s in the host counts (storm_rate {limit}); the kernel carries it, intxd reports it");
                        storms.push((i, rate as u64, limit));
                    }
                }
                if dev.health.moved_last && !moved {
                    match backend.unmask() {
                        Ok(()) => {
                            dev.health.safety_unmasks += 1;
                            log::debug!("{tag}: interrupts stopped; safety unmask sent");
                        }
                        Err(e) => log::warn!(
                            "{tag}: safety unmask failed: {}",
                            super::requests::chain(&e)
                        ),
                    }
                }
            }
            dev.health.moved_last = moved;
            dev.health.last_count = Some(count);
            let irq = route
                .fds()
                .into_iter()
                .find(|(role, _)| *role == crate::vfio::ParkedFd::Irq)
                .map(|(_, fd)| fd);
            let unread = irq
                .and_then(|fd| eventfd_count(std::os::fd::AsRawFd::as_raw_fd(&fd)))
                .unwrap_or(0);
            if unread == 0 {
                dev.health.irq_unread_since = None;
            } else {
                let since = *dev.health.irq_unread_since.get_or_insert(now);
                let bound = Duration::from_millis(dev.cfg.irqfd_timeout_ms);
                if now - since >= bound {
                    lost.push((i, now - since));
                }
            }
        }
        for (i, rate, rate_limit) in storms {
            let ev = Event::StormDetected {
                device: self.devices[i].cfg.name.clone(),
                rate,
                rate_limit,
            };
            self.send_event(i, &ev);
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
        if let Some(r) = &dev.request {
            let _ = r.read();
        }
        let tag = dev.tag();
        log::warn!("{tag}: the device is going away (surprise removal, or the host wants it back)");
        if dev.holder.is_some() {
            let ev = Event::DeviceGone {
                device: dev.cfg.name.clone(),
                reason: "the device is going away (surprise removal, or the host wants it back); it has been detached".into(),
            };
            self.send_event(i, &ev);
        }
        self.detach_device(i, "the device is going away");
        let dev = &mut self.devices[i];
        if let Some(r) = dev.request.take() {
            let _ = self.poll.registry().deregister(&mut mio::unix::SourceFd(
                &std::os::fd::AsRawFd::as_raw_fd(&r),
            ));
        }
        dev.backend = None;
        dev.state = super::DeviceState::Failed;
        dev.failure = Some(format!("{tag}: the device went away"));
    }
}
