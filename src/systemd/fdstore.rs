//! systemd's file descriptor store: fds parked with the service manager
//! (`FDSTORE=1` + `FDNAME=`) come back in `LISTEN_FDS` after a restart.
//! The unit must set `FileDescriptorStoreMax=`.

use std::collections::HashMap;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Parks and removes named fds.
pub trait FdStore: Send {
    /// `FDSTORE=1 FDNAME=name` with `fd`.
    fn store(&mut self, name: &str, fd: BorrowedFd<'_>);
    /// `FDSTOREREMOVE=1 FDNAME=name`.
    fn remove(&mut self, name: &str);
    /// Whether fds parked here survive this process.
    fn active(&self) -> bool;
}

/// The real store, when systemd gave us a notify socket.
pub struct SdFdStore;

impl FdStore for SdFdStore {
    fn store(&mut self, name: &str, fd: BorrowedFd<'_>) {
        let state = [
            sd_notify::NotifyState::FdStore,
            sd_notify::NotifyState::FdName(name),
        ];
        if let Err(e) = sd_notify::notify_with_fds(&state, &[fd]) {
            log::warn!("fd store: could not park `{name}`: {e}");
        }
    }

    fn remove(&mut self, name: &str) {
        let state = [
            sd_notify::NotifyState::FdStoreRemove,
            sd_notify::NotifyState::FdName(name),
        ];
        if let Err(e) = sd_notify::notify(&state) {
            log::warn!("fd store: could not remove `{name}`: {e}");
        }
    }

    fn active(&self) -> bool {
        true
    }
}

/// No service manager: nothing is parked.
pub struct NoFdStore;

impl FdStore for NoFdStore {
    fn store(&mut self, _: &str, _: BorrowedFd<'_>) {}
    fn remove(&mut self, _: &str) {}
    fn active(&self) -> bool {
        false
    }
}

/// The fds systemd passed at start (`LISTEN_FDS`, `LISTEN_FDNAMES`), by
/// name: the control socket from the socket unit, and whatever a previous
/// daemon parked in the fd store.
#[derive(Debug, Default)]
pub struct Inherited {
    /// Named fds.
    pub fds: HashMap<String, Vec<OwnedFd>>,
}

impl Inherited {
    /// Takes the fds systemd passed to this process (none without systemd).
    #[allow(unsafe_code)]
    pub fn from_env() -> std::io::Result<Inherited> {
        let mut fds: HashMap<String, Vec<OwnedFd>> = HashMap::new();
        for (raw, name) in sd_notify::listen_fds_with_names()? {
            // SAFETY: systemd passed these fds to this process (LISTEN_PID
            // matched), and nothing else in the process has claimed them.
            let fd = unsafe { crate::util::fd::adopt(raw) };
            fds.entry(name).or_default().push(fd);
        }
        Ok(Inherited { fds })
    }

    /// Takes the one fd named `name`.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let v = self.fds.get_mut(name)?;
        let fd = v.pop();
        if v.is_empty() {
            self.fds.remove(name);
        }
        fd
    }

    /// Names still unclaimed.
    pub fn names(&self) -> Vec<String> {
        self.fds.keys().cloned().collect()
    }
}
