//! The operator's requests on the control socket: `reload` (its reply waits
//! until the reload has finished, so `systemctl reload` returns after it and
//! fails when the config was refused) and `restart` (a planned restart that
//! parks everything in the fd store and exits with
//! [`RESTART_EXIT_STATUS`], for systemd to start the next binary).
//! Both are root's alone.

use super::reload::ReloadCounts;
use super::Daemon;
use crate::control::proto::{ErrorCode, Reply, RESTART_EXIT_STATUS};

/// Requests waiting on a reload, and a planned restart.
#[derive(Debug, Default)]
pub struct Admin {
    /// Connections whose `reload` has not been answered yet.
    reload_waiters: Vec<u64>,
    /// Why the running reload's config was refused.
    reload_error: Option<String>,
    /// A `restart` was accepted: the loop stops and parks everything.
    restart: bool,
    /// Per device, a relay route's resample count read just before the
    /// park's last turn (empty until then): see [`Daemon::park_for_restart`].
    pub(super) park_counts: Vec<Option<u64>>,
}

impl Daemon {
    /// Only root may reload or restart the daemon.
    fn admin_refused(&self, ci: usize, what: &str) -> Option<Reply> {
        let uid = self.conns.get(ci).map(|c| c.peer.uid);
        (uid != Some(0)).then(|| {
            Reply::error(
                ErrorCode::NotAuthorized,
                format!("only root may {what} the daemon; ask with sudo"),
            )
        })
    }

    /// `reload`: `None` while the reload runs (the reply comes when it ends).
    pub(super) fn reload_request(&mut self, ci: usize) -> Option<Reply> {
        if let Some(r) = self.admin_refused(ci, "reload") {
            return Some(r);
        }
        if self.config_path.is_none() {
            return Some(Reply::error(
                ErrorCode::ReloadRefused,
                "this daemon was started without a config file; nothing to reload",
            ));
        }
        if self.reload.is_some() {
            return Some(Reply::error(
                ErrorCode::Busy,
                "the last reload is still binding devices; ask again when it is done",
            ));
        }
        let id = self.conns.get(ci).map(|c| c.id)?;
        self.admin.reload_waiters.push(id);
        self.reload();
        None
    }

    /// The reload's config cannot be used: keep the running one.
    pub(super) fn refuse_reload(&mut self, why: String) {
        log::error!("reload: {why}; keeping the running config");
        self.admin.reload_error = Some(why);
    }

    /// Answers every `reload` waiting, once the reload has finished.
    pub(super) fn reload_finished(&mut self, n: Option<ReloadCounts>) {
        let reply = match (self.admin.reload_error.take(), n) {
            (Some(why), _) => Reply::error(
                ErrorCode::ReloadRefused,
                format!("the config was refused: {why}; the running config is kept"),
            ),
            (None, Some(n)) if n.refused > 0 => Reply::error(
                ErrorCode::ReloadRefused,
                format!(
                    "{} change(s) refused (an attached device's config, or an address an attached device still has; the journal names each); {} added, {} removed, {} changed",
                    n.refused, n.added, n.removed, n.changed
                ),
            ),
            (None, n) => {
                let n = n.unwrap_or_default();
                Reply::Reloaded {
                    added: n.added,
                    removed: n.removed,
                    changed: n.changed,
                }
            }
        };
        for id in std::mem::take(&mut self.admin.reload_waiters) {
            if let Some(ci) = self.conns.slot_of(id) {
                self.reply(ci, &reply, Vec::new());
            }
        }
    }

    /// `restart`: accepted, the loop stops after this turn and
    /// [`Daemon::shutdown`] parks instead of releasing.
    pub(super) fn restart_request(&mut self, ci: usize) -> Reply {
        if let Some(r) = self.admin_refused(ci, "restart") {
            return r;
        }
        if !self.sd.fdstore.active() || self.sd.state_file.is_none() {
            return Reply::error(
                ErrorCode::RestartUnavailable,
                "no fd store here (the daemon was not started by systemd with FileDescriptorStoreMax=), so a restart would drop every route; restart it with systemctl instead",
            );
        }
        self.admin.restart = true;
        self.lp.request_stop();
        log::info!(
            "planned restart requested by pid {}",
            self.conns.get(ci).map_or(0, |c| c.peer.pid)
        );
        Reply::Restarting {
            routes: self.devices.iter().filter(|d| d.route().is_some()).count(),
            // The VMMs' connections: the requester's own is not one.
            connections: self
                .conns
                .iter()
                .filter(|c| c.hello)
                .count()
                .saturating_sub(1),
        }
    }

    /// Whether the daemon stopped for a planned restart: then exit with
    /// [`RESTART_EXIT_STATUS`].
    pub fn restart_planned(&self) -> bool {
        self.admin.restart
    }

    /// The planned restart's end: every route and connection parked, the
    /// record written, the replies sent; nothing is released.
    ///
    /// A relay's outstanding interrupt goes in the record with its resample
    /// count, read before one last turn without waiting: every EOI in that
    /// count has its event queued by then, so the turn takes it, and the
    /// next daemon knows that a larger count is an EOI nobody answered.
    pub(super) fn park_for_restart(&mut self) {
        self.finish_jobs();
        self.admin.park_counts = self.resample_counts();
        if let Err(e) = self.turn(Some(std::time::Duration::ZERO)) {
            log::warn!("planned restart: the last turn failed: {e}");
        }
        for di in 0..self.devices.len() {
            if self.devices[di].route().is_some() {
                self.park_route(di);
            }
        }
        for ci in 0..self.conns.slots() {
            if self.conns.get(ci).is_some_and(|c| c.hello) {
                self.park_conn(ci);
            }
            self.flush_conn(ci);
        }
        self.save_state();
        let routes = self.devices.iter().filter(|d| d.route().is_some()).count();
        let conns = self.conns.iter().filter(|c| c.parked).count();
        let line = format!(
            "planned restart: {routes} route(s) and {conns} connection(s) parked in the fd store; exiting with status {RESTART_EXIT_STATUS}"
        );
        self.sd.notifier.status(&line);
        log::info!("{line}");
    }
}
