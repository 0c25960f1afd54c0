//! The soak's architecture seam: all that differs between x86_64 and
//! aarch64, one module per concern, one implementation per architecture.
//!
//! - `guest`: the guest image (its bytes, their listing, where it keeps its
//!   counters and how it acks the device);
//! - `setup`: the VM and vCPU set-up (the vCPU's first registers, the
//!   in-kernel interrupt controller);
//! - `chip`: the vCPU loops, with the in-kernel interrupt controller and
//!   with the soak's own userspace one.
//!
//! The shared modules ([`super::vm`], [`super::vcpu`], [`super::run`]) use
//! only what these three export, under the same names on every
//! architecture.

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use aarch64::{chip, guest, setup};

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::{chip, guest, msi, setup};

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the soak's guest exists for x86_64 and aarch64 only");
