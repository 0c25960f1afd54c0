//! [`VfioIntx`]: a real PCI function's INTx through vfio-pci, the backend of
//! every `pci = "DDDD:BB:DD.F"` device.
//!
//! `vfio-ioctls` opens the container (`/dev/vfio/vfio`, type1v2 IOMMU), the
//! function's IOMMU group and the device fd. Every INTx action after that is
//! one `VFIO_DEVICE_SET_IRQS` that this module makes itself on the device fd
//! ([`super::ioctl`]), so that a failure carries the kernel's errno, and so
//! that a device can be adopted from bare fds after a daemon restart
//! ([`VfioIntx::adopt`]), which `vfio-ioctls` cannot wrap in group mode.
//!
//! vfio-pci keeps the contract of [`IntxActions`] in the kernel
//! (`drivers/vfio/pci/vfio_pci_intrs.c`): its hard IRQ handler masks INTx
//! and signals the trigger eventfd (`AUTOMASKED`); an unmask with the line
//! still asserted leaves it masked and signals the trigger again; every action
//! but enable is refused with `EINVAL` while INTx is disabled.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_IRQ_SET_ACTION_MASK,
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use super::interrupts::{self, vfio_intx_action};
use super::ioctl;
use crate::config::PciAddr;
use crate::vfio::{
    DeviceFacts, DeviceFds, DeviceProbe, IntxActions, IntxError, IntxInfo, IntxOp, ParkedFd,
    SimCounters, VmmFd,
};

/// Where sysfs lists PCI functions.
const SYSFS_DEVICES: &str = "/sys/bus/pci/devices";
/// vfio-pci's switch that turns off INTx masking through DisINTx.
const NOINTXMASK: &str = "/sys/module/vfio_pci/parameters/nointxmask";
/// Link text of a VFIO device fd in `/proc/self/fd`.
const DEVICE_FD_LINK: &str = "anon_inode:[vfio-device]";
/// Link text of a VFIO container fd.
const CONTAINER_FD_LINK: &str = "/dev/vfio/vfio";

/// Why a VFIO device could not be opened or adopted.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The address is an emulated device's.
    #[error(
        "{device}: `{addr}` is not a PCI address; only real functions are opened through VFIO"
    )]
    NotPci {
        /// Device name from the config.
        device: String,
        /// The address.
        addr: PciAddr,
    },
    /// `/dev/vfio/vfio` could not be opened or does not offer type1v2.
    #[error("{device} {addr}: cannot open the VFIO container /dev/vfio/vfio: {hint}")]
    Container {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// What failed, and what to check.
        hint: String,
        /// The cause: the errno where `vfio-ioctls` kept one.
        #[source]
        source: Cause,
    },
    /// The group or the device could not be opened.
    #[error("{device} {addr}: cannot open it through its VFIO group: {hint}")]
    Open {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// What failed, and what to check.
        hint: String,
        /// The cause: the errno where `vfio-ioctls` kept one.
        #[source]
        source: Cause,
    },
    /// A query on the device fd failed.
    #[error("{device} {addr}: could not {what}")]
    Query {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// The query.
        what: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The device fd is not a PCI device's.
    #[error("{device} {addr}: the VFIO device is not a PCI function (device flags {flags:#x})")]
    NotPciDevice {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// `vfio_device_info.flags`.
        flags: u32,
    },
    /// VFIO reports no INTx vector.
    #[error("{device} {addr}: the function has no INTx pin (VFIO reports 0 INTx vectors; its Interrupt Pin register is 0, or vfio-pci was loaded with nointx)")]
    NoIntx {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
    },
    /// INTx cannot be masked, or not signalled through an eventfd.
    #[error("{device} {addr}: vfio-pci cannot {what} its INTx (VFIO_DEVICE_GET_IRQ_INFO flags {flags:#x}), and a level interrupt needs it")]
    Unsupported {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// `mask` or `signal through an eventfd`.
        what: &'static str,
        /// `vfio_irq_info.flags`.
        flags: u32,
    },
    /// An fd handed to [`VfioIntx::adopt`] is of the wrong kind.
    #[error("{device} {addr}: the {role} fd is `{found}`, not a {expected}")]
    WrongFd {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// `device` or `container`.
        role: &'static str,
        /// What it should be.
        expected: &'static str,
        /// Its `/proc/self/fd` link text.
        found: String,
    },
}

