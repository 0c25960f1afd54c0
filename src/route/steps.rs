//! The setup steps of a route, their undo, and the route itself.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Instant;

use super::lines::{VfioLine, VmmLine};
use super::registration::{Registration, RelayRegistrar};
use super::Mode;
use crate::control::proto::IntxState;
use crate::relay::{RelayConfig, RelayPath, RelayStats};
use crate::vfio::{IntxDevice, IntxError, ParkedFd};

/// One setup step, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Relay only: create our trigger and unmask eventfds.
    CreateEventfds,
    /// Relay only: our trigger and the VMM's resample join the event loop.
    RegisterRelay,
    /// Enable INTx with the trigger eventfd.
    EnableTrigger,
    /// Mask INTx.
    Mask,
    /// Set the unmask eventfd.
    SetUnmask,
    /// Unmask once to arm the line.
    Unmask,
}

impl Step {
    /// What the step does, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Step::CreateEventfds => "create the relay's trigger and unmask eventfds",
            Step::RegisterRelay => "add the relay eventfds to the event loop",
            Step::EnableTrigger => "enable INTx with its trigger eventfd",
            Step::Mask => "mask INTx",
            Step::SetUnmask => "set the INTx unmask eventfd",
            Step::Unmask => "unmask INTx",
        }
    }
}

/// A route step that failed (after its predecessors were undone), or a
/// teardown step that failed (and was skipped).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// An INTx action failed.
    #[error("{device}: attach failed at step `{}`; earlier steps were rolled back", .step.describe())]
    Intx {
        /// Device name.
        device: String,
        /// The failed step.
        step: Step,
        /// Cause.
        #[source]
        source: IntxError,
    },
    /// An eventfd or event-loop operation failed.
    #[error("{device}: attach failed at step `{}`; earlier steps were rolled back", .step.describe())]
    Io {
        /// Device name.
        device: String,
        /// The failed step.
        step: Step,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A step of a lifecycle action (suspend, resume) failed.
    #[error("{device}: could not {action}: step `{}` failed", .step.describe())]
    Lifecycle {
        /// Device name.
        device: String,
        /// The action.
        action: &'static str,
        /// The failed step.
        step: Step,
        /// Cause.
        #[source]
        source: IntxError,
    },
    /// Undoing a step during teardown failed; teardown went on.
    #[error("{device}: could not undo step `{}` during teardown", .step.describe())]
    Teardown {
        /// Device name.
        device: String,
        /// The step whose undo failed.
        step: Step,
        /// Cause.
        #[source]
        source: IntxError,
    },
}

impl RouteError {
    /// The step the error is about.
    pub fn step(&self) -> Step {
        match self {
            RouteError::Intx { step, .. }
            | RouteError::Io { step, .. }
            | RouteError::Lifecycle { step, .. }
            | RouteError::Teardown { step, .. } => *step,
        }
    }
}

/// How a route carries its interrupts.
#[derive(Debug)]
pub enum Wiring {
    /// VFIO's trigger is the VMM's irq eventfd and its unmask the VMM's
    /// resample eventfd: the kernel carries every interrupt.
    Direct(VmmLine),
    /// intxd's event loop carries each interrupt between VFIO's line and the
    /// VMM's.
    Relay(Box<RelayWiring>),
}

/// A relay route's data path and its place in the event loop.
#[derive(Debug)]
pub struct RelayWiring {
    // Declared first, so it is dropped (deregistered) before the path's fds
    // close.
    pub(super) registration: Registration,
    pub(super) path: RelayPath,
}

/// One device's live wiring: the steps done so far and the fds they use.
///
/// A route ends only by [`Route::teardown`] or by [`Route::park`] (its fds
/// outlive this daemon in systemd's fd store); dropping one otherwise is a
/// bug, which a debug assertion catches.
#[derive(Debug)]
pub struct Route {
    pub(super) device: String,
    pub(super) done: Vec<Step>,
    pub(super) wiring: Wiring,
    pub(super) ended: bool,
    /// Enabled, suspended (`route/lifecycle.rs`) or lost behind our back.
    pub(super) intx: IntxState,
}

