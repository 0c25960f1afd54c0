//! [`VfioIntx`]: a real PCI function's INTx through vfio-pci, the backend of
//! every `pci = "DDDD:BB:DD.F"` device.
//!
//! `vfio-ioctls` opens the container (`/dev/vfio/vfio`, type1v2 IOMMU), the
//! function's IOMMU group and the device fd ([`super::open`]). Every INTx
//! action after that is one `VFIO_DEVICE_SET_IRQS` that this module makes
//! itself on the device fd ([`super::ioctl`]), so that a failure carries the
//! kernel's errno, and so that a device can be adopted from bare fds after a
//! daemon restart ([`VfioIntx::adopt`]), which `vfio-ioctls` cannot wrap in
//! group mode. Facts and counts come from the host through [`super::probe`].
//!
//! vfio-pci keeps the contract of [`IntxActions`] in the kernel
//! (`drivers/vfio/pci/vfio_pci_intrs.c`): its hard IRQ handler masks INTx
//! and signals the trigger eventfd (`AUTOMASKED`); an unmask with the line
//! still asserted leaves it masked and signals the trigger again; every action
//! but enable is refused with `EINVAL` while INTx is disabled.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX,
};
use vmm_sys_util::eventfd::EventFd;

use super::error::{action_error, disable_outcome};
use super::ioctl;
use super::open::Opened;
use super::probe::Probe;
use crate::config::PciAddr;
use crate::vfio::{
    DeviceFacts, DeviceFds, DeviceProbe, IntxActions, IntxError, IntxInfo, IntxOp, ParkedFd,
    SimCounters, VmmFd,
};

/// A real PCI function's INTx through vfio-pci; implements
/// [`IntxDevice`](crate::vfio::IntxDevice).
///
/// Opened with [`VfioIntx::open`] (container and group through
/// `vfio-ioctls`) or taken over from a previous daemon's fds with
/// [`VfioIntx::adopt`]. Dropping it closes the device without touching INTx:
/// a route parked in systemd's fd store keeps cycling in the kernel.
pub struct VfioIntx {
    pub(super) name: String,
    pub(super) addr: PciAddr,
    pub(super) bdf: String,
    /// The VFIO device fd every ioctl goes to (a duplicate of the one
    /// `vfio-ioctls` holds, or the adopted one).
    pub(super) device: OwnedFd,
    /// The container fd (type1v2), for the VMM's DMA mappings.
    pub(super) container: OwnedFd,
    pub(super) info: IntxInfo,
    pub(super) vendor: u16,
    pub(super) device_id: u16,
    pub(super) pin: u8,
    /// The legacy IRQ the host routed the pin to (sysfs `irq`).
    pub(super) host_irq: Option<u32>,
    pub(super) pci_2_3: bool,
    pub(super) reset_works: bool,
    pub(super) gone: bool,
    pub(super) last_count: AtomicU64,
    /// Declared after `device` and `container`: dropped after them.
    pub(super) opened: Option<Opened>,
    /// The host's view of the function (sysfs, `/proc/interrupts`).
    pub(super) probe: Probe,
}

impl VfioIntx {
    /// The function's address.
    pub fn addr(&self) -> PciAddr {
        self.addr
    }

