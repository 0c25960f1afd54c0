//! The daemon's side of a device in the sim host: an
//! [`IntxDevice`](crate::vfio::IntxDevice) whose
//! every call is one request on the device's connection.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vmm_sys_util::eventfd::EventFd;

use super::{SimReply, SimRequest};
use crate::control::wire;
use crate::sim::{sim_facts, AckPolicy, SIM_INTX_INFO};
use crate::util::fd::borrow_eventfd;
use crate::vfio::{
    DeviceFacts, DeviceFds, DeviceProbe, IntxActions, IntxError, IntxInfo, IntxOp, ParkedFd,
    SimCounters, VmmFd,
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A device served by `intxd sim-host`.
pub struct RemoteSim {
    name: String,
    index: u32,
    sock: OwnedFd,
    gone: bool,
}

impl RemoteSim {
    /// Connects to the sim host at `path` and opens `sim:index`.
    pub fn open(path: &Path, name: &str, index: u32, policy: AckPolicy) -> io::Result<RemoteSim> {
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
        let mut d = RemoteSim {
            name: name.to_string(),
            index,
            sock,
            gone: false,
        };
        let req = SimRequest::Open {
            index,
            name: name.to_string(),
            policy,
        };
        match d.call(&req, &[])? {
            (SimReply::Ok, _) => Ok(d),
            (other, _) => Err(io::Error::other(format!(
                "sim host refused open: {other:?}"
            ))),
        }
    }

    /// Takes over a connection that a previous daemon parked in the fd store.
    pub fn adopt(sock: OwnedFd, name: &str, index: u32) -> RemoteSim {
        RemoteSim {
            name: name.to_string(),
            index,
            sock,
            gone: false,
        }
    }

    fn call(
        &mut self,
        req: &SimRequest,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(SimReply, Vec<OwnedFd>)> {
        let data = serde_json::to_vec(req).map_err(io::Error::other)?;
        wire::send(self.sock.as_raw_fd(), &data, fds)?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the sim host did not answer",
                ));
            }
            let mut p = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            match poll(&mut p, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            match wire::recv_limited(self.sock.as_raw_fd(), wire::MAX_REPLY) {
                Ok(Some(pkt)) => {
                    let reply = serde_json::from_slice(&pkt.data).map_err(io::Error::other)?;
                    return Ok((reply, pkt.fds));
                }
                Ok(None) => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the sim host closed the device",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn intx(&mut self, op: IntxOp, fd: Option<&EventFd>) -> Result<(), IntxError> {
        let req = SimRequest::Intx {
            action: op,
            present: fd.is_some(),
        };
        let fds: Vec<BorrowedFd<'_>> = fd.map(borrow_eventfd).into_iter().collect();
        let name = self.name.clone();
        let err = |source| IntxError::Action {
            device: name.clone(),
            op,
            source,
        };
        match self.call(&req, &fds).map_err(err)? {
            (SimReply::Ok, _) => Ok(()),
            (SimReply::Failed { gone: true, .. }, _) => {
                self.gone = true;
                Err(IntxError::Gone {
                    device: self.name.clone(),
                })
            }
            (SimReply::Failed { errno, message, .. }, _) => Err(err(match errno {
                Some(e) => io::Error::from_raw_os_error(e),
                None => io::Error::other(message),
            })),
            (other, _) => Err(err(io::Error::other(format!("unexpected reply {other:?}")))),
        }
    }
}

impl IntxActions for RemoteSim {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_trigger(&mut self, fd: &EventFd) -> Result<(), IntxError> {
        self.intx(IntxOp::SetTrigger, Some(fd))
    }

    fn set_unmask(&mut self, fd: Option<&EventFd>) -> Result<(), IntxError> {
        self.intx(IntxOp::SetUnmask, fd)
    }

    fn mask(&mut self) -> Result<(), IntxError> {
        self.intx(IntxOp::Mask, None)
    }

    fn unmask(&mut self) -> Result<(), IntxError> {
        self.intx(IntxOp::Unmask, None)
    }

    fn loopback(&mut self) -> Result<(), IntxError> {
        self.intx(IntxOp::Loopback, None)
    }

    fn disable(&mut self) -> Result<(), IntxError> {
        self.intx(IntxOp::Disable, None)
    }

    fn reset(&mut self) -> Result<(), IntxError> {
        self.intx(IntxOp::Reset, None)
    }

    fn set_request(&mut self, fd: Option<&EventFd>) -> Result<(), IntxError> {
        self.intx(IntxOp::SetRequest, fd)
    }
}

impl DeviceProbe for RemoteSim {
    fn info(&self) -> IntxInfo {
        SIM_INTX_INFO
    }

    fn facts(&self) -> DeviceFacts {
        sim_facts(self.index)
    }

    fn host_count(&self) -> u64 {
        self.sim_counters().map(|c| c.triggers).unwrap_or(0)
    }

    fn sim_counters(&self) -> Option<SimCounters> {
        let mut me = RemoteSim {
            name: self.name.clone(),
            index: self.index,
            sock: self.sock.try_clone().ok()?,
            gone: false,
        };
        match me.call(&SimRequest::Counters, &[]).ok()? {
            (SimReply::Counters(c), _) => Some(c),
            _ => None,
        }
    }

    fn is_gone(&self) -> bool {
        self.gone
    }
}

impl DeviceFds for RemoteSim {
    fn vmm_fds(&self) -> io::Result<Vec<(VmmFd, OwnedFd)>> {
        // `call` needs `&mut`; a duplicate of the socket is the same
        // connection, and request/reply pairs never interleave on this thread.
        let mut me = RemoteSim {
            name: self.name.clone(),
            index: self.index,
            sock: self.sock.try_clone()?,
            gone: false,
        };
        match me.call(&SimRequest::VmmFds, &[])? {
            (SimReply::Ok, fds) if fds.len() == 2 => {
                Ok([VmmFd::Ack, VmmFd::Doorbell].into_iter().zip(fds).collect())
            }
            (other, _) => Err(io::Error::other(format!(
                "sim host gave no device fds: {other:?}"
            ))),
        }
    }

    fn store_fds(&self) -> Vec<(ParkedFd, BorrowedFd<'_>)> {
        vec![(ParkedFd::Device, self.sock.as_fd())]
    }
}
