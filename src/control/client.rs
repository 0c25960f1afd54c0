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
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::channel::{Channel, ChannelError, Frame};
use super::proto::{ErrorCode, Event, FdRole, Incoming, ModeRequest, Reply, Request};
use super::wire::Packet;
use crate::route::Irqchip;
use crate::util::fd::{borrow_eventfd, new_eventfd};
use crate::util::sock;
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
    /// The daemon answered with a reply of another request.
    #[error("the daemon answered `{request}` with a `{reply}` reply; are client and daemon the same intxd version?")]
    Unexpected {
        /// The request sent.
        request: &'static str,
        /// The kind of reply that came.
        reply: String,
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

/// A reply as the channel hands it over: decoded, or why not.
type Decoded = Result<Reply, serde_json::Error>;

/// Sorts the daemon's packets: events are queued, replies go to the channel
/// (the daemon answers in order, so they carry no id).
fn sorter(events: &mut VecDeque<Event>) -> impl FnMut(&Packet) -> Frame<Decoded> + '_ {
    move |p| match Incoming::decode(&p.data) {
        Ok(Incoming::Event(e)) => {
            events.push_back(e);
            Frame::Other
        }
        Ok(Incoming::Reply(r)) => Frame::Reply(None, Ok(r)),
        Err(e) => Frame::Reply(None, Err(e)),
    }
}

/// A connection to the daemon.
pub struct Client {
    chan: Channel<Decoded>,
    events: VecDeque<Event>,
    timeout: Duration,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let sock = sock::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client {
            chan: Channel::new(sock),
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
        self.chan.socket()
    }

    fn lost(&self, e: ChannelError) -> ClientError {
        match e {
            ChannelError::Send(e) | ChannelError::Recv(e) => ClientError::Io(e),
            ChannelError::Timeout => ClientError::Timeout(self.timeout),
            ChannelError::Closed => ClientError::Closed,
            ChannelError::Unexpected(n) => ClientError::Io(io::Error::other(format!(
                "unexpected reply (the {n}th) with no request outstanding"
            ))),
        }
    }

    /// Sends one request packet; returns its id on the channel.
    fn send_packet(&mut self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<u64, ClientError> {
        let deadline = Instant::now() + self.timeout;
        match self.chan.send(|_| data.to_vec(), fds, deadline) {
            Ok(id) => Ok(id),
            Err(ChannelError::Send(e))
                if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) =>
            {
                // The daemon refused us and hung up (too many
                // connections, out of fds): its reason may be waiting.
                if let Ok(p) = self.chan.recv(deadline) {
                    if let Ok(Incoming::Reply(Reply::Error { error })) = Incoming::decode(&p.data) {
                        return Err(ClientError::Refused {
                            code: error.code,
                            message: error.message,
                        });
                    }
                }
                Err(ClientError::Io(e))
            }
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Sends raw bytes and fds (for tests of the daemon's input checks).
    pub fn send_raw(&mut self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ClientError> {
        self.send_packet(data, fds).map(|_| ())
    }

    /// Receives the reply to the oldest request still awaited (queueing
    /// events met on the way) with its fds.
    pub fn recv_reply(&mut self) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let deadline = Instant::now() + self.timeout;
        let r = self
            .chan
            .next_reply(deadline, &mut sorter(&mut self.events));
        self.decoded(r)
    }

    fn decoded(
        &self,
        r: Result<(Decoded, Vec<OwnedFd>), ChannelError>,
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        match r {
            Ok((Ok(reply), fds)) => Ok((reply, fds)),
            Ok((Err(e), _)) => Err(ClientError::Decode(e)),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Waits up to `timeout` for an event.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + timeout;
        let r = self
            .chan
            .next_other(deadline, &mut sorter(&mut self.events));
        match r {
            Ok(()) => Ok(self.events.pop_front()),
            Err(ChannelError::Timeout) => Ok(None),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Sends a request and returns its reply; error replies become
    /// [`ClientError::Refused`]. A reply that comes after this call timed
    /// out is dropped, never taken for the answer to a later request.
    pub fn request(
        &mut self,
        req: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let bytes = serde_json::to_vec(req).map_err(ClientError::Decode)?;
        let id = self.send_packet(&bytes, fds)?;
        let deadline = Instant::now() + self.timeout;
        let r = self.chan.reply(id, deadline, &mut sorter(&mut self.events));
        match self.decoded(r)? {
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

    /// `metrics`: the Prometheus text exposition.
    pub fn metrics(&mut self) -> Result<String, ClientError> {
        match self.request(&Request::Metrics {}, &[])?.0 {
            Reply::Metrics { text, .. } => Ok(text),
            other => Err(ClientError::Unexpected {
                request: "metrics",
                reply: reply_kind(&other),
            }),
        }
    }
}

/// A reply's `reply` tag (`status`, `error`, ...).
fn reply_kind(r: &Reply) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("reply")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
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
