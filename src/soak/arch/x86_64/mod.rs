//! x86_64: a real-mode guest, the PIC pair in KVM (`KVM_CREATE_IRQCHIP`) or
//! in the soak (`KVM_INTERRUPT`).

pub mod chip;
pub mod guest;
pub mod setup;
