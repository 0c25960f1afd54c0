//! The soak's own KVM VM: guest RAM, one vCPU in real mode, and the guest
//! from [`super::guest`]. This is the only module of the soak that needs
//! `unsafe`: guest memory is an mmap shared with KVM, and `KVM_INTERRUPT` has
//! no wrapper in `kvm-ioctls`.
#![allow(unsafe_code)]

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

use kvm_bindings::{kvm_interrupt, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::guest;
use crate::route::Irqchip;

mod ioctls {
    #![allow(missing_docs)]
    use kvm_bindings::kvm_interrupt;
    use vmm_sys_util::ioctl_iow_nr;
    const KVMIO: u32 = 0xAE;
    ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
}
use ioctls::KVM_INTERRUPT;

const RAM_SIZE: usize = 1 << 20;

/// Errors of the soak VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` is missing or unusable.
    #[error("cannot open /dev/kvm: the soak runs a real KVM guest; load kvm_intel or kvm_amd and check that /dev/kvm exists and is accessible")]
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

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Guest RAM: an anonymous shared mapping that KVM maps at GPA 0.
pub struct GuestRam {
    ptr: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping is plain memory that lives until `drop`; every access
// goes through atomics or bounds-checked copies.
unsafe impl Send for GuestRam {}
// SAFETY: as above; concurrent access by the guest and several host threads is
// through atomics only.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    fn new(size: usize) -> Result<GuestRam, VmError> {
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
            size,
        })
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        let start = gpa as usize;
        assert!(start + bytes.len() <= self.size, "guest write out of range");
        // SAFETY: the range is inside the mapping (checked above) and the
        // guest is not running yet when code is loaded.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(start), bytes.len())
        }
    }

    fn atomic_u32(&self, gpa: u64) -> &AtomicU32 {
        assert!(gpa % 4 == 0 && gpa as usize + 4 <= self.size);
        // SAFETY: aligned, in range, and the mapping outlives `&self`; the
        // guest updates it with a single `inc dword`.
        unsafe { &*(self.ptr.as_ptr().add(gpa as usize) as *const AtomicU32) }
    }

    fn atomic_u8(&self, gpa: u64) -> &AtomicU8 {
        assert!((gpa as usize) < self.size);
        // SAFETY: in range, and the mapping outlives `&self`.
        unsafe { &*(self.ptr.as_ptr().add(gpa as usize) as *const AtomicU8) }
    }

    /// Interrupts the guest's ISR has counted.
    pub fn count(&self) -> u32 {
        self.atomic_u32(guest::COUNT_ADDR).load(Ordering::Acquire)
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
    /// The VM (dropped before `ram`).
    pub vm: VmFd,
    /// The vCPU, taken by the runner.
    pub vcpu: Option<VcpuFd>,
    /// Guest RAM (shared with the runner thread).
    pub ram: std::sync::Arc<GuestRam>,
    /// The interrupt-controller flavour.
    pub irqchip: Irqchip,
    _kvm: Kvm,
}

impl SoakVm {
    /// Creates the VM, loads the guest, and creates its vCPU.
    pub fn new(irqchip: Irqchip) -> Result<SoakVm, VmError> {
        let kvm = Kvm::new().map_err(VmError::NoKvm)?;
        let vm = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        let ram = std::sync::Arc::new(GuestRam::new(RAM_SIZE)?);
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: RAM_SIZE as u64,
            userspace_addr: ram.ptr.as_ptr() as u64,
        };
        // SAFETY: the region is our own mapping of RAM_SIZE bytes, which lives
        // as long as the VM (`ram` is dropped after `vm`).
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("set guest memory"))?;
        // Needed for real mode on Intel (VMX); harmless elsewhere.
        vm.set_tss_address(0xfffb_d000)
            .map_err(kvm_err("set the TSS address"))?;
        match irqchip {
            Irqchip::Kernel => {
                if !vm.check_extension(Cap::IrqfdResample) {
                    return Err(VmError::Missing(
                        "KVM_CAP_IRQFD_RESAMPLE (resampling irqfds)",
                    ));
                }
                vm.create_irq_chip()
                    .map_err(kvm_err("create the in-kernel irqchip"))?;
            }
            Irqchip::User => {}
            Irqchip::Split => {
                return Err(VmError::Missing(
                    "a split-irqchip soak (use kernel or user)",
                ))
            }
        }
        ram.write(guest::LOAD_ADDR, guest::CODE);
        ram.set_ack_enabled(true);
        let vcpu = vm.create_vcpu(0).map_err(kvm_err("create the vCPU"))?;
        let mut sregs = vcpu
            .get_sregs()
            .map_err(kvm_err("read the vCPU's segment registers"))?;
        for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
            seg.base = 0;
            seg.selector = 0;
        }
        vcpu.set_sregs(&sregs)
            .map_err(kvm_err("set the vCPU's segment registers"))?;
        let mut regs = vcpu
            .get_regs()
            .map_err(kvm_err("read the vCPU's registers"))?;
        regs.rip = guest::LOAD_ADDR;
        regs.rflags = 2;
        vcpu.set_regs(&regs)
            .map_err(kvm_err("set the vCPU's registers"))?;
        Ok(SoakVm {
            vm,
            vcpu: Some(vcpu),
            ram,
            irqchip,
            _kvm: kvm,
        })
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

    /// Binds the device's ack eventfd to the guest's ack port.
    pub fn bind_ack(&self, ack: &EventFd) -> Result<(), VmError> {
        self.vm
            .register_ioevent(
                ack,
                &IoEventAddress::Pio(u64::from(guest::ACK_PORT)),
                NoDatamatch,
            )
            .map_err(kvm_err("bind the ack port with KVM_IOEVENTFD"))
    }
}

/// `KVM_INTERRUPT`: queue an external interrupt for a vCPU whose interrupt
/// controller lives in userspace. Must be called on the vCPU's thread.
pub fn inject_interrupt(vcpu: &VcpuFd, vector: u32) -> io::Result<()> {
    let irq = kvm_interrupt { irq: vector };
    // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt`, which lives across the
    // call; the fd is a vCPU fd.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
