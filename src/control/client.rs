//! The Rust client for intxd's control socket.
//!
//! For a VMM with KVM's in-kernel irqchip, [`attach_kernel_irqchip`] does it
//! all: makes the eventfd pair, registers `KVM_IRQFD` with
//! `KVM_IRQFD_FLAG_RESAMPLE` on the caller's own VM (KVM takes VM ioctls only
//! from the VM's creator, so intxd cannot do this), connects, says hello and
//! attaches:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use intxd::control::client::attach_kernel_irqchip;
//! use intxd::control::proto::ModeRequest;
//! let kvm = kvm_ioctls::Kvm::new()?;
//! let vm = kvm.create_vm()?;
//! vm.create_irq_chip()?;
//! let att = attach_kernel_irqchip(&vm, 10, "/run/intxd/control.sock".as_ref(), "nic0", ModeRequest::Auto)?;
//! // att.device_fds: the VFIO device fd and container fd (or, for an
//! // emulated device, its ack and doorbell eventfds). Keep `att.client`
//! // open for as long as the VM uses the device: closing it detaches.
//! # Ok(()) }
//! ```
//!
//! For a VMM whose interrupt controller is its own, [`attach_user_irqchip`]
//! returns the pair to wire into it: assert the line when `irq` is readable,
//! write `resample` at the guest's EOI.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
use vmm_sys_util::eventfd::EventFd;

use super::proto::{ErrorCode, Event, FdRole, Incoming, ModeRequest, Reply, Request};
use super::wire;
use crate::route::Irqchip;
use crate::util::fd::{borrow_eventfd, new_eventfd};
use crate::PROTOCOL_VERSION;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to intxd at {}; is the daemon running (systemctl status intxd) and may this user open the socket?", .path.display())]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Sending or receiving failed.
    #[error("control socket I/O failed")]
    Io(#[source] io::Error),
    /// The daemon did not answer in time.
    #[error("the daemon did not answer within {0:?}")]
    Timeout(Duration),
    /// The daemon closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
    /// A packet was not valid protocol.
    #[error("the daemon sent something that is not protocol v1")]
    Decode(#[source] serde_json::Error),
    /// The daemon refused the request.
    #[error("intxd refused: {message} ({code:?})")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The daemon's message.
        message: String,
    },
    /// Registering the VMM's own irqfd failed.
    #[error("KVM_IRQFD with resample on GSI {gsi} failed")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

impl ClientError {
    /// The daemon's error code, if the daemon refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection to the daemon.
pub struct Client {
    sock: OwnedFd,
    events: VecDeque<Event>,
    timeout: Duration,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let err = |source: io::Error| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| err(e.into()))?;
        let addr = UnixAddr::new(path).map_err(|e| err(e.into()))?;
        connect(sock.as_raw_fd(), &addr).map_err(|e| err(e.into()))?;
        Ok(Client {
            sock,
            events: VecDeque::new(),
            timeout: Duration::from_secs(10),
        })
    }

    /// Sets how long to wait for a reply.
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// The socket, for callers that poll it.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Sends raw bytes and fds (for tests of the daemon's input checks).
    pub fn send_raw(&mut self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match wire::send(self.sock.as_raw_fd(), data, fds) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::POLLOUT, deadline)?;
                }
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) =>
                {
                    // The daemon refused us and hung up (too many
                    // connections, out of fds): its reason may be waiting.
                    if let Ok((Incoming::Reply(Reply::Error { error }), _)) =
                        self.recv_one(deadline)
                    {
                        return Err(ClientError::Refused {
                            code: error.code,
                            message: error.message,
                        });
                    }
                    return Err(ClientError::Io(e));
                }
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }

    /// Receives the next reply (queueing events met on the way) with its fds.
    pub fn recv_reply(&mut self) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let (msg, fds) = self.recv_one(deadline)?;
            match msg {
                Incoming::Reply(r) => return Ok((r, fds)),
                Incoming::Event(e) => self.events.push_back(e),
            }
        }
    }

    /// Waits up to `timeout` for an event.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + timeout;
        match self.recv_one(deadline) {
            Ok((Incoming::Event(e), _)) => Ok(Some(e)),
            Ok((Incoming::Reply(r), _)) => Err(ClientError::Io(io::Error::other(format!(
                "unexpected reply with no request outstanding: {r:?}"
            )))),
            Err(ClientError::Timeout(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn wait(&self, flags: PollFlags, deadline: Instant) -> Result<(), ClientError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(self.timeout));
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut p = [PollFd::new(self.sock.as_fd(), flags)];
            match poll(&mut p, PollTimeout::from(ms)) {
                Ok(0) => continue,
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(ClientError::Io(e.into())),
            }
        }
    }

    fn recv_one(&mut self, deadline: Instant) -> Result<(Incoming, Vec<OwnedFd>), ClientError> {
        let mut reset_seen = false;
        loop {
            self.wait(PollFlags::POLLIN, deadline)?;
            match wire::recv_limited(self.sock.as_raw_fd(), wire::MAX_REPLY) {
                Ok(Some(p)) => {
                    let msg = Incoming::decode(&p.data).map_err(ClientError::Decode)?;
                    return Ok((msg, p.fds));
                }
                Ok(None) => return Err(ClientError::Closed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // A peer that closed with our packet unread reports
                // ECONNRESET once, ahead of what it sent before closing
                // (a refusal with its reason): read on once.
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) && !reset_seen => {
                    reset_seen = true;
                }
                Err(e) => return Err(ClientError::Io(e)),
            }
        }
    }

    /// Sends a request and returns its reply; error replies become
    /// [`ClientError::Refused`].
    pub fn request(
        &mut self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let bytes = serde_json::to_vec(req).map_err(ClientError::Decode)?;
        self.send_raw(&bytes, fds)?;
        match self.recv_reply()? {
            (Reply::Error { error }, _) => Err(ClientError::Refused {
                code: error.code,
                message: error.message,
            }),
            ok => Ok(ok),
        }
    }

    /// `hello`: negotiates protocol v1.
    pub fn hello(&mut self, client: &str) -> Result<Reply, ClientError> {
        let req = Request::Hello {
            version: PROTOCOL_VERSION,
            client: Some(client.to_string()),
        };
        Ok(self.request(&req, &[])?.0)
    }

    /// `attach` with the VMM's (irq, resample) eventfd pair. Returns the reply
    /// and the device fds that came with it.
    pub fn attach(
        &mut self,
        device: &str,
        irqchip: Irqchip,
        mode: ModeRequest,
        irq: &EventFd,
        resample: &EventFd,
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let req = Request::Attach {
            device: device.to_string(),
            irqchip,
            mode,
            fds: vec![FdRole::Irq, FdRole::Resample],
        };
        self.request(&req, &[borrow_eventfd(irq), borrow_eventfd(resample)])
    }

    /// `detach`.
    pub fn detach(&mut self, device: &str) -> Result<Reply, ClientError> {
        let req = Request::Detach {
            device: device.to_string(),
        };
        Ok(self.request(&req, &[])?.0)
    }

    /// `status`.
    pub fn status(&mut self) -> Result<Reply, ClientError> {
        Ok(self.request(&Request::Status {}, &[])?.0)
    }

    /// `trigger`: the loopback self-test.
    pub fn trigger(&mut self, device: &str) -> Result<Reply, ClientError> {
        let req = Request::Trigger {
            device: device.to_string(),
        };
        Ok(self.request(&req, &[])?.0)
    }
}

