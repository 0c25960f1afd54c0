//! What a peer's fds may be, and when a device may pass to a new owner.
//!
//! - **A peer's eventfds never block the daemon.** `attach` refuses an
//!   eventfd without `O_NONBLOCK` (`blocking_eventfd`) and the same eventfd
//!   passed as both `irq` and `resample` (`same_eventfd`: a self-EOI loop).
//!   The health scan looks at the flag again once a second and detaches a
//!   route whose VMM cleared it. A write to a peer's fd that cannot complete
//!   ends that device's attachment, with a `device_gone` to its owner.
//! - **A device passes to a new owner clean.** No attach is granted while a
//!   process other than the daemon, the requester and the service manager
//!   holds one of the device fds handed out before (`device_held`, naming
//!   the pid): compared with `kcmp(KCMP_FILE)` over `/proc/*/fd`. Then the
//!   backend's hand-off gives the new owner fresh emulated-device fds, or an
//!   empty IOMMU context.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::Daemon;
use crate::control::proto::{ErrorCode, Event, Reply};
use crate::route::Route;
use crate::util::fd::{borrow_eventfd, is_nonblocking};
use crate::util::kcmp::{other_holders, same_file_here};

/// Checks the VMM's two eventfds before anything uses them: both
/// non-blocking, and two different files.
pub(super) fn check_vmm_fds(irq: &OwnedFd, resample: &OwnedFd) -> Result<(), Reply> {
    for (role, fd) in [("irq", irq), ("resample", resample)] {
        match is_nonblocking(fd.as_fd()) {
            Ok(true) => {}
            Ok(false) => {
                return Err(Reply::error(
                    ErrorCode::BlockingEventfd,
                    format!("the {role} eventfd is blocking: intxd never waits on a VMM's fd, so it takes only non-blocking ones; create it with EFD_NONBLOCK (or set O_NONBLOCK with fcntl F_SETFL); all fds were closed"),
                ))
            }
            Err(e) => {
                return Err(Reply::error(
                    ErrorCode::BadFdKind,
                    format!("the {role} fd's flags could not be read (fcntl F_GETFL): {e}; all fds were closed"),
                ))
            }
        }
    }
    if same_file_here(irq.as_fd(), resample.as_fd()).unwrap_or(false) {
        return Err(Reply::error(
            ErrorCode::SameEventfd,
            "the irq and resample fds are the same eventfd: every interrupt would EOI itself; create two eventfds, one for KVM_IRQFD's fd and one for its resamplefd; all fds were closed",
        ));
    }
    Ok(())
}

/// The first of a route's VMM eventfds that is blocking now (its holder
/// cleared `O_NONBLOCK` after the attach), by role.
pub(super) fn blocking_vmm_fd(route: &Route) -> Option<&'static str> {
    let vmm = route.vmm();
    [("irq", &vmm.irq), ("resample", &vmm.resample)]
        .into_iter()
        .find(|(_, fd)| is_nonblocking(borrow_eventfd(fd)).is_ok_and(|nb| !nb))
        .map(|(role, _)| role)
}

/// The service manager, if this daemon runs under one: it holds the device
/// fds parked in its fd store by design.
fn service_manager() -> Vec<u32> {
    let mut pids = vec![1];
    let ppid = std::os::unix::process::parent_id();
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
    if comm.trim_end() == "systemd" {
        pids.push(ppid);
    }
    pids
}

/// Whether `pid` is a child of `parent` that still runs the parent's image
/// (forked, not yet exec'd): it holds the parent's fds only for that moment.
fn is_fork_of(pid: u32, parent: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses: state, ppid.
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
    let exe = |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    ppid == Some(parent) && exe(pid).is_some() && exe(pid) == exe(parent)
}

impl Daemon {
    /// Refuses the hand-off of device `di` to `requester` while another
    /// process still holds one of the device fds the daemon handed out
    /// before; then readies the device for its new owner.
    pub(super) fn hand_off(&mut self, di: usize, requester: u32) -> Result<(), Reply> {
        let dev = &mut self.devices[di];
        let name = dev.cfg.name.clone();
        let Some(open) = dev.state.open_mut() else {
            return Err(Reply::error(
                ErrorCode::DeviceError,
                format!("{name}: not open"),
            ));
        };
        let backend = open.backend.as_mut();
        let ours = backend.vmm_fds().map_err(|e| {
            Reply::error(
                ErrorCode::ResourceExhausted,
                format!("{name}: could not duplicate the device fds to check who holds them: {e}"),
            )
        })?;
        let mut exclude = service_manager();
        exclude.push(requester);
        exclude.extend(backend.serving_pids());
        let borrowed: Vec<BorrowedFd<'_>> = ours.iter().map(|(_, f)| f.as_fd()).collect();
        let mut held = other_holders(&borrowed, &exclude).map_err(|e| {
            Reply::error(
                ErrorCode::DeviceError,
                format!("{name}: could not check who holds the device fds (/proc): {e}"),
            )
        })?;
        held.retain(|h| !is_fork_of(h.pid, requester));
        if let Some(h) = held.first() {
            let role = ours.get(h.which).map(|(r, _)| r.name()).unwrap_or("device");
            log::warn!(
                "{}: attach by pid {requester} refused: pid {} ({}) still holds its {role} fd",
                dev.tag(),
                h.pid,
                h.comm
            );
            return Err(Reply::error(
                ErrorCode::DeviceHeld,
                format!(
                    "{name}: pid {} ({}) still holds the device's {role} fd (its fd {}) from an earlier attach; the device passes to a new owner only when no other process holds its fds: close it or wait for that process to exit, then attach again",
                    h.pid, h.comm, h.fd
                ),
            ));
        }
        drop(ours);
        backend.hand_off().map_err(|e| {
            Reply::error(
                ErrorCode::DeviceError,
                format!("{name}: could not ready the device for a new owner (fresh device fds, or unmap of the last owner's DMA): {e}"),
            )
        })
    }

    /// Device `di`'s VMM fd (`role`) cannot be used without risking a
    /// block (`why`): tell the owner and detach that device only.
    pub(super) fn peer_fd_failed(&mut self, di: usize, role: &str, why: &str) {
        let Some(dev) = self.devices.get(di) else {
            return;
        };
        if dev.holder().is_none() {
            return;
        }
        log::warn!(
            "{}: the VMM's {role} eventfd {why}; detaching this device",
            dev.tag()
        );
        let ev = Event::DeviceGone {
            device: dev.cfg.name.clone(),
            reason: format!("the {role} eventfd {why}; the device was detached: keep the eventfd non-blocking (EFD_NONBLOCK) and read it"),
        };
        self.send_event(di, &ev);
        self.detach_device(di, "its VMM's eventfd could not be used without blocking");
    }
}
