//! The soak's own KVM VM: guest RAM, one vCPU, and the guest from
//! [`super::guest`]; for a real device, a page of its BAR as a second
//! memslot. What differs by architecture (the vCPU's registers, the
//! in-kernel irqchip) is in [`super::arch`]'s `setup`. Guest memory is an
//! mmap shared with KVM, hence the `unsafe` here.
#![allow(unsafe_code)]

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Cap, Kvm, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::arch::setup::{self, ArchVm};
use super::guest;
use crate::config::Exerciser;
use crate::route::Irqchip;
use crate::vfio::BarPage;

const RAM_SIZE: usize = guest::RAM_SIZE as usize;
/// The memslot of the device page (slot 0 is RAM).
const DEVICE_SLOT: u32 = 1;

/// Errors of the soak VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` is missing or unusable.
    #[error(
        "cannot open /dev/kvm: the soak runs a real KVM guest; {}",
        setup::KVM_HINT
    )]
    NoKvm(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM: could not {what}")]
    Kvm {
        /// The action.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory could not be mapped.
    #[error("could not map guest memory")]
    Mmap(#[source] io::Error),
    /// The host kernel lacks a capability this irqchip flavour needs.
    #[error("the host KVM lacks {0}")]
    Missing(&'static str),
}

/// Maps a KVM error to [`VmError::Kvm`] with what was being done.
pub fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Guest RAM: an anonymous shared mapping that KVM maps at
/// [`guest::RAM_BASE`].
pub struct GuestRam {
    ptr: NonNull<u8>,
    base: u64,
    size: usize,
}

// SAFETY: the mapping is plain memory that lives until `drop`; every access
// goes through atomics or bounds-checked copies.
unsafe impl Send for GuestRam {}
// SAFETY: as above; concurrent access by the guest and several host threads is
// through atomics only.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    fn new(base: u64, size: usize) -> Result<GuestRam, VmError> {
        let len = NonZeroUsize::new(size)
            .ok_or(VmError::Mmap(io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: a fresh anonymous mapping aliases nothing.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED | nix::sys::mman::MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|e| VmError::Mmap(e.into()))?;
        Ok(GuestRam {
            ptr: ptr.cast(),
            base,
            size,
        })
    }

    /// The offset of `gpa` in the mapping (addresses below the base wrap to
    /// out of range, which the callers' checks catch).
    fn offset(&self, gpa: u64) -> usize {
        gpa.wrapping_sub(self.base) as usize
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        let start = self.offset(gpa);
        assert!(start + bytes.len() <= self.size, "guest write out of range");
        // SAFETY: the range is inside the mapping (checked above) and the
        // guest is not running yet when code is loaded, or does not touch
        // the range (`load_idle`).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(start), bytes.len())
        }
    }

    fn atomic_u32(&self, gpa: u64) -> &AtomicU32 {
        let off = self.offset(gpa);
        assert!(off % 4 == 0 && off.checked_add(4).is_some_and(|end| end <= self.size));
        // SAFETY: aligned, in range, and the mapping outlives `&self`; the
        // guest updates it with a single store.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU32) }
    }

    fn atomic_u8(&self, gpa: u64) -> &AtomicU8 {
        let off = self.offset(gpa);
        assert!(off < self.size);
        // SAFETY: in range, and the mapping outlives `&self`.
        unsafe { &*(self.ptr.as_ptr().add(off) as *const AtomicU8) }
    }

    /// Interrupts the guest's ISR has counted.
    pub fn count(&self) -> u32 {
        self.atomic_u32(guest::COUNT_ADDR).load(Ordering::Acquire)
    }

    /// Timer interrupts the guest's ISR has counted (0 where the guest
    /// arms no timer).
    pub fn timer_count(&self) -> u64 {
        guest::TIMER_COUNT_ADDR
            .map(|a| u64::from(self.atomic_u32(a).load(Ordering::Acquire)))
            .unwrap_or(0)
    }

    /// What the guest's unexpected-exception handler left: the vector slot
    /// (1..16) and the syndrome, on the architectures whose guest has one.
    pub fn fault(&self) -> Option<(u32, u32)> {
        let a = guest::FAULT_ADDR?;
        let vector = self.atomic_u32(a).load(Ordering::Acquire);
        (vector != 0).then(|| (vector, self.atomic_u32(a + 4).load(Ordering::Acquire)))
    }

    /// Whether the guest has finished its set-up.
    pub fn ready(&self) -> bool {
        self.atomic_u8(guest::READY_ADDR).load(Ordering::Acquire) != 0
    }

    /// Makes the ISR ack the device (true) or EOI without acking (false).
    pub fn set_ack_enabled(&self, on: bool) {
        self.atomic_u8(guest::ACK_ENABLE_ADDR)
            .store(u8::from(on), Ordering::Release);
    }

    /// Sets the ISR's counter (the exerciser guest's, while no interrupt is
    /// in flight).
    pub fn set_count(&self, n: u32) {
        self.atomic_u32(guest::COUNT_ADDR)
            .store(n, Ordering::SeqCst);
    }

    /// The exerciser guest's target: it re-raises the device while its
    /// count is below.
    pub fn target(&self) -> u32 {
        self.atomic_u32(guest::TARGET_ADDR).load(Ordering::SeqCst)
    }

    /// Raises the target by `n` and returns the old one. A locked
    /// read-modify-write: a full barrier before the caller reads the count
    /// (the other half of the guest's `lock inc` + load of the target).
    pub fn add_target(&self, n: u32) -> u32 {
        self.atomic_u32(guest::TARGET_ADDR)
            .fetch_add(n, Ordering::SeqCst)
    }

    /// Sets the target.
    pub fn set_target(&self, n: u32) {
        self.atomic_u32(guest::TARGET_ADDR)
            .store(n, Ordering::SeqCst);
    }

    /// Loads code at `gpa` while the guest runs, where it executes nothing
    /// yet (an ISR whose vector cannot arrive before the VMM routes it).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn load_idle(&self, gpa: u64, bytes: &[u8]) {
        self.write(gpa, bytes);
    }

    /// Stores a 32-bit word of the guest's data before it runs.
    pub(crate) fn set_u32(&self, gpa: u64, v: u32) {
        self.atomic_u32(gpa).store(v, Ordering::Release);
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping once; KVM's memslot is gone with
        // the VM fd, which is dropped before (field order in `SoakVm`).
        let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.size) };
    }
}

