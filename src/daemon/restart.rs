//! Restart without loss: what the daemon parks in systemd's fd store as it
//! goes, and how the next daemon takes it all back.
//!
//! On restart the routes are rebuilt from their fds, not re-wired: the
//! kernel path is live (a VFIO group cannot even be opened twice), so no step
//! runs again. Each route is re-armed with one unmask: an EOI that arrived
//! while no daemon was there to carry it is not lost, and a relay's pending
//! trigger is read as soon as its eventfd is back in the loop.

use std::os::fd::AsRawFd;

use super::conn::Conn;
use super::devices::{DeviceState, Holder};
use super::persist::{
    conn_fd_name, route_fd_name, ConnRecord, RouteRecord, StateFile, StateRecord, STATE_VERSION,
};
use super::{Daemon, LoopRegistrar, Tok};
use crate::control::auth::Peer;
use crate::route::{AdoptedFds, Mode, RelayRegistrar, Route};
use crate::systemd::Inherited;
use crate::util::fd::{owned_into_eventfd, FdKind};
use crate::vfio::ParkedFd;
use mio::unix::SourceFd;
use mio::Interest;

/// Takes the state record a previous daemon parked, if any.
pub(super) fn take_record(inherited: &mut Inherited) -> Option<(StateFile, StateRecord)> {
    let fd = inherited.take("state")?;
    let mut file = StateFile::adopt(fd);
    match file.read() {
        Ok(r) if r.version == STATE_VERSION => Some((file, r)),
        Ok(r) => {
            log::error!("restart: the parked state has layout {}, this daemon reads {STATE_VERSION}; starting fresh", r.version);
            None
        }
        Err(e) => {
            log::error!("restart: the parked state cannot be read ({e}); starting fresh");
            None
        }
    }
}

impl Daemon {
    /// Rebuilds connections and routes from a parked record, drops whatever
    /// fds nothing claimed, and starts a new record.
    pub(super) fn adopt(
        &mut self,
        record: Option<(StateFile, StateRecord)>,
        mut inherited: Inherited,
    ) {
        if let Some((file, rec)) = record {
            self.state_file = Some(file);
            self.next_conn_id = self.next_conn_id.max(rec.next_conn_id);
            for c in &rec.conns {
                self.adopt_conn(c, &mut inherited);
            }
            for r in &rec.routes {
                self.adopt_route(r, &mut inherited);
            }
            log::info!(
                "restart: took back {} connection(s) and {} route(s) from the fd store",
                self.conns.iter().flatten().count(),
                self.devices.iter().filter(|d| d.route.is_some()).count()
            );
        }
        for name in inherited.names() {
            log::warn!("restart: dropping parked fd `{name}`, which nothing claims");
            self.fdstore.remove(&name);
        }
        if self.state_file.is_none() && self.fdstore.active() {
            match StateFile::create() {
                Ok(f) => {
                    self.fdstore.store("state", f.fd());
                    self.state_file = Some(f);
                }
                Err(e) => {
                    log::warn!("fd store: no state record ({e}); a restart will drop every route")
                }
            }
        }
        self.save_state();
    }

