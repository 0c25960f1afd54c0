//! `attach`, `detach` and `trigger`: who may, which mode, the route, the
//! reply with the device fds, and the detach every path ends in.

use std::os::fd::OwnedFd;

use crate::config::DeviceConfig;
use crate::control::proto::{ErrorCode, ModeRequest, Owner, Reply};
use crate::daemon::device::{choose_mode, AttachOrigin, Attachment, Holder};
use crate::daemon::ownership::check_vmm_fds;
use crate::daemon::Daemon;
use crate::doctor::{self, Host};
use crate::route::{self, Irqchip, RouteError, Step, VmmLine};
use crate::util::error::chain;
use crate::util::fd::owned_into_eventfd;

impl Daemon {
    pub(super) fn attach(
        &mut self,
        ci: usize,
        name: &str,
        irqchip: Irqchip,
        want: ModeRequest,
        fds: Vec<OwnedFd>,
    ) -> (Reply, Vec<OwnedFd>) {
        let fail = |r: Reply| (r, Vec::new());
        // The fds' count and kinds were checked in `validate`.
        let di = match self.find(name) {
            Ok(d) => d,
            Err(r) => return fail(r),
        };
        let Some(conn) = self.conns.get(ci) else {
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
        if let Some(h) = dev.holder() {
            return fail(Reply::error(
                ErrorCode::Busy,
                format!(
                    "{name}: already attached by pid {} (uid {}); one VMM at a time",
                    h.owner.pid, h.owner.uid
                ),
            ));
        }
        // A device left unopened, or gone, is tried again first.
        self.retry_devices(Some(di), "attach");
        let dev = &self.devices[di];
        if dev.state.open().is_none() {
            let why = dev.state.error().unwrap_or("not open");
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
        if let Err(r) = check_vmm_fds(&irq, &resample) {
            log::warn!("{}: refused attach by pid {}: {r:?}", dev.tag(), peer.pid);
            return fail(r);
        }
        if let Err(r) = self.hand_off(di, peer.pid) {
            return fail(r);
        }
        let vmm = VmmLine {
            irq: owned_into_eventfd(irq),
            resample: owned_into_eventfd(resample),
        };
        let mut reg = self.lp.registrar(di);
        let dev = &mut self.devices[di];
        let tag = dev.tag();
        let Some(open) = dev.state.open_mut() else {
            return fail(Reply::error(
                ErrorCode::DeviceError,
                format!("{name}: not open"),
            ));
        };
        let backend = open.backend.as_mut();
        let mut route = match route::attach(backend, mode, vmm, &dev.cfg.relay, &mut reg) {
            Ok(r) => r,
            Err(e) => {
                let message = attach_error(&e, &dev.cfg, &self.binder.binder().host());
                log::error!("{tag}: {message}");
                return fail(Reply::error(ErrorCode::DeviceError, message));
            }
        };
        let device_fds = match backend.vmm_fds() {
            Ok(f) => f,
            Err(e) => {
                for u in route.teardown(backend) {
                    log::warn!("{}", chain(&u));
                }
                return fail(Reply::error(
                    ErrorCode::ResourceExhausted,
                    format!("{name}: could not duplicate the device fds for the reply: {e}"),
                ));
            }
        };
        let facts = backend.facts();
        let (roles, device_fds): (Vec<String>, Vec<OwnedFd>) = device_fds
            .into_iter()
            .map(|(role, fd)| (role.name().to_string(), fd))
            .unzip();
        let holder = Holder {
            conn_id,
            owner: Owner {
                pid: peer.pid,
                uid: peer.uid,
                gid: peer.gid,
            },
        };
        let att = Attachment {
            route,
            holder,
            irqchip,
        };
        if let Err(mut att) = dev.attach(att, AttachOrigin::Request) {
            // Checked above: the device is open and nobody holds it.
            if let Some(open) = dev.state.open_mut() {
                for u in att.route.teardown(open.backend.as_mut()) {
                    log::warn!("{}", chain(&u));
                }
            }
            return fail(Reply::error(ErrorCode::Busy, format!("{name}: not free")));
        }
        log::info!(
            "{tag}: attached in {mode} mode ({irqchip} irqchip) by pid {} uid {}",
            peer.pid,
            peer.uid
        );
        if let Some(open) = dev.state.open_mut().filter(|o| o.warning.is_some()) {
            // INTx is enabled now: the diagnosis sees whether vfio-pci shares
            // the line (which it does only with PCI 2.3 masking).
            let host = self.binder.binder().host();
            if doctor::shared_line_diagnosis(&host, name, dev.cfg.pci).is_none() {
                log::info!("{tag}: INTx enabled beside the line's other handlers: PCI 2.3 masking works; the open's shared-line warning is cleared");
                open.warning = None;
            }
        }
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
        let conn_id = self.conns.get(ci).map(|c| c.id);
        self.devices[di].holder().map(|h| h.conn_id) == conn_id
    }

    pub(super) fn detach_request(&mut self, ci: usize, name: &str) -> Reply {
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
    pub(in crate::daemon) fn detach_device(&mut self, di: usize, why: &str) {
        let dev = &mut self.devices[di];
        let tag = dev.tag();
        if dev.detach(&tag).is_none() {
            return;
        }
        log::info!("{tag}: detached ({why})");
        if let Some(open) = dev.state.open_mut() {
            open.backend.release_fds();
        }
        self.unpark_route(di);
        self.save_state();
        self.update_status();
    }

    pub(super) fn trigger(&mut self, ci: usize, name: &str) -> Reply {
        let di = match self.find(name) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let is_root = self.conns.get(ci).is_some_and(|c| c.peer.uid == 0);
        if !self.owned_by(ci, di) && !is_root {
            return Reply::error(
                ErrorCode::NotAttached,
                format!("{name}: only its owner (or root) may fire its trigger; attach it first"),
            );
        }
        match self.devices[di]
            .state
            .open_mut()
            .map(|o| o.backend.loopback())
        {
            Some(Ok(())) => Reply::Triggered {
                device: name.to_string(),
            },
            Some(Err(e)) => Reply::error(ErrorCode::DeviceError, chain(&e)),
            None => Reply::error(ErrorCode::DeviceError, format!("{name}: not open")),
        }
    }
}

/// The message of an attach whose route could not be set up (its steps
/// rolled back). An INTx enable refused with `EBUSY` is the shared-line
/// failure: the message is its diagnosis (`doctor::ebusy_diagnosis`: the
/// other devices and drivers on the host line, the fixes), read from `host`
/// now; any other failure is its error chain.
pub(crate) fn attach_error(e: &RouteError, cfg: &DeviceConfig, host: &Host) -> String {
    let busy =
        matches!(e, RouteError::Intx { step: Step::EnableTrigger, source, .. } if source.is_busy());
    match busy
        .then(|| doctor::ebusy_diagnosis(host, &cfg.name, cfg.pci))
        .flatten()
    {
        Some(f) => format!(
            "{}. (The attach failed at step `{}` with EBUSY; earlier steps were rolled back and the device stays free.)",
            f.message(),
            Step::EnableTrigger.describe()
        ),
        None => chain(e),
    }
}
