//! The lifecycle soak (`intxd soak --lifecycle`, x86_64, in-kernel
//! irqchip): one VM and one attach of a real function with an exerciser,
//! taken through what a guest does to its device (docs/protocol.md, "Guest
//! lifecycle"), with exact counts in every phase:
//!
//! 1. `intx`: INTx soak;
//! 2. `suspend_intx`, then MSI on the attach's device fd (`SET_IRQS` on the
//!    MSI index with an eventfd that is a KVM irqfd on an MSI route to the
//!    guest's [`msi::MSI_VECTOR`]); `msi`: MSI soak, the guest's ISR EOIs its
//!    local APIC; MSI off (`count = 0`), `resume_intx`;
//! 3. `intx_resumed`: INTx soak;
//! 4. `reset`; `intx_reset`: INTx soak;
//! 5. `gsi_move`: the guest's line moved from GSI 10 to 11 (irqfds
//!    deassigned, one raise taken by no irqfd, the same eventfds on GSI 11,
//!    one forced resample): the held level, once; `intx_moved`: INTx soak on
//!    GSI 11.
//!
//! Each phase counts the guest's deliveries, the EOIs KVM saw on the INTx
//! line (the host side's counting irqfd), the host's hard interrupts on the
//! INTx line and on vfio-pci's MSI vector (`/proc/interrupts`); a phase is
//! clean when each count it expects equals the cycles asked, the others
//! stay 0, and afterwards nothing is pending (the device's interrupt status
//! reads 0 and no delivery comes late).

use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use super::arch::{guest, msi};
use super::error::SoakError;
use super::exerciser::DeviceDriver;
use super::run::{Session, Side};
use super::vm::kvm_err;
use super::wiring::{LifecycleOp, Wiring};
use crate::control::proto::IntxState;
use crate::route::{Irqchip, Mode};
use crate::util::fd::{borrow_eventfd, new_eventfd};
use crate::vfio::interrupts;

/// edu's interrupt status register (BAR 0): non-zero while it asserts.
const EDU_STATUS: u64 = 0x24;
/// How long a phase waits for late deliveries after its last one.
const QUIET: Duration = Duration::from_millis(100);

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// `intx`, `msi`, `intx_resumed`, `intx_reset`, `gsi_move`, `intx_moved`.
    pub name: &'static str,
    /// Cycles asked.
    pub asked: u64,
    /// Interrupts the guest's ISR counted.
    pub delivered: u64,
    /// EOIs KVM saw on the INTx GSI.
    pub intx_eois: u64,
    /// Hard interrupts on the host's INTx line (one per chain of
    /// interrupts: vfio-pci signals a level still asserted at the unmask
    /// itself).
    pub intx_irqs: u64,
    /// Hard interrupts of vfio-pci's MSI vector.
    pub msi_irqs: u64,
    /// Cycles short in the counts the phase expects.
    pub lost: u64,
    /// Counts beyond the cycles asked (or on the path not in use).
    pub spurious: u64,
    /// The device's interrupt status after the phase (0: nothing pending).
    pub pending: u32,
    /// Host seconds.
    pub elapsed_s: f64,
}

impl Phase {
    /// Whether every count is exact and nothing is left pending.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.spurious == 0 && self.pending == 0
    }
}

/// A lifecycle soak's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleReport {
    /// The device.
    pub device: String,
    /// Its PCI address.
    pub pci: String,
    /// The mode the daemon chose.
    pub mode: Mode,
    /// The phases run, in order.
    pub phases: Vec<Phase>,
    /// INTx after the `reset` reply.
    pub intx_after_reset: Option<IntxState>,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
}

impl LifecycleReport {
    /// Every phase ran and was clean.
    pub fn is_clean(&self) -> bool {
        self.error.is_none() && self.phases.len() == 6 && self.phases.iter().all(Phase::is_clean)
    }
}

/// The counters a phase compares.
#[derive(Clone, Copy)]
struct Counts {
    delivered: u64,
    intx_eois: u64,
    intx_irqs: u64,
    msi_irqs: u64,
}

/// Hard interrupts of the host row whose handler is `action`, from
/// `/proc/interrupts` (0 while there is none).
fn hard_irqs(action: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
    let rows = interrupts::parse(&text);
    interrupts::row_with_action(&rows, action).map_or(0, |r| r.total)
}

