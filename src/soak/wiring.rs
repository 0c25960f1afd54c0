//! How the soak's device reaches its VM.
//!
//! An emulated device hands the VMM its ack and doorbell eventfds
//! ([`Attached`]); a real function hands it its VFIO device and container
//! fds ([`VfioAttached`]), and the soak drives it through the registers its
//! config's exerciser names.

use std::os::fd::OwnedFd;
use std::path::Path;

use vmm_sys_util::eventfd::EventFd;

use super::run::SoakError;
use crate::config::Exerciser;
use crate::control::client::{Client, ClientError};
use crate::control::proto::{Event, IntxState, ModeRequest, Reply};
use crate::route::{Irqchip, Mode};
use crate::util::fd::owned_into_eventfd;
use crate::vfio::SimCounters;

/// What an attach of an emulated device gave the VMM.
pub struct Attached {
    /// The mode the daemon chose.
    pub mode: Mode,
    /// Why (for `auto`).
    pub reason: String,
    /// The device's ack eventfd (bound to the guest's ack port).
    pub ack: EventFd,
    /// The device's doorbell eventfd (a write of N asks for N cycles).
    pub doorbell: EventFd,
}

/// What an attach of a real PCI function gave the VMM.
pub struct VfioAttached {
    /// The mode the daemon chose.
    pub mode: Mode,
    /// Why (for `auto`).
    pub reason: String,
    /// The VFIO device fd (config space, BARs, as any VMM uses it).
    pub device: OwnedFd,
    /// The VFIO container fd (DMA mappings; the soak's guest does no DMA).
    pub container: OwnedFd,
    /// How to raise and ack the device through its BAR (none: the soak
    /// drives it by vfio-pci's loopback).
    pub exerciser: Option<Exerciser>,
    /// Its PCI address (the attach's `facts.pci`).
    pub pci: String,
}

/// A guest-lifecycle request (docs/protocol.md, "Guest lifecycle").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleOp {
    /// `suspend_intx`.
    Suspend,
    /// `resume_intx`.
    Resume,
    /// `reset`.
    Reset,
}

/// What an attach gave the VMM, by kind of device.
pub enum AttachedDevice {
    /// An emulated device.
    Sim(Attached),
    /// A real PCI function through VFIO.
    Vfio(VfioAttached),
}

impl AttachedDevice {
    /// The mode the daemon chose.
    pub fn mode(&self) -> Mode {
        match self {
            AttachedDevice::Sim(a) => a.mode,
            AttachedDevice::Vfio(a) => a.mode,
        }
    }

    /// Why the daemon chose it.
    pub fn reason(&self) -> &str {
        match self {
            AttachedDevice::Sim(a) => &a.reason,
            AttachedDevice::Vfio(a) => &a.reason,
        }
    }
}

/// Figures at one point of a run.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Hardware-side counters of the emulated device.
    pub sim: SimCounters,
    /// The daemon's event-loop wakeups so far (0 without a daemon).
    pub loop_wakeups: u64,
    /// EOIs the relay carried (0 in direct mode).
    pub relay_eois: u64,
    /// Storms limited.
    pub storms: u64,
    /// Interrupts the relay carried (0 in direct mode).
    pub relayed: u64,
    /// Hot-path syscalls the relay made (0 in direct mode).
    pub relay_syscalls: u64,
    /// Daemon pid, when there is a daemon.
    pub daemon_pid: Option<u32>,
    /// The device's host-side interrupt count (`/proc/interrupts` for a
    /// real function; the trigger count for an emulated one).
    pub host_interrupts: u64,
}

/// A way to wire the device to the soak VM.
pub trait Wiring {
    /// Hands the VMM's eventfd pair over and returns the device's fds.
    fn attach(
        &mut self,
        irqchip: Irqchip,
        mode: Mode,
        irq: &EventFd,
        resample: &EventFd,
    ) -> Result<Attached, SoakError>;
    /// Like [`attach`](Self::attach), for any kind of device. The default
    /// knows emulated devices only.
    fn attach_device(
        &mut self,
        irqchip: Irqchip,
        mode: Mode,
        irq: &EventFd,
        resample: &EventFd,
    ) -> Result<AttachedDevice, SoakError> {
        self.attach(irqchip, mode, irq, resample)
            .map(AttachedDevice::Sim)
    }
    /// Current figures.
    fn snapshot(&mut self) -> Result<Snapshot, SoakError>;
    /// A lifecycle request for the attached device; returns how INTx was
    /// left. Only a daemon serves them.
    fn lifecycle(&mut self, op: LifecycleOp) -> Result<IntxState, SoakError> {
        let _ = op;
        Err(SoakError::NoLifecycle {
            device: self.device().to_string(),
        })
    }
    /// Undoes the attach.
    fn detach(&mut self) -> Result<(), SoakError>;
    /// The device's name.
    fn device(&self) -> &str;
    /// [`SoakError::Gone`] once the daemon has told this connection that
    /// the device is gone (or has gone away itself), so that a run ends,
    /// and its VFIO fds close, at once rather than at the stall bound: the
    /// host's unbind waits for them.
    fn check_gone(&mut self) -> Result<(), SoakError> {
        Ok(())
    }
    /// The `delivery_overdue` events for the device since the last call
    /// (their `waited_ms`), when the soak is to recover them
    /// (`super::recover`). Without a daemon there are none.
    fn overdue(&mut self) -> Vec<u64> {
        Vec::new()
    }
}

