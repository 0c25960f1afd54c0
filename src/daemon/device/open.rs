//! Bringing a configured device up: bind a real function to vfio-pci and
//! open it through VFIO, or open an emulated one, in this process or in the
//! sim host.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::state::{Lifecycle, Open};
use crate::config::{DeviceConfig, PciAddr};
use crate::daemon::binder::{Binder, BinderError};
use crate::doctor::{self, Finding, Host, Status};
use crate::pci::{BindRecord, SysfsIo};
use crate::sim::remote::RemoteSim;
use crate::sim::SimHost;
use crate::util::error::chain;
use crate::vfio::{IntxDevice, VfioIntx};

/// The fds that kept a device open across a restart (from the fd store).
pub struct Parked {
    /// `<device>-dev`: the VFIO device fd, or the sim host connection.
    pub dev: OwnedFd,
    /// `<device>-container`: the VFIO container fd.
    pub container: Option<OwnedFd>,
}

/// Where emulated devices live.
#[derive(Clone, Copy)]
pub struct SimPlace<'a> {
    /// The in-process host thread.
    pub host: &'a SimHost,
    /// `daemon.sim_host`: the socket of a separate sim host, if configured.
    pub remote: Option<&'a Path>,
}

/// Opens an emulated device (adopting `parked`, the connection a previous
/// daemon left in the fd store, if there is one).
pub fn open_sim(cfg: &DeviceConfig, n: u32, at: SimPlace<'_>, parked: Option<Parked>) -> Lifecycle {
    let opened = |b: Box<dyn IntxDevice>| Lifecycle::Opened(with_request(cfg, b, None, None));
    let failed = |error| Lifecycle::Failed {
        error,
        bound: None,
        gone: false,
    };
    match (at.remote, parked) {
        (Some(_), Some(Parked { dev, .. })) => opened(Box::new(RemoteSim::adopt(dev, &cfg.name, n))),
        (Some(path), None) => match RemoteSim::open(path, &cfg.name, n, cfg.sim) {
            Ok(d) => opened(Box::new(d)),
            Err(e) => failed(format!(
                "{} {}: cannot open it in the sim host at {}: {}; is `intxd sim-host` running there?",
                cfg.name,
                cfg.pci,
                path.display(),
                chain(&e)
            )),
        },
        (None, _) => match at.host.add_device(&cfg.name, n, cfg.sim) {
            Ok(d) => opened(Box::new(d)),
            Err(e) => failed(e.to_string()),
        },
    }
}

/// Opens a real function once binding it is done (`bind` is what the binder
/// said), or takes back the fds a previous daemon parked (a VFIO group opens
/// only once). `host` is read for the shared-line diagnosis
/// ([`line_warning`]).
pub fn open_bound(
    cfg: &DeviceConfig,
    bind: Result<BindRecord, BinderError>,
    parked: Option<Parked>,
    host: &Host,
) -> Lifecycle {
    let record = match bind {
        Ok(r) => r,
        Err(e) => {
            return Lifecycle::Failed {
                error: chain(&e),
                bound: None,
                gone: false,
            }
        }
    };
    let dev = match parked {
        Some(Parked {
            dev,
            container: Some(container),
        }) => VfioIntx::adopt(&cfg.name, cfg.pci, dev, container),
        _ => VfioIntx::open(&cfg.name, cfg.pci),
    };
    // After the open: the PCI core routes the function's pin (ACPI) when
    // it is first enabled, and until then sysfs `irq` may be the firmware's
    // PIC line, not the host line vfio-pci will request.
    let warning = line_warning(cfg, host);
    match dev {
        Ok(d) => Lifecycle::Opened(with_request(cfg, Box::new(d), Some(record), warning)),
        Err(e) => Lifecycle::Bound {
            record,
            error: chain(&e),
            tries: 1,
            warning,
        },
    }
}

/// What trying a `Bound` function again gave.
pub enum Reopen {
    /// Not `Bound`: nothing tried.
    NotBound,
    /// Open now.
    Opened,
    /// Still refused; the reason is this try's.
    StillBound,
    /// The host took it back (it left vfio-pci, or sysfs no longer shows
    /// it): the device is `Failed` (gone) and this is what the bind changed.
    Gone(BindRecord),
}