    /// The VFIO device fd (borrowed), for region access (config space, BAR
    /// mappings) by code in this process.
    pub fn device_fd(&self) -> BorrowedFd<'_> {
        self.device.as_fd()
    }

    /// The VFIO container fd (borrowed).
    pub fn container_fd(&self) -> BorrowedFd<'_> {
        self.container.as_fd()
    }

    /// Whether `VFIO_DEVICE_RESET` is available (`VFIO_DEVICE_FLAGS_RESET`).
    pub fn reset_works(&self) -> bool {
        self.reset_works
    }

    /// Whether this handle opened the group itself (`false` when adopted).
    pub fn owns_group(&self) -> bool {
        self.opened.is_some()
    }

    fn fail(&mut self, op: IntxOp, source: io::Error) -> IntxError {
        let probe = &self.probe;
        action_error(&self.name, op, source, &mut self.gone, || {
            probe.node_exists()
        })
    }

    /// One `VFIO_DEVICE_SET_IRQS`.
    fn set_irqs(
        &mut self,
        op: IntxOp,
        index: u32,
        flags: u32,
        count: u32,
        fd: Option<&EventFd>,
    ) -> Result<(), IntxError> {
        let raw = fd.map(|f| f.as_raw_fd());
        self.set_irqs_raw(op, index, flags, count, raw)
    }

    fn set_irqs_raw(
        &mut self,
        op: IntxOp,
        index: u32,
        flags: u32,
        count: u32,
        fd: Option<i32>,
    ) -> Result<(), IntxError> {
        if self.gone {
            return Err(IntxError::Gone {
                device: self.name.clone(),
            });
        }
        match ioctl::set_irqs(self.device.as_fd(), index, flags, count, fd) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(op, e)),
        }
    }
}

impl IntxActions for VfioIntx {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_trigger(&mut self, fd: &EventFd) -> Result<(), IntxError> {
        self.set_irqs(
            IntxOp::SetTrigger,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            1,
            Some(fd),
        )
    }

    fn set_unmask(&mut self, fd: Option<&EventFd>) -> Result<(), IntxError> {
        // fd -1 removes the unmask eventfd (vfio's virqfd is torn down).
        let raw = Some(fd.map_or(-1, |f| f.as_raw_fd()));
        self.set_irqs_raw(
            IntxOp::SetUnmask,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
            1,
            raw,
        )
    }

    fn mask(&mut self) -> Result<(), IntxError> {
        self.set_irqs(
            IntxOp::Mask,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_MASK,
            1,
            None,
        )
    }

    fn unmask(&mut self) -> Result<(), IntxError> {
        self.set_irqs(
            IntxOp::Unmask,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
            1,
            None,
        )
    }

    fn loopback(&mut self) -> Result<(), IntxError> {
        self.set_irqs(
            IntxOp::Loopback,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            1,
            None,
        )
    }

    fn disable(&mut self) -> Result<(), IntxError> {
        disable_outcome(self.set_irqs(
            IntxOp::Disable,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            None,
        ))
    }

    fn reset(&mut self) -> Result<(), IntxError> {
        if !self.reset_works {
            // Nothing to do: said once, at open.
            return Ok(());
        }
        if self.gone {
            return Err(IntxError::Gone {
                device: self.name.clone(),
            });
        }
        match ioctl::reset(self.device.as_fd()) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(IntxOp::Reset, e)),
        }
    }

    fn set_request(&mut self, fd: Option<&EventFd>) -> Result<(), IntxError> {
        let raw = Some(fd.map_or(-1, |f| f.as_raw_fd()));
        self.set_irqs_raw(
            IntxOp::SetRequest,
            VFIO_PCI_REQ_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            1,
            raw,
        )
    }
}

impl DeviceProbe for VfioIntx {
    fn info(&self) -> IntxInfo {
        self.info
    }

    fn facts(&self) -> DeviceFacts {
        DeviceFacts {
            pci: self.bdf.clone(),
            vendor: self.vendor,
            device: self.device_id,
            pin: self.pin,
            intx: self.info,
            shared_line: self.host_irq.is_some_and(|irq| self.probe.shared_line(irq)),
            pci_2_3: self.pci_2_3,
        }
    }

    /// The count of the host IRQ line that carries `vfio-intx(<bdf>)` in
    /// `/proc/interrupts`, summed over CPUs. vfio-pci requests that line only
    /// while INTx is enabled; in between, the last count seen is returned.
    /// On a shared line the count includes the other devices' interrupts.
    fn host_count(&self) -> u64 {
        match self.probe.intx_count() {
            Some(n) => {
                self.last_count.store(n, Ordering::Relaxed);
                n
            }
            None => self.last_count.load(Ordering::Relaxed),
        }
    }

    fn sim_counters(&self) -> Option<SimCounters> {
        None
    }