/// Wires `dev`'s INTx to the VMM's line `vmm`.
///
/// On failure every completed step is undone in reverse and the error names
/// the device and the step.
pub fn attach(
    dev: &mut dyn IntxDevice,
    mode: Mode,
    vmm: VmmLine,
    cfg: &RelayConfig,
    reg: &mut dyn RelayRegistrar,
) -> Result<Route, RouteError> {
    let device = dev.name().to_string();
    let io_err = |step| {
        let device = device.clone();
        move |source| RouteError::Io {
            device,
            step,
            source,
        }
    };
    let (wiring, done) = match mode {
        Mode::Direct => (Wiring::Direct(vmm), Vec::new()),
        Mode::Relay => {
            let vfio = VfioLine::new().map_err(io_err(Step::CreateEventfds))?;
            // The registration is owned by the route from here on, so every
            // later failure removes it again.
            let registration = reg
                .register(&vfio.trigger, &vmm.resample)
                .map_err(io_err(Step::RegisterRelay))?;
            let path = RelayPath::new(vfio, vmm, cfg, Instant::now());
            (
                Wiring::Relay(Box::new(RelayWiring { registration, path })),
                vec![Step::CreateEventfds, Step::RegisterRelay],
            )
        }
    };
    let mut route = Route {
        device,
        done,
        wiring,
        ended: false,
        intx: IntxState::Enabled,
    };
    match route.wire(dev) {
        Ok(()) => Ok(route),
        Err(e) => {
            for undo in route.teardown(dev) {
                log::warn!("{undo}");
            }
            Err(e)
        }
    }
}

impl Route {
    /// Steps 2 to 5 (see the table in `route/mod.rs`).
    pub(super) fn wire(&mut self, dev: &mut dyn IntxDevice) -> Result<(), RouteError> {
        let Route {
            device,
            done,
            wiring,
            ..
        } = self;
        let (trigger, unmask) = match wiring {
            Wiring::Direct(vmm) => (&vmm.irq, &vmm.resample),
            Wiring::Relay(r) => (&r.path.vfio().trigger, &r.path.vfio().unmask),
        };
        let mut step = |step: Step, r: Result<(), IntxError>| {
            r.map_err(|source| RouteError::Intx {
                device: device.clone(),
                step,
                source,
            })?;
            done.push(step);
            Ok(())
        };
        step(Step::EnableTrigger, dev.set_trigger(trigger))?;
        step(Step::Mask, dev.mask())?;
        step(Step::SetUnmask, dev.set_unmask(Some(unmask)))?;
        step(Step::Unmask, dev.unmask())
    }

    /// Undoes every completed step in reverse. Idempotent: a second call does
    /// nothing. Failures are returned (and the remaining steps still run).
    pub fn teardown(&mut self, dev: &mut dyn IntxDevice) -> Vec<RouteError> {
        self.ended = true;
        let mut errors = Vec::new();
        while let Some(step) = self.done.pop() {
            if let Err(source) = self.undo(step, dev) {
                errors.push(RouteError::Teardown {
                    device: self.device.clone(),
                    step,
                    source,
                });
            }
        }
        errors
    }

    /// Undoes one step (teardown's, and a suspend's, in `route/lifecycle.rs`).
    pub(super) fn undo(&mut self, step: Step, dev: &mut dyn IntxDevice) -> Result<(), IntxError> {
        match step {
            Step::SetUnmask => dev.set_unmask(None),
            Step::EnableTrigger => dev.disable(),
            Step::RegisterRelay => {
                if let Wiring::Relay(r) = &mut self.wiring {
                    r.registration.release();
                }
                Ok(())
            }
            Step::CreateEventfds | Step::Mask | Step::Unmask => Ok(()),
        }
    }

    /// Ends the route without touching the device: its fds are parked in
    /// systemd's fd store and the next daemon takes it back (a restart).
    pub fn park(mut self) {
        self.ended = true;
    }

