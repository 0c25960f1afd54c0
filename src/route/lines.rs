//! The typed eventfd pairs of one level-triggered line: the VMM's and VFIO's.

use std::io;
use std::os::fd::BorrowedFd;

use vmm_sys_util::eventfd::EventFd;

use crate::util::fd::{borrow_eventfd, new_eventfd};
use crate::vfio::ParkedFd;

/// The VMM's end of one level-triggered interrupt line (crosvm calls this
/// pair `IrqLevelEvent`).
///
/// The EOI protocol:
///
/// 1. Whoever carries the device's interrupt (VFIO itself on a direct route,
///    intxd's relay otherwise) writes `irq` to assert the line. With the
///    in-kernel irqchip `irq` is a KVM irqfd registered with
///    `KVM_IRQFD_FLAG_RESAMPLE`: KVM asserts the GSI and keeps it asserted.
///    A userspace irqchip reads `irq` and asserts its own input pin.
/// 2. The guest services the device and EOIs the interrupt. KVM (or the
///    userspace chip) de-asserts the line and writes `resample`.
/// 3. Whoever owns INTx's unmask reads `resample` and unmasks INTx. If the
///    device still holds its line high, vfio-pci masks again and signals
///    its trigger at once, so step 1 repeats: a level line never loses an
///    interrupt and never fires twice for one assertion.
///
/// Between steps 1 and 3 INTx stays masked (vfio-pci masks it when it fires,
/// `VFIO_IRQ_INFO_AUTOMASKED`): a lost `resample` leaves the line masked,
/// which is what the relay's EOI watchdog and the health scan watch for.
#[derive(Debug)]
pub struct VmmLine {
    /// Written to assert the line in the guest.
    pub irq: EventFd,
    /// Readable when the guest has EOI'd the interrupt.
    pub resample: EventFd,
}

/// VFIO's end of a function's INTx (`VFIO_PCI_INTX_IRQ_INDEX`).
///
/// vfio-pci signals `trigger` when the line rises while unmasked, masking
/// INTx as it does; a write to `unmask` unmasks it (and re-signals `trigger`
/// if the line is still high). On a direct route these are the VMM's own
/// [`VmmLine`] fds; a relay route creates this pair and carries each signal
/// across.
#[derive(Debug)]
pub struct VfioLine {
    /// Readable when the device fired.
    pub trigger: EventFd,
    /// Written to unmask INTx.
    pub unmask: EventFd,
}

impl VfioLine {
    /// A fresh pair of non-blocking eventfds.
    pub fn new() -> io::Result<VfioLine> {
        Ok(VfioLine {
            trigger: new_eventfd()?,
            unmask: new_eventfd()?,
        })
    }
}

impl VmmLine {
    pub(super) fn fds(&self) -> [(ParkedFd, BorrowedFd<'_>); 2] {
        [
            (ParkedFd::Irq, borrow_eventfd(&self.irq)),
            (ParkedFd::Resample, borrow_eventfd(&self.resample)),
        ]
    }
}

impl VfioLine {
    pub(super) fn fds(&self) -> [(ParkedFd, BorrowedFd<'_>); 2] {
        [
            (ParkedFd::Trigger, borrow_eventfd(&self.trigger)),
            (ParkedFd::Unmask, borrow_eventfd(&self.unmask)),
        ]
    }
}
