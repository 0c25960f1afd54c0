//! The Rust client for intxd's control socket.
//!
//! A VMM makes its eventfd pair, registers it as its own KVM irqfd with
//! `KVM_IRQFD_FLAG_RESAMPLE` (KVM takes VM ioctls only from the VM's
//! creator, so intxd cannot do this) or wires it into its own irqchip, and
//! then attaches:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use intxd_client::client::Client;
//! use intxd_client::proto::{Irqchip, ModeRequest};
//! # let (irq, resample) = (std::fs::File::open("/dev/null")?, std::fs::File::open("/dev/null")?);
//! let mut c = Client::connect("/run/intxd/control.sock".as_ref())?;
//! c.hello("myvmm")?;
//! // irq, resample: the eventfds of the VMM's KVM_IRQFD (with resample).
//! let (_reply, device_fds) = c.attach("nic0", Irqchip::Kernel, ModeRequest::Auto, &irq, &resample)?;
//! // device_fds: the VFIO device fd and container fd (or, for an emulated
//! // device, its ack and doorbell eventfds). Keep `c` open for as long as
//! // the VM uses the device: closing it detaches.
//! # drop(device_fds); Ok(()) }
//! ```
//!
//! The daemon crate adds the KVM side in one call
//! (`intxd::control::client::attach_kernel_irqchip`), and
//! `examples/vmm.rs` shows a whole VMM: attach, the lifecycle calls
//! around a guest's MSI switch, reset and re-routing, and its events.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::channel::{Channel, ChannelError, Frame};
use crate::proto::{
    ErrorCode, Event, FdRole, Incoming, IntxState, Irqchip, ModeRequest, Reply, Request,
};
use crate::wire::Packet;
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
    /// Registering the VMM's own irqfd failed (for helpers that do it,
    /// such as `intxd::control::client::attach_kernel_irqchip`).
    #[error("KVM_IRQFD with resample on GSI {gsi} failed")]
    Irqfd {
        /// The GSI.
        gsi: u32,
        /// Cause.
        #[source]
        source: io::Error,
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
        // An event this client does not know (a newer daemon's): skipped,
        // as docs/protocol.md asks, never taken for the awaited reply.
        Err(_) if Incoming::is_event(&p.data) => Frame::Other,
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
        let sock = connect(path).map_err(|source| ClientError::Connect {
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
    ///
    /// The pair is taken as `AsRawFd` so that any eventfd type serves
    /// (`vmm_sys_util`'s `EventFd`, an `OwnedFd`); it is only borrowed for
    /// the call: the daemon gets duplicates, the VMM keeps its own.
    #[allow(unsafe_code)]
    pub fn attach<F: AsRawFd>(
        &mut self,
        device: &str,
        irqchip: Irqchip,
        mode: ModeRequest,
        irq: &F,
        resample: &F,
    ) -> Result<(Reply, Vec<OwnedFd>), ClientError> {
        let req = Request::Attach {
            device: device.to_string(),
            irqchip,
            mode,
            fds: vec![FdRole::Irq, FdRole::Resample],
        };
        // SAFETY: `irq` and `resample` are borrowed for the whole call, and
        // a value that hands out its raw fd keeps that fd open while it
        // lives; the borrowed fds do not outlive this call.
        let fds = unsafe {
            [
                BorrowedFd::borrow_raw(irq.as_raw_fd()),
                BorrowedFd::borrow_raw(resample.as_raw_fd()),
            ]
        };
        self.request(&req, &fds)
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
            other => Err(unexpected("metrics", &other)),
        }
    }

    /// `suspend_intx`: the device's INTx is disabled in VFIO and its route
    /// parked, so that the VMM may enable MSI or MSI-X on its device fd.
    /// Returns whether an interrupt was pending (it fires again at resume
    /// while the device still asserts). Needs the `lifecycle` capability.
    pub fn suspend_intx(&mut self, device: &str) -> Result<bool, ClientError> {
        let req = Request::SuspendIntx {
            device: device.to_string(),
        };
        match self.request(&req, &[])?.0 {
            Reply::IntxSuspended { pending, .. } => Ok(pending),
            other => Err(unexpected("suspend_intx", &other)),
        }
    }

    /// `resume_intx`: INTx is enabled again on the same eventfds and re-armed
    /// with one unmask. Disable MSI/MSI-X on the device fd first: vfio-pci
    /// enables one interrupt type at a time.
    pub fn resume_intx(&mut self, device: &str) -> Result<(), ClientError> {
        let req = Request::ResumeIntx {
            device: device.to_string(),
        };
        match self.request(&req, &[])?.0 {
            Reply::IntxResumed { .. } => Ok(()),
            other => Err(unexpected("resume_intx", &other)),
        }
    }

    /// `reset`: intxd quiesces INTx, resets the function and brings INTx
    /// back as the guest left it; returns that state.
    pub fn reset(&mut self, device: &str) -> Result<IntxState, ClientError> {
        let req = Request::Reset {
            device: device.to_string(),
        };
        match self.request(&req, &[])?.0 {
            Reply::Reset { intx, .. } => Ok(intx),
            other => Err(unexpected("reset", &other)),
        }
    }
}

/// A reply of the wrong kind for its request.
fn unexpected(request: &'static str, reply: &Reply) -> ClientError {
    ClientError::Unexpected {
        request,
        reply: reply_kind(reply),
    }
}

/// A reply's `reply` tag (`status`, `error`, ...).
fn reply_kind(r: &Reply) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("reply")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// Connects a new (blocking, close-on-exec) `SOCK_SEQPACKET` socket to
/// `path`.
fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(data: &[u8]) -> Packet {
        Packet {
            data: data.to_vec(),
            fds: Vec::new(),
            truncated: false,
            ctrl_truncated: false,
        }
    }

    #[test]
    fn an_unknown_event_is_skipped_and_never_taken_for_a_reply() {
        let mut events = VecDeque::new();
        let (unknown, known, broken) = {
            let mut sort = sorter(&mut events);
            (
                sort(&packet(br#"{"event":"from_the_future","device":"d"}"#)),
                sort(&packet(
                    br#"{"event":"delivery_overdue","device":"d","mode":"relay","waited_ms":7}"#,
                )),
                sort(&packet(br#"{"reply":"no_such_reply"}"#)),
            )
        };

        assert!(matches!(unknown, Frame::Other));
        assert!(matches!(known, Frame::Other));
        assert!(matches!(broken, Frame::Reply(None, Err(_))));
        assert_eq!(
            events.into_iter().collect::<Vec<_>>(),
            vec![Event::DeliveryOverdue {
                device: "d".into(),
                mode: crate::types::Mode::Relay,
                waited_ms: 7
            }]
        );
    }
}
