//! Restart without loss: what the daemon parks in systemd's fd store as it
//! goes, and how the next daemon takes it all back.
//!
//! On restart the routes are rebuilt from their fds, not re-wired: the
//! kernel path is live (a VFIO group cannot even be opened twice), so no step
//! runs again. Each route is re-armed with one unmask: an EOI that arrived
//! while no daemon was there to carry it is not lost, and a relay's pending
//! trigger is read as soon as its eventfd is back in the loop.

mod persist;

pub use persist::{conn_fd_name, route_fd_name, RelayPark, StateFile, StateRecord};

use std::os::fd::AsRawFd;

use super::conns::Conn;
use super::device::{AttachOrigin, Attachment, Holder};
use super::Daemon;
use crate::control::auth::Peer;
use crate::route::{AdoptedFds, Mode, Route, VfioLine, VmmLine};
use crate::systemd::Inherited;
use crate::util::error::chain;
use crate::util::fd::{eventfd_count, owned_into_eventfd, FdKind};
use crate::vfio::ParkedFd;
use persist::{ConnRecord, RouteRecord, WritePause, STATE_VERSION};

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

/// Empties an adopted relay route's resample eventfd before it joins the
/// loop, and says whether the interrupt sent before a planned restart is
/// still waiting for its EOI. The relay never reads that eventfd (each
/// EOI is one edge-triggered event), so its count is the route's whole
/// history, and a count present at registration would come as one event
/// that is no EOI of anything outstanding. The EOIs it holds from the gap
/// are answered by the unmask that re-arms the route. A count above zero
/// is read without blocking, whatever the VMM set on the fd.
fn take_resample_history(
    resample: &vmm_sys_util::eventfd::EventFd,
    park: Option<RelayPark>,
) -> bool {
    let count = eventfd_count(resample.as_raw_fd()).unwrap_or(0);
    if count > 0 {
        let _ = resample.read();
    }
    park.is_some_and(|p| p.eoi_pending && count == p.resample_count)
}

