//! The baseline's device: an emulated function in a process of its own,
//! wired straight to the VM's eventfds (trigger = irqfd, unmask =
//! resamplefd) with no route, relay or daemon code. It sits in another
//! process for the same reason the daemon does, so that baseline and direct
//! pay the same cross-process wakeups and differ only by intxd.
//!
//! The device process is a sim host on one connection
//! ([`crate::sim::remote::serve_connection`]); the bench drives it as a
//! [`RemoteSim`], with the sim host's requests (and their ids).

use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::route::{Irqchip, Mode};
use crate::sim::remote::{serve_connection, RemoteSim, ServeError};
use crate::sim::AckPolicy;
use crate::soak::{Attached, Snapshot, SoakError, Wiring};
use crate::util::error::chain;
use crate::util::fd::owned_into_eventfd;
use crate::util::sock;
use crate::vfio::{DeviceFds, DeviceProbe, IntxActions, VmmFd};

/// How long the bench waits for its device process to connect.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The bench side: a device process, as a [`Wiring`].
pub struct BareDevice {
    dev: RemoteSim,
    child: Child,
    _dir: tempfile::TempDir,
}

fn setup(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> SoakError {
    SoakError::Baseline(e.into())
}

impl BareDevice {
    /// Starts `exe bench-device` and connects to it.
    pub fn start(exe: &Path) -> Result<BareDevice, SoakError> {
        let dir = tempfile::tempdir().map_err(setup)?;
        let path = dir.path().join("device.sock");
        let listener = sock::listen(&path, 1, |_| Ok(())).map_err(|e| setup(chain(&e)))?;
        let mut child = Command::new(exe)
            .arg("bench-device")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .map_err(setup)?;
        let conn = accept_within(&listener, START_TIMEOUT);
        let dev = conn
            .and_then(|s| RemoteSim::open_on(s, "baseline", 0, AckPolicy::Raise).map_err(setup));
        match dev {
            Ok(dev) => Ok(BareDevice {
                dev,
                child,
                _dir: dir,
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }
}

/// Accepts the device process's connection, waiting at most `limit`.
fn accept_within(
    listener: &std::os::fd::OwnedFd,
    limit: Duration,
) -> Result<std::os::fd::OwnedFd, SoakError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = Instant::now() + limit;
    loop {
        match sock::accept(listener.as_fd()) {
            Ok(s) => return Ok(s),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup(e)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(setup(format!(
                "the device process did not connect within {limit:?}"
            )));
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut p = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut p, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup(e)),
        }
    }
}

impl Wiring for BareDevice {
    fn attach(
        &mut self,
        _: Irqchip,
        _: Mode,
        irq: &EventFd,
        resample: &EventFd,
    ) -> Result<Attached, SoakError> {
        self.dev
            .set_trigger(irq)
            .and_then(|()| self.dev.set_unmask(Some(resample)))
            .map_err(|e| setup(chain(&e)))?;
        let mut fds = self.dev.vmm_fds().map_err(setup)?.into_iter();
        let (Some((VmmFd::Ack, ack)), Some((VmmFd::Doorbell, doorbell))) = (fds.next(), fds.next())
        else {
            return Err(setup("no ack/doorbell fds in the reply"));
        };
        Ok(Attached {
            mode: Mode::Direct,
            reason: "baseline: wired straight, no intxd code".into(),
            ack: owned_into_eventfd(ack),
            doorbell: owned_into_eventfd(doorbell),
        })
    }

    fn snapshot(&mut self) -> Result<Snapshot, SoakError> {
        let sim = self
            .dev
            .sim_counters()
            .ok_or_else(|| setup("the device process sent no counters"))?;
        Ok(Snapshot {
            sim,
            ..Snapshot::default()
        })
    }

    fn detach(&mut self) -> Result<(), SoakError> {
        self.dev
            .disable()
            .and_then(|()| self.dev.reset())
            .map_err(|e| setup(chain(&e)))
    }

    fn device(&self) -> &str {
        "baseline"
    }
}

impl Drop for BareDevice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The device process: serves one bench over `path` until it hangs up.
pub fn serve(path: &Path) -> Result<(), ServeError> {
    let conn = sock::connect(path).map_err(|source| ServeError::Loop {
        path: path.to_path_buf(),
        what: "connect to the bench",
        source,
    })?;
    serve_connection(conn, path)
}
