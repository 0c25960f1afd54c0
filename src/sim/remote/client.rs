//! The daemon's side of a device in the sim host: an
//! [`IntxDevice`](crate::vfio::IntxDevice) whose
//! every call is one request on the device's connection.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::{SimReply, SimRequest};
use crate::control::channel::{decode_with_id, encode_with_id, Channel, ChannelError, Frame};
use crate::control::wire;
use crate::sim::{sim_facts, AckPolicy};
use crate::util::fd::borrow_eventfd;
use crate::util::sock;
use crate::vfio::{
    DeviceFacts, DeviceFds, DeviceProbe, IntxActions, IntxError, IntxInfo, IntxOp, ParkedFd,
    SimCounters, VmmFd,
};

/// How long a call waits for the sim host.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A reply as the channel hands it over: decoded, or why not.
type Decoded = Result<SimReply, serde_json::Error>;

/// Why a device could not be opened in the sim host.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The sim host's socket could not be reached.
    #[error("cannot connect to the sim host at {}", .path.display())]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The `open` request got no answer.
    #[error("{device}: the sim host did not answer the open of sim:{index}")]
    Call {
        /// Device name.
        device: String,
        /// The `N` of `sim:N`.
        index: u32,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The sim host refused the open.
    #[error("{device}: the sim host refused to open sim:{index}: {reply}")]
    Refused {
        /// Device name.
        device: String,
        /// The `N` of `sim:N`.
        index: u32,
        /// Its reply.
        reply: String,
    },
}

/// A device served by `intxd sim-host`.
pub struct RemoteSim {
    name: String,
    index: u32,
    chan: Channel<Decoded>,
    gone: bool,
}

impl RemoteSim {
    /// Connects to the sim host at `path` and opens `sim:index`.
    pub fn open(
        path: &Path,
        name: &str,
        index: u32,
        policy: AckPolicy,
    ) -> Result<RemoteSim, RemoteError> {
        let sock = sock::connect(path).map_err(|source| RemoteError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Self::open_on(sock, name, index, policy)
    }

    /// Opens `sim:index` over a socket already connected to a sim host.
    pub fn open_on(
        sock: OwnedFd,
        name: &str,
        index: u32,
        policy: AckPolicy,
    ) -> Result<RemoteSim, RemoteError> {
        let d = Self::adopt(sock, name, index);
        let req = SimRequest::Open {
            index,
            name: name.to_string(),
            policy,
        };
        let reply = d.call(&req, &[]).map_err(|source| RemoteError::Call {
            device: name.to_string(),
            index,
            source,
        })?;
        match reply {
            (SimReply::Ok, _) => Ok(d),
            (other, _) => Err(RemoteError::Refused {
                device: name.to_string(),
                index,
                reply: format!("{other:?}"),
            }),
        }
    }

    /// Takes over a connection that a previous daemon parked in the fd store.
    pub fn adopt(sock: OwnedFd, name: &str, index: u32) -> RemoteSim {
        RemoteSim {
            name: name.to_string(),
            index,
            chan: Channel::new(sock),
            gone: false,
        }
    }

    /// One request and its reply. A reply that comes after the call gave
    /// up is dropped, never read as the answer to the next call.
    fn call(
        &self,
        req: &SimRequest,
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<(SimReply, Vec<OwnedFd>)> {
        let deadline = Instant::now() + TIMEOUT;
        let mut decode = |p: &wire::Packet| {
            let (id, r) = decode_with_id(&p.data);
            Frame::Reply(id, r)
        };
        match self
            .chan
            .call(|id| encode_with_id(id, req), fds, deadline, &mut decode)
        {
            Ok((Ok(reply), fds)) => Ok((reply, fds)),
            Ok((Err(e), _)) => Err(io::Error::other(e)),
            Err(ChannelError::Send(e) | ChannelError::Recv(e)) => Err(e),
            Err(ChannelError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the sim host did not answer",
            )),
            Err(ChannelError::Closed) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the sim host closed the device",
            )),
            Err(e @ ChannelError::Unexpected(_)) => Err(io::Error::other(e)),
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
    fn facts(&self) -> DeviceFacts {
        sim_facts(self.index)
    }

    fn info(&self) -> IntxInfo {
        self.facts().intx
    }

    fn host_count(&self) -> u64 {
        self.sim_counters().map(|c| c.triggers).unwrap_or(0)
    }

    fn sim_counters(&self) -> Option<SimCounters> {
        match self.call(&SimRequest::Counters, &[]).ok()? {
            (SimReply::Counters(c), _) => Some(c),
            _ => None,
        }
    }

    fn is_gone(&self) -> bool {
        self.gone
    }

    fn intx_enabled(&self) -> Option<bool> {
        self.sim_counters().and_then(|c| c.intx_enabled)
    }
}

impl DeviceFds for RemoteSim {
    fn vmm_fds(&self) -> io::Result<Vec<(VmmFd, OwnedFd)>> {
        match self.call(&SimRequest::VmmFds, &[])? {
            (SimReply::Ok, fds) if fds.len() == 2 => {
                Ok([VmmFd::Ack, VmmFd::Doorbell].into_iter().zip(fds).collect())
            }
            (other, _) => Err(io::Error::other(format!(
                "sim host gave no device fds: {other:?}"
            ))),
        }
    }

    fn store_fds(&self) -> Vec<(ParkedFd, BorrowedFd<'_>)> {
        vec![(ParkedFd::Device, self.chan.socket())]
    }

    fn hand_off(&mut self) -> io::Result<()> {
        match self.call(&SimRequest::HandOff, &[])? {
            (SimReply::Ok, _) => Ok(()),
            (other, _) => Err(io::Error::other(format!(
                "sim host made no fresh device fds: {other:?}"
            ))),
        }
    }

    fn serving_pids(&self) -> Vec<u32> {
        // The sim host created the device's eventfds and holds them.
        nix::sys::socket::getsockopt(
            &self.chan.socket(),
            nix::sys::socket::sockopt::PeerCredentials,
        )
        .map(|c| vec![c.pid() as u32])
        .unwrap_or_default()
    }
}
