//! The INTx side of a VFIO device, behind one narrow trait.
//!
//! [`IntxDevice`] is the set of `VFIO_DEVICE_SET_IRQS` actions on
//! `VFIO_PCI_INTX_IRQ_INDEX` that intxd uses. The emulated function in
//! [`crate::sim`] implements it with vfio-pci's exact semantics, so routes,
//! the daemon, the soak and the benchmarks run unchanged on a kernel without
//! VFIO. [`VfioIntx`] implements it for a real function bound to vfio-pci.
//!
//! Files: `intx.rs` (the trait and its types), `device.rs` (`VfioIntx`:
//! open, adopt, the INTx actions, facts and counts), `ioctl.rs` (the raw
//! device ioctls, which keep the errno), `interrupts.rs` (`/proc/interrupts`),
//! `region.rs` (config space and BAR mappings, for a VMM such as the soak).

mod device;
pub mod interrupts;
mod intx;
mod ioctl;
pub mod region;

pub use device::{Cause, VfioError, VfioIntx};
pub use intx::{DeviceFacts, IntxDevice, IntxError, IntxInfo, IntxOp, SimCounters};
pub use region::{enable_memory_and_intx, intx_loopback, BarPage, RegionError, BAR_PAGE};