/// The lifecycle soak of the session's device in `mode`, `cycles` per
/// phase.
pub fn run_lifecycle(
    wiring: &mut dyn Wiring,
    mode: Mode,
    cycles: u64,
    stall: Duration,
) -> Result<LifecycleReport, SoakError> {
    let device = wiring.device().to_string();
    let mut s = Session::start(wiring, Irqchip::Kernel, mode)?;
    let bad = |why: &str| SoakError::Lifecycle {
        device: device.clone(),
        why: why.to_string(),
    };
    let pci = match &s.side {
        Side::Vfio(d) if d.exerciser().is_some() => d.pci().to_string(),
        _ => {
            let _ = s.finish();
            return Err(bad("needs a real PCI function with an [device.exerciser] table (edu's: config/examples/edu.toml)"));
        }
    };
    let mut report = LifecycleReport {
        device: device.clone(),
        pci,
        mode: s.mode(),
        phases: Vec::new(),
        intx_after_reset: None,
        error: None,
    };
    let r = phases(&mut s, &mut report, cycles, stall);
    if let Err(e) = &r {
        report.error = Some(crate::util::error::chain(e));
    }
    let fin = s.finish();
    if report.error.is_none() {
        if let Err(e) = fin {
            report.error = Some(crate::util::error::chain(&e));
        }
    }
    Ok(report)
}

/// The session's real function (checked at start).
fn driver<'a>(s: &'a Session<'_>) -> Result<&'a DeviceDriver, SoakError> {
    match &s.side {
        Side::Vfio(d) => Ok(d),
        Side::Sim(_) => Err(SoakError::Lifecycle {
            device: s.wiring.device().to_string(),
            why: "needs a real PCI function".into(),
        }),
    }
}

fn counts(s: &Session<'_>, pci: &str) -> Counts {
    Counts {
        delivered: u64::from(s.ram().count()),
        intx_eois: s.host_counts().eois,
        intx_irqs: hard_irqs(&interrupts::vfio_intx_action(pci)),
        msi_irqs: hard_irqs(&format!("vfio-msi[0]({pci})")),
    }
}