    fn adopt_conn(&mut self, c: &ConnRecord, inherited: &mut Inherited) {
        let Some(sock) = inherited.take(&conn_fd_name(c.id)) else {
            log::warn!(
                "restart: connection {} (pid {}) was not parked; its devices will be detached",
                c.id,
                c.pid
            );
            return;
        };
        let slot = self.conns.len();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            Tok::Conn(slot).token(),
            Interest::READABLE,
        ) {
            log::error!("restart: cannot watch connection {}: {e}", c.id);
            return;
        }
        self.conns.push(Some(Conn {
            id: c.id,
            sock,
            peer: Peer {
                pid: c.pid,
                uid: c.uid,
                gid: c.gid,
                groups: c.groups.clone(),
            },
            hello: c.hello,
            outbox: Default::default(),
            want_write: false,
            parked: true,
        }));
    }

    fn adopt_route(&mut self, r: &RouteRecord, inherited: &mut Inherited) {
        let Some(di) = self
            .devices
            .iter()
            .position(|d| d.cfg.name == r.device && d.state != DeviceState::Removed)
        else {
            log::warn!(
                "restart: device {} is no longer configured; its route is dropped",
                r.device
            );
            return;
        };
        let tag = self.devices[di].tag();
        let mut take = |role: ParkedFd| {
            inherited
                .take(&route_fd_name(&r.device, role))
                .filter(|f| FdKind::of(f.as_raw_fd()).ok() == Some(FdKind::EventFd))
                .map(owned_into_eventfd)
        };
        let (irq, resample) = (take(ParkedFd::Irq), take(ParkedFd::Resample));
        let relay = match r.mode {
            Mode::Relay => match (take(ParkedFd::Trigger), take(ParkedFd::Unmask)) {
                (Some(t), Some(u)) => Some((t, u)),
                _ => None,
            },
            Mode::Direct => None,
        };
        let owner_conn = self.conns.iter().flatten().any(|c| c.id == r.conn_id);
        let dev = &self.devices[di];
        let kept_open = !dev
            .backend
            .as_ref()
            .is_some_and(|b| b.store_fds().is_empty());
        let (Some(irq), Some(resample), true, true) = (
            irq,
            resample,
            r.mode == Mode::Direct || relay.is_some(),
            owner_conn && kept_open,
        ) else {
            log::warn!("{tag}: restart: the route's fds, its device or its VMM's connection did not survive; it is dropped");
            for role in ParkedFd::ALL {
                self.fdstore.remove(&route_fd_name(&r.device, role));
            }
            return;
        };
        let cfg = dev.cfg.relay.clone();
        let route = Route::adopt(
            &r.device,
            AdoptedFds {
                irq,
                resample,
                relay,
            },
            &cfg,
        );
        if let Some(path) = route.relay() {
            let mut reg = LoopRegistrar {
                registry: self.poll.registry(),
                slot: di,
            };
            if let Err(e) = reg.register(path) {
                log::error!("{tag}: restart: cannot put the relay back in the event loop: {e}; the route is dropped");
                return;
            }
        }
        let dev = &mut self.devices[di];
        dev.route = Some(route);
        dev.irqchip = Some(r.irqchip);
        dev.holder = Some(Holder {
            conn_id: r.conn_id,
            owner: r.owner,
        });
        dev.state = DeviceState::Attached;
        // One unmask re-arms the line: an EOI that came while no daemon
        // carried it must not leave INTx masked for good.
        if let Some(b) = dev.backend.as_mut() {
            if let Err(e) = b.unmask() {
                log::warn!(
                    "{tag}: restart: re-arming unmask failed: {}",
                    super::requests::chain(&e)
                );
            }
        }
        log::info!(
            "{tag}: restart: {} route taken back for pid {}",
            r.mode,
            r.owner.pid
        );
    }

    /// Parks a connection once it has said hello.
    pub(super) fn park_conn(&mut self, ci: usize) {
        if !self.fdstore.active() {
            return;
        }
        let Some(c) = self.conns.get_mut(ci).and_then(Option::as_mut) else {
            return;
        };
        if !c.parked {
            self.fdstore
                .store(&conn_fd_name(c.id), std::os::fd::AsFd::as_fd(&c.sock));
            c.parked = true;
        }
    }

    /// Parks every fd of a device's live route and what keeps the device open.
    pub(super) fn park_route(&mut self, di: usize) {
        if !self.fdstore.active() {
            return;
        }
        let dev = &self.devices[di];
        let name = dev.cfg.name.clone();
        let mut fds: Vec<(String, std::os::fd::BorrowedFd<'_>)> = Vec::new();
        if let Some(r) = &dev.route {
            fds.extend(
                r.fds()
                    .into_iter()
                    .map(|(role, fd)| (route_fd_name(&name, role), fd)),
            );
        }
        if let Some(b) = &dev.backend {
            fds.extend(
                b.store_fds()
                    .into_iter()
                    .map(|(role, fd)| (route_fd_name(&name, role), fd)),
            );
        }
        for (n, fd) in fds {
            self.fdstore.store(&n, fd);
        }
    }

    /// Takes a detached device's fds out of the store.
    pub(super) fn unpark_route(&mut self, di: usize) {
        if !self.fdstore.active() {
            return;
        }
        let name = self.devices[di].cfg.name.clone();
        for role in ParkedFd::ALL {
            self.fdstore.remove(&route_fd_name(&name, role));
        }
    }

    /// Rewrites the state record.
    pub(super) fn save_state(&mut self) {
        let Some(file) = self.state_file.as_mut() else {
            return;
        };
        let rec = StateRecord {
            version: STATE_VERSION,
            next_conn_id: self.next_conn_id,
            conns: self
                .conns
                .iter()
                .flatten()
                .filter(|c| c.parked)
                .map(|c| ConnRecord {
                    id: c.id,
                    pid: c.peer.pid,
                    uid: c.peer.uid,
                    gid: c.peer.gid,
                    groups: c.peer.groups.clone(),
                    hello: c.hello,
                })
                .collect(),
            routes: self
                .devices
                .iter()
                .filter_map(|d| {
                    let (route, holder, irqchip) = (d.route.as_ref()?, d.holder?, d.irqchip?);
                    Some(RouteRecord {
                        device: d.cfg.name.clone(),
                        pci: d.cfg.pci.to_string(),
                        mode: route.mode(),
                        irqchip,
                        conn_id: holder.conn_id,
                        owner: holder.owner,
                    })
                })
                .collect(),
        };
        if let Err(e) = file.write(&rec) {
            log::warn!("fd store: could not write the state record: {e}");
        }
    }
}
