//! The daemon's devices: one slot per configured function, its backend, its
//! state, its route and its owner.

use serde::Serialize;

use crate::config::{DeviceConfig, ModePolicy, PciAddr};
use crate::control::proto::{
    Capabilities, DeviceCounters, DeviceStatus, ErrorCode, ModeRequest, Owner, Reply,
};
use crate::route::{Irqchip, Mode, Route};
use std::os::fd::OwnedFd;
use std::path::Path;

use super::binder::Binder;
use super::requests::chain;
use crate::pci::BindRecord;
use crate::sim::remote::RemoteSim;
use crate::sim::SimHost;
use crate::vfio::IntxDevice;
use crate::vfio::VfioIntx;

/// A device's lifecycle: unbound -> bound -> opened -> attached -> detached
/// (and back to attached on the next attach).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Configured, not bound to vfio-pci.
    Unbound,
    /// Bound to vfio-pci.
    Bound,
    /// The VFIO device (or the emulated one) is open.
    Opened,
    /// A VMM holds it.
    Attached,
    /// Released by its last VMM; ready for the next.
    Detached,
    /// Could not be brought up; see the log.
    Failed,
    /// Dropped from the config by a reload (the slot stays, so the event
    /// loop's tokens for other devices keep their meaning).
    Removed,
}

impl DeviceState {
    /// Lower-case name, as status shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Unbound => "unbound",
            DeviceState::Bound => "bound",
            DeviceState::Opened => "opened",
            DeviceState::Attached => "attached",
            DeviceState::Detached => "detached",
            DeviceState::Failed => "failed",
            DeviceState::Removed => "removed",
        }
    }
}

/// A device's owner: which connection, and who is behind it.
#[derive(Debug, Clone, Copy)]
pub struct Holder {
    /// Connection id (unique for the daemon's life).
    pub conn_id: u64,
    /// Credentials.
    pub owner: Owner,
}

/// One configured device.
pub struct DeviceSlot {
    /// Its config.
    pub cfg: DeviceConfig,
    /// What binding it to vfio-pci changed (real functions).
    pub bound: Option<BindRecord>,
    /// Its backend, once opened.
    pub backend: Option<Box<dyn IntxDevice>>,
    /// Lifecycle state.
    pub state: DeviceState,
    /// Why it failed, when it did.
    pub failure: Option<String>,
    /// The live route.
    pub route: Option<Route>,
    /// The VMM's irqchip while attached.
    pub irqchip: Option<Irqchip>,
    /// The owner.
    pub holder: Option<Holder>,
    /// Attaches so far.
    pub attaches: u64,
    /// When the last storm event went out (events are rate-limited).
    pub last_storm_event: Option<std::time::Instant>,
    /// Storm log lines suppressed since the last one.
    pub storms_unlogged: u64,
    /// When the last watchdog event went out.
    pub last_watchdog_event: Option<std::time::Instant>,
    /// The request eventfd the device signals when it is going away.
    pub request: Option<vmm_sys_util::eventfd::EventFd>,
    /// What the health scan remembers.
    pub health: super::health::Health,
}

impl DeviceSlot {
    /// Opens the backend for `cfg`: an emulated device in the sim host at
    /// `sim_host` (adopting `parked`, the connection a previous daemon left
    /// in the fd store, if there is one), or in this process.
    pub fn open(
        cfg: DeviceConfig,
        sim: &SimHost,
        binder: &Binder,
        sim_host: Option<&Path>,
        parked: Option<Parked>,
    ) -> DeviceSlot {
        let mut bound = None;
        let (backend, state, failure): (Option<Box<dyn IntxDevice>>, _, _) = match (cfg.pci, sim_host, parked) {
            (PciAddr::Sim(n), Some(_), Some(Parked { dev: fd, .. })) => {
                (Some(Box::new(RemoteSim::adopt(fd, &cfg.name, n))), DeviceState::Opened, None)
            }
            (PciAddr::Sim(n), Some(path), None) => match RemoteSim::open(path, &cfg.name, n, cfg.sim) {
                Ok(d) => (Some(Box::new(d)), DeviceState::Opened, None),
                Err(e) => (
                    None,
                    DeviceState::Failed,
                    Some(format!(
                        "{} {}: cannot open it in the sim host at {}: {}; is `intxd sim-host` running there?",
                        cfg.name,
                        cfg.pci,
                        path.display(),
                        chain(&e)
                    )),
                ),
            },
            (PciAddr::Sim(n), None, _) => match sim.add_device(&cfg.name, n, cfg.sim) {
                Ok(d) => (Some(Box::new(d)), DeviceState::Opened, None),
                Err(e) => (None, DeviceState::Failed, Some(e.to_string())),
            },
            (PciAddr::Bdf { .. }, _, parked) => match binder.bind(&cfg) {
                Err(e) => (None, DeviceState::Failed, Some(chain(&e))),
                Ok(rec) => {
                    bound = Some(rec);
                    match open_vfio(&cfg, parked) {
                        Ok(b) => (Some(b), DeviceState::Opened, None),
                        Err(e) => (None, DeviceState::Bound, Some(chain(&e))),
                    }
                }
            },
        };
        if let Some(f) = &failure {
            log::error!("{f}");
        } else {
            log::info!("{} {}: {}", cfg.name, cfg.pci, state.as_str());
        }
        let mut slot = DeviceSlot {
            cfg,
            bound,
            backend,
            state,
            failure,
            route: None,
            irqchip: None,
            holder: None,
            attaches: 0,
            last_storm_event: None,
            storms_unlogged: 0,
            last_watchdog_event: None,
            request: None,
            health: Default::default(),
        };
        if let Some(b) = slot.backend.as_mut() {
            match crate::util::fd::new_eventfd() {
                Ok(ev) => match b.set_request(Some(&ev)) {
                    Ok(()) => slot.request = Some(ev),
                    Err(e) => log::warn!(
                        "{}: no request interrupt: {}",
                        slot.tag(),
                        super::requests::chain(&e)
                    ),
                },
                Err(e) => log::warn!("{}: no request interrupt: {e}", slot.tag()),
            }
        }
        slot
    }

