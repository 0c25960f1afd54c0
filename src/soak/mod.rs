//! `intxd soak`: a tiny built-in VMM that drives a device through intxd and
//! checks that every interrupt cycles exactly once.
//!
//! - [`arch`]: what differs by architecture: the guest image ([`guest`]),
//!   the VM and vCPU set-up, the vCPU loops and the userspace interrupt
//!   controller;
//! - [`vm`]: the KVM VM, guest RAM, the ioeventfd and the irqfd;
//! - [`vcpu`]: the vCPU thread, with the kernel or the userspace irqchip;
//! - [`wiring`]: how the device reaches the VM (through the daemon's socket;
//!   the benchmark's baseline wires it straight, in `bench::bare`);
//! - [`hostside`]: a real function's host-side counts and loopback driver;
//! - [`exerciser`]: what the VMM does with a real function's VFIO fds (its
//!   BAR page, raise and ack);
//! - [`error`]: what can go wrong, typed;
//! - [`run`]: one run (mode × irqchip) and its figures;
//! - [`stall`]: where a stalled run's interrupt sat;
//! - [`recover`]: the VMM's answer to an overdue delivery;
//! - [`report`]: the summary table and the JSON;
//! - [`tally`]: a soak of several devices, per device and in total;
//! - `lifecycle` (x86_64): a real function through INTx, MSI, suspend,
//!   resume, reset and a GSI move, with exact counts per phase.

pub mod arch;
pub mod error;
pub mod exerciser;
pub mod hostside;
pub mod inproc;
#[cfg(target_arch = "x86_64")]
pub mod lifecycle;
pub mod recover;
pub mod report;
pub mod run;
pub mod stall;
pub mod tally;
pub mod vcpu;
pub mod vm;
pub mod wiring;

pub use arch::guest;
pub use inproc::InProcessDaemon;
pub use report::{Latency, RunReport, SoakReport};
pub use run::{run_one, RunSpec, Session, SoakError};
pub use wiring::{Attached, AttachedDevice, DaemonWiring, Snapshot, VfioAttached, Wiring};
