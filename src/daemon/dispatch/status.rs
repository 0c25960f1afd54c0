//! The `status` reply and the one-line status systemd shows.

use crate::control::proto::{DaemonStatus, Reply};
use crate::daemon::Daemon;

impl Daemon {
    pub(super) fn status_reply(&self) -> Reply {
        Reply::Status {
            daemon: DaemonStatus {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                uptime_s: self.started.elapsed().as_secs_f64(),
                loop_wakeups: self.lp.stats.wakeups,
                connections: self.conns.open(),
                fds: crate::util::proc::fd_count(None).unwrap_or(0),
                capabilities: self.caps,
            },
            devices: self
                .devices
                .iter()
                .filter(|d| d.listed())
                .map(|d| d.status())
                .collect(),
        }
    }

    /// `N devices, N attached, N storms`, for systemd's `STATUS=`.
    pub(in crate::daemon) fn status_line(&self) -> String {
        let attached = self.devices.iter().filter(|d| d.route().is_some()).count();
        let storms: u64 = self
            .devices
            .iter()
            .filter_map(|d| d.route().and_then(|r| r.relay_stats()))
            .map(|s| s.storms)
            .sum();
        let n = self.devices.iter().filter(|d| d.listed()).count();
        format!("{n} devices, {attached} attached, {storms} storms")
    }

    /// Sends `STATUS=` when the line changed.
    pub(in crate::daemon) fn update_status(&mut self) {
        let s = self.status_line();
        if s != self.sd.last_status {
            self.sd.notifier.status(&s);
            self.sd.last_status = s;
        }
    }
}
