//! The host side of a real-function soak: its own count of the guest's EOIs,
//! and, for a function with no exerciser, its loopback driver.
//!
//! EOIs are counted by KVM, not by the guest: with the in-kernel irqchip the
//! soak registers a second resampling irqfd on the guest's GSI (its irq
//! eventfd is never written), and KVM signals every resamplefd on a GSI at
//! each EOI, the one vfio-pci unmasks from and this one alike. With the
//! userspace irqchip the soak's own controller counts them.
//!
//! A function with no `[device.exerciser]` is driven by vfio-pci's loopback
//! (`VFIO_IRQ_SET_DATA_NONE|ACTION_TRIGGER` on the device fd the attach
//! handed over): one trigger, then the next only after KVM has seen that
//! interrupt's EOI, so no trigger merges into a line still asserted. It runs
//! the whole path from vfio-pci's trigger through KVM (or the relay) and the
//! guest's EOI back to vfio-pci's unmask, on any INTx function.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use super::error::SoakError;
use super::vcpu::ChipCounters;
use super::vm::{kvm_err, SoakVm};
use crate::route::Irqchip;
use crate::util::fd::{borrow_eventfd, new_eventfd};
use crate::vfio::intx_loopback;

/// Counts and wanted triggers, shared with the host-side thread.
#[derive(Default)]
struct Shared {
    target: AtomicU64,
    triggered: AtomicU64,
    eois: AtomicU64,
    stop: AtomicBool,
    failed: AtomicBool,
}

/// Where the EOIs come from.
enum EoiSource {
    /// KVM's resamplefd (in-kernel irqchip).
    Resample(EventFd),
    /// The soak's userspace controller.
    Chip(Arc<ChipCounters>),
}

/// The host-side counter (and loopback driver) of one session.
pub struct HostSide {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    loopback: bool,
    // Registered with KVM as the counting irqfd (never written), with its
    // resamplefd (a copy of the one the thread reads).
    counting: Option<(EventFd, EventFd)>,
}

/// Host-side figures so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostCounts {
    /// Loopback triggers fired (0 with an exerciser).
    pub triggered: u64,
    /// EOIs KVM (or the userspace controller) saw.
    pub eois: u64,
}

impl HostCounts {
    /// The counts since `before`.
    pub fn since(self, before: HostCounts) -> HostCounts {
        HostCounts {
            triggered: self.triggered.saturating_sub(before.triggered),
            eois: self.eois.saturating_sub(before.eois),
        }
    }
}

impl HostSide {
    /// Starts counting EOIs of `vm`'s device GSI; with `loopback` (the
    /// device fd), also drives the device by loopback as cycles are asked
    /// for with [`add_target`](Self::add_target).
    pub fn start(
        device: &str,
        vm: &SoakVm,
        irqchip: Irqchip,
        chip: Option<Arc<ChipCounters>>,
        loopback: Option<OwnedFd>,
    ) -> Result<HostSide, SoakError> {
        let ev = |source| SoakError::Eventfd {
            what: "create the soak's EOI-counting irqfd",
            source,
        };
        let (source, irq) = match (irqchip, chip) {
            (Irqchip::Kernel, _) => {
                let irq = new_eventfd().map_err(ev)?;
                let eoi = new_eventfd().map_err(ev)?;
                vm.vm
                    .register_irqfd_with_resample(&irq, &eoi, super::guest::GSI)
                    .map_err(kvm_err("register the EOI-counting resampling irqfd"))?;
                let copy = eoi.try_clone().map_err(ev)?;
                (EoiSource::Resample(eoi), Some((irq, copy)))
            }
            (_, Some(c)) => (EoiSource::Chip(c), None),
            (_, None) => (EoiSource::Chip(Arc::default()), None),
        };
        let shared = Arc::new(Shared::default());
        let is_loopback = loopback.is_some();
        let (s, name) = (Arc::clone(&shared), device.to_string());
        let thread = std::thread::Builder::new()
            .name("soak-hostside".into())
            .spawn(move || serve(&name, &s, &source, loopback.as_ref()))
            .map_err(|source| SoakError::Eventfd {
                what: "start the soak's host-side thread",
                source,
            })?;
        Ok(HostSide {
            shared,
            thread: Some(thread),
            loopback: is_loopback,
            counting: irq,
        })
    }

    /// Moves the EOI-counting irqfd from GSI `from` to `to`, as the VMM
    /// moves its own when the guest re-routes its line (in-kernel irqchip;
    /// nothing to do with the userspace one).
    pub fn move_gsi(&self, vm: &SoakVm, from: u32, to: u32) -> Result<(), SoakError> {
        let Some((irq, eoi)) = &self.counting else {
            return Ok(());
        };
        vm.vm
            .unregister_irqfd(irq, from)
            .map_err(kvm_err("deassign the EOI-counting irqfd"))?;
        vm.vm
            .register_irqfd_with_resample(irq, eoi, to)
            .map_err(kvm_err("register the EOI-counting irqfd on the new GSI"))?;
        Ok(())
    }