/// The cause of a failed open, boxed.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Splits a `vfio-ioctls` error into what failed (with what to check) and
/// its cause. The crate's messages repeat their cause, so the errno becomes
/// the source here and the step goes into our own message.
fn explain(e: vfio_ioctls::VfioError) -> (String, Cause) {
    use vfio_ioctls::VfioError as E;
    let step = |s: &str| s.to_string();
    match e {
        E::OpenContainer(io) => (
            step("is the vfio module loaded (modprobe vfio-pci)?"),
            Box::new(io),
        ),
        E::VfioApiVersion | E::VfioExtension | E::VfioInvalidType => (
            step("the kernel's VFIO offers no type1v2 IOMMU (is there an IOMMU, and vfio_iommu_type1 loaded?)"),
            Box::new(e),
        ),
        E::InvalidPath => (
            step("sysfs shows no such function, or no iommu_group for it (no IOMMU, or it is off: intel_iommu=on / amd_iommu=on)"),
            Box::new(e),
        ),
        E::OpenGroup(io, group) => {
            let hint = if io.raw_os_error() == Some(libc::EBUSY) {
                format!("/dev/vfio/{group} is already open (another VMM, or a previous intxd whose fds were not handed over)")
            } else {
                format!("cannot open /dev/vfio/{group} (is the function bound to vfio-pci?)")
            };
            (hint, Box::new(io))
        }
        E::GroupViable => (
            step("its IOMMU group is not viable: every function in the group must be bound to vfio-pci or have no driver"),
            Box::new(e),
        ),
        E::ContainerSetIOMMU(errno) => (
            step("the IOMMU refused the type1v2 container (without interrupt remapping, vfio_iommu_type1.allow_unsafe_interrupts=1 is needed)"),
            Box::new(errno),
        ),
        E::GroupGetDeviceFD(errno) => (
            step("the group refused the device fd (VFIO_GROUP_GET_DEVICE_FD; is the function bound to vfio-pci, and not open elsewhere?)"),
            Box::new(errno),
        ),
        E::VfioDeviceGetInfo(errno) => (step("VFIO_DEVICE_GET_INFO failed"), Box::new(errno)),
        E::VfioDeviceGetRegionInfo(errno) => {
            (step("VFIO_DEVICE_GET_REGION_INFO failed"), Box::new(errno))
        }
        E::SetDeviceAttr(errno) => (step("KVM refused the VFIO group"), Box::new(errno)),
        other => (step("vfio-ioctls failed"), Box::new(other)),
    }
}

/// The `vfio-ioctls` objects behind a device this process opened itself.
/// They close after [`VfioIntx`]'s own duplicates (field order), so that
/// their close is the device's last and `VFIO_GROUP_UNSET_CONTAINER` works.
struct Opened {
    tag: String,
    device: Option<VfioDevice>,
    container: Option<Arc<VfioContainer>>,
}

impl Drop for Opened {
    fn drop(&mut self) {
        let device = self.device.take();
        // vfio-ioctls re-reads the sysfs `iommu_group` link right after
        // closing the device fd, and unwraps it. If the function is being
        // hot-unplugged, that close lets the removal finish and the link can
        // vanish first: contain that panic rather than take the daemon down.
        let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(device)));
        if closed.is_err() {
            log::warn!(
                "{}: the function went away while its VFIO device was being closed; its group is closed with the container",
                self.tag
            );
        }
        drop(self.container.take());
    }
}

/// A real PCI function's INTx through vfio-pci; implements
/// [`IntxDevice`](crate::vfio::IntxDevice).
///
/// Opened with [`VfioIntx::open`] (container and group through
/// `vfio-ioctls`) or taken over from a previous daemon's fds with
/// [`VfioIntx::adopt`]. Dropping it closes the device without touching INTx:
/// a route parked in systemd's fd store keeps cycling in the kernel.
pub struct VfioIntx {
    name: String,
    addr: PciAddr,
    bdf: String,
    /// The VFIO device fd every ioctl goes to (a duplicate of the one
    /// `vfio-ioctls` holds, or the adopted one).
    device: OwnedFd,
    /// The container fd (type1v2), for the VMM's DMA mappings.
    container: OwnedFd,
    info: IntxInfo,
    vendor: u16,
    device_id: u16,
    pin: u8,
    /// The legacy IRQ the host routed the pin to (sysfs `irq`).
    host_irq: Option<u32>,
    pci_2_3: bool,
    reset_works: bool,
    gone: bool,
    last_count: AtomicU64,
    /// Declared last: dropped after `device` and `container` above.
    opened: Option<Opened>,
}