/// Through the daemon's control socket, as any VMM would.
pub struct DaemonWiring {
    client: Client,
    device: String,
    exerciser: Option<Exerciser>,
    /// Whether `delivery_overdue` events are handed to the soak to recover.
    recover: bool,
    /// A `device_gone` read from the connection and not yet reported.
    gone: Option<String>,
    /// The `waited_ms` of `delivery_overdue` events read and not yet taken.
    overdue: Vec<u64>,
}

impl DaemonWiring {
    /// Connects to the daemon at `socket` and says hello.
    pub fn connect(socket: &Path, device: &str) -> Result<DaemonWiring, SoakError> {
        let mut client = Client::connect(socket).map_err(SoakError::Client)?;
        client.hello("intxd-soak").map_err(SoakError::Client)?;
        Ok(DaemonWiring {
            client,
            device: device.to_string(),
            exerciser: None,
            recover: super::recover::enabled_by_env(),
            gone: None,
            overdue: Vec::new(),
        })
    }

    /// Whether the soak recovers overdue deliveries (`delivery_overdue`) by
    /// asserting the guest's line itself; on by default, off with
    /// `INTXD_SOAK_RECOVER=off` (to see what a VMM without it gets).
    pub fn with_recovery(mut self, recover: bool) -> DaemonWiring {
        self.recover = recover;
        self
    }

    /// Drives a real PCI function through `exerciser` (its config's
    /// `[device.exerciser]` table); an emulated device ignores it. Without
    /// one, the soak drives a real function by vfio-pci's loopback trigger.
    pub fn with_exerciser(mut self, exerciser: Option<Exerciser>) -> DaemonWiring {
        self.exerciser = exerciser;
        self
    }

    /// Why the device is gone, if it is: the `device_gone` event queued on
    /// this connection, or the connection closed.
    fn gone(&mut self) -> Option<String> {
        self.gone_within(std::time::Duration::ZERO)
    }

    /// [`gone`](Self::gone), reading the socket for up to `wait` (a zero
    /// wait looks at the events already read only).
    fn gone_within(&mut self, wait: std::time::Duration) -> Option<String> {
        self.pump(wait);
        self.gone.take()
    }

    /// Reads the events that came, waiting up to `wait` for the first: a
    /// `device_gone` of this device is kept for [`gone`](Self::gone), its
    /// `delivery_overdue` waits for [`Wiring::overdue`]; every other event
    /// is dropped. The connection closing counts as the daemon gone.
    fn pump(&mut self, mut wait: std::time::Duration) {
        loop {
            match self.client.next_event(wait) {
                Ok(Some(Event::DeviceGone { device, reason })) if device == self.device => {
                    self.gone = Some(reason);
                }
                Ok(Some(Event::DeliveryOverdue {
                    device, waited_ms, ..
                })) if device == self.device => {
                    if self.recover {
                        self.overdue.push(waited_ms);
                    } else {
                        log::warn!("{device}: delivery overdue for {waited_ms} ms; not recovered (INTXD_SOAK_RECOVER=off)");
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    if super::error::connection_closed(&e) {
                        self.gone = Some(super::error::DAEMON_WENT_AWAY.to_string());
                    }
                    return;
                }
            }
            wait = std::time::Duration::ZERO;
        }
    }

    /// A failed request, told by its real cause when the device or the
    /// daemon went away (and not as, say, `NotAttached` or `Broken pipe`).
    fn failed(&mut self, e: ClientError) -> SoakError {
        let cause = self.gone().or_else(|| {
            super::error::connection_closed(&e).then(|| super::error::DAEMON_WENT_AWAY.to_string())
        });
        match cause {
            Some(cause) => SoakError::Gone {
                device: self.device.clone(),
                cause,
            },
            None => SoakError::Client(e),
        }
    }
}

impl Wiring for DaemonWiring {
    fn attach(
        &mut self,
        irqchip: Irqchip,
        mode: Mode,
        irq: &EventFd,
        resample: &EventFd,
    ) -> Result<Attached, SoakError> {
        match self.attach_device(irqchip, mode, irq, resample)? {
            AttachedDevice::Sim(a) => Ok(a),
            AttachedDevice::Vfio(_) => {
                let _ = self.detach();
                Err(SoakError::NotEmulated {
                    device: self.device.clone(),
                })
            }
        }
    }

