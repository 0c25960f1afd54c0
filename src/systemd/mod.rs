//! systemd integration behind narrow traits: readiness, status, stopping,
//! reload and watchdog pings ([`Notifier`]), the fd store ([`FdStore`]) and
//! the fds systemd passes at start ([`Inherited`]), all through the
//! `sd-notify` crate.

mod fdstore;

pub use fdstore::{FdStore, Inherited, NoFdStore, SdFdStore};

use std::time::Duration;

/// What the daemon tells its service manager.
pub trait Notifier: Send {
    /// `READY=1` with a status line.
    fn ready(&mut self, status: &str);
    /// `STATUS=...`.
    fn status(&mut self, status: &str);
    /// `STOPPING=1`.
    fn stopping(&mut self);
    /// `WATCHDOG=1`.
    fn watchdog(&mut self);
    /// How often the watchdog wants a ping, if it does.
    fn watchdog_interval(&self) -> Option<Duration>;
    /// `RELOADING=1` (with `MONOTONIC_USEC`).
    fn reloading(&mut self);
}

/// Talks to `$NOTIFY_SOCKET` when systemd set one; silent otherwise.
pub struct SdNotifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl SdNotifier {
    /// Reads the environment systemd gave us.
    pub fn from_env() -> SdNotifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        // Ping at half the interval, as sd_watchdog_enabled(3) advises.
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|_| enabled)
            .map(|d| d / 2);
        SdNotifier { enabled, watchdog }
    }

    fn send(&self, state: &[sd_notify::NotifyState<'_>]) {
        if self.enabled {
            if let Err(e) = sd_notify::notify(state) {
                log::warn!("sd_notify failed: {e}");
            }
        }
    }
}

impl Notifier for SdNotifier {
    fn ready(&mut self, status: &str) {
        self.send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ]);
    }
    fn status(&mut self, status: &str) {
        self.send(&[sd_notify::NotifyState::Status(status)]);
    }
    fn stopping(&mut self) {
        self.send(&[sd_notify::NotifyState::Stopping]);
    }
    fn watchdog(&mut self) {
        self.send(&[sd_notify::NotifyState::Watchdog]);
    }
    fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }
    fn reloading(&mut self) {
        match sd_notify::NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[sd_notify::NotifyState::Reloading, now]),
            Err(_) => self.send(&[sd_notify::NotifyState::Reloading]),
        }
    }
}

/// No service manager (in-process daemons, tests).
pub struct NoNotifier;

impl Notifier for NoNotifier {
    fn ready(&mut self, _: &str) {}
    fn status(&mut self, _: &str) {}
    fn stopping(&mut self) {}
    fn watchdog(&mut self) {}
    fn watchdog_interval(&self) -> Option<Duration> {
        None
    }
    fn reloading(&mut self) {}
}
