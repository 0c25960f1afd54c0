//! `intxd sim-host`: serves emulated devices over a SEQPACKET socket.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use super::{SimReply, SimRequest};
use crate::control::wire;
use crate::sim::{SimDevice, SimHost};
use crate::util::fd::owned_into_eventfd;
use crate::vfio::{DeviceFds, DeviceProbe, IntxActions, IntxError, IntxOp};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    sock: OwnedFd,
    device: Option<u32>,
}

/// Serves devices at `path` until the process is killed.
pub fn serve(path: &Path) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(listener.as_raw_fd(), &UnixAddr::new(path)?)?;
    listen(&listener, Backlog::new(64).unwrap_or(Backlog::MAXCONN))?;
    let host = SimHost::start().map_err(io::Error::other)?;
    let mut devices: HashMap<u32, SimDevice> = HashMap::new();
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut poll = Poll::new()?;
    poll.registry().register(
        &mut SourceFd(&listener.as_raw_fd()),
        LISTENER,
        Interest::READABLE,
    )?;
    let mut events = Events::with_capacity(64);
    log::info!("sim-host: serving emulated devices at {}", path.display());
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok(raw) = accept4(
                    listener.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                ) {
                    let sock = adopt(raw);
                    poll.registry().register(
                        &mut SourceFd(&sock.as_raw_fd()),
                        Token(next),
                        Interest::READABLE,
                    )?;
                    conns.insert(next, Conn { sock, device: None });
                    next += 1;
                }
                continue;
            }
            let key = ev.token().0;
            while let Some(conn) = conns.get_mut(&key) {
                match wire::recv(conn.sock.as_raw_fd()) {
                    Ok(Some(p)) => {
                        let (reply, fds) = handle(&host, &mut devices, conn, &p.data, p.fds);
                        let data = serde_json::to_vec(&reply).unwrap_or_default();
                        let b: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
                        let _ = wire::send(conn.sock.as_raw_fd(), &data, &b);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Ok(None) | Err(_) => {
                        // The last copy of the connection closed: release the
                        // device, as vfio-pci does when its fd goes away.
                        if let Some(c) = conns.remove(&key) {
                            let _ = poll
                                .registry()
                                .deregister(&mut SourceFd(&c.sock.as_raw_fd()));
                            if let Some(dev) = c.device.and_then(|i| devices.get_mut(&i)) {
                                let _ = dev.disable();
                                let _ = dev.reset();
                                log::info!("sim-host: sim:{} released", c.device.unwrap_or(0));
                            }
                        }
                        break;
                    }
                }
            }
        }
    }
}

fn handle(
    host: &SimHost,
    devices: &mut HashMap<u32, SimDevice>,
    conn: &mut Conn,
    data: &[u8],
    fds: Vec<OwnedFd>,
) -> (SimReply, Vec<OwnedFd>) {
    let fail = |m: String| {
        (
            SimReply::Failed {
                errno: None,
                gone: false,
                message: m,
            },
            Vec::new(),
        )
    };
    let req: SimRequest = match serde_json::from_slice(data) {
        Ok(r) => r,
        Err(e) => return fail(format!("bad request: {e}")),
    };
    if let SimRequest::SurpriseRemove { index } = req {
        return match devices.get(&index) {
            Some(d) => {
                d.surprise_remove();
                log::info!("sim-host: sim:{index} surprise-removed");
                (SimReply::Ok, Vec::new())
            }
            None => fail(format!("no device sim:{index}")),
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
                    Err(e) => return fail(e.to_string()),
                }
            }
        }
        conn.device = Some(index);
        return (SimReply::Ok, Vec::new());
    }
    let Some(dev) = conn.device.and_then(|i| devices.get_mut(&i)) else {
        return fail("open a device first".into());
    };
    let mut fds = fds.into_iter();
    let result = match req {
        SimRequest::Intx { action, present } => match action {
            IntxOp::SetTrigger => match fds.next() {
                Some(fd) => dev.set_trigger(&owned_into_eventfd(fd)),
                None => return fail("set_trigger needs an eventfd".into()),
            },
            IntxOp::SetUnmask if present => match fds.next() {
                Some(fd) => dev.set_unmask(Some(&owned_into_eventfd(fd))),
                None => return fail("set_unmask needs an eventfd".into()),
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
                Err(e) => fail(e.to_string()),
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

#[allow(unsafe_code)]
fn adopt(raw: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: accept4 just returned this fd; nothing else refers to it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
