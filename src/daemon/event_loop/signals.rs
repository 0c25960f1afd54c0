//! Signals through a signalfd: SIGTERM and SIGINT stop, SIGHUP reloads. A
//! build with the cargo feature `test-hooks` (the tests' build, never a
//! release one) started with `INTXD_TEST_HOOKS=1` also has SIGUSR1 run
//! `/bin/true` (to test the seccomp filter) and SIGUSR2 stall the loop (to
//! test the watchdog); without the feature that code is not in the binary.

use std::os::fd::{AsRawFd, RawFd};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::daemon::{Daemon, DaemonError, TEST_HOOKS_BUILT};

/// The daemon's signalfd.
pub struct Signals {
    sfd: SignalFd,
}

impl AsRawFd for Signals {
    fn as_raw_fd(&self) -> RawFd {
        self.sfd.as_raw_fd()
    }
}

impl Signals {
    /// A signalfd for the stop and reload signals (and the test hooks' when
    /// `test_hooks` in a build that has them). The caller must have blocked
    /// them, before starting any thread.
    pub fn new(test_hooks: bool) -> Result<Signals, DaemonError> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            set.add(s);
        }
        if test_hooks && TEST_HOOKS_BUILT {
            set.add(Signal::SIGUSR1);
            set.add(Signal::SIGUSR2);
        }
        let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| DaemonError::Loop {
                what: "create the signalfd",
                source: e.into(),
            })?;
        Ok(Signals { sfd })
    }

    /// Every signal waiting (unknown numbers are skipped).
    fn drain(&mut self) -> Vec<Signal> {
        let mut got = Vec::new();
        while let Ok(Some(info)) = self.sfd.read_signal() {
            if let Ok(s) = Signal::try_from(info.ssi_signo as i32) {
                got.push(s);
            }
        }
        got
    }

    /// Whether SIGTERM or SIGINT is waiting (read during start-up, before
    /// the loop runs).
    pub fn stop_requested(&mut self) -> bool {
        self.drain()
            .into_iter()
            .any(|s| matches!(s, Signal::SIGTERM | Signal::SIGINT))
    }
}

impl Daemon {
    pub(in crate::daemon) fn on_signal(&mut self) {
        let Some(sig) = self.signals.as_mut() else {
            return;
        };
        for signal in sig.drain() {
            match signal {
                Signal::SIGTERM | Signal::SIGINT => {
                    log::info!("signal {}: stopping", signal as i32);
                    self.lp.request_stop();
                }
                Signal::SIGHUP => self.reload(),
                #[cfg(feature = "test-hooks")]
                Signal::SIGUSR1 | Signal::SIGUSR2 if self.test_hooks => test_hook(signal),
                _ => {}
            }
        }
    }
}

/// SIGUSR1: run `/bin/true`; SIGUSR2: stall the loop for an hour.
#[cfg(feature = "test-hooks")]
fn test_hook(signal: Signal) {
    if signal == Signal::SIGUSR1 {
        match std::process::Command::new("/bin/true").status() {
            Ok(s) => log::warn!("test hook: ran /bin/true ({s})"),
            Err(e) => log::warn!("test hook: running /bin/true was refused: {e}"),
        }
    } else {
        log::warn!("test hook: stalling the event loop (INTXD_TEST_HOOKS=1)");
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
