//! A live route's guest lifecycle: suspend (INTx disabled in VFIO, the
//! route parked, so the VMM may enable MSI or MSI-X), resume (the same
//! eventfds wired again, re-armed with one unmask), and the mark a route
//! gets when its INTx changed behind our back.
//!
//! Suspend walks the wiring steps back in teardown's order, for the same
//! reasons: the unmask eventfd goes first (an EOI must not unmask half-way),
//! then INTx is disabled (`count = 0` drops the trigger in the kernel, so
//! nothing reaches the VMM's irq eventfd afterwards), then a relay leaves
//! the event loop (a resample while INTx is off would ask VFIO for an
//! unmask it refuses). Only the route's own fds stay. Resume runs the
//! attach steps again: a relay rejoins the loop, then enable, mask, unmask
//! eventfd, unmask; the last one re-fires a line the device still holds
//! high, which is how a level that was pending at the suspend is not lost.

use super::registration::RelayRegistrar;
use super::steps::{Route, RouteError, Step, Wiring};
use crate::control::proto::IntxState;
use crate::vfio::IntxDevice;

impl Route {
    /// The route's INTx: enabled, suspended, or lost behind our back.
    pub fn intx(&self) -> IntxState {
        self.intx
    }

    /// Suspends INTx: the unmask eventfd is removed, INTx disabled, a relay
    /// deregistered. Returns whether an interrupt was pending (a relay's EOI
    /// outstanding; a direct route's pending state is the kernel's and the
    /// device's, and shows again at resume). On failure the route stays
    /// enabled as far as the failed step left it; the error names the step.
    pub fn suspend(&mut self, dev: &mut dyn IntxDevice) -> Result<bool, RouteError> {
        let pending = self.relay().is_some_and(|p| p.eoi_pending());
        // A lost route's INTx may already be off: what is gone is not an
        // error then.
        let strict = self.intx != IntxState::Lost;
        self.unwind(dev, strict)?;
        self.intx = IntxState::Suspended;
        Ok(pending)
    }

    /// Undoes the wiring steps down to the relay's eventfds. `strict`: the
    /// first failure stops it; otherwise failures are ignored (INTx that was
    /// disabled behind our back refuses to lose its unmask eventfd).
    fn unwind(&mut self, dev: &mut dyn IntxDevice, strict: bool) -> Result<(), RouteError> {
        while let Some(&step) = self.done.last() {
            // A relay's own eventfds stay: the route keeps its fds.
            if step == Step::CreateEventfds {
                break;
            }
            let r = self.undo(step, dev);
            if strict {
                r.map_err(|source| RouteError::Lifecycle {
                    device: self.device.clone(),
                    action: "suspend INTx",
                    step,
                    source,
                })?;
            }
            self.done.pop();
        }
        Ok(())
    }

    /// Resumes a suspended (or lost) route on the same eventfds: a relay
    /// joins the loop again through `reg`, then the attach steps run, the
    /// last being the unmask that re-arms the line. A failed step undoes
    /// the steps before it, and the route stays suspended.
    pub fn resume(
        &mut self,
        dev: &mut dyn IntxDevice,
        reg: &mut dyn RelayRegistrar,
    ) -> Result<(), RouteError> {
        if self.intx == IntxState::Lost {
            // Whatever was set behind our back goes first, so that the
            // enable below starts from INTx off, as after a suspend.
            self.unwind(dev, false)?;
        }
        if let Wiring::Relay(r) = &mut self.wiring {
            let registration = reg
                .register(&r.path.vfio().trigger, &r.path.vmm().resample)
                .map_err(|source| RouteError::Io {
                    device: self.device.clone(),
                    step: Step::RegisterRelay,
                    source,
                })?;
            r.registration = registration;
            self.done.push(Step::RegisterRelay);
        }
        if let Err(e) = self.wire(dev) {
            // Undo what the wiring did; the route is suspended again.
            if let Err(u) = self.suspend(dev) {
                log::warn!("{}", crate::util::error::chain(&u));
            }
            return Err(e);
        }
        self.intx = IntxState::Enabled;
        Ok(())
    }

    /// A route taken back after a restart whose record says it was
    /// suspended: [`Route::adopt`] counted every step as done and put a
    /// relay back in the loop, so the steps are walked back as for a
    /// suspend, with failures ignored (INTx is already off in the kernel,
    /// and disabling it again keeps it so). A relay leaves the loop again:
    /// a resample there would ask VFIO for an unmask it refuses. The VMM's
    /// `resume_intx` then wires it as after any suspend, and its final
    /// unmask fires a level the device held meanwhile.
    pub fn adopted_suspended(&mut self, dev: &mut dyn IntxDevice) {
        // Non-strict: nothing stops it, so it cannot fail.
        let _ = self.unwind(dev, false);
        self.intx = IntxState::Suspended;
    }

    /// Marks the route stale: its INTx was disabled or rewired behind our
    /// back. The steps stay recorded, so teardown (or a resume, which first
    /// suspends) still undoes them.
    pub fn mark_lost(&mut self) {
        self.intx = IntxState::Lost;
    }
}
