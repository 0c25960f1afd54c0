//! The INTx side of a VFIO device, behind one narrow trait.
//!
//! [`IntxDevice`] is the set of `VFIO_DEVICE_SET_IRQS` actions on
//! `VFIO_PCI_INTX_IRQ_INDEX` that intxd uses. The emulated function in
//! [`crate::sim`] implements it with vfio-pci's exact semantics, so routes,
//! the daemon, the soak and the benchmarks run unchanged on a kernel without
//! VFIO.

mod intx;

pub use intx::{DeviceFacts, IntxDevice, IntxError, IntxInfo, IntxOp, SimCounters};