/// A soak VM, ready to run its vCPU.
pub struct SoakVm {
    /// The VM (dropped before `ram`; shared with the userspace interrupt
    /// controller, which raises the vCPU's line through it).
    pub vm: Arc<VmFd>,
    /// The vCPU, taken by the runner.
    pub vcpu: Option<VcpuFd>,
    /// Guest RAM (shared with the runner thread).
    pub ram: std::sync::Arc<GuestRam>,
    /// The interrupt-controller flavour.
    pub irqchip: Irqchip,
    /// The device page in memslot 1 (exerciser guest only); dropped after
    /// `vm`.
    device_page: Option<Arc<BarPage>>,
    _arch: ArchVm,
    _kvm: Kvm,
}

impl SoakVm {
    /// Creates the VM, loads the guest, and creates its vCPU.
    pub fn new(irqchip: Irqchip) -> Result<SoakVm, VmError> {
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let ram = std::sync::Arc::new(GuestRam::new(guest::RAM_BASE, RAM_SIZE)?);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: guest::RAM_BASE,
            memory_size: RAM_SIZE as u64,
            userspace_addr: ram.ptr.as_ptr() as u64,
        };
        // SAFETY: the region is our own mapping of RAM_SIZE bytes, which lives
        // as long as the VM (`ram` is dropped after `vm`).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("set guest memory"))?;
        match irqchip {
            Irqchip::Kernel if !vm.check_extension(Cap::IrqfdResample) => {
                return Err(VmError::Missing(
                    "KVM_CAP_IRQFD_RESAMPLE (resampling irqfds)",
                ));
            }
            Irqchip::Kernel | Irqchip::User => {}
            Irqchip::Split => {
                return Err(VmError::Missing(
                    "a split-irqchip soak (use kernel or user)",
                ))
            }
        }
        ram.write(guest::LOAD_ADDR, guest::CODE);
        ram.set_ack_enabled(true);
        let (vcpu, arch) = setup::build(&vm, &ram, irqchip)?;
        Ok(SoakVm {
            vm: Arc::new(vm),
            vcpu: Some(vcpu),
            ram,
            irqchip,
            device_page: None,
            _arch: arch,
            _kvm: kvm,
        })
    }

    /// Turns the VM into the exerciser guest, before its vCPU runs: maps
    /// `page` (the first page of the device's BAR) at
    /// [`guest::DEVICE_PAGE_ADDR`] as memslot 1, loads
    /// the architecture's exerciser guest (`setup::exerciser_code`) over
    /// the emulated-device guest, and gives its ISR the
    /// registers of `ex`. The target starts at 0: the ISR
    /// raises nothing until the VMM asks for cycles.
    pub fn load_exerciser(&mut self, page: Arc<BarPage>, ex: &Exerciser) -> Result<(), VmError> {
        setup::exerciser_code()?;
        let region = kvm_userspace_memory_region {
            slot: DEVICE_SLOT,
            flags: 0,
            guest_phys_addr: guest::DEVICE_PAGE_ADDR,
            memory_size: page.len() as u64,
            userspace_addr: page.host_addr(),
        };
        // SAFETY: the region is a live shared mapping of `page.len()` bytes
        // of device memory, kept alive by `self.device_page` until after the
        // VM fd is closed (field order); it overlaps no other memslot (RAM
        // ends at guest::RAM_SIZE).
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(kvm_err("map the device's BAR page into the guest"))?;
        self.device_page = Some(page);
        self.ram.write(guest::LOAD_ADDR, setup::exerciser_code()?);
        // The offsets are below 4096 (checked by the config), so they fit
        // the ISR's 16-bit registers.
        self.ram
            .set_u32(guest::ACK_OFFSET_ADDR, ex.ack_offset as u32);
        self.ram.set_u32(guest::ACK_VALUE_ADDR, ex.ack_value);
        self.ram
            .set_u32(guest::RAISE_OFFSET_ADDR, ex.raise_offset as u32);
        self.ram.set_u32(guest::RAISE_VALUE_ADDR, ex.raise_value);
        self.ram.set_target(0);
        Ok(())
    }

    /// Registers the VMM side of the kernel path: `KVM_IRQFD` with
    /// `KVM_IRQFD_FLAG_RESAMPLE` on the guest's GSI. A write to `irq`
    /// asserts the line; at the guest's EOI KVM de-asserts it and writes
    /// `resample`.
    pub fn register_irqfd(&self, irq: &EventFd, resample: &EventFd) -> Result<(), VmError> {
        self.vm
            .register_irqfd_with_resample(irq, resample, guest::GSI)
            .map_err(kvm_err("register the resampling irqfd"))
    }

    /// Binds the device's ack eventfd to the guest's ack address (a port
    /// on x86, an MMIO address on aarch64).
    pub fn bind_ack(&self, ack: &EventFd) -> Result<(), VmError> {
        self.vm
            .register_ioevent(ack, &guest::ACK, NoDatamatch)
            .map_err(kvm_err("bind the guest's ack address with KVM_IOEVENTFD"))
    }
}