    /// PCI_STATUS through the device fd's config region: vfio-pci passes
    /// the Interrupt Status bit through from the hardware (it virtualizes
    /// only the capability-list bit of that register).
    fn intx_status(&self) -> Option<bool> {
        const PCI_STATUS: u64 = 0x06;
        const PCI_STATUS_INTERRUPT: u16 = 0x08;
        if self.gone {
            return None;
        }
        let fd = self.device.as_fd();
        let cfg = super::ioctl::region_info(
            fd,
            vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX,
        )
        .ok()?;
        let mut raw = [0u8; 2];
        super::ioctl::read_at(fd, &mut raw, cfg.offset + PCI_STATUS).ok()?;
        Some(u16::from_le_bytes(raw) & PCI_STATUS_INTERRUPT != 0)
    }

    /// vfio-pci requests the host IRQ (its `vfio-intx(<bdf>)` handler in
    /// `/proc/interrupts`) while INTx is enabled, and frees it at disable.
    fn intx_enabled(&self) -> Option<bool> {
        Some(self.probe.intx_count().is_some())
    }

    fn is_gone(&self) -> bool {
        self.gone
    }
}

impl DeviceFds for VfioIntx {
    /// `[VFIO device fd, container fd]`, fresh duplicates, in the order the
    /// attach reply names them (`vfio_device`, `vfio_container`).
    fn vmm_fds(&self) -> io::Result<Vec<(VmmFd, OwnedFd)>> {
        Ok(vec![
            (VmmFd::VfioDevice, self.device.try_clone()?),
            (VmmFd::VfioContainer, self.container.try_clone()?),
        ])
    }

    /// `dev` (the VFIO device fd, which also keeps the group open) and
    /// `container`: what [`VfioIntx::adopt`] takes back.
    fn store_fds(&self) -> Vec<(ParkedFd, BorrowedFd<'_>)> {
        vec![
            (ParkedFd::Device, self.device.as_fd()),
            (ParkedFd::Container, self.container.as_fd()),
        ]
    }

    /// The container is the device's IOMMU context: a new owner starts with
    /// no DMA mapping of the last one (who, the daemon has checked, holds
    /// no copy of the container fd any more to map new ones).
    fn hand_off(&mut self) -> io::Result<()> {
        ioctl::unmap_all_dma(self.container.as_fd())
    }
}

impl std::fmt::Debug for VfioIntx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioIntx")
            .field("name", &self.name)
            .field("pci", &self.bdf)
            .field("info", &self.info)
            .field("host_irq", &self.host_irq)
            .field("owns_group", &self.opened.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::VfioError;
    use std::path::Path;

    #[test]
    fn an_emulated_address_is_refused() {
        let e = VfioIntx::open("sim0", PciAddr::Sim(0)).unwrap_err();
        assert!(matches!(e, VfioError::NotPci { .. }), "{e}");
    }

    #[test]
    fn adopting_fds_of_the_wrong_kind_is_refused() {
        let addr: PciAddr = "0000:00:01.0".parse().unwrap();
        let a = crate::util::fd::eventfd_into_owned(crate::util::fd::new_eventfd().unwrap());
        let b = crate::util::fd::eventfd_into_owned(crate::util::fd::new_eventfd().unwrap());
        let e = VfioIntx::adopt("nic0", addr, a, b).unwrap_err();
        match e {
            VfioError::WrongFd { role, found, .. } => {
                assert_eq!(role, "device");
                assert_eq!(found, "anon_inode:[eventfd]");
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn open_names_the_device_and_what_is_missing_with_vfio_or_without() {
        // A function no host has: on a host without VFIO the container is
        // what is missing; on a VFIO host the container opens and the
        // function is what is missing. Either way the test asserts.
        let addr: PciAddr = "ffff:ff:1f.7".parse().unwrap();
        let e = VfioIntx::open("nic0", addr).unwrap_err();
        assert!(e.to_string().starts_with("nic0 ffff:ff:1f.7: "), "{e}");
        let container = matches!(e, VfioError::Container { .. });
        assert_eq!(
            container,
            !Path::new("/dev/vfio/vfio").exists(),
            "the container error exactly when /dev/vfio/vfio is missing: {e}"
        );
    }
}
