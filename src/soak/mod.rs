//! `intxd soak`: a tiny built-in VMM that drives a device through intxd and
//! checks that every interrupt cycles exactly once.
//!
//! - [`guest`]: the real-mode guest (its bytes and what they do);
//! - [`vm`]: the KVM VM, guest RAM and `KVM_INTERRUPT`;
//! - [`vcpu`]: the vCPU thread, with the kernel or the userspace irqchip;
//! - [`wiring`]: how the device reaches the VM (through the daemon's socket;
//!   the benchmark's baseline wires it straight, in `bench::bare`);
//! - [`exerciser`]: what the VMM does with a real function's VFIO fds (its
//!   BAR page, raise and ack);
//! - [`run`]: one run (mode × irqchip) and its figures;
//! - [`report`]: the summary table and the JSON.

pub mod exerciser;
pub mod guest;
pub mod inproc;
pub mod report;
pub mod run;
pub mod vcpu;
pub mod vm;
pub mod wiring;

pub use inproc::InProcessDaemon;
pub use report::{Latency, RunReport, SoakReport};
pub use run::{run_one, RunSpec, Session, SoakError};
pub use wiring::{Attached, AttachedDevice, DaemonWiring, Snapshot, VfioAttached, Wiring};