impl VfioIntx {
    /// Opens the function at `addr` (bound to vfio-pci) through its VFIO
    /// group in a new type1v2 container, and checks that its INTx can be
    /// used: at least one vector, signalled by eventfd, maskable.
    pub fn open(name: &str, addr: PciAddr) -> Result<VfioIntx, VfioError> {
        let bdf = bdf_of(name, addr)?;
        let container = VfioContainer::new(None).map_err(|e| {
            let (hint, source) = explain(e);
            VfioError::Container {
                device: name.to_string(),
                addr,
                hint,
                source,
            }
        })?;
        let container = Arc::new(container);
        let ops: Arc<dyn VfioOps> = container.clone();
        let sysfs = Path::new(SYSFS_DEVICES).join(&bdf);
        let device = VfioDevice::new(&sysfs, ops, false).map_err(|e| {
            let (hint, source) = explain(e);
            VfioError::Open {
                device: name.to_string(),
                addr,
                hint,
                source,
            }
        })?;
        let dup_err = |what: &'static str| {
            move |source| VfioError::Query {
                device: name.to_string(),
                addr,
                what,
                source,
            }
        };
        let device_fd = ioctl::dup_of(&device).map_err(dup_err("duplicate the VFIO device fd"))?;
        let container_fd =
            ioctl::dup_of(&*container).map_err(dup_err("duplicate the VFIO container fd"))?;
        let opened = Opened {
            tag: format!("{name} {bdf}"),
            device: Some(device),
            container: Some(container),
        };
        Self::from_fds(name, addr, bdf, device_fd, container_fd, Some(opened))
    }

    /// Takes over a device that a previous daemon opened and parked in
    /// systemd's fd store: its VFIO device fd and its container fd. (A VFIO
    /// group can be open only once, and the parked device fd keeps it open,
    /// so a restarted daemon cannot [`open`](Self::open) it again.) INTx is
    /// left exactly as it is: a live route keeps cycling.
    pub fn adopt(
        name: &str,
        addr: PciAddr,
        device_fd: OwnedFd,
        container_fd: OwnedFd,
    ) -> Result<VfioIntx, VfioError> {
        let bdf = bdf_of(name, addr)?;
        for (role, fd, expected, want) in [
            (
                "device",
                device_fd.as_fd(),
                "VFIO device fd",
                DEVICE_FD_LINK,
            ),
            (
                "container",
                container_fd.as_fd(),
                "VFIO container fd",
                CONTAINER_FD_LINK,
            ),
        ] {
            let found = fd_link(fd);
            if found != want {
                return Err(VfioError::WrongFd {
                    device: name.to_string(),
                    addr,
                    role,
                    expected,
                    found,
                });
            }
        }
        Self::from_fds(name, addr, bdf, device_fd, container_fd, None)
    }

    fn from_fds(
        name: &str,
        addr: PciAddr,
        bdf: String,
        device: OwnedFd,
        container: OwnedFd,
        opened: Option<Opened>,
    ) -> Result<VfioIntx, VfioError> {
        let query = |what: &'static str| {
            move |source| VfioError::Query {
                device: name.to_string(),
                addr,
                what,
                source,
            }
        };
        let dev = device.as_fd();
        let dinfo = ioctl::device_info(dev)
            .map_err(query("read the device info (VFIO_DEVICE_GET_INFO)"))?;
        if dinfo.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(VfioError::NotPciDevice {
                device: name.to_string(),
                addr,
                flags: dinfo.flags,
            });
        }
        let irq = ioctl::irq_info(dev, VFIO_PCI_INTX_IRQ_INDEX)
            .map_err(query("read the INTx info (VFIO_DEVICE_GET_IRQ_INFO)"))?;
        let info = IntxInfo {
            count: irq.count,
            eventfd: irq.flags & VFIO_IRQ_INFO_EVENTFD != 0,
            maskable: irq.flags & VFIO_IRQ_INFO_MASKABLE != 0,
            automasked: irq.flags & VFIO_IRQ_INFO_AUTOMASKED != 0,
        };
        if info.count == 0 {
            return Err(VfioError::NoIntx {
                device: name.to_string(),
                addr,
            });
        }
        for (ok, what) in [
            (info.eventfd, "signal through an eventfd"),
            (info.maskable, "mask"),
        ] {
            if !ok {
                return Err(VfioError::Unsupported {
                    device: name.to_string(),
                    addr,
                    what,
                    flags: irq.flags,
                });
            }
        }
        let cfg = ioctl::region_info(dev, VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(query("find config space (VFIO_DEVICE_GET_REGION_INFO)"))?;
        let mut head = [0u8; 0x40];
        ioctl::read_at(dev, &mut head, cfg.offset).map_err(query("read config space"))?;
        let reset_works = dinfo.flags & VFIO_DEVICE_FLAGS_RESET != 0;
        if !reset_works {
            log::info!("{name} {bdf}: the function has no reset method, so a detach cannot reset it for the next VMM");
        }
        let host_irq = std::fs::read_to_string(Path::new(SYSFS_DEVICES).join(&bdf).join("irq"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&n| n != 0);
        Ok(VfioIntx {
            name: name.to_string(),
            addr,
            bdf,
            device,
            container,
            info,
            vendor: u16::from_le_bytes([head[0], head[1]]),
            device_id: u16::from_le_bytes([head[2], head[3]]),
            pin: head[0x3d],
            host_irq,
            pci_2_3: intx_masking_enabled(),
            reset_works,
            gone: false,
            last_count: AtomicU64::new(0),
            opened,
        })
    }

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

    fn sysfs_dir(&self) -> PathBuf {
        Path::new(SYSFS_DEVICES).join(&self.bdf)
    }

    fn fail(&mut self, op: IntxOp, source: io::Error) -> IntxError {
        // A removed function's sysfs node is gone; ENODEV alone also means
        // "no IRQ assigned" at enable, which is not a removal.
        if source.raw_os_error() == Some(libc::ENODEV) && !self.sysfs_dir().exists() {
            self.gone = true;
        }
        if self.gone {
            return IntxError::Gone {
                device: self.name.clone(),
            };
        }
        IntxError::Action {
            device: self.name.clone(),
            op,
            source,
        }
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

    fn read_interrupts() -> Vec<interrupts::IrqRow> {
        std::fs::read_to_string("/proc/interrupts")
            .map(|t| interrupts::parse(&t))
            .unwrap_or_default()
    }

    /// Whether the host IRQ line is shared: another PCI function reports the
    /// same legacy IRQ in sysfs, or `/proc/interrupts` shows a handler other
    /// than ours on it.
    fn shared_line(&self) -> bool {
        let Some(irq) = self.host_irq else {
            return false;
        };
        let ours = vfio_intx_action(&self.bdf);
        let rows = Self::read_interrupts();
        if interrupts::row_of_irq(&rows, irq).is_some_and(|r| r.actions.iter().any(|a| *a != ours))
        {
            return true;
        }
        let Ok(dir) = std::fs::read_dir(SYSFS_DEVICES) else {
            return false;
        };
        dir.flatten()
            .filter(|e| e.file_name().to_string_lossy() != self.bdf.as_str())
            .any(|e| {
                std::fs::read_to_string(e.path().join("irq"))
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    == Some(irq)
            })
    }
}

fn bdf_of(name: &str, addr: PciAddr) -> Result<String, VfioError> {
    match addr {
        PciAddr::Bdf { .. } => Ok(addr.to_string()),
        PciAddr::Sim(_) => Err(VfioError::NotPci {
            device: name.to_string(),
            addr,
        }),
    }
}

fn fd_link(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("<unreadable: {e}>"))
}

