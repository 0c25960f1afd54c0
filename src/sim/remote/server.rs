//! `intxd sim-host`: serves emulated devices over a SEQPACKET socket, one
//! request at a time per connection, each reply carrying its request's id.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{SimReply, SimRequest};
use crate::control::channel::{decode_with_id, encode_with_id};
use crate::control::wire;
use crate::sim::{SimDevice, SimError, SimHost};
use crate::util::fd::owned_into_eventfd;
use crate::util::sock::{self, ListenError};
use crate::vfio::{DeviceFds, DeviceProbe, IntxActions, IntxError, IntxOp};

const LISTENER: Token = Token(usize::MAX);

/// Why the sim host stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be listened on.
    #[error("sim-host: cannot serve at the socket")]
    Listen(#[from] ListenError),
    /// The emulated-device thread did not start.
    #[error("sim-host: cannot start the emulated devices")]
    Start(#[from] SimError),
    /// The event loop failed.
    #[error("sim-host {}: could not {what}", .path.display())]
    Loop {
        /// The socket (or the bench's connection).
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

struct Conn {
    sock: OwnedFd,
    device: Option<u32>,
}

/// The devices and the connections that drive them.
struct Server {
    path: PathBuf,
    host: SimHost,
    devices: HashMap<u32, SimDevice>,
    conns: HashMap<usize, Conn>,
    next: usize,
    poll: Poll,
}

impl Server {
    fn new(path: &Path) -> Result<Server, ServeError> {
        Ok(Server {
            path: path.to_path_buf(),
            host: SimHost::start()?,
            devices: HashMap::new(),
            conns: HashMap::new(),
            next: 0,
            poll: Poll::new().map_err(|e| Self::loop_err(path, "create the poll", e))?,
        })
    }

    fn loop_err(path: &Path, what: &'static str, source: io::Error) -> ServeError {
        ServeError::Loop {
            path: path.to_path_buf(),
            what,
            source,
        }
    }

    fn add(&mut self, sock: OwnedFd) -> Result<(), ServeError> {
        self.poll
            .registry()
            .register(
                &mut SourceFd(&sock.as_raw_fd()),
                Token(self.next),
                Interest::READABLE,
            )
            .map_err(|e| Self::loop_err(&self.path, "watch a connection", e))?;
        self.conns.insert(self.next, Conn { sock, device: None });
        self.next += 1;
        Ok(())
    }

    /// Runs until `listener` (if any) fails, or, without a listener, until
    /// the last connection closes.
    fn run(&mut self, listener: Option<&OwnedFd>) -> Result<(), ServeError> {
        let mut events = Events::with_capacity(64);
        loop {
            if listener.is_none() && self.conns.is_empty() {
                return Ok(());
            }
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Self::loop_err(&self.path, "wait for requests", e));
            }
            for ev in events.iter() {
                match (ev.token(), listener) {
                    (LISTENER, Some(l)) => {
                        while let Ok(sock) = sock::accept(l.as_fd()) {
                            self.add(sock)?;
                        }
                    }
                    (Token(key), _) => self.serve_conn(key),
                }
            }
        }
    }

    /// Answers every request waiting on connection `key`.
    fn serve_conn(&mut self, key: usize) {
        while let Some(conn) = self.conns.get_mut(&key) {
            match wire::recv(conn.sock.as_fd()) {
                Ok(Some(p)) => {
                    let (id, req) = decode_with_id::<SimRequest>(&p.data);
                    let (reply, fds) = match req {
                        Ok(req) => handle(&self.host, &mut self.devices, conn, req, p.fds),
                        Err(e) => failed(format!("bad request: {e}")),
                    };
                    let data = match id {
                        Some(id) => encode_with_id(id, &reply),
                        None => serde_json::to_vec(&reply).unwrap_or_default(),
                    };
                    let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                    let _ = wire::send(conn.sock.as_fd(), &data, &b);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Ok(None) | Err(_) => {
                    self.close(key);
                    break;
                }
            }
        }
    }

    /// The last copy of a connection closed: release its device, as
    /// vfio-pci does when its fd goes away.
    fn close(&mut self, key: usize) {
        let Some(c) = self.conns.remove(&key) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&c.sock.as_raw_fd()));
        if let Some((i, dev)) = c.device.and_then(|i| Some((i, self.devices.get_mut(&i)?))) {
            let _ = dev.disable();
            let _ = dev.reset();
            log::info!("sim-host: sim:{i} released");
        }
    }
}

