//! Connections and requests: accept, read, decode, check, act, reply.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::Interest;
use nix::sys::socket::{accept4, SockFlag};

use super::conn::{Conn, Outgoing, SendState};
use super::devices::{choose_mode, DeviceState, Holder};
use super::{Daemon, Tok};
use crate::control::auth::Peer;
use crate::control::proto::{DaemonStatus, ErrorCode, Event, Owner, Reply, Request};
use crate::control::validate::{validate, PacketMeta};
use crate::control::wire::{self, Packet};
use crate::route;
use crate::util::fd::{owned_into_eventfd, FdKind};
use crate::PROTOCOL_VERSION;

impl Daemon {
    pub(super) fn accept_all(&mut self) {
        loop {
            match accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(raw) => {
                    // SAFETY-free adoption: accept4 returned a new fd we own.
                    let sock = adopt(raw);
                    self.add_conn(sock);
                }
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::ECONNABORTED) => continue,
                Err(nix::errno::Errno::EMFILE) | Err(nix::errno::Errno::ENFILE) => {
                    self.refuse_for_fds();
                    return;
                }
                Err(e) => {
                    log::error!("control socket: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Out of fds: free the reserve, accept the waiting client, tell it why,
    /// close it, and take the reserve back. Existing routes are untouched.
    fn refuse_for_fds(&mut self) {
        self.reserve_fd = None;
        if let Ok(raw) = accept4(
            self.listener.as_raw_fd(),
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        ) {
            let sock = adopt(raw);
            let reply = Reply::error(
                ErrorCode::ResourceExhausted,
                "intxd is out of file descriptors (RLIMIT_NOFILE); existing devices keep working; raise LimitNOFILE= or try later",
            );
            let _ = wire::send(sock.as_raw_fd(), &encode(&reply), &[]);
            log::error!("control socket: out of file descriptors; refused a new client");
        }
        self.reserve_fd = std::fs::File::open("/dev/null").ok();
    }

    fn add_conn(&mut self, sock: OwnedFd) {
        // A status reply grows with the device count; room for a large one.
        // The kernel caps this at net.core.wmem_max, which suffices for a
        // few hundred devices.
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBuf, &(1 << 20));
        let peer = match Peer::of(&sock) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("control socket: cannot read the peer's credentials: {e}");
                return;
            }
        };
        let open = self.conns.iter().filter(|c| c.is_some()).count();
        if open >= self.config.daemon.max_connections {
            let reply = Reply::error(
                ErrorCode::TooManyConnections,
                format!(
                    "intxd already serves {open} connections (daemon.max_connections); close one and retry"
                ),
            );
            let _ = wire::send(sock.as_raw_fd(), &encode(&reply), &[]);
            log::warn!(
                "control socket: refused pid {} uid {}: too many connections",
                peer.pid,
                peer.uid
            );
            return;
        }
        let slot = self
            .conns
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.conns.len());
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            Tok::Conn(slot).token(),
            Interest::READABLE,
        ) {
            log::error!("control socket: cannot watch a new connection: {e}");
            return;
        }
        let conn = Conn {
            id: self.next_conn_id,
            sock,
            peer,
            hello: false,
            outbox: Default::default(),
            want_write: false,
            parked: false,
        };
        self.next_conn_id += 1;
        log::debug!(
            "connection {} from pid {} uid {}",
            conn.id,
            conn.peer.pid,
            conn.peer.uid
        );
        if slot == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[slot] = Some(conn);
        }
    }

    pub(super) fn on_conn(&mut self, i: usize, readable: bool, writable: bool) {
        if writable {
            self.flush_conn(i);
        }
        if !readable {
            return;
        }
        // Edge-triggered: read until the socket is empty.
        loop {
            let Some(conn) = self.conns.get(i).and_then(Option::as_ref) else {
                return;
            };
            match wire::recv(conn.sock.as_raw_fd()) {
                Ok(Some(p)) => {
                    let (reply, fds) = self.handle_packet(i, p);
                    self.reply(i, &reply, fds);
                }
                Ok(None) => {
                    self.close_conn(i);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("connection {}: receive failed: {e}; closing it", conn.id);
                    self.close_conn(i);
                    return;
                }
            }
        }
    }

    fn handle_packet(&mut self, i: usize, p: Packet) -> (Reply, Vec<OwnedFd>) {
        // Every refusal drops `p.fds`, which closes every fd the packet
        // carried; only a route that is wired adopts them.
        let kinds: Vec<FdKind> = p
            .fds
            .iter()
            .map(|f| FdKind::of(f.as_raw_fd()).unwrap_or(FdKind::Other("unreadable".into())))
            .collect();
        let meta = PacketMeta {
            data: &p.data,
            truncated: p.truncated,
            ctrl_truncated: p.ctrl_truncated,
            fd_kinds: &kinds,
            hello_done: self.conns[i].as_ref().is_some_and(|c| c.hello),
        };
        let req = match validate(&meta) {
            Ok(r) => r,
            Err(error) => return (Reply::Error { error }, Vec::new()),
        };
        let err = |code, m: String| (Reply::error(code, m), Vec::new());
        match req {
            Request::Hello { version, client } => {
                if version < 1 {
                    return err(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "protocol version {version} is not supported; this daemon speaks 1"
                        ),
                    );
                }
                self.park_conn(i);
                if let Some(c) = self.conns[i].as_mut() {
                    c.hello = true;
                    log::debug!(
                        "connection {}: hello from {}",
                        c.id,
                        client.as_deref().unwrap_or("a client")
                    );
                }
                (
                    Reply::Hello {
                        version: version.min(PROTOCOL_VERSION),
                        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
                        capabilities: self.caps,
                    },
                    Vec::new(),
                )
            }
            Request::Attach {
                device,
                irqchip,
                mode,
                ..
            } => self.attach(i, &device, irqchip, mode, p.fds),
            Request::Detach { device } => (self.detach_request(i, &device), Vec::new()),
            Request::Status {} => (self.status_reply(), Vec::new()),
            Request::Trigger { device } => (self.trigger(i, &device), Vec::new()),
        }
    }

    fn find(&self, name: &str) -> Result<usize, Reply> {
        let live = |d: &&super::devices::DeviceSlot| d.state != DeviceState::Removed;
        self.devices
            .iter()
            .position(|d| d.cfg.name == name && d.state != DeviceState::Removed)
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .devices
                    .iter()
                    .filter(live)
                    .map(|d| d.cfg.name.as_str())
                    .collect();
                Reply::error(
                    ErrorCode::UnknownDevice,
                    format!("no device named `{name}`; configured: {}", known.join(", ")),
                )
            })
    }

    fn attach(
        &mut self,
        ci: usize,
        name: &str,
        irqchip: route::Irqchip,
        want: crate::control::proto::ModeRequest,
        fds: Vec<OwnedFd>,
    ) -> (Reply, Vec<OwnedFd>) {
        let fail = |r: Reply| (r, Vec::new());
        // The fds' count and kinds were checked in `validate`.
        let di = match self.find(name) {
            Ok(d) => d,
            Err(r) => return fail(r),
        };
        let Some(conn) = self.conns[ci].as_ref() else {
            return fail(Reply::error(ErrorCode::BadRequest, "connection gone"));
        };
        let (conn_id, peer) = (conn.id, conn.peer.clone());
        let dev = &self.devices[di];
        if !peer.may_attach(&dev.cfg) {
            log::warn!(
                "{}: refused attach by pid {} uid {}: not on the allow lists",
                dev.tag(),
                peer.pid,
                peer.uid
            );
            return fail(Reply::error(
                ErrorCode::NotAuthorized,
                format!(
                    "{}: uid {} (gid {}) may not attach it; add the uid to allow_uids or a group to allow_gids in the device's config",
                    name, peer.uid, peer.gid
                ),
            ));
        }
        if let Some(h) = dev.holder {
            return fail(Reply::error(
                ErrorCode::Busy,
                format!(
                    "{name}: already attached by pid {} (uid {}); one VMM at a time",
                    h.owner.pid, h.owner.uid
                ),
            ));
        }
        if dev.backend.is_none() {
            let why = dev.failure.clone().unwrap_or_else(|| "not open".into());
            return fail(Reply::error(
                ErrorCode::DeviceError,
                format!("{name}: unusable: {why}"),
            ));
        }
        let (mode, reason) = match choose_mode(&dev.cfg, want, irqchip, &self.caps) {
            Ok(m) => m,
            Err(r) => return fail(r),
        };
        let mut it = fds.into_iter();
        let (Some(irq), Some(resample)) = (it.next(), it.next()) else {
            return fail(Reply::error(ErrorCode::BadFdCount, "attach takes two fds"));
        };
        let (irq, resample) = (owned_into_eventfd(irq), owned_into_eventfd(resample));
        let relay_cfg = self.devices[di].cfg.relay.clone();
        let registry = self.poll.registry();
        let mut reg = super::LoopRegistrar { registry, slot: di };
        let dev = &mut self.devices[di];
        let Some(backend) = dev.backend.as_mut() else {
            return fail(Reply::error(
                ErrorCode::DeviceError,
                format!("{name}: not open"),
            ));
        };
        let route = match route::attach(backend.as_mut(), mode, irq, resample, &relay_cfg, &mut reg)
        {
            Ok(r) => r,
            Err(e) => {
                log::error!("{}: {}", dev.tag(), chain(&e));
                return fail(Reply::error(ErrorCode::DeviceError, chain(&e)));
            }
        };
        let device_fds = match backend.vmm_fds() {
            Ok(f) => f,
            Err(e) => {
                let mut route = route;
                for u in route.teardown(backend.as_mut(), &mut reg) {
                    log::warn!("{}", chain(&u));
                }
                return fail(Reply::error(
                    ErrorCode::ResourceExhausted,
                    format!("{name}: could not duplicate the device fds for the reply: {e}"),
                ));
            }
        };
        let facts = backend.facts();
        let roles = if matches!(dev.cfg.pci, crate::config::PciAddr::Sim(_)) {
            vec!["ack".to_string(), "doorbell".to_string()]
        } else {
            vec!["vfio_device".to_string(), "vfio_container".to_string()]
        };
        dev.route = Some(route);
        dev.health.reset(backend.host_count());
        dev.irqchip = Some(irqchip);
        dev.state = DeviceState::Attached;
        dev.attaches += 1;
        dev.holder = Some(Holder {
            conn_id,
            owner: Owner {
                pid: peer.pid,
                uid: peer.uid,
                gid: peer.gid,
            },
        });
        log::info!(
            "{}: attached in {mode} mode ({irqchip} irqchip) by pid {} uid {}",
            dev.tag(),
            peer.pid,
            peer.uid
        );
        let reply = Reply::Attached {
            device: name.to_string(),
            mode,
            reason,
            facts,
            fds: roles,
        };
        self.park_route(di);
        self.save_state();
        self.update_status();
        (reply, device_fds)
    }

    fn owned_by(&self, ci: usize, di: usize) -> bool {
        let conn_id = self.conns[ci].as_ref().map(|c| c.id);
        self.devices[di].holder.map(|h| h.conn_id) == conn_id
    }

    fn detach_request(&mut self, ci: usize, name: &str) -> Reply {
        let di = match self.find(name) {
            Ok(d) => d,
            Err(r) => return r,
        };
        if !self.owned_by(ci, di) {
            return Reply::error(
                ErrorCode::NotAttached,
                format!("{name}: not attached by this connection; only its owner can detach it"),
            );
        }
        self.detach_device(di, "detach requested by its owner");
        Reply::Detached {
            device: name.to_string(),
        }
    }

    /// Tears a device's route down and frees it for the next VMM.
    pub(super) fn detach_device(&mut self, di: usize, why: &str) {
        let registry = self.poll.registry();
        let mut reg = super::LoopRegistrar { registry, slot: di };
        let dev = &mut self.devices[di];
        let Some(mut route) = dev.route.take() else {
            return;
        };
        dev.irqchip = None;
        if let Some(b) = dev.backend.as_mut() {
            for e in route.teardown(b.as_mut(), &mut reg) {
                log::warn!("{}", chain(&e));
            }
            if let Err(e) = b.reset() {
                log::warn!("{}", chain(&e));
            }
        }
        dev.holder = None;
        dev.state = DeviceState::Detached;
        log::info!("{}: detached ({why})", dev.tag());
        self.unpark_route(di);
        self.save_state();
        self.update_status();
    }

    fn trigger(&mut self, ci: usize, name: &str) -> Reply {
        let di = match self.find(name) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let is_root = self.conns[ci].as_ref().is_some_and(|c| c.peer.uid == 0);
        if !self.owned_by(ci, di) && !is_root {
            return Reply::error(
                ErrorCode::NotAttached,
                format!("{name}: only its owner (or root) may fire its trigger; attach it first"),
            );
        }
        let dev = &mut self.devices[di];
        match dev.backend.as_mut().map(|b| b.loopback()) {
            Some(Ok(())) => Reply::Triggered {
                device: name.to_string(),
            },
            Some(Err(e)) => Reply::error(ErrorCode::DeviceError, chain(&e)),
            None => Reply::error(ErrorCode::DeviceError, format!("{name}: not open")),
        }
    }

    pub(super) fn status_reply(&self) -> Reply {
        Reply::Status {
            daemon: DaemonStatus {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                uptime_s: self.started.elapsed().as_secs_f64(),
                loop_wakeups: self.stats.wakeups,
                connections: self.conns.iter().filter(|c| c.is_some()).count(),
                fds: crate::util::proc::fd_count(None).unwrap_or(0),
                capabilities: self.caps,
            },
            devices: self
                .devices
                .iter()
                .filter(|d| d.state != DeviceState::Removed)
                .map(|d| d.status())
                .collect(),
        }
    }

    fn reply(&mut self, ci: usize, reply: &Reply, fds: Vec<OwnedFd>) {
        self.push(
            ci,
            Outgoing {
                data: encode(reply),
                fds,
            },
        );
    }

    pub(super) fn send_event(&mut self, di: usize, ev: &Event) {
        let Some(h) = self.devices[di].holder else {
            return;
        };
        let Some(ci) = self
            .conns
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.id == h.conn_id))
        else {
            return;
        };
        let data = serde_json::to_vec(ev).unwrap_or_default();
        self.push(
            ci,
            Outgoing {
                data,
                fds: Vec::new(),
            },
        );
    }

    fn push(&mut self, ci: usize, out: Outgoing) {
        let Some(conn) = self.conns.get_mut(ci).and_then(Option::as_mut) else {
            return;
        };
        match conn.push(out) {
            Ok(SendState::Drained) => {}
            Ok(SendState::Pending) => self.want_write(ci, true),
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) {
                    log::debug!("connection {} (pid {}): peer gone", conn.id, conn.peer.pid);
                } else {
                    log::warn!(
                        "connection {} (pid {}): {e}; closing it",
                        conn.id,
                        conn.peer.pid
                    );
                }
                self.close_conn(ci);
            }
        }
    }

    fn flush_conn(&mut self, ci: usize) {
        let Some(conn) = self.conns.get_mut(ci).and_then(Option::as_mut) else {
            return;
        };
        match conn.flush() {
            Ok(SendState::Drained) => self.want_write(ci, false),
            Ok(SendState::Pending) => {}
            Err(_) => self.close_conn(ci),
        }
    }

    fn want_write(&mut self, ci: usize, on: bool) {
        let Some(conn) = self.conns.get_mut(ci).and_then(Option::as_mut) else {
            return;
        };
        if conn.want_write == on {
            return;
        }
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if self
            .poll
            .registry()
            .reregister(
                &mut SourceFd(&conn.sock.as_raw_fd()),
                Tok::Conn(ci).token(),
                interest,
            )
            .is_ok()
        {
            conn.want_write = on;
        }
    }

    /// Closes a connection and detaches every device it held.
    pub(super) fn close_conn(&mut self, ci: usize) {
        let Some(conn) = self.conns.get_mut(ci).and_then(Option::take) else {
            return;
        };
        let _ = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&conn.sock.as_raw_fd()));
        let held: Vec<usize> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.holder.is_some_and(|h| h.conn_id == conn.id))
            .map(|(i, _)| i)
            .collect();
        for di in held {
            self.detach_device(di, &format!("its VMM (pid {}) disconnected", conn.peer.pid));
        }
        if conn.parked {
            self.fdstore.remove(&super::persist::conn_fd_name(conn.id));
            self.save_state();
        }
        log::debug!("connection {} closed", conn.id);
    }
}

fn encode(r: &Reply) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_else(|_| b"{\"reply\":\"error\"}".to_vec())
}

pub use crate::util::error::chain;

#[allow(unsafe_code)]
fn adopt(raw: std::os::fd::RawFd) -> OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: accept4 just returned this fd; nothing else refers to it.
    unsafe { OwnedFd::from_raw_fd(raw) }
}
