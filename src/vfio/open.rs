//! Opening a real function ([`VfioIntx::open`], through `vfio-ioctls`) or
//! taking one over from a previous daemon's fds ([`VfioIntx::adopt`]), and
//! the checks both make: a PCI device, with an INTx vector that is signalled
//! by eventfd and maskable. The identity comes from config space.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_INFO_AUTOMASKED,
    VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_INFO_MASKABLE, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_INTX_IRQ_INDEX,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};

use super::device::VfioIntx;
use super::error::{explain, VfioError};
use super::ioctl;
use super::probe::Probe;
use crate::config::PciAddr;
use crate::pci::{HostFs, DEVICES_DIR};
use crate::vfio::IntxInfo;

/// Link text of a VFIO device fd in `/proc/self/fd`.
const DEVICE_FD_LINK: &str = "anon_inode:[vfio-device]";
/// Link text of a VFIO container fd.
const CONTAINER_FD_LINK: &str = "/dev/vfio/vfio";
/// The VFIO container's character device: the misc major and `VFIO_MINOR`
/// (`include/linux/miscdevice.h`).
const CONTAINER_RDEV: (u64, u64) = (10, 196);

/// Whether `mode`/`rdev` (of an `fstat`) are the VFIO container's device.
fn is_container_node(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR
        && (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)) == CONTAINER_RDEV
}

/// Whether `fd` is a VFIO container fd. Its link text is not enough: a
/// path is shown relative to the caller's root only when the fd's mount is
/// one of the caller's; opened in another mount namespace (the last daemon
/// of a unit with `ProtectSystem=`: each start gets a namespace of its own)
/// it reads `/vfio/vfio`, relative to its devtmpfs.
fn is_container(fd: std::os::fd::BorrowedFd<'_>, link: &str) -> bool {
    link == CONTAINER_FD_LINK
        || nix::sys::stat::fstat(fd).is_ok_and(|st| is_container_node(st.st_mode, st.st_rdev))
}

/// The `vfio-ioctls` objects behind a device this process opened itself.
/// They close after [`VfioIntx`]'s own duplicates (field order), so that
/// their close is the device's last and `VFIO_GROUP_UNSET_CONTAINER` works.
pub(super) struct Opened {
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
        // vfio-ioctls reads the function's sysfs node itself (its
        // `iommu_group` link); everything this crate reads goes through
        // the probe.
        let sysfs = Path::new("/sys").join(DEVICES_DIR).join(&bdf);
        let device = VfioDevice::new(&sysfs, ops, false).map_err(|e| {
            let (hint, source) = explain(e);
            VfioError::Open {
                device: name.to_string(),
                addr,
                hint,
                source,
            }
        })?;
        let dup_err = |what| VfioError::query(name, addr, what);
        let device_fd = ioctl::dup_of(&device).map_err(dup_err("duplicate the VFIO device fd"))?;
        let container_fd =
            ioctl::dup_of(&*container).map_err(dup_err("duplicate the VFIO container fd"))?;
        let opened = Opened {
            tag: format!("{name} {bdf}"),
            device: Some(device),
            container: Some(container),
        };
        let probe = Probe::new(HostFs::real(), &bdf);
        Self::from_fds(name, addr, probe, device_fd, container_fd, Some(opened))
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
        let probe = Probe::new(HostFs::real(), &bdf);
        let device_link = probe.fd_link(device_fd.as_fd());
        let container_link = probe.fd_link(container_fd.as_fd());
        for (role, expected, ok, found) in [
            (
                "device",
                "VFIO device fd",
                device_link == DEVICE_FD_LINK,
                device_link,
            ),
            (
                "container",
                "VFIO container fd",
                is_container(container_fd.as_fd(), &container_link),
                container_link,
            ),
        ] {
            if !ok {
                return Err(VfioError::WrongFd {
                    device: name.to_string(),
                    addr,
                    role,
                    expected,
                    found,
                });
            }
        }
        Self::from_fds(name, addr, probe, device_fd, container_fd, None)
    }

    fn from_fds(
        name: &str,
        addr: PciAddr,
        probe: Probe,
        device: OwnedFd,
        container: OwnedFd,
        opened: Option<Opened>,
    ) -> Result<VfioIntx, VfioError> {
        let query = |what| VfioError::query(name, addr, what);
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
            log::info!("{name} {addr}: the function has no reset method, so a detach cannot reset it for the next VMM");
        }
        let host_irq = probe.host_irq();
        Ok(VfioIntx {
            name: name.to_string(),
            addr,
            bdf: addr.to_string(),
            device,
            container,
            info,
            vendor: u16::from_le_bytes([head[0], head[1]]),
            device_id: u16::from_le_bytes([head[2], head[3]]),
            pin: head[0x3d],
            host_irq,
            pci_2_3: probe.intx_masking_enabled(),
            reset_works,
            gone: false,
            last_count: AtomicU64::new(0),
            opened,
            probe,
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

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::makedev;

    #[test]
    fn the_container_is_known_by_its_device_number() {
        let (mode, vfio) = (libc::S_IFCHR | 0o666, makedev(10, 196));
        assert!(is_container_node(mode, vfio));
        assert!(
            !is_container_node(libc::S_IFBLK | 0o666, vfio),
            "a block device"
        );
        assert!(!is_container_node(mode, makedev(10, 232)), "/dev/kvm");
        assert!(!is_container_node(libc::S_IFREG | 0o644, 0), "a file");
    }

    #[test]
    fn an_fd_of_another_kind_is_no_container_whatever_its_link_reads() {
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        assert!(!is_container(null.as_fd(), "/vfio/vfio"));
    }
}