    fn attach_device(
        &mut self,
        irqchip: Irqchip,
        mode: Mode,
        irq: &EventFd,
        resample: &EventFd,
    ) -> Result<AttachedDevice, SoakError> {
        let want = match mode {
            Mode::Direct => ModeRequest::Direct,
            Mode::Relay => ModeRequest::Relay,
        };
        let r = self
            .client
            .attach(&self.device, irqchip, want, irq, resample);
        let (reply, fds) = match r {
            Ok(r) => r,
            Err(e) => return Err(self.failed(e)),
        };
        let Reply::Attached {
            mode,
            reason,
            fds: roles,
            facts,
            ..
        } = reply
        else {
            return Err(SoakError::UnexpectedReply {
                device: self.device.clone(),
                request: "attach",
                reply: format!("{reply:?}"),
            });
        };
        let mut fds = fds.into_iter();
        let (Some(first), Some(second)) = (fds.next(), fds.next()) else {
            let _ = self.detach();
            return Err(SoakError::MissingFds {
                device: self.device.clone(),
            });
        };
        let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
        match roles.as_slice() {
            ["vfio_device", "vfio_container"] => Ok(AttachedDevice::Vfio(VfioAttached {
                mode,
                reason,
                device: first,
                container: second,
                exerciser: self.exerciser,
                pci: facts.pci,
            })),
            _ => Ok(AttachedDevice::Sim(Attached {
                mode,
                reason,
                ack: owned_into_eventfd(first),
                doorbell: owned_into_eventfd(second),
            })),
        }
    }

    fn snapshot(&mut self) -> Result<Snapshot, SoakError> {
        let status = match self.client.status() {
            Ok(s) => s,
            Err(e) => return Err(self.failed(e)),
        };
        if let Some(cause) = self.gone() {
            return Err(SoakError::Gone {
                device: self.device.clone(),
                cause,
            });
        }
        let Reply::Status { daemon, devices } = status else {
            return Err(SoakError::UnexpectedReply {
                device: self.device.clone(),
                request: "status",
                reply: format!("{status:?}"),
            });
        };
        let dev = devices
            .into_iter()
            .find(|d| d.name == self.device)
            .ok_or_else(|| SoakError::NotInStatus {
                device: self.device.clone(),
            })?;
        Ok(Snapshot {
            sim: dev.counters.sim.unwrap_or_default(),
            // The route's own wakeups: a direct run beside a relay run
            // must not count the relay's.
            loop_wakeups: dev.counters.relay.as_ref().map_or(0, |r| r.wakeups),
            relay_eois: dev.counters.relay.as_ref().map(|r| r.eois).unwrap_or(0),
            storms: dev.counters.relay.as_ref().map(|r| r.storms).unwrap_or(0),
            relayed: dev.counters.relay.as_ref().map(|r| r.relayed).unwrap_or(0),
            relay_syscalls: dev.counters.relay.as_ref().map(|r| r.syscalls).unwrap_or(0),
            daemon_pid: Some(daemon.pid),
            host_interrupts: dev.counters.host_interrupts,
        })
    }

    fn lifecycle(&mut self, op: LifecycleOp) -> Result<IntxState, SoakError> {
        let d = self.device.clone();
        let r = match op {
            LifecycleOp::Suspend => self.client.suspend_intx(&d).map(|_| IntxState::Suspended),
            LifecycleOp::Resume => self.client.resume_intx(&d).map(|()| IntxState::Enabled),
            LifecycleOp::Reset => self.client.reset(&d),
        };
        r.map_err(|e| self.failed(e))
    }

    fn detach(&mut self) -> Result<(), SoakError> {
        match self.client.detach(&self.device) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn overdue(&mut self) -> Vec<u64> {
        self.pump(std::time::Duration::ZERO);
        std::mem::take(&mut self.overdue)
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn check_gone(&mut self) -> Result<(), SoakError> {
        match self.gone_within(std::time::Duration::from_millis(1)) {
            Some(cause) => Err(SoakError::Gone {
                device: self.device.clone(),
                cause,
            }),
            None => Ok(()),
        }
    }
}
