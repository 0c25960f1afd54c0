//! How the soak's device reaches its VM.

use std::path::Path;

use vmm_sys_util::eventfd::EventFd;

use super::run::SoakError;
use crate::control::client::Client;
use crate::control::proto::{ModeRequest, Reply};
use crate::route::{Irqchip, Mode};
use crate::util::fd::owned_into_eventfd;
use crate::vfio::SimCounters;

/// What an attach gave the VMM.
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
    /// Current figures.
    fn snapshot(&mut self) -> Result<Snapshot, SoakError>;
    /// Undoes the attach.
    fn detach(&mut self) -> Result<(), SoakError>;
    /// The device's name.
    fn device(&self) -> &str;
}

/// Through the daemon's control socket, as any VMM would.
pub struct DaemonWiring {
    client: Client,
    device: String,
}

impl DaemonWiring {
    /// Connects to the daemon at `socket` and says hello.
    pub fn connect(socket: &Path, device: &str) -> Result<DaemonWiring, SoakError> {
        let mut client = Client::connect(socket).map_err(SoakError::Client)?;
        client.hello("intxd-soak").map_err(SoakError::Client)?;
        Ok(DaemonWiring {
            client,
            device: device.to_string(),
        })
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
        let want = match mode {
            Mode::Direct => ModeRequest::Direct,
            Mode::Relay => ModeRequest::Relay,
        };
        let (reply, fds) = self
            .client
            .attach(&self.device, irqchip, want, irq, resample)
            .map_err(SoakError::Client)?;
        let Reply::Attached { mode, reason, .. } = reply else {
            return Err(SoakError::Protocol(format!(
                "unexpected reply to attach: {reply:?}"
            )));
        };
        let mut fds = fds.into_iter();
        let (Some(ack), Some(doorbell)) = (fds.next(), fds.next()) else {
            return Err(SoakError::Protocol(format!(
                "{}: the attach reply carried no ack/doorbell eventfds; is it an emulated device?",
                self.device
            )));
        };
        Ok(Attached {
            mode,
            reason,
            ack: owned_into_eventfd(ack),
            doorbell: owned_into_eventfd(doorbell),
        })
    }

    fn snapshot(&mut self) -> Result<Snapshot, SoakError> {
        let status = self.client.status().map_err(SoakError::Client)?;
        let Reply::Status { daemon, devices } = status else {
            return Err(SoakError::Protocol(format!(
                "unexpected reply to status: {status:?}"
            )));
        };
        let dev = devices
            .into_iter()
            .find(|d| d.name == self.device)
            .ok_or_else(|| {
                SoakError::Protocol(format!("{}: not in the daemon's status", self.device))
            })?;
        Ok(Snapshot {
            sim: dev.counters.sim.unwrap_or_default(),
            loop_wakeups: daemon.loop_wakeups,
            relay_eois: dev.counters.relay.as_ref().map(|r| r.eois).unwrap_or(0),
            storms: dev.counters.relay.as_ref().map(|r| r.storms).unwrap_or(0),
            relayed: dev.counters.relay.as_ref().map(|r| r.relayed).unwrap_or(0),
            relay_syscalls: dev.counters.relay.as_ref().map(|r| r.syscalls).unwrap_or(0),
            daemon_pid: Some(daemon.pid),
        })
    }

    fn detach(&mut self) -> Result<(), SoakError> {
        self.client
            .detach(&self.device)
            .map_err(SoakError::Client)?;
        Ok(())
    }

    fn device(&self) -> &str {
        &self.device
    }
}
