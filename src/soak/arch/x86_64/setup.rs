//! x86_64 VM and vCPU set-up: the in-kernel irqchip (`KVM_CREATE_IRQCHIP`:
//! PIC pair, IOAPIC, LAPIC), then one vCPU in real mode at the guest's load
//! address; with the in-kernel irqchip its local APIC software-enabled and
//! FS on the APIC's page, for MSI ([`super::msi`]).

use kvm_ioctls::{VcpuFd, VmFd};

use super::{guest, msi};
use crate::route::Irqchip;
use crate::soak::vm::{kvm_err, GuestRam, VmError};

/// What to do when `/dev/kvm` cannot be opened.
pub const KVM_HINT: &str =
    "load kvm_intel or kvm_amd and check that /dev/kvm exists and is accessible";

/// What the architecture keeps alive for the VM's life (nothing on x86:
/// the irqchip belongs to the VM fd).
pub struct ArchVm;

/// Creates the in-kernel irqchip (for [`Irqchip::Kernel`]) and the vCPU,
/// and points the vCPU at the guest.
pub fn build(vm: &VmFd, _ram: &GuestRam, irqchip: Irqchip) -> Result<(VcpuFd, ArchVm), VmError> {
    // Needed for real mode on Intel (VMX); harmless elsewhere.
    vm.set_tss_address(0xfffb_d000)
        .map_err(kvm_err("set the TSS address"))?;
    if irqchip == Irqchip::Kernel {
        vm.create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
    }
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("create the vCPU"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(kvm_err("read the vCPU's segment registers"))?;
    for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
        seg.base = 0;
        seg.selector = 0;
    }
    if irqchip == Irqchip::Kernel {
        // The MSI ISR's window on the local APIC (`super::msi`); the guests
        // never load FS.
        sregs.fs.base = msi::LAPIC_BASE;
        msi::enable_lapic(&vcpu)?;
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
    Ok((vcpu, ArchVm))
}

/// The exerciser guest (a real function driven through its BAR page).
pub fn exerciser_code() -> Result<&'static [u8], VmError> {
    Ok(guest::EXERCISER_CODE)
}
