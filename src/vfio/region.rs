//! A VMM's view of a function's regions through its VFIO device fd: the
//! command register that lets it decode its BARs, and one page of a memory
//! BAR mapped into this process (what a VMM hands to KVM as a memslot so
//! that its guest reaches the device without exits).
#![allow(unsafe_code)]

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_BAR5_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_WRITE,
};

use super::ioctl;

/// The PCI command register's offset in config space.
const PCI_COMMAND: u64 = 0x04;
/// Memory Space Enable.
const PCI_COMMAND_MEMORY: u16 = 0x0002;
/// Bus Master Enable.
const PCI_COMMAND_MASTER: u16 = 0x0004;
/// Interrupt Disable (DisINTx).
const PCI_COMMAND_INTX_DISABLE: u16 = 0x0400;

/// The size of the mapped part of a BAR: one page.
pub const BAR_PAGE: usize = 4096;

/// Whether `offset` names a 4-byte register inside the mapped first
/// [`BAR_PAGE`] bytes of a BAR: the one bounds check of BAR registers.
pub const fn is_bar_register(offset: u64) -> bool {
    offset % 4 == 0 && offset < BAR_PAGE as u64
}

/// Errors of region access.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// Not a BAR index.
    #[error("{device}: BAR {bar} does not exist (a PCI function has BARs 0 to 5)")]
    NoSuchBar {
        /// Device name.
        device: String,
        /// The BAR.
        bar: u32,
    },
    /// `VFIO_DEVICE_GET_REGION_INFO` failed.
    #[error("{device}: could not read the VFIO region info of {what}")]
    Info {
        /// Device name.
        device: String,
        /// `BAR n` or `config space`.
        what: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The BAR cannot be mapped.
    #[error("{device}: BAR {bar} cannot be mapped (VFIO region flags {flags:#x}, size {size:#x}): it must be a writable, mmap-able memory BAR of at least {BAR_PAGE} bytes; an I/O BAR or an unimplemented one is not")]
    NotMappable {
        /// Device name.
        device: String,
        /// The BAR.
        bar: u32,
        /// `vfio_region_info.flags`.
        flags: u32,
        /// `vfio_region_info.size`.
        size: u64,
    },
    /// `mmap` failed.
    #[error("{device}: could not map the first page of BAR {bar}")]
    Mmap {
        /// Device name.
        device: String,
        /// The BAR.
        bar: u32,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The command register could not be read or written.
    #[error("{device}: could not {what} the PCI command register")]
    Command {
        /// Device name.
        device: String,
        /// `read` or `write`.
        what: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// `VFIO_DEVICE_SET_IRQS` (INTx loopback) failed.
    #[error("{device}: could not fire its INTx trigger through the VFIO device fd (VFIO_IRQ_SET_DATA_NONE|ACTION_TRIGGER); is INTx enabled (attached) on it?")]
    Loopback {
        /// Device name.
        device: String,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// `VFIO_DEVICE_SET_IRQS` on the MSI index failed.
    #[error("{device}: could not {what} MSI through the VFIO device fd (VFIO_DEVICE_SET_IRQS on VFIO_PCI_MSI_IRQ_INDEX); vfio-pci refuses MSI while INTx is enabled: suspend INTx first")]
    Msi {
        /// Device name.
        device: String,
        /// `enable` or `disable`.
        what: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// A register offset outside the mapped page, or not 4-byte aligned.
    #[error("{device}: offset {offset:#x} of BAR {bar} is not a 4-byte register within its first {BAR_PAGE} bytes")]
    Offset {
        /// Device name.
        device: String,
        /// The BAR.
        bar: u32,
        /// The offset.
        offset: u64,
    },
}

/// Fires the function's INTx trigger eventfd once, as vfio-pci's loopback
/// does (`VFIO_IRQ_SET_DATA_NONE|ACTION_TRIGGER`): the same interrupt as a
/// device assertion from the trigger on, with no device register involved
/// (vfio-pci does not mask for it).
pub fn intx_loopback(device: &str, fd: BorrowedFd<'_>) -> Result<(), RegionError> {
    ioctl::intx_loopback(fd).map_err(|source| RegionError::Loopback {
        device: device.to_string(),
        source,
    })
}

/// Enables the function's MSI (one vector) with `trigger` as its eventfd
/// (`ACTION_TRIGGER|DATA_EVENTFD`, count 1: vfio-pci enables the MSI
/// capability in hardware), or with `None` disables it (count 0).
pub fn set_msi(
    device: &str,
    fd: BorrowedFd<'_>,
    trigger: Option<RawFd>,
) -> Result<(), RegionError> {
    let flags = VFIO_IRQ_SET_ACTION_TRIGGER
        | if trigger.is_some() {
            VFIO_IRQ_SET_DATA_EVENTFD
        } else {
            VFIO_IRQ_SET_DATA_NONE
        };
    let count = u32::from(trigger.is_some());
    ioctl::set_irqs(fd, VFIO_PCI_MSI_IRQ_INDEX, flags, count, trigger).map_err(|source| {
        RegionError::Msi {
            device: device.to_string(),
            what: if trigger.is_some() {
                "enable"
            } else {
                "disable"
            },
            source,
        }
    })
}

/// Sets Memory Space Enable and clears Interrupt Disable in the function's
/// command register, through VFIO's config region, as a guest's driver
/// would before it uses a memory BAR and INTx. (vfio-pci virtualizes
/// DisINTx: with it set, vfio-pci itself keeps INTx masked.)
pub fn enable_memory_and_intx(device: &str, fd: BorrowedFd<'_>) -> Result<(), RegionError> {
    update_command(device, fd, PCI_COMMAND_MEMORY, PCI_COMMAND_INTX_DISABLE)
}

/// Sets Bus Master Enable, as a guest's driver does before the function
/// may write memory, which includes its MSI messages.
pub fn enable_bus_master(device: &str, fd: BorrowedFd<'_>) -> Result<(), RegionError> {
    update_command(device, fd, PCI_COMMAND_MASTER, 0)
}

/// Sets the `set` bits and clears the `clear` bits of the command register.
fn update_command(
    device: &str,
    fd: BorrowedFd<'_>,
    set: u16,
    clear: u16,
) -> Result<(), RegionError> {
    let cfg = ioctl::region_info(fd, VFIO_PCI_CONFIG_REGION_INDEX).map_err(|source| {
        RegionError::Info {
            device: device.to_string(),
            what: "config space".into(),
            source,
        }
    })?;
    let cmd_err = |what: &'static str| {
        move |source| RegionError::Command {
            device: device.to_string(),
            what,
            source,
        }
    };
    let mut raw = [0u8; 2];
    ioctl::read_at(fd, &mut raw, cfg.offset + PCI_COMMAND).map_err(cmd_err("read"))?;
    let cmd = u16::from_le_bytes(raw);
    let want = (cmd | set) & !clear;
    if want != cmd {
        ioctl::write_at(fd, &want.to_le_bytes(), cfg.offset + PCI_COMMAND)
            .map_err(cmd_err("write"))?;
    }
    Ok(())
}

/// The first page of a memory BAR, mapped shared through the VFIO device
/// fd. Registers are accessed with 32-bit volatile loads and stores only.
pub struct BarPage {
    ptr: NonNull<u8>,
    device: String,
    bar: u32,
}

// SAFETY: the mapping is device memory that lives until `drop`; every access
// is a single aligned volatile 32-bit load or store, which the device sees
// as one bus transaction whichever thread makes it.
unsafe impl Send for BarPage {}
// SAFETY: as above; no Rust reference into the mapping is ever created.
unsafe impl Sync for BarPage {}

impl BarPage {
    /// Maps the first [`BAR_PAGE`] bytes of BAR `bar` of the device behind
    /// `fd` (read/write, shared).
    pub fn map(device: &str, fd: BorrowedFd<'_>, bar: u32) -> Result<BarPage, RegionError> {
        if bar > VFIO_PCI_BAR5_REGION_INDEX {
            return Err(RegionError::NoSuchBar {
                device: device.to_string(),
                bar,
            });
        }
        let info = ioctl::region_info(fd, bar).map_err(|source| RegionError::Info {
            device: device.to_string(),
            what: format!("BAR {bar}"),
            source,
        })?;
        let need = VFIO_REGION_INFO_FLAG_MMAP | VFIO_REGION_INFO_FLAG_WRITE;
        if info.flags & need != need || info.size < BAR_PAGE as u64 {
            return Err(RegionError::NotMappable {
                device: device.to_string(),
                bar,
                flags: info.flags,
                size: info.size,
            });
        }
        let mmap_err = |source: io::Error| RegionError::Mmap {
            device: device.to_string(),
            bar,
            source,
        };
        let offset = i64::try_from(info.offset)
            .map_err(|_| mmap_err(io::Error::from_raw_os_error(libc::EOVERFLOW)))?;
        let len = NonZeroUsize::new(BAR_PAGE)
            .ok_or_else(|| mmap_err(io::ErrorKind::InvalidInput.into()))?;
        // SAFETY: a fresh shared mapping of device memory at an address the
        // kernel picks; it aliases no Rust object. vfio-pci checks the range
        // against the region.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                offset,
            )
        }
        .map_err(|e| mmap_err(e.into()))?;
        Ok(BarPage {
            ptr: ptr.cast(),
            device: device.to_string(),
            bar,
        })
    }

    /// The mapping's address in this process (for `KVM_SET_USER_MEMORY_REGION`).
    pub fn host_addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The mapping's length, [`BAR_PAGE`].
    pub fn len(&self) -> usize {
        BAR_PAGE
    }

    /// Always false: a mapping is one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn reg(&self, offset: u64) -> Result<*mut u32, RegionError> {
        if !is_bar_register(offset) {
            return Err(RegionError::Offset {
                device: self.device.clone(),
                bar: self.bar,
                offset,
            });
        }
        // SAFETY: offset + 4 <= BAR_PAGE (checked), so the pointer stays
        // inside the mapping.
        Ok(unsafe { self.ptr.as_ptr().add(offset as usize) }.cast::<u32>())
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: u64, value: u32) -> Result<(), RegionError> {
        let p = self.reg(offset)?;
        // SAFETY: `p` is 4-byte aligned (the page is, and offset % 4 == 0)
        // and inside the live mapping; a volatile store is one 32-bit MMIO
        // write, and no reference to this memory exists.
        unsafe { std::ptr::write_volatile(p, value.to_le()) };
        Ok(())
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: u64) -> Result<u32, RegionError> {
        let p = self.reg(offset)?;
        // SAFETY: as in `write32`, for a load.
        Ok(u32::from_le(unsafe { std::ptr::read_volatile(p) }))
    }
}

impl Drop for BarPage {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once; nothing in this process
        // refers to it after `drop`. (A VM that still had it as a memslot
        // loses its mappings through KVM's MMU notifier; the soak drops its
        // VM first anyway.)
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), BAR_PAGE) };
    }
}

impl std::fmt::Debug for BarPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarPage")
            .field("device", &self.device)
            .field("bar", &self.bar)
            .field("addr", &self.ptr)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_register_is_aligned_and_inside_the_page() {
        assert!(is_bar_register(0));
        assert!(is_bar_register(BAR_PAGE as u64 - 4));
        assert!(!is_bar_register(BAR_PAGE as u64));
        assert!(!is_bar_register(2));
        assert!(!is_bar_register(u64::MAX - 3));
    }
}