    /// The route's mode.
    pub fn mode(&self) -> Mode {
        match self.wiring {
            Wiring::Direct(_) => Mode::Direct,
            Wiring::Relay(_) => Mode::Relay,
        }
    }

    /// How it carries interrupts.
    pub fn wiring(&self) -> &Wiring {
        &self.wiring
    }

    /// The steps completed so far (for tests and status).
    pub fn steps_done(&self) -> &[Step] {
        &self.done
    }

    /// Whether the route is wired (every step done, not torn down).
    pub fn is_attached(&self) -> bool {
        self.done.last() == Some(&Step::Unmask)
    }

    /// Whether a relay route is still registered with the event loop.
    pub fn is_registered(&self) -> bool {
        matches!(&self.wiring, Wiring::Relay(r) if r.registration.is_live())
    }

    /// The relay data path, for relay routes.
    pub fn relay_mut(&mut self) -> Option<&mut RelayPath> {
        match &mut self.wiring {
            Wiring::Relay(r) => Some(&mut r.path),
            Wiring::Direct(_) => None,
        }
    }

    /// The relay data path, for relay routes.
    pub fn relay(&self) -> Option<&RelayPath> {
        match &self.wiring {
            Wiring::Relay(r) => Some(&r.path),
            Wiring::Direct(_) => None,
        }
    }

    /// The relay's figures, for relay routes.
    pub fn relay_stats(&self) -> Option<RelayStats> {
        self.relay().map(RelayPath::stats)
    }

    /// The VMM's line.
    pub fn vmm(&self) -> &VmmLine {
        match &self.wiring {
            Wiring::Direct(vmm) => vmm,
            Wiring::Relay(r) => r.path.vmm(),
        }
    }

    /// Every eventfd the route holds, by role, for systemd's fd store.
    pub fn fds(&self) -> Vec<(ParkedFd, BorrowedFd<'_>)> {
        let mut fds = self.vmm().fds().to_vec();
        if let Some(p) = self.relay() {
            fds.extend(p.vfio().fds());
        }
        fds
    }

    /// Rebuilds a route that a previous daemon wired and that is still live
    /// in the kernel (its fds came back from systemd's fd store): every step
    /// counts as done and nothing touches the device. A relay is registered
    /// with `reg`; the caller then re-arms the line with one unmask.
    pub fn adopt(
        device: &str,
        fds: AdoptedFds,
        cfg: &RelayConfig,
        reg: &mut dyn RelayRegistrar,
    ) -> Result<Route, RouteError> {
        const WIRED: [Step; 4] = [
            Step::EnableTrigger,
            Step::Mask,
            Step::SetUnmask,
            Step::Unmask,
        ];
        let (wiring, done) = match fds.vfio {
            None => (Wiring::Direct(fds.vmm), WIRED.to_vec()),
            Some(vfio) => {
                let registration =
                    reg.register(&vfio.trigger, &fds.vmm.resample)
                        .map_err(|source| RouteError::Io {
                            device: device.to_string(),
                            step: Step::RegisterRelay,
                            source,
                        })?;
                let path = RelayPath::new(vfio, fds.vmm, cfg, Instant::now());
                let mut done = vec![Step::CreateEventfds, Step::RegisterRelay];
                done.extend(WIRED);
                (
                    Wiring::Relay(Box::new(RelayWiring { registration, path })),
                    done,
                )
            }
        };
        Ok(Route {
            device: device.to_string(),
            done,
            wiring,
            ended: false,
            intx: IntxState::Enabled,
        })
    }
}

impl Drop for Route {
    fn drop(&mut self) {
        if !self.ended && !std::thread::panicking() {
            log::error!(
                "{}: a route was dropped without teardown or parking",
                self.device
            );
            debug_assert!(
                self.ended,
                "{}: a route ends only by teardown() or park()",
                self.device
            );
        }
    }
}

/// The fds of a route that outlived its daemon.
pub struct AdoptedFds {
    /// The VMM's line.
    pub vmm: VmmLine,
    /// A relay's own VFIO line.
    pub vfio: Option<VfioLine>,
}