/// Serves devices at `path` until the process is killed. What is at `path`
/// is replaced only if it is a stale socket: a file, or a socket another
/// process listens on, is refused.
pub fn serve(path: &Path) -> Result<(), ServeError> {
    let listener = sock::listen(path, 64, |_| Ok(()))?;
    let mut server = Server::new(path)?;
    server
        .poll
        .registry()
        .register(
            &mut SourceFd(&listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )
        .map_err(|e| Server::loop_err(path, "watch the socket", e))?;
    log::info!("sim-host: serving emulated devices at {}", path.display());
    server.run(Some(&listener))
}

/// Serves devices over one connected socket until its peer hangs up (the
/// bench's device process; `path` names it in messages).
pub fn serve_connection(sock: OwnedFd, path: &Path) -> Result<(), ServeError> {
    let mut server = Server::new(path)?;
    server.add(sock)?;
    server.run(None)
}

fn failed(message: String) -> (SimReply, Vec<OwnedFd>) {
    (
        SimReply::Failed {
            errno: None,
            gone: false,
            message,
        },
        Vec::new(),
    )
}

fn handle(
    host: &SimHost,
    devices: &mut HashMap<u32, SimDevice>,
    conn: &mut Conn,
    req: SimRequest,
    fds: Vec<OwnedFd>,
) -> (SimReply, Vec<OwnedFd>) {
    if let SimRequest::SurpriseRemove { index } = req {
        // The same rule as every other request: only a connection that
        // opened the device acts on it.
        if conn.device != Some(index) {
            return failed(format!(
                "surprise_remove of sim:{index} refused: open sim:{index} on this connection first"
            ));
        }
        return match devices.get(&index) {
            Some(d) => {
                d.surprise_remove();
                log::info!("sim-host: sim:{index} surprise-removed");
                (SimReply::Ok, Vec::new())
            }
            None => failed(format!("no device sim:{index}")),
        };
    }
    if let SimRequest::Open {
        index,
        name,
        policy,
    } = req
    {
        match devices.entry(index) {
            std::collections::hash_map::Entry::Occupied(d) => d.get().set_policy(policy),
            std::collections::hash_map::Entry::Vacant(v) => {
                match host.add_device(&name, index, policy) {
                    Ok(d) => {
                        v.insert(d);
                    }
                    Err(e) => return failed(e.to_string()),
                }
            }
        }
        conn.device = Some(index);
        return (SimReply::Ok, Vec::new());
    }
    let Some(dev) = conn.device.and_then(|i| devices.get_mut(&i)) else {
        return failed("open a device first".into());
    };
    let mut fds = fds.into_iter();
    let result = match req {
        SimRequest::Intx { action, present } => match action {
            IntxOp::SetTrigger => match fds.next() {
                Some(fd) => dev.set_trigger(&owned_into_eventfd(fd)),
                None => return failed("set_trigger needs an eventfd".into()),
            },
            IntxOp::SetUnmask if present => match fds.next() {
                Some(fd) => dev.set_unmask(Some(&owned_into_eventfd(fd))),
                None => return failed("set_unmask needs an eventfd".into()),
            },
            IntxOp::SetUnmask => dev.set_unmask(None),
            IntxOp::Mask => dev.mask(),
            IntxOp::Unmask => dev.unmask(),
            IntxOp::Loopback => dev.loopback(),
            IntxOp::Disable => dev.disable(),
            IntxOp::Reset => dev.reset(),
            IntxOp::SetRequest => match fds.next() {
                Some(fd) if present => dev.set_request(Some(&owned_into_eventfd(fd))),
                _ => dev.set_request(None),
            },
        },
        SimRequest::Counters => {
            return (
                SimReply::Counters(dev.sim_counters().unwrap_or_default()),
                Vec::new(),
            )
        }
        SimRequest::VmmFds => {
            return match dev.vmm_fds() {
                Ok(f) => (SimReply::Ok, f.into_iter().map(|(_, fd)| fd).collect()),
                Err(e) => failed(e.to_string()),
            }
        }
        SimRequest::HandOff => {
            return match dev.hand_off() {
                Ok(()) => (SimReply::Ok, Vec::new()),
                Err(e) => failed(format!("could not make fresh device fds: {e}")),
            }
        }
        SimRequest::Open { .. } | SimRequest::SurpriseRemove { .. } => Ok(()),
    };
    match result {
        Ok(()) => (SimReply::Ok, Vec::new()),
        Err(IntxError::Gone { .. }) => (
            SimReply::Failed {
                errno: None,
                gone: true,
                message: "gone".into(),
            },
            Vec::new(),
        ),
        Err(IntxError::Action { source, .. }) => (
            SimReply::Failed {
                errno: source.raw_os_error(),
                gone: false,
                message: source.to_string(),
            },
            Vec::new(),
        ),
    }
}
