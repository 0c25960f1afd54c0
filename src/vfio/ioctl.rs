//! The raw VFIO device ioctls intxd makes itself, on a device fd.
//!
//! `vfio-ioctls` opens the container, the group and the device, but its IRQ
//! calls drop the errno (every failure becomes one fixed enum value) and it
//! cannot wrap a group-mode device fd that another process opened (needed to
//! adopt a device after a daemon restart). So every call here goes straight
//! to the kernel on the device fd and returns the real `io::Error`.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_iommu_type1_dma_unmap, vfio_irq_info, vfio_irq_set, vfio_region_info,
    VFIO_BASE, VFIO_DMA_UNMAP_FLAG_ALL, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_TYPE, VFIO_UNMAP_ALL,
};
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE as u32, VFIO_BASE + 9);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);
ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO_TYPE as u32, VFIO_BASE + 1);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 14);

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        // Read right after the call, before anything else can touch errno.
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `VFIO_DEVICE_GET_INFO`.
pub(crate) fn device_info(dev: BorrowedFd<'_>) -> io::Result<vfio_device_info> {
    let mut info = vfio_device_info {
        argsz: size_of::<vfio_device_info>() as u32,
        ..Default::default()
    };
    // SAFETY: the kernel writes at most `argsz` bytes into `info`, which is a
    // live, correctly sized `vfio_device_info`; the fd is open for the call.
    check(unsafe { ioctl_with_mut_ref(&dev, VFIO_DEVICE_GET_INFO(), &mut info) })?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_IRQ_INFO` for one IRQ index.
pub(crate) fn irq_info(dev: BorrowedFd<'_>, index: u32) -> io::Result<vfio_irq_info> {
    let mut info = vfio_irq_info {
        argsz: size_of::<vfio_irq_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: as in `device_info`: a live, correctly sized struct whose
    // `argsz` bounds what the kernel writes.
    check(unsafe { ioctl_with_mut_ref(&dev, VFIO_DEVICE_GET_IRQ_INFO(), &mut info) })?;
    Ok(info)
}

/// `VFIO_DEVICE_GET_REGION_INFO` for one region index (without its
/// capability chain: `argsz` covers the fixed part only).
pub(crate) fn region_info(dev: BorrowedFd<'_>, index: u32) -> io::Result<vfio_region_info> {
    let mut info = vfio_region_info {
        argsz: size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: as in `device_info`: a live, correctly sized struct whose
    // `argsz` bounds what the kernel writes.
    check(unsafe { ioctl_with_mut_ref(&dev, VFIO_DEVICE_GET_REGION_INFO(), &mut info) })?;
    Ok(info)
}

/// `vfio_irq_set` followed by at most one `s32` of data (an eventfd, or -1).
#[repr(C)]
struct IrqSetOne {
    hdr: vfio_irq_set,
    fd: i32,
}

/// `VFIO_DEVICE_SET_IRQS` with `flags` on `index`, vector 0, `count` vectors
/// (0 or 1). `fd` is the eventfd for `DATA_EVENTFD` (-1 removes it); it is
/// ignored for `DATA_NONE`.
pub(crate) fn set_irqs(
    dev: BorrowedFd<'_>,
    index: u32,
    flags: u32,
    count: u32,
    fd: Option<RawFd>,
) -> io::Result<()> {
    let data = if fd.is_some() { size_of::<i32>() } else { 0 };
    let set = IrqSetOne {
        hdr: vfio_irq_set {
            argsz: (size_of::<vfio_irq_set>() + data) as u32,
            flags,
            index,
            start: 0,
            count,
            ..Default::default()
        },
        fd: fd.unwrap_or(-1),
    };
    // SAFETY: the kernel reads `argsz` bytes: the header and, with
    // DATA_EVENTFD, the one `s32` that follows it in `IrqSetOne` (repr(C), the
    // header is 20 bytes with 4-byte alignment, so `fd` sits at offset 20,
    // where the flexible `data` array starts). Nothing is written back.
    check(unsafe { ioctl_with_ref(&dev, VFIO_DEVICE_SET_IRQS(), &set) })?;
    Ok(())
}

/// `VFIO_DEVICE_SET_IRQS` with `DATA_NONE|ACTION_TRIGGER` on INTx: fires the
/// trigger eventfd once (vfio-pci's loopback).
pub(crate) fn intx_loopback(dev: BorrowedFd<'_>) -> io::Result<()> {
    set_irqs(
        dev,
        VFIO_PCI_INTX_IRQ_INDEX,
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        1,
        None,
    )
}

/// `VFIO_DEVICE_RESET`.
pub(crate) fn reset(dev: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: an argument-less ioctl on an open fd.
    check(unsafe { ioctl(&dev, VFIO_DEVICE_RESET()) })?;
    Ok(())
}

/// Unmaps every DMA mapping of a type1 container, so that the next owner
/// starts from an empty IOMMU context: one `VFIO_IOMMU_UNMAP_DMA` with
/// `VFIO_DMA_UNMAP_FLAG_ALL` where the kernel has it (`VFIO_UNMAP_ALL`,
/// Linux 5.13), else the two halves of the 64-bit IOVA space.
pub(crate) fn unmap_all_dma(container: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: VFIO_CHECK_EXTENSION takes its argument by value and touches
    // no memory of ours.
    let has_all = unsafe {
        ioctl_with_val(
            &container,
            VFIO_CHECK_EXTENSION(),
            libc::c_ulong::from(VFIO_UNMAP_ALL),
        )
    } > 0;
    let half = 1u64 << 63;
    let all = [(VFIO_DMA_UNMAP_FLAG_ALL, 0, 0)];
    let halves = [(0, 0, half), (0, half, half)];
    for &(flags, iova, size) in if has_all { &all[..] } else { &halves[..] } {
        let mut unmap = vfio_iommu_type1_dma_unmap {
            argsz: size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags,
            iova,
            size,
            ..Default::default()
        };
        // SAFETY: a live, correctly sized struct whose `argsz` bounds what
        // the kernel reads and writes back (the unmapped size).
        check(unsafe { ioctl_with_mut_ref(&container, VFIO_IOMMU_UNMAP_DMA(), &mut unmap) })?;
    }
    Ok(())
}

/// A fresh (close-on-exec) duplicate of the fd that `owner` holds, for
/// `vfio-ioctls` objects, which expose only `AsRawFd`.
pub(crate) fn dup_of<T: AsRawFd>(owner: &T) -> io::Result<OwnedFd> {
    // SAFETY: `owner` owns the fd and stays borrowed for the whole call, so
    // the fd is open while it is borrowed here and duplicated.
    let fd = unsafe { BorrowedFd::borrow_raw(owner.as_raw_fd()) };
    fd.try_clone_to_owned()
}

/// Reads `buf.len()` bytes of the device fd at `offset` (a region's offset
/// plus an offset within it).
pub(crate) fn read_at(dev: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let n = nix::sys::uio::pread(dev, buf, off)?;
    if n != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("short read: {n} of {} bytes", buf.len()),
        ));
    }
    Ok(())
}

/// Writes `buf` to the device fd at `offset`.
pub(crate) fn write_at(dev: BorrowedFd<'_>, buf: &[u8], offset: u64) -> io::Result<()> {
    let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let n = nix::sys::uio::pwrite(dev, buf, off)?;
    if n != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write: {n} of {} bytes", buf.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_fd_follows_the_header_where_data_starts() {
        assert_eq!(std::mem::offset_of!(IrqSetOne, fd), 20);
        assert_eq!(size_of::<IrqSetOne>(), 24);
    }

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // _IO(';', 100 + n) from <linux/vfio.h>.
        assert_eq!(VFIO_DEVICE_GET_INFO(), 0x3b6b);
        assert_eq!(VFIO_DEVICE_SET_IRQS(), 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET(), 0x3b6f);
    }
}
