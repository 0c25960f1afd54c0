//! An in-process daemon on a temporary socket: what plain `intxd soak` and
//! `intxd bench` drive, through the real socket, when no daemon is named.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::run::SoakError;
use crate::config::Config;
use crate::daemon::{Daemon, DaemonError, DaemonOptions, StopHandle};

/// A daemon running on a thread of this process.
pub struct InProcessDaemon {
    socket: PathBuf,
    stop: StopHandle,
    thread: Option<JoinHandle<Result<(), DaemonError>>>,
    _dir: tempfile::TempDir,
}

impl InProcessDaemon {
    /// Starts a daemon for `config` with its socket moved to a fresh
    /// temporary directory (mode 0600: only this user).
    pub fn start(mut config: Config) -> Result<InProcessDaemon, SoakError> {
        let dir = tempfile::Builder::new()
            .prefix("intxd-soak-")
            .tempdir()
            .map_err(|source| SoakError::InProcess {
                what: "create its temporary directory",
                source,
            })?;
        let socket = dir.path().join("control.sock");
        config.daemon.socket = socket.clone();
        config.daemon.socket_mode = 0o600;
        config.daemon.socket_group = None;
        // The socket is private to this user, who may attach every device.
        let me = nix::unistd::getuid().as_raw();
        for d in &mut config.devices {
            if !d.allow_uids.contains(&me) {
                d.allow_uids.push(me);
            }
        }
        let mut daemon =
            Daemon::new(config, DaemonOptions::default()).map_err(SoakError::Daemon)?;
        let stop = daemon.stop_handle();
        let thread = std::thread::Builder::new()
            .name("intxd-daemon".into())
            .spawn(move || daemon.run())
            .map_err(|source| SoakError::InProcess {
                what: "start its thread",
                source,
            })?;
        Ok(InProcessDaemon {
            socket,
            stop,
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// The socket to connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for InProcessDaemon {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::error!("in-process daemon: {}", crate::daemon::error_chain(&e)),
                Err(_) => log::error!("in-process daemon: its thread panicked"),
            }
        }
    }
}
