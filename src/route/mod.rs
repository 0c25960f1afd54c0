//! One device's INTx wiring, direct or relay, as ordered steps with undo.
//!
//! The order, and why (see `docs/interrupts.md`):
//!
//! | # | direct | relay | why |
//! |---|---|---|---|
//! | 1 | — | register our trigger and the VMM's resample with the loop | nothing may fire before someone listens |
//! | 2 | enable INTx, trigger = VMM irq fd | enable INTx, trigger = our trigger fd | vfio-pci refuses mask/unmask while INTx is off |
//! | 3 | mask | mask | a known state: no cycle can start before the unmask path exists |
//! | 4 | unmask fd = VMM resample fd | unmask fd = our unmask fd | an EOI must never land before it can unmask |
//! | 5 | unmask | unmask | arm: a line already high fires now |
//!
//! A failed step undoes every step before it, in reverse. Teardown is the
//! same reverse walk over the completed steps: remove the unmask eventfd,
//! disable INTx (which drops the trigger in the kernel, so no signal reaches
//! a VMM fd afterwards), leave the event loop, close our fds. It is
//! idempotent.

mod lifecycle;
mod lines;
mod registration;
mod steps;

pub use lines::{VfioLine, VmmLine};
pub use registration::{Registration, RelayRegistrar};
pub use steps::{attach, AdoptedFds, RelayWiring, Route, RouteError, Step, Wiring};

pub use intxd_client::types::{Irqchip, Mode};
