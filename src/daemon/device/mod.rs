//! The daemon's devices: one slot per configured function, with its config,
//! its lifecycle state (`state.rs`, every transition), how it is brought up
//! (`open.rs`) and the mode an attach gets (`mode.rs`).

mod mode;
mod open;
mod state;

pub use mode::choose_mode;
pub use open::{
    log_outcome, open_bound, open_now, open_sim, reopen_bound, Parked, Reopen, SimPlace,
};
pub use state::{AttachOrigin, Attachment, Holder, Lifecycle, Open};

use std::time::Duration;

use super::binder::Binder;
use super::events::EventLimiter;
use super::health::Health;
use crate::config::DeviceConfig;
use crate::control::proto::{DeviceCounters, DeviceState, DeviceStatus};
use crate::pci::BindRecord;
use crate::route::Route;
use crate::util::error::chain;

/// Owner events of one kind go out at most once per this window per device.
pub const RELAY_EVENT_WINDOW: Duration = Duration::from_secs(1);

/// One configured device.
pub struct DeviceSlot {
    /// Its config.
    pub cfg: DeviceConfig,
    /// Its lifecycle state, with what that state owns.
    pub state: Lifecycle,
    /// Attaches so far.
    pub attaches: u64,
    /// Detaches so far.
    pub detaches: u64,
    /// Times it could not be brought up (`Failed`, `Bound`) or went away.
    pub failures: u64,
    /// Storm-limited events (relay routes).
    pub storm_events: EventLimiter,
    /// EOI-watchdog events (relay routes).
    pub watchdog_events: EventLimiter,
    /// What the health scan remembers.
    pub health: Health,
}

impl DeviceSlot {
    /// A slot for `cfg` in `state`.
    pub fn new(cfg: DeviceConfig, state: Lifecycle) -> DeviceSlot {
        DeviceSlot {
            failures: u64::from(state.is_failure()),
            cfg,
            state,
            attaches: 0,
            detaches: 0,
            storm_events: EventLimiter::new(RELAY_EVENT_WINDOW),
            watchdog_events: EventLimiter::new(RELAY_EVENT_WINDOW),
            health: Health::default(),
        }
    }

    /// `name pci` prefix for log lines.
    pub fn tag(&self) -> String {
        format!("{} {}", self.cfg.name, self.cfg.pci)
    }

    /// Whether a reload dropped it.
    pub fn is_removed(&self) -> bool {
        matches!(self.state, Lifecycle::Removed)
    }

    /// The live route, while attached.
    pub fn route(&self) -> Option<&Route> {
        self.state.attachment().map(|a| &a.route)
    }

    /// The owner, while attached.
    pub fn holder(&self) -> Option<Holder> {
        self.state.attachment().map(|a| a.holder)
    }

    /// The attached transition, for a new attach and for a route taken back
    /// after a restart. A new attach counts and restarts the health scan's
    /// view of the route.
    pub fn attach(&mut self, att: Attachment, origin: AttachOrigin) -> Result<(), Box<Attachment>> {
        self.state.attach(att)?;
        if origin == AttachOrigin::Request {
            self.attaches += 1;
            let count = self.state.open().map_or(0, |o| o.backend.host_count());
            self.health.reset(count);
        }
        Ok(())
    }

    /// Detach ([`Lifecycle::detach`]), counted. Returns the holder it had;
    /// `None` when it was not attached.
    pub fn detach(&mut self, tag: &str) -> Option<Holder> {
        let holder = self.state.detach(tag)?;
        self.detaches += 1;
        Some(holder)
    }

    /// The device went away ([`Lifecycle::go_away`]), counted.
    pub fn go_away(&mut self, error: String) -> (Option<Open>, Option<BindRecord>) {
        self.failures += 1;
        self.state.go_away(error)
    }

    /// A brought-up state (a reload's bind finished), counted when it is a
    /// failure.
    pub fn set_state(&mut self, state: Lifecycle) {
        self.failures += u64::from(state.is_failure());
        self.state = state;
    }

    /// Closes the device and gives a real function back to its original
    /// driver (clean stop, or a reload that removes or replaces it). The slot
    /// is left `Removed`.
    pub fn release(&mut self, binder: &Binder) {
        if self.state.remove().is_some() {
            if let Err(e) = binder.release(&self.cfg) {
                log::error!("{}", chain(&e));
            }
        }
    }

    /// The device's entry in `status`.
    pub fn status(&self) -> DeviceStatus {
        let open = self.state.open();
        let route = self.route();
        DeviceStatus {
            name: self.cfg.name.clone(),
            pci: self.cfg.pci.to_string(),
            state: self.state.name(),
            mode: route.map(Route::mode),
            owner: self.holder().map(|h| h.owner),
            facts: open.map(|o| o.backend.facts()),
            failure: self.state.error().map(str::to_string),
            warning: self.state.warning().map(crate::doctor::Finding::message),
            counters: DeviceCounters {
                host_interrupts: open.map_or(0, |o| o.backend.host_count()),
                attaches: self.attaches,
                relay: route.and_then(Route::relay_stats),
                sim: open.and_then(|o| o.backend.sim_counters()),
                storm_seconds: self.health.storm_seconds,
                safety_unmasks: self.health.safety_unmasks,
                stuck_lines: self.health.stuck.stuck_lines,
                stuck_line_secs: route.map_or(0, |_| {
                    self.health.stuck.stuck_secs(std::time::Instant::now())
                }),
                detaches: self.detaches,
                failures: self.failures,
            },
            intx: route.map(Route::intx),
        }
    }

    /// Whether `status` lists it: not once removed, and not while a reload
    /// binds it (it shows up once it is up, as it did when a reload held the
    /// loop for its sysfs work).
    pub fn listed(&self) -> bool {
        !matches!(
            self.state.name(),
            DeviceState::Removed | DeviceState::Binding
        )
    }
}