/// Tries again to open a function left `Bound` (VFIO refused it, e.g. its
/// group still held by a former process), at `when` (an attach, a reload),
/// after checking in `sys` that it is still on vfio-pci.
pub fn reopen_bound(
    cfg: &DeviceConfig,
    state: &mut Lifecycle,
    sys: &dyn SysfsIo,
    when: &str,
) -> Reopen {
    let Lifecycle::Bound { tries, .. } = state else {
        return Reopen::NotBound;
    };
    let tries = *tries + 1;
    let on_vfio = crate::pci::identify(sys, &cfg.name, cfg.pci)
        .is_ok_and(|i| i.driver.as_deref() == Some(crate::pci::VFIO_PCI));
    if !on_vfio {
        let (_, record) = state.go_away(format!(
            "{} {}: the host took it back (it left vfio-pci, or was removed); an attach or `systemctl reload intxd` looks for it again",
            cfg.name, cfg.pci
        ));
        log::warn!("{} {}: found off vfio-pci at {when}", cfg.name, cfg.pci);
        return record.map_or(Reopen::NotBound, Reopen::Gone);
    }
    match VfioIntx::open(&cfg.name, cfg.pci) {
        Ok(d) => {
            let Lifecycle::Bound {
                record, warning, ..
            } = std::mem::replace(state, Lifecycle::Binding)
            else {
                return Reopen::NotBound;
            };
            *state = Lifecycle::Opened(with_request(cfg, Box::new(d), Some(record), warning));
            log::info!("{} {}: opened at {when} (try {tries})", cfg.name, cfg.pci);
            Reopen::Opened
        }
        Err(e) => {
            let error = format!(
                "{} (open tried {tries} times, the last at {when}; it is tried again at each attach and reload)",
                chain(&e)
            );
            log::warn!("{error}");
            if let Lifecycle::Bound {
                error: now,
                tries: n,
                ..
            } = state
            {
                (*now, *n) = (error, tries);
            }
            Reopen::StillBound
        }
    }
}

/// Brings `cfg` up in this thread: binding included (start-up).
pub fn open_now(
    cfg: &DeviceConfig,
    sim: SimPlace<'_>,
    binder: &Binder,
    parked: Option<Parked>,
) -> Lifecycle {
    let state = match cfg.pci {
        PciAddr::Sim(n) => open_sim(cfg, n, sim, parked),
        PciAddr::Bdf { .. } => open_bound(cfg, binder.bind(cfg), parked, &binder.host()),
    };
    log_outcome(cfg, &state);
    state
}

/// One line for what bringing a device up gave.
pub fn log_outcome(cfg: &DeviceConfig, state: &Lifecycle) {
    match state.error() {
        Some(f) => log::error!("{f}"),
        None => log::info!("{} {}: {}", cfg.name, cfg.pci, state.name()),
    }
}

/// The shared-line diagnosis of a function just bound to vfio-pci, when
/// it says the INTx set-up will fail (`Fail`) or may (`Warn`): logged once
/// as a warning (the device, the others on the line and their drivers, the
/// fixes) and kept for `status`. vfio-pci requests the line only at the
/// attach, so this is the one warning before it.
pub fn line_warning(cfg: &DeviceConfig, host: &Host) -> Option<Finding> {
    let f = doctor::shared_line_diagnosis(host, &cfg.name, cfg.pci)?;
    if f.status < Status::Warn {
        return None;
    }
    let will = if f.status == Status::Fail {
        "will fail"
    } else {
        "may fail"
    };
    log::warn!(
        "{} {}: its INTx set-up at attach {will}: {}",
        cfg.name,
        cfg.pci,
        f.message()
    );
    Some(f)
}

/// An open backend, with a request eventfd if it takes one.
fn with_request(
    cfg: &DeviceConfig,
    mut backend: Box<dyn IntxDevice>,
    bound: Option<BindRecord>,
    warning: Option<Finding>,
) -> Open {
    let request = match crate::util::fd::new_eventfd() {
        Ok(ev) => match backend.set_request(Some(&ev)) {
            Ok(()) => Some(ev),
            Err(e) => {
                log::warn!(
                    "{} {}: no request interrupt: {}",
                    cfg.name,
                    cfg.pci,
                    chain(&e)
                );
                None
            }
        },
        Err(e) => {
            log::warn!("{} {}: no request interrupt: {e}", cfg.name, cfg.pci);
            None
        }
    };
    Open {
        backend,
        bound,
        request,
        warning,
    }
}
