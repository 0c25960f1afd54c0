//! The baseline's device: an emulated function in a process of its own,
//! wired straight to the VM's eventfds (trigger = irqfd, unmask =
//! resamplefd) with no route, relay or daemon code. It sits in another
//! process for the same reason the daemon does, so that baseline and direct
//! pay the same cross-process wakeups and differ only by intxd.
//!
//! The bench and the device process talk over a SEQPACKET socket, one
//! letter a request: `a` with the VMM's two eventfds (answered with the ack
//! and doorbell eventfds), `s` (answered with the counters as JSON), `d`
//! (disable INTx and reset).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use vmm_sys_util::eventfd::EventFd;

use crate::control::wire;
use crate::route::{Irqchip, Mode};
use crate::sim::{AckPolicy, SimHost};
use crate::soak::{Attached, Snapshot, SoakError, Wiring};
use crate::util::fd::{borrow_eventfd, owned_into_eventfd};
use crate::vfio::IntxDevice;

/// The bench side: a device process, as a [`Wiring`].
pub struct BareDevice {
    child: Child,
    sock: OwnedFd,
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
        let listener = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(setup)?;
        bind(
            listener.as_raw_fd(),
            &UnixAddr::new(path.as_path()).map_err(setup)?,
        )
        .map_err(setup)?;
        listen(&listener, Backlog::new(1).map_err(setup)?).map_err(setup)?;
        let child = Command::new(exe)
            .arg("bench-device")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()
            .map_err(setup)?;
        let raw = accept(listener.as_raw_fd()).map_err(setup)?;
        let sock = adopt(raw);
        Ok(BareDevice {
            child,
            sock,
            _dir: dir,
        })
    }

    fn exchange(
        &mut self,
        op: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Result<wire::Packet, SoakError> {
        wire::send(self.sock.as_raw_fd(), op, fds).map_err(setup)?;
        wait_readable(self.sock.as_fd())?;
        wire::recv(self.sock.as_raw_fd())
            .map_err(setup)?
            .ok_or_else(|| setup("the device process went away"))
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
        let mut fds = self
            .exchange(b"a", &[borrow_eventfd(irq), borrow_eventfd(resample)])?
            .fds
            .into_iter();
        let (Some(ack), Some(doorbell)) = (fds.next(), fds.next()) else {
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
        let p = self.exchange(b"s", &[])?;
        Ok(Snapshot {
            sim: serde_json::from_slice(&p.data).map_err(setup)?,
            ..Snapshot::default()
        })
    }

    fn detach(&mut self) -> Result<(), SoakError> {
        self.exchange(b"d", &[]).map(|_| ())
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
pub fn serve(path: &Path) -> io::Result<()> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix::sys::socket::connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    let host = SimHost::start().map_err(io::Error::other)?;
    let mut dev = host
        .add_device("baseline", 0, AckPolicy::Raise)
        .map_err(io::Error::other)?;
    loop {
        if wait_readable(sock.as_fd()).is_err() {
            return Ok(());
        }
        let Some(p) = wire::recv(sock.as_raw_fd())? else {
            return Ok(());
        };
        let mut data = b"ok".to_vec();
        let mut reply = Vec::new();
        match p.data.as_slice() {
            b"a" => {
                let mut it = p.fds.into_iter();
                let (Some(irq), Some(resample)) = (it.next(), it.next()) else {
                    return Err(io::Error::other("attach without two eventfds"));
                };
                let (irq, resample) = (owned_into_eventfd(irq), owned_into_eventfd(resample));
                dev.set_trigger(&irq).map_err(io::Error::other)?;
                dev.set_unmask(Some(&resample)).map_err(io::Error::other)?;
                reply = dev.vmm_fds()?;
            }
            b"s" => {
                data = serde_json::to_vec(&dev.sim_counters().unwrap_or_default())
                    .map_err(io::Error::other)?
            }
            _ => {
                dev.disable().map_err(io::Error::other)?;
                dev.reset().map_err(io::Error::other)?;
            }
        }
        let b: Vec<_> = reply.iter().map(|f| f.as_fd()).collect();
        wire::send(sock.as_raw_fd(), &data, &b)?;
    }
}

fn wait_readable(fd: std::os::fd::BorrowedFd<'_>) -> Result<(), SoakError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let t0 = Instant::now();
    loop {
        let mut p = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut p, PollTimeout::from(1000u16)) {
            Ok(n) if n > 0 => return Ok(()),
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(setup(e)),
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(setup("no answer within 10 s"));
        }
    }
}

#[allow(unsafe_code)]
fn adopt(raw: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: accept just returned this fd; nothing else refers to it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