/// Asks for `n` cycles and measures them.
fn phase(
    s: &mut Session<'_>,
    pci: &str,
    name: &'static str,
    n: u64,
    stall: Duration,
    start: &mut dyn FnMut(&Session<'_>) -> Result<(), SoakError>,
) -> Result<Phase, SoakError> {
    let before = counts(s, pci);
    let t0 = Instant::now();
    start(s)?;
    s.wait_count(before.delivered + n, stall);
    let elapsed = t0.elapsed();
    std::thread::sleep(QUIET);
    let after = counts(s, pci);
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let delivered = d(after.delivered, before.delivered);
    let (intx_eois, intx_irqs, msi_irqs) = (
        d(after.intx_eois, before.intx_eois),
        d(after.intx_irqs, before.intx_irqs),
        d(after.msi_irqs, before.msi_irqs),
    );
    // What the phase's path must count exactly, and what must stay 0. An
    // INTx chain is one hard interrupt: the guest re-raises before its EOI,
    // so at the unmask vfio-pci finds the device asserting and signals the
    // trigger itself (no new interrupt); each MSI is one.
    let (exact, zero) = if name == "msi" {
        (vec![delivered, msi_irqs], intx_eois.max(intx_irqs))
    } else {
        (vec![delivered, intx_eois], msi_irqs)
    };
    let page = driver(s)?.exerciser().map(|(p, _)| p);
    let pending = match page {
        Some(p) => p.read32(EDU_STATUS)?,
        None => 0,
    };
    Ok(Phase {
        name,
        asked: n,
        delivered,
        intx_eois,
        intx_irqs,
        msi_irqs,
        lost: exact
            .iter()
            .map(|c| n.saturating_sub(*c))
            .max()
            .unwrap_or(0),
        spurious: exact.iter().map(|c| c.saturating_sub(n)).max().unwrap_or(0) + zero,
        pending,
        elapsed_s: elapsed.as_secs_f64(),
    })
}

/// Runs the phases into `report`, stopping at the first unclean one.
fn phases(
    s: &mut Session<'_>,
    report: &mut LifecycleReport,
    n: u64,
    stall: Duration,
) -> Result<(), SoakError> {
    let pci = report.pci.clone();
    let ring = |k: u64| move |s: &Session<'_>| s.ring(k);
    let push = |report: &mut LifecycleReport, p: Phase| {
        let clean = p.is_clean();
        report.phases.push(p);
        if clean {
            Ok(())
        } else {
            Err(SoakError::Lifecycle {
                device: report.device.clone(),
                why: format!("phase {} was not exact", report.phases.len()),
            })
        }
    };
    let p = phase(s, &pci, "intx", n, stall, &mut ring(n))?;
    push(report, p)?;

    s.wiring.lifecycle(LifecycleOp::Suspend)?;
    let msi_ev = enable_msi(s)?;
    let p = phase(s, &pci, "msi", n, stall, &mut ring(n))?;
    disable_msi(s, &msi_ev)?;
    push(report, p)?;
    s.wiring.lifecycle(LifecycleOp::Resume)?;
    let p = phase(s, &pci, "intx_resumed", n, stall, &mut ring(n))?;
    push(report, p)?;

    report.intx_after_reset = Some(s.wiring.lifecycle(LifecycleOp::Reset)?);
    let p = phase(s, &pci, "intx_reset", n, stall, &mut ring(n))?;
    push(report, p)?;

    let p = phase(s, &pci, "gsi_move", 1, stall, &mut move_gsi)?;
    push(report, p)?;
    let p = phase(s, &pci, "intx_moved", n, stall, &mut ring(n))?;
    push(report, p)
}

/// Loads the MSI ISR, routes [`msi::MSI_GSI`] to its vector, registers an
/// irqfd there and enables the function's MSI with it. Returns the eventfd.
fn enable_msi(s: &mut Session<'_>) -> Result<EventFd, SoakError> {
    let ram = s.ram();
    ram.load_idle(msi::MSI_ISR_ADDR, msi::MSI_ISR);
    let (ivt, entry) = msi::ivt_entry();
    ram.set_u32(ivt, entry);
    s.vm.vm
        .set_gsi_routing(&msi::routing()?)
        .map_err(kvm_err("set the GSI routing with the MSI route"))?;
    let ev = new_eventfd().map_err(|source| SoakError::Eventfd {
        what: "create the MSI irqfd's eventfd",
        source,
    })?;
    s.vm.vm
        .register_irqfd(&ev, msi::MSI_GSI)
        .map_err(kvm_err("register the MSI irqfd"))?;
    let d = driver(s)?;
    let fd = d.device_fd().map_err(|source| SoakError::Eventfd {
        what: "copy the VFIO device fd",
        source,
    })?;
    // An MSI is a memory write of the function's: its driver enables bus
    // mastering first.
    crate::vfio::enable_bus_master(s.wiring.device(), fd.as_fd())?;
    crate::vfio::set_msi(s.wiring.device(), fd.as_fd(), Some(ev.as_raw_fd()))?;
    Ok(ev)
}

/// Disables the function's MSI (`count = 0`) and deassigns its irqfd.
fn disable_msi(s: &mut Session<'_>, ev: &EventFd) -> Result<(), SoakError> {
    let fd = driver(s)?
        .device_fd()
        .map_err(|source| SoakError::Eventfd {
            what: "copy the VFIO device fd",
            source,
        })?;
    crate::vfio::set_msi(s.wiring.device(), fd.as_fd(), None)?;
    s.vm.vm
        .unregister_irqfd(ev, msi::MSI_GSI)
        .map_err(kvm_err("deassign the MSI irqfd"))?;
    Ok(())
}

/// The guest re-routes its line from GSI 10 to 11 (docs/protocol.md, "The
/// guest re-routes its INTx line"): both irqfds deassigned, one raise that
/// fires into the bare irq eventfd (read off it: the assertion lost in the
/// move), the same eventfds on GSI 11, one write to `resample`: the held
/// level fires again, on GSI 11.
fn move_gsi(s: &Session<'_>) -> Result<(), SoakError> {
    s.vm.vm
        .unregister_irqfd(&s._irq, guest::GSI)
        .map_err(kvm_err("deassign the irqfd on the old GSI"))?;
    if let Some(h) = &s.host {
        h.move_gsi(&s.vm, guest::GSI, guest::GSI_ALT)?;
    }
    s.ring(1)?;
    let t0 = Instant::now();
    let mut fds = [PollFd::new(borrow_eventfd(&s._irq), PollFlags::POLLIN)];
    while poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
        if t0.elapsed() > guest::STALL_BOUND {
            return Err(SoakError::Lifecycle {
                device: s.wiring.device().to_string(),
                why: "saw no interrupt while the line had no irqfd".into(),
            });
        }
    }
    let _ = s._irq.read();
    s.vm.vm
        .register_irqfd_with_resample(&s._irq, &s._resample, guest::GSI_ALT)
        .map_err(kvm_err("register the irqfd on the new GSI"))?;
    s._resample.write(1).map_err(|source| SoakError::Eventfd {
        what: "write the resample eventfd",
        source,
    })
}
