//! The userspace relay: the hot path when the kernel one is not available.
//!
//! intxd owns VFIO's trigger and unmask eventfds and carries each interrupt
//! across: trigger -> the VMM's irq eventfd, the VMM's resample eventfd ->
//! unmask. One wakeup and three syscalls per interrupt in steady state
//! (`epoll_wait` returns the EOI; unmask; signal the VMM if the unmask
//! re-fired, which the trigger watch's completion queue says from shared
//! memory, [`TriggerWatch`]; four where io_uring is refused, with a read
//! of the trigger, [`Carrier`]): the resample is never read, because every
//! eventfd signal is its own edge-triggered event (see
//! [`RelayPath::on_resample`]). On top it counts, times, limits storms and
//! watches for lost EOIs.

mod carry;
#[cfg(feature = "test-hooks")]
pub mod late;
mod latency;
mod path;
mod storm;
mod watch;
mod watchdog;

pub use carry::{lock as lock_watch, Carried, Carrier, IO_URING_VAR};
pub use latency::EoiLatency;
pub use path::{RelayDevice, RelayPath, RelayStats, ResampleOutcome, TimerOutcome};
pub use storm::StormLimiter;
pub use watch::TriggerWatch;
pub use watchdog::{EoiWatchdog, WatchdogPolicy};

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default `storm_rate`. The relay carries 800–1000 interrupts a
/// second on real vfio-pci in the QEMU lane, where a stuck line served at
/// that rate cost 18–27 % of a core, and tens of thousands on the emulated
/// device here, at about 10 µs of the loop's CPU each: 1000/s bounds a
/// stuck line to about 1 % of a core here. Serviced lines are not limited,
/// so a fast healthy device is not held to it (see `storm.rs`).
pub const DEFAULT_STORM_RATE: u64 = 1000;

/// Relay limits for one device (the `[device.relay]` config section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Interrupts per second a relay serves a stuck line (one that re-fires
    /// at every unmask and is never seen acknowledged): above it, INTx is
    /// held masked for the rest of each 100 ms window. A line that is being
    /// serviced is not limited. 0 turns the limiter off.
    pub storm_rate: u64,
    /// Shortest hold when a stuck line is limited, milliseconds.
    pub storm_backoff_ms: u64,
    /// Longest hold, milliseconds.
    pub storm_backoff_max_ms: u64,
    /// Direct routes: the host interrupt rate per second above which the
    /// health scan reports a storm (it cannot limit one). 0 turns it off.
    pub direct_storm_rate: u64,
    /// How long after an interrupt the guest's EOI may take, milliseconds.
    pub eoi_timeout_ms: u64,
    /// What the EOI watchdog does when that bound passes.
    pub watchdog: WatchdogPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            storm_rate: DEFAULT_STORM_RATE,
            storm_backoff_ms: 10,
            storm_backoff_max_ms: 1000,
            direct_storm_rate: 200_000,
            eoi_timeout_ms: 1000,
            watchdog: WatchdogPolicy::Rearm,
        }
    }
}

impl RelayConfig {
    /// The EOI bound as a duration.
    pub fn eoi_timeout(&self) -> Duration {
        Duration::from_millis(self.eoi_timeout_ms)
    }
}
