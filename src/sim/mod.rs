//! The emulated INTx function: a first-class backend (`pci = "sim:N"`) with
//! vfio-pci's exact INTx semantics, so the whole daemon, the soak and the
//! benchmarks run on a kernel without VFIO.
//!
//! It has two halves, like the real thing:
//! - [`line::IntxLine`] is what vfio-pci does with a level line: automask on
//!   fire, re-fire on unmask while the line is high, loopback, disable;
//! - [`model::DeviceModel`] is the hardware: it raises its line when the
//!   doorbell asks for cycles and lowers it when the guest acks, with a
//!   configurable [`AckPolicy`].
//!
//! Every device of a daemon is served by one [`SimHost`] thread, which plays
//! the host kernel and the hardware: it waits on each device's ack eventfd
//! (bound by the VMM to a guest port with `KVM_IOEVENTFD`), doorbell eventfd
//! and unmask eventfd.

mod device;
mod facts;
mod handoff;
mod host;
mod lifecycle;
pub mod line;
pub mod model;
pub mod remote;

pub use device::{LineState, SimDevice};
pub use facts::{sim_facts, SIM_DEVICE, SIM_INTX_INFO, SIM_VENDOR};
pub use host::{SimError, SimHost};
pub use model::AckPolicy;
