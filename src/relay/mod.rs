//! The userspace relay: the hot path when the kernel one is not available.
//!
//! intxd owns VFIO's trigger and unmask eventfds and carries each interrupt
//! across: trigger -> the VMM's irq eventfd, the VMM's resample eventfd ->
//! unmask. Four syscalls per interrupt are the floor (drain the trigger,
//! signal the VMM, drain the resample, unmask), and [`RelayPath`] does no
//! more. On top it counts, times, limits storms and watches for lost EOIs.

mod latency;
mod path;
mod storm;
mod watchdog;

pub use latency::EoiLatency;
pub use path::{RelayPath, RelayStats, ResampleOutcome, TimerOutcome};
pub use storm::StormLimiter;
pub use watchdog::{EoiWatchdog, WatchdogPolicy};

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Relay limits for one device (the `[device.relay]` config section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Interrupts per second above which the line is masked and backed off.
    /// 0 turns the limiter off.
    pub storm_rate: u64,
    /// First back-off when a storm is limited, milliseconds; doubles while the
    /// storm lasts, up to `storm_backoff_max_ms`.
    pub storm_backoff_ms: u64,
    /// Longest back-off, milliseconds.
    pub storm_backoff_max_ms: u64,
    /// How long after an interrupt the guest's EOI may take, milliseconds.
    pub eoi_timeout_ms: u64,
    /// What the EOI watchdog does when that bound passes.
    pub watchdog: WatchdogPolicy,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            storm_rate: 200_000,
            storm_backoff_ms: 10,
            storm_backoff_max_ms: 1000,
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