/// Whether vfio-pci masks INTx through the function's DisINTx bit (PCI 2.3
/// INTx masking, `vdev->pci_2_3`), which is what lets it share the line.
///
/// The kernel does not show `pci_2_3` to userspace. vfio-pci sets it unless
/// it was loaded with `nointxmask=1`, or the PCI core found at enumeration
/// that the function's DisINTx bit does not stick (`broken_intx_masking`,
/// also invisible here). So this is the module switch: true unless
/// `nointxmask` is set. Where it is wrong (a function with broken masking),
/// vfio-pci falls back to masking the whole host line and requests it
/// exclusively, and an enable on a shared line fails with `EBUSY`.
fn intx_masking_enabled() -> bool {
    std::fs::read_to_string(NOINTXMASK)
        .map(|s| !matches!(s.trim(), "Y" | "y" | "1"))
        .unwrap_or(true)
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
        let r = self.set_irqs(
            IntxOp::Disable,
            VFIO_PCI_INTX_IRQ_INDEX,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            0,
            None,
        );
        match r {
            // vfio-pci answers EINVAL to `count = 0` when INTx is already
            // off (`vfio_pci_set_intx_trigger`): disable is idempotent here.
            Err(IntxError::Action { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) =>
            {
                Ok(())
            }
            r => r,
        }
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
            shared_line: self.shared_line(),
            pci_2_3: self.pci_2_3,
        }
    }

    /// The count of the host IRQ line that carries `vfio-intx(<bdf>)` in
    /// `/proc/interrupts`, summed over CPUs. vfio-pci requests that line only
    /// while INTx is enabled; in between, the last count seen is returned.
    /// On a shared line the count includes the other devices' interrupts.
    fn host_count(&self) -> u64 {
        let rows = Self::read_interrupts();
        match interrupts::row_with_action(&rows, &vfio_intx_action(&self.bdf)) {
            Some(r) => {
                self.last_count.store(r.total, Ordering::Relaxed);
                r.total
            }
            None => self.last_count.load(Ordering::Relaxed),
        }
    }

    fn sim_counters(&self) -> Option<SimCounters> {
        None
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
    fn open_without_vfio_names_the_device_and_the_container() {
        if Path::new("/dev/vfio/vfio").exists() {
            return; // a VFIO host: this test is about hosts without it
        }
        let addr: PciAddr = "0000:00:01.0".parse().unwrap();
        let e = VfioIntx::open("nic0", addr).unwrap_err();
        assert!(matches!(e, VfioError::Container { .. }), "{e}");
        assert!(e.to_string().starts_with("nic0 0000:00:01.0: "), "{e}");
    }
}
