//! PCI functions through sysfs: what a function is, binding it to vfio-pci
//! and giving it back, and the checks that come first.
//!
//! Everything takes the sysfs root (and, for the in-use checks, the procfs
//! root) as a [`SysfsIo`], so tests run it on a fake tree with a fake
//! kernel. The real one is [`RealSysfs::real`]`("/sys")`, whose writes run in
//! a worker thread and time out ([`DEFAULT_WRITE_TIMEOUT`]), because an
//! unbind blocks for as long as someone holds the device open; procfs is a
//! plain [`DirIo`]`::new("/proc")`.
//!
//! The daemon binds each configured real function at start with [`bind`],
//! keeps (and persists) the [`BindRecord`] it returns, and gives the function
//! back at stop with [`release`].
//!
//! Files: `io.rs` (the file interface and the timed writer), `identify.rs`
//! (a function's identity, enumeration), `group.rs` (IOMMU group
//! viability), `inuse.rs` (host use of a function), `bind.rs` (bind,
//! release, rollback), `record.rs` (what a bind changed), `error.rs`.

mod bind;
mod error;
mod group;
mod identify;
mod inuse;
mod io;
mod record;

pub use bind::{bind, check_bindable, give_up, release, BindOptions, DRIVERS_PROBE};
pub use error::{chain, BindStep, Cause, PciError, ReleaseStep, Rollback, IOMMU_FIX};
pub use group::{check_group, group_devices_dir, Offender, VFIO_FRIENDLY_DRIVERS};
pub use identify::{enumerate, identify, is_bridge_class, FunctionInfo, IntxPin, DEVICES_DIR};
pub use inuse::{find_uses, InUse};
pub use io::{
    DirIo, Entry, EntryKind, HostFs, RealSysfs, SysfsIo, TimedIo, WriteTimedOut,
    DEFAULT_WRITE_TIMEOUT,
};
pub use record::{BindRecord, OriginalDriver};

/// The driver name of vfio-pci.
pub const VFIO_PCI: &str = "vfio-pci";
