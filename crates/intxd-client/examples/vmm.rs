//! A worked example of a VMM's side of intxd: attach an emulated device
//! (`sim:N`) with a userspace irqchip, serve its interrupts, and go through
//! the guest lifecycle calls around them: `suspend_intx` (before the guest
//! switches the device to MSI/MSI-X), `resume_intx` (back to INTx), and
//! `reset` (the guest resets the function), handling the daemon's events on
//! the way. The VMM plays its guest too: for every interrupt it does what a
//! guest ISR and a userspace irqchip do, ack the device, then EOI (write
//! `resample`).
//!
//! Run it against a daemon with an emulated device this user may attach:
//!
//! ```text
//! cargo run -p intxd-client --example vmm -- /run/intxd/control.sock sim0 1000
//! ```
//!
//! A VMM with KVM's in-kernel irqchip differs in one place: it registers
//! `KVM_IRQFD { fd: irq, gsi, flags: KVM_IRQFD_FLAG_RESAMPLE, resamplefd:
//! resample }` on its own VM before `attach`, and KVM does the serving loop
//! below. Moving the guest's line to another GSI is then a VMM-only change
//! (`KVM_IRQFD_FLAG_DEASSIGN` on the old GSI, the same two eventfds
//! registered on the new one, then one write to `resample`): see
//! docs/protocol.md, "Guest lifecycle".
#![allow(dead_code)] // tests/lifecycle.rs includes this file as a module

use std::error::Error;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use intxd_client::client::Client;
use intxd_client::proto::{DeviceStatus, Event, IntxState, Irqchip, ModeRequest, Reply};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// How long one interrupt may take before the VMM calls the device stuck.
const STALL: Duration = Duration::from_secs(10);

/// What one phase saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Phase {
    /// Cycles asked of the device (doorbell).
    pub asked: u64,
    /// Interrupts the VMM's irqchip took (one per assertion of the line).
    pub delivered: u64,
}

/// The VMM's side of one attached device.
pub struct Vmm {
    /// The connection; closing it detaches the device.
    pub client: Client,
    /// The device's name.
    pub device: String,
    irq: EventFd,
    resample: EventFd,
    ack: OwnedFd,
    doorbell: OwnedFd,
    /// Events read so far, in order.
    pub events: Vec<Event>,
}

fn eventfd() -> nix::Result<EventFd> {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
}

fn write_count(fd: &OwnedFd, n: u64) -> nix::Result<()> {
    nix::unistd::write(fd, &n.to_ne_bytes()).map(|_| ())
}

impl Vmm {
    /// Connects, says hello (and checks the `lifecycle` capability), and
    /// attaches `device` with a userspace irqchip.
    pub fn attach(socket: &Path, device: &str) -> Result<Vmm, Box<dyn Error>> {
        let mut client = Client::connect(socket)?;
        let Reply::Hello { capabilities, .. } = client.hello("example-vmm")? else {
            return Err("hello was not answered with hello".into());
        };
        if !capabilities.lifecycle {
            return Err("this intxd has no lifecycle requests (capability `lifecycle`)".into());
        }
        let (irq, resample) = (eventfd()?, eventfd()?);
        let (reply, fds) =
            client.attach(device, Irqchip::User, ModeRequest::Auto, &irq, &resample)?;
        let Reply::Attached { fds: roles, .. } = reply else {
            return Err("attach was not answered with attached".into());
        };
        // The emulated device hands over its ack and doorbell eventfds; a
        // real one its VFIO device and container fds.
        let mut by_role = roles.into_iter().zip(fds);
        let (Some((_, ack)), Some((_, doorbell))) = (by_role.next(), by_role.next()) else {
            return Err("the attach reply lacks the ack and doorbell fds".into());
        };
        Ok(Vmm {
            client,
            device: device.to_string(),
            irq,
            resample,
            ack,
            doorbell,
            events: Vec::new(),
        })
    }

    /// Asks the device for `n` cycles and serves every interrupt: the
    /// guest's ISR acks the device (its line drops), then the irqchip EOIs
    /// (`resample`), which lets VFIO unmask INTx.
    pub fn soak(&mut self, n: u64) -> Result<Phase, Box<dyn Error>> {
        write_count(&self.doorbell, n)?;
        self.serve(n)
    }

    /// Serves interrupts until `n` were delivered.
    pub fn serve(&mut self, n: u64) -> Result<Phase, Box<dyn Error>> {
        let mut phase = Phase {
            asked: n,
            delivered: 0,
        };
        while phase.delivered < n {
            if !self.wait_irq(STALL)? {
                return Err(format!("stalled after {} of {n} interrupts", phase.delivered).into());
            }
            // The eventfd's count folds signals: readable means asserted.
            self.irq.read()?;
            phase.delivered += 1;
            write_count(&self.ack, 1)?;
            self.resample.write(1)?;
        }
        Ok(phase)
    }