/// A relay's state for the record: only at a planned restart's park, with
/// the resample count read before its last turn.
fn relay_park(route: &Route, park_count: Option<u64>) -> Option<RelayPark> {
    let path = route.relay()?;
    Some(RelayPark {
        eoi_pending: path.eoi_pending() && !path.backing_off(),
        resample_count: park_count?,
    })
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
            self.sd.state_file = Some(file);
            self.conns.skip_ids_below(rec.next_conn_id);
            for c in &rec.conns {
                self.adopt_conn(c, &mut inherited);
            }
            for r in &rec.routes {
                self.adopt_route(r, &mut inherited);
            }
            log::info!(
                "restart: took back {} connection(s) and {} route(s) from the fd store",
                self.conns.open(),
                self.devices.iter().filter(|d| d.route().is_some()).count()
            );
        }
        for name in inherited.names() {
            log::warn!("restart: dropping parked fd `{name}`, which nothing claims");
            self.sd.fdstore.remove(&name);
        }
        if self.sd.state_file.is_none() && self.sd.fdstore.active() {
            match StateFile::create() {
                Ok(f) => {
                    self.sd.fdstore.store("state", f.fd());
                    self.sd.state_file = Some(f);
                }
                Err(e) => {
                    log::warn!("fd store: no state record ({e}); a restart will drop every route")
                }
            }
        }
        if let Some(f) = self.sd.state_file.as_mut() {
            f.set_pause(WritePause::from_env(self.test_hooks));
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
        let conn = Conn {
            id: c.id,
            sock,
            peer: Peer {
                pid: c.pid,
                uid: c.uid,
                gid: c.gid,
                groups: c.groups.clone(),
            },
            hello: c.hello,
            version: c.version,
            outbox: Default::default(),
            want_write: false,
            parked: true,
        };
        if let Err(e) = self.add_to_table(conn) {
            log::error!("restart: cannot watch connection {}: {e}", c.id);
        }
    }

    fn adopt_route(&mut self, r: &RouteRecord, inherited: &mut Inherited) {
        let Some(di) = self
            .devices
            .iter()
            .position(|d| d.cfg.name == r.device && !d.is_removed())
        else {
            log::warn!(
                "restart: device {} is no longer configured; its route is dropped",
                r.device
            );
            return;
        };
        let tag = self.devices[di].tag();
        let configured = self.devices[di].cfg.pci.to_string();
        if r.pci != configured {
            log::warn!("{tag}: restart: the parked route was for PCI address {}, but {} is now configured at {configured}; the route is dropped (its VMM must attach again)", r.pci, r.device);
            self.forget_route_fds(&r.device);
            return;
        }
        let mut take = |role: ParkedFd| {
            inherited
                .take(&route_fd_name(&r.device, role))
                .filter(|f| FdKind::of(f.as_raw_fd()).ok() == Some(FdKind::EventFd))
                .map(owned_into_eventfd)
        };
        let (irq, resample) = (take(ParkedFd::Irq), take(ParkedFd::Resample));
        let outstanding = match (r.mode, &resample) {
            (Mode::Relay, Some(ev)) => take_resample_history(ev, r.relay),
            _ => false,
        };
        let vfio = match r.mode {
            Mode::Relay => match (take(ParkedFd::Trigger), take(ParkedFd::Unmask)) {
                (Some(trigger), Some(unmask)) => Some(VfioLine { trigger, unmask }),
                _ => None,
            },
            Mode::Direct => None,
        };
        let owner_conn = self.conns.iter().any(|c| c.id == r.conn_id);
        let dev = &self.devices[di];
        let kept_open = !dev
            .state
            .open()
            .is_some_and(|o| o.backend.store_fds().is_empty());
        let (Some(irq), Some(resample), true, true) = (
            irq,
            resample,
            r.mode == Mode::Direct || vfio.is_some(),
            owner_conn && kept_open,
        ) else {
            log::warn!("{tag}: restart: the route's fds, its device or its VMM's connection did not survive; it is dropped");
            self.forget_route_fds(&r.device);
            return;
        };
        let fds = AdoptedFds {
            vmm: VmmLine { irq, resample },
            vfio,
        };
        let mut reg = self.lp.registrar(di);
        let route = match Route::adopt(&r.device, fds, &dev.cfg.relay, &mut reg) {
            Ok(route) => route,
            Err(e) => {
                log::error!("{tag}: restart: cannot put the relay back in the event loop: {}; the route is dropped", chain(&e));
                self.forget_route_fds(&r.device);
                return;
            }
        };
        let att = Attachment {
            route,
            holder: Holder {
                conn_id: r.conn_id,
                owner: r.owner,
            },
            irqchip: r.irqchip,
        };
        let dev = &mut self.devices[di];
        if let Err(att) = dev.attach(att, AttachOrigin::Restart) {
            log::warn!("{tag}: restart: the device did not open again; its route is dropped");
            att.route.park();
            // Out of the store too: a parked VFIO device fd left there keeps
            // its group open in systemd, so the device's next open (at the
            // next attach or reload) would fail with EBUSY for good.
            self.forget_route_fds(&r.device);
            return;
        }
        // A route its owner had suspended stays so (and is not re-armed:
        // its INTx is off); `resume_intx` brings it back.
        if dev.adopt_intx_state(r.intx) {
            log::info!(
                "{tag}: restart: {} route taken back suspended for pid {}",
                r.mode,
                r.owner.pid
            );
            return;
        }
        if let (true, Some((_, path))) = (outstanding, dev.state.relay_mut()) {
            // The guest has yet to EOI the interrupt the last daemon sent:
            // its EOI unmasks, as if no restart had come between (an unmask
            // now would send the same interrupt twice). The EOI watchdog
            // covers one that never comes.
            let now = std::time::Instant::now();
            path.adopt_outstanding(now);
            self.lp.timers.scan_soon(now);
        } else if let Some(open) = dev.state.open_mut() {
            // One unmask re-arms the line: an EOI that came while no daemon
            // carried it must not leave INTx masked for good.
            if let Err(e) = open.backend.unmask() {
                log::warn!("{tag}: restart: re-arming unmask failed: {}", chain(&e));
            }
        }
        log::info!(
            "{tag}: restart: {} route taken back for pid {}",
            r.mode,
            r.owner.pid
        );
    }

    /// Each device's relay resample count (`None`: no relay route).
    pub(super) fn resample_counts(&self) -> Vec<Option<u64>> {
        self.devices
            .iter()
            .map(|d| {
                let path = d.state.attachment()?.route.relay()?;
                eventfd_count(path.vmm().resample.as_raw_fd())
            })
            .collect()
    }

    /// Takes every fd a device may have parked out of the store.
    fn forget_route_fds(&mut self, device: &str) {
        for role in ParkedFd::ALL {
            self.sd.fdstore.remove(&route_fd_name(device, role));
        }
    }

    /// Parks a connection once it has said hello.
    pub(super) fn park_conn(&mut self, ci: usize) {
        if !self.sd.fdstore.active() {
            return;
        }
        let Some(c) = self.conns.get_mut(ci) else {
            return;
        };
        if !c.parked {
            self.sd
                .fdstore
                .store(&conn_fd_name(c.id), std::os::fd::AsFd::as_fd(&c.sock));
            c.parked = true;
        }
    }

    /// Parks every fd of a device's live route and what keeps the device open.
    pub(super) fn park_route(&mut self, di: usize) {
        if !self.sd.fdstore.active() {
            return;
        }
        let dev = &self.devices[di];
        let name = dev.cfg.name.clone();
        let mut fds: Vec<(String, std::os::fd::BorrowedFd<'_>)> = Vec::new();
        if let Some(r) = dev.route() {
            fds.extend(
                r.fds()
                    .into_iter()
                    .map(|(role, fd)| (route_fd_name(&name, role), fd)),
            );
        }
        if let Some(o) = dev.state.open() {
            fds.extend(
                o.backend
                    .store_fds()
                    .into_iter()
                    .map(|(role, fd)| (route_fd_name(&name, role), fd)),
            );
        }
        for (n, fd) in fds {
            self.sd.fdstore.store(&n, fd);
        }
    }

    /// Takes a detached device's fds out of the store.
    pub(super) fn unpark_route(&mut self, di: usize) {
        if !self.sd.fdstore.active() {
            return;
        }
        let name = self.devices[di].cfg.name.clone();
        self.forget_route_fds(&name);
    }

    /// Rewrites the state record.
    pub(super) fn save_state(&mut self) {
        let park = self.admin.park_counts.clone();
        let Some(file) = self.sd.state_file.as_mut() else {
            return;
        };
        let rec = StateRecord {
            version: STATE_VERSION,
            next_conn_id: self.conns.next_id(),
            conns: self
                .conns
                .iter()
                .filter(|c| c.parked)
                .map(|c| ConnRecord {
                    id: c.id,
                    pid: c.peer.pid,
                    uid: c.peer.uid,
                    gid: c.peer.gid,
                    groups: c.peer.groups.clone(),
                    hello: c.hello,
                    version: c.version,
                })
                .collect(),
            routes: self
                .devices
                .iter()
                .enumerate()
                .filter_map(|(i, d)| {
                    let att = d.state.attachment()?;
                    Some(RouteRecord {
                        device: d.cfg.name.clone(),
                        pci: d.cfg.pci.to_string(),
                        mode: att.route.mode(),
                        irqchip: att.irqchip,
                        conn_id: att.holder.conn_id,
                        owner: att.holder.owner,
                        intx: att.route.intx(),
                        relay: relay_park(&att.route, park.get(i).copied().flatten()),
                    })
                })
                .collect(),
        };
        if let Err(e) = file.write(&rec) {
            log::warn!("fd store: could not write the state record: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::util::fd::new_eventfd;

    fn count(ev: &vmm_sys_util::eventfd::EventFd) -> u64 {
        eventfd_count(ev.as_raw_fd()).unwrap()
    }

    #[test]
    fn adoption_empties_the_resample_history_and_keeps_an_outstanding_eoi_only_without_one_since() {
        let park = |eoi_pending, resample_count| {
            Some(RelayPark {
                eoi_pending,
                resample_count,
            })
        };
        // Awaiting its EOI at the park, none since: outstanding.
        let ev = new_eventfd().unwrap();
        ev.write(7).unwrap();
        assert!(take_resample_history(&ev, park(true, 7)));
        assert_eq!(count(&ev), 0, "the history is gone before registration");
        // The EOI came while no daemon ran: the adoption's unmask answers it.
        ev.write(8).unwrap();
        assert!(!take_resample_history(&ev, park(true, 7)));
        // Nothing outstanding, or a crash (no park state): unmask.
        ev.write(3).unwrap();
        assert!(!take_resample_history(&ev, park(false, 3)));
        assert!(!take_resample_history(&ev, None));
        // An empty eventfd is not read (a blocking one would block).
        assert!(take_resample_history(&ev, park(true, 0)));
    }
}
