//! aarch64: a bare-metal EL1 guest, a vGICv3 in KVM or the soak's own
//! userspace interrupt controller on the vCPU's IRQ line
//! (`KVM_CAP_ARM_USER_IRQ`).

pub mod chip;
pub mod exerciser;
pub mod guest;
pub mod setup;
