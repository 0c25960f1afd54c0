//! x86_64: a real-mode guest, the PIC pair in KVM (`KVM_CREATE_IRQCHIP`) or
//! in the soak (`KVM_INTERRUPT`); MSI through the local APIC for the
//! lifecycle soak.

pub mod chip;
pub mod guest;
pub mod msi;
pub mod setup;