    /// Whether the device is driven by loopback.
    pub fn is_loopback(&self) -> bool {
        self.loopback
    }

    /// Asks for `n` more loopback triggers.
    pub fn add_target(&self, n: u64) {
        self.shared.target.fetch_add(n, Ordering::SeqCst);
    }

    /// Whether a loopback trigger failed (the thread logged why).
    pub fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::SeqCst)
    }

    /// The figures so far.
    pub fn counts(&self) -> HostCounts {
        HostCounts {
            triggered: self.shared.triggered.load(Ordering::SeqCst),
            eois: self.shared.eois.load(Ordering::SeqCst),
        }
    }
}

impl Drop for HostSide {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: count EOIs; fire the next loopback trigger once every
/// earlier one has had its EOI.
fn serve(device: &str, s: &Shared, source: &EoiSource, loopback: Option<&OwnedFd>) {
    while !s.stop.load(Ordering::SeqCst) {
        let (t, eois) = (
            s.triggered.load(Ordering::SeqCst),
            s.eois.load(Ordering::SeqCst),
        );
        if let Some(fd) = loopback.filter(|_| !s.failed.load(Ordering::SeqCst)) {
            if t < s.target.load(Ordering::SeqCst) && eois >= t {
                s.triggered.fetch_add(1, Ordering::SeqCst);
                if let Err(e) = intx_loopback(device, fd.as_fd()) {
                    log::error!("{device}: {e}");
                    s.failed.store(true, Ordering::SeqCst);
                }
                continue;
            }
        }
        match source {
            EoiSource::Resample(eoi) => {
                let mut fds = [PollFd::new(borrow_eventfd(eoi), PollFlags::POLLIN)];
                if let Ok(n) = poll(&mut fds, PollTimeout::from(20u8)) {
                    if n > 0 {
                        if let Ok(v) = eoi.read() {
                            s.eois.fetch_add(v, Ordering::SeqCst);
                        }
                    }
                }
            }
            EoiSource::Chip(c) => {
                let now = c.eois.load(Ordering::SeqCst);
                if now == eois {
                    std::thread::sleep(Duration::from_micros(50));
                }
                s.eois.store(now, Ordering::SeqCst);
            }
        }
    }
}

/// The figures of a real-function run to cross-check.
#[derive(Debug, Clone, Copy)]
pub struct RealRun {
    /// Cycles asked for.
    pub requested: u64,
    /// The guest's count.
    pub delivered: u64,
    /// The host-side counts over the run.
    pub host: HostCounts,
    /// Hard interrupts on the host line (`/proc/interrupts`).
    pub hard: u64,
    /// vCPU exits over the run.
    pub exits: u64,
    /// Driven by loopback (else by an exerciser).
    pub loopback: bool,
}

/// The cross-check of a real-function run: the guest's count (`delivered`)
/// against what was asked (`requested`), the host's EOI count and, for a
/// loopback run, the host's triggers. Returns `(lost, spurious,
/// triggered)`: a cycle is lost if any count falls short of the request,
/// spurious if any exceeds it; `triggered` is the host's loopback triggers,
/// or the host line's hard interrupts for an exerciser run.
pub fn cross_check(device: &str, r: &RealRun) -> (u64, u64, u64) {
    let (requested, host) = (r.requested, r.host);
    let how = if r.loopback {
        "delivered by vfio-pci's loopback and EOId by the guest"
    } else {
        "acked and re-raised by the guest's ISR through the BAR"
    };
    log::info!(
        "{device}: {} interrupts {how}; host: {} loopback triggers, {} EOIs seen by KVM, {} hard IRQs on the host line; {} vCPU exits",
        r.delivered, host.triggered, host.eois, r.hard, r.exits
    );
    let mut counts = vec![r.delivered, host.eois];
    if r.loopback {
        counts.push(host.triggered);
    }
    let lost = counts
        .iter()
        .map(|c| requested.saturating_sub(*c))
        .max()
        .unwrap_or(0);
    let spurious = counts
        .iter()
        .map(|c| c.saturating_sub(requested))
        .max()
        .unwrap_or(0);
    if lost > 0 || spurious > 0 {
        log::error!(
            "{device}: counts disagree: {requested} asked, {} host triggers, {} guest deliveries, {} EOIs seen by KVM",
            if r.loopback { host.triggered.to_string() } else { "(exerciser)".into() },
            r.delivered,
            host.eois
        );
    }
    let triggered = if r.loopback { host.triggered } else { r.hard };
    (lost, spurious, triggered)
}