    /// Closes the device and gives a real function back to its original
    /// driver (clean stop, or a reload that removes it).
    pub fn release(&mut self, binder: &Binder) {
        // VFIO's fds close before the unbind, which would wait for them.
        self.backend = None;
        if self.bound.take().is_some() {
            if let Err(e) = binder.release(&self.cfg) {
                log::error!("{}", chain(&e));
            }
        }
    }

    /// `name pci` prefix for log lines.
    pub fn tag(&self) -> String {
        format!("{} {}", self.cfg.name, self.cfg.pci)
    }

    /// The device's entry in `status`.
    pub fn status(&self) -> DeviceStatus {
        DeviceStatus {
            name: self.cfg.name.clone(),
            pci: self.cfg.pci.to_string(),
            state: self.state.as_str().to_string(),
            mode: self.route.as_ref().map(Route::mode),
            owner: self.holder.map(|h| h.owner),
            facts: self.backend.as_ref().map(|b| b.facts()),
            failure: self.failure.clone(),
            counters: DeviceCounters {
                host_interrupts: self.backend.as_ref().map(|b| b.host_count()).unwrap_or(0),
                attaches: self.attaches,
                relay: self.route.as_ref().and_then(Route::relay_stats),
                sim: self.backend.as_ref().and_then(|b| b.sim_counters()),
                storm_seconds: self.health.storm_seconds,
                safety_unmasks: self.health.safety_unmasks,
            },
        }
    }
}

/// Picks the route mode for an attach, with the reason.
pub fn choose_mode(
    dev: &DeviceConfig,
    want: ModeRequest,
    irqchip: Irqchip,
    caps: &Capabilities,
) -> Result<(Mode, String), Reply> {
    let refuse = |m: String| Reply::error(ErrorCode::ModeUnavailable, format!("{}: {m}", dev.name));
    match (dev.mode, want) {
        (ModePolicy::Relay, ModeRequest::Direct) => {
            return Err(refuse("the device's config says mode = \"relay\"; ask for auto or relay, or change the config".into()))
        }
        (ModePolicy::Direct, ModeRequest::Relay) => {
            return Err(refuse("the device's config says mode = \"direct\"; ask for auto or direct, or change the config".into()))
        }
        (ModePolicy::Relay, _) => return Ok((Mode::Relay, "the device's config says mode = \"relay\"".into())),
        (_, ModeRequest::Relay) => return Ok((Mode::Relay, "the VMM asked for relay".into())),
        _ => {}
    }
    match irqchip {
        Irqchip::Kernel if caps.irqfd_resample => Ok((
            Mode::Direct,
            "in-kernel irqchip with resampling irqfds: VFIO's trigger is the VMM's irqfd and its unmask the resamplefd, so no userspace is on the hot path".into(),
        )),
        Irqchip::Kernel => {
            let why = "this host's KVM lacks KVM_CAP_IRQFD_RESAMPLE, so KVM cannot signal the guest's EOI to VFIO";
            if want == ModeRequest::Direct || dev.mode == ModePolicy::Direct {
                Err(refuse(format!("{why}; direct mode is impossible here")))
            } else {
                Ok((Mode::Relay, format!("{why}; intxd relays instead")))
            }
        }
        Irqchip::Split | Irqchip::User => Ok((
            Mode::Direct,
            format!("{irqchip} irqchip: the VMM's own interrupt controller asserts on the irq eventfd and signals the resample eventfd at EOI, so VFIO can use them directly"),
        )),
    }
}

/// Opens a bound real function through VFIO, or takes back the device and
/// container fds a previous daemon parked (a VFIO group opens only once).
fn open_vfio(
    cfg: &DeviceConfig,
    parked: Option<Parked>,
) -> Result<Box<dyn IntxDevice>, crate::vfio::VfioError> {
    let dev = match parked {
        Some(Parked {
            dev,
            container: Some(container),
        }) => VfioIntx::adopt(&cfg.name, cfg.pci, dev, container),
        _ => VfioIntx::open(&cfg.name, cfg.pci),
    };
    dev.map(|d| Box::new(d) as Box<dyn IntxDevice>)
}

/// The fds that kept a device open across a restart (from the fd store).
pub struct Parked {
    /// `<device>-dev`: the VFIO device fd, or the sim host connection.
    pub dev: OwnedFd,
    /// `<device>-container`: the VFIO container fd.
    pub container: Option<OwnedFd>,
}