/// A device attached for a VMM.
pub struct Attachment {
    /// The connection; closing it detaches the device.
    pub client: Client,
    /// The irq eventfd.
    pub irq: EventFd,
    /// The resample eventfd.
    pub resample: EventFd,
    /// The attach reply (mode, reason, facts).
    pub reply: Reply,
    /// The device's fds, in the order the reply's `fds` names them.
    pub device_fds: Vec<OwnedFd>,
}

/// For a VMM with KVM's in-kernel irqchip: registers `KVM_IRQFD` with
/// resample on `gsi` of the caller's VM, then attaches `device`.
pub fn attach_kernel_irqchip(
    vm: &VmFd,
    gsi: u32,
    socket: &Path,
    device: &str,
    mode: ModeRequest,
) -> Result<Attachment, ClientError> {
    let irq = new_eventfd().map_err(ClientError::Io)?;
    let resample = new_eventfd().map_err(ClientError::Io)?;
    vm.register_irqfd_with_resample(&irq, &resample, gsi)
        .map_err(|source| ClientError::Irqfd { gsi, source })?;
    // Keep copies so a failed attach can take the irqfd off the VM again.
    let (irq2, gsi2) = (irq.try_clone().map_err(ClientError::Io)?, gsi);
    let attached = attach_pair(socket, device, Irqchip::Kernel, mode, irq, resample);
    if attached.is_err() {
        let _ = vm.unregister_irqfd(&irq2, gsi2);
    }
    attached
}

/// For a VMM whose interrupt controller lives in userspace: attaches
/// `device` and returns the pair to wire into that controller.
pub fn attach_user_irqchip(
    socket: &Path,
    device: &str,
    mode: ModeRequest,
) -> Result<Attachment, ClientError> {
    let irq = new_eventfd().map_err(ClientError::Io)?;
    let resample = new_eventfd().map_err(ClientError::Io)?;
    attach_pair(socket, device, Irqchip::User, mode, irq, resample)
}

fn attach_pair(
    socket: &Path,
    device: &str,
    irqchip: Irqchip,
    mode: ModeRequest,
    irq: EventFd,
    resample: EventFd,
) -> Result<Attachment, ClientError> {
    let mut client = Client::connect(socket)?;
    client.hello("intxd-client")?;
    let (reply, device_fds) = client.attach(device, irqchip, mode, &irq, &resample)?;
    Ok(Attachment {
        client,
        irq,
        resample,
        reply,
        device_fds,
    })
}
