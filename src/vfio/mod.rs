//! The INTx side of a VFIO device, behind one narrow trait.
//!
//! [`IntxActions`] is the set of `VFIO_DEVICE_SET_IRQS` actions on
//! `VFIO_PCI_INTX_IRQ_INDEX` that intxd uses (the only part a route and the
//! relay hot path touch); [`DeviceProbe`] is what a device is and counted,
//! read off the hot path; [`DeviceFds`] is the fds that leave it, to the VMM
//! ([`VmmFd`]) and to systemd's fd store ([`ParkedFd`]). [`IntxDevice`] is
//! all three, as the daemon holds a backend. The emulated function in
//! [`crate::sim`] implements it with vfio-pci's exact semantics, so routes,
//! the daemon, the soak and the benchmarks run unchanged on a kernel without
//! VFIO. [`VfioIntx`] implements it for a real function bound to vfio-pci.
//!
//! Files: `intx.rs` (the traits and their types), `device.rs` (`VfioIntx`
//! and its INTx actions), `open.rs` (open, adopt, and the `vfio-ioctls`
//! objects' guarded close), `error.rs` (open errors and the errno mappings
//! of INTx actions), `probe.rs` (what sysfs and `/proc` say, through
//! [`crate::pci::HostFs`]), `ioctl.rs` (the raw device ioctls, which keep
//! the errno), `interrupts.rs` (`/proc/interrupts`), `region.rs` (config
//! space and BAR mappings, for a VMM such as the soak).

mod device;
mod error;
pub mod interrupts;
mod intx;
mod ioctl;
mod open;
mod probe;
pub mod region;

pub use device::VfioIntx;
pub use error::{Cause, VfioError};
pub use intx::{
    DeviceFacts, DeviceFds, DeviceProbe, IntxActions, IntxDevice, IntxError, IntxInfo, IntxOp,
    ParkedFd, SimCounters, SimLineState, VmmFd,
};
pub use region::{
    enable_bus_master, enable_memory_and_intx, intx_loopback, is_bar_register, set_msi, BarPage,
    RegionError, BAR_PAGE,
};