    /// Waits up to `t` for the line (the irq eventfd), reading events that
    /// arrive meanwhile.
    fn wait_irq(&mut self, t: Duration) -> Result<bool, Box<dyn Error>> {
        let deadline = Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut p = [
                PollFd::new(self.irq.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.client.socket(), PollFlags::POLLIN),
            ];
            match poll(&mut p, PollTimeout::from(ms)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
            let (irq, socket) = (ready(&p[0]), ready(&p[1]));
            if socket {
                self.take_events()?;
            }
            if irq {
                return Ok(true);
            }
        }
    }

    /// Reads the events waiting on the connection, and acts on them.
    pub fn take_events(&mut self) -> Result<(), Box<dyn Error>> {
        while let Some(ev) = self.client.next_event(Duration::from_millis(1))? {
            match &ev {
                // The device was detached by the daemon: stop using it.
                Event::DeviceGone { reason, .. } => eprintln!("device gone: {reason}"),
                // INTx was changed behind intxd's back (by this VMM's own
                // SET_IRQS, most likely): suspend_intx, then resume_intx.
                Event::IntxChanged { reason, .. } => eprintln!("INTx changed: {reason}"),
                // An interrupt has not reached the guest (KVM's late
                // irqfd_inject): a VMM with the in-kernel irqchip asserts
                // the GSI itself once if its guest's interrupt controller
                // shows nothing pending (docs/interrupts.md, "Overdue
                // deliveries"). This example has no guest.
                Event::DeliveryOverdue { waited_ms, .. } => {
                    eprintln!("delivery overdue for {waited_ms} ms")
                }
                other => eprintln!("event: {other:?}"),
            }
            self.events.push(ev);
        }
        Ok(())
    }

    /// The guest switches the device to MSI/MSI-X: INTx off in VFIO first
    /// (vfio-pci refuses MSI while INTx is enabled). The VMM then enables
    /// MSI on its device fd.
    pub fn suspend(&mut self) -> Result<bool, Box<dyn Error>> {
        Ok(self.client.suspend_intx(&self.device)?)
    }

    /// Back to INTx: the VMM disables MSI on its device fd first, then asks
    /// intxd to resume; a line still high fires at once.
    pub fn resume(&mut self) -> Result<(), Box<dyn Error>> {
        Ok(self.client.resume_intx(&self.device)?)
    }

    /// The guest resets the function.
    pub fn reset(&mut self) -> Result<IntxState, Box<dyn Error>> {
        Ok(self.client.reset(&self.device)?)
    }

    /// Asks the device for `n` cycles without serving them (a guest whose
    /// device raises while its INTx is suspended).
    pub fn ring(&self, n: u64) -> Result<(), Box<dyn Error>> {
        Ok(write_count(&self.doorbell, n)?)
    }

    /// This device in `status`.
    pub fn status(&mut self) -> Result<DeviceStatus, Box<dyn Error>> {
        let Reply::Status { devices, .. } = self.client.status()? else {
            return Err("status was not answered with status".into());
        };
        devices
            .into_iter()
            .find(|d| d.name == self.device)
            .ok_or_else(|| format!("{} is not in status", self.device).into())
    }
}

/// The lifecycle scenario: soak, suspend (cycles asked meanwhile wait),
/// resume (they arrive), soak, reset, soak. Returns the phases in order.
pub fn run(socket: &Path, device: &str, cycles: u64) -> Result<Vec<Phase>, Box<dyn Error>> {
    let mut vmm = Vmm::attach(socket, device)?;
    let mut phases = vec![vmm.soak(cycles)?];
    vmm.suspend()?;
    // The guest's driver switches to MSI here; the device raises while its
    // INTx is off, and nothing may be lost.
    vmm.ring(cycles)?;
    vmm.resume()?;
    phases.push(vmm.serve(cycles)?);
    phases.push(vmm.soak(cycles)?);
    vmm.reset()?;
    phases.push(vmm.soak(cycles)?);
    vmm.client.detach(device)?;
    Ok(phases)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let socket = args
        .get(1)
        .map_or("/run/intxd/control.sock", String::as_str);
    let device = args.get(2).map_or("sim0", String::as_str);
    let cycles = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(1000);
    for (i, p) in run(socket.as_ref(), device, cycles)?.iter().enumerate() {
        println!("phase {i}: asked {} delivered {}", p.asked, p.delivered);
    }
    Ok(())
}
