//! aarch64 VM and vCPU set-up: one vCPU initialised for the host's
//! preferred target, started at the guest in EL1h with every exception
//! masked; for [`Irqchip::Kernel`], a vGICv3 (`KVM_CREATE_DEVICE`), its
//! distributor and redistributor addresses and interrupt count, initialised
//! after the vCPU exists (`KVM_DEV_ARM_VGIC_CTRL_INIT`).
//!
//! `KVM_CREATE_IRQCHIP` means a GICv2 on arm64, which a GICv3 host does not
//! emulate (ENODEV): the vGICv3 is a device.

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_regs,
    kvm_vcpu_init, user_pt_regs, KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_REG_ARM64, KVM_REG_ARM_CORE,
    KVM_REG_SIZE_U64, KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VcpuFd, VmFd};

use super::guest;
use crate::route::Irqchip;
use crate::soak::vcpu::kick_enabled;
use crate::soak::vm::{kvm_err, GuestRam, VmError};

/// What to do when `/dev/kvm` cannot be opened.
pub const KVM_HINT: &str = "boot the host at EL2 (KVM is built into arm64 kernels; `dmesg | grep kvm` says whether it initialised) and check that /dev/kvm exists and is accessible";

/// Interrupts the vGIC has: 32 private ones and 32 SPIs (the least KVM
/// takes, a multiple of 32).
const NR_IRQS: u32 = 64;

/// PSTATE at the first instruction: EL1h, D, A, I and F masked.
const PSTATE_EL1H_MASKED: u64 = 0x3c5;

/// What the architecture keeps alive for the VM's life: the vGIC's device
/// fd.
pub struct ArchVm {
    _vgic: Option<DeviceFd>,
}

/// The id of a core register for `KVM_SET_ONE_REG`, from its byte offset in
/// `struct kvm_regs`.
fn core_reg(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | u64::from(KVM_REG_ARM_CORE) | (offset / 4) as u64
}

fn set_reg(vcpu: &VcpuFd, offset: usize, value: u64, what: &'static str) -> Result<(), VmError> {
    vcpu.set_one_reg(core_reg(offset), &value.to_le_bytes())
        .map(|_| ())
        .map_err(kvm_err(what))
}

/// Creates the vCPU, points it at the guest, and for [`Irqchip::Kernel`]
/// creates and initialises the vGICv3. With the userspace irqchip the guest
/// arms its timer, unless the controller's kick is off
/// ([`crate::soak::vcpu::KICK_ENV`]): its ticks would wake a vCPU parked in
/// WFI and hide the stall that run is there to show.
pub fn build(vm: &VmFd, ram: &GuestRam, irqchip: Irqchip) -> Result<(VcpuFd, ArchVm), VmError> {
    let vcpu = vm.create_vcpu(0).map_err(kvm_err("create the vCPU"))?;
    let mut init = kvm_vcpu_init::default();
    vm.get_preferred_target(&mut init)
        .map_err(kvm_err("ask for the preferred vCPU target"))?;
    vcpu.vcpu_init(&init)
        .map_err(kvm_err("initialise the vCPU"))?;
    let regs = std::mem::offset_of!(kvm_regs, regs);
    set_reg(
        &vcpu,
        regs + std::mem::offset_of!(user_pt_regs, pc),
        guest::LOAD_ADDR,
        "set the vCPU's PC",
    )?;
    set_reg(
        &vcpu,
        regs + std::mem::offset_of!(user_pt_regs, pstate),
        PSTATE_EL1H_MASKED,
        "set the vCPU's PSTATE",
    )?;
    let mode = match irqchip {
        Irqchip::Kernel => guest::MODE_VGIC,
        _ => guest::MODE_USER,
    };
    set_reg(
        &vcpu,
        regs + std::mem::offset_of!(user_pt_regs, regs),
        mode,
        "set the vCPU's x0",
    )?;
    if irqchip == Irqchip::User {
        let div = if kick_enabled() { guest::TIMER_DIV } else { 0 };
        ram.set_u32(guest::TIMER_DIV_ADDR, div);
    }
    let vgic = match irqchip {
        Irqchip::Kernel => Some(create_vgic(vm)?),
        _ => None,
    };
    Ok((vcpu, ArchVm { _vgic: vgic }))
}

/// A vGICv3 at [`guest::GICD_ADDR`] / [`guest::GICR_ADDR`], initialised
/// (the vCPU must exist).
fn create_vgic(vm: &VmFd) -> Result<DeviceFd, VmError> {
    let mut dev = kvm_create_device {
        type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
        fd: 0,
        flags: 0,
    };
    let vgic = vm
        .create_device(&mut dev)
        .map_err(kvm_err("create the vGICv3 (KVM_CREATE_DEVICE)"))?;
    let dist = guest::GICD_ADDR;
    let redist = guest::GICR_ADDR;
    let nr_irqs = NR_IRQS;
    let attr = |group: u32, attr: u64, addr: u64| kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    for (a, what) in [
        (
            attr(
                KVM_DEV_ARM_VGIC_GRP_ADDR,
                u64::from(KVM_VGIC_V3_ADDR_TYPE_DIST),
                &dist as *const u64 as u64,
            ),
            "place the vGIC's distributor",
        ),
        (
            attr(
                KVM_DEV_ARM_VGIC_GRP_ADDR,
                u64::from(KVM_VGIC_V3_ADDR_TYPE_REDIST),
                &redist as *const u64 as u64,
            ),
            "place the vGIC's redistributor",
        ),
        (
            attr(
                KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
                0,
                &nr_irqs as *const u32 as u64,
            ),
            "set the vGIC's number of interrupts",
        ),
        (
            attr(
                KVM_DEV_ARM_VGIC_GRP_CTRL,
                u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
                0,
            ),
            "initialise the vGIC (KVM_DEV_ARM_VGIC_CTRL_INIT)",
        ),
    ] {
        vgic.set_device_attr(&a).map_err(kvm_err(what))?;
    }
    Ok(vgic)
}

/// The exerciser guest (a real function driven through its BAR page).
pub fn exerciser_code() -> Result<&'static [u8], VmError> {
    Ok(super::exerciser::EXERCISER_CODE)
}
