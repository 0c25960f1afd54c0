//! The setup steps of a route, their undo, and the route itself.

use std::io;
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use super::Mode;
use crate::relay::{RelayConfig, RelayPath, RelayStats};
use std::os::fd::BorrowedFd;

use crate::util::fd::{borrow_eventfd, new_eventfd};
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
            | RouteError::Teardown { step, .. } => *step,
        }
    }
}

/// Adds and removes a relay's eventfds in the event loop that serves it.
pub trait RelayRegistrar {
    /// Start watching `path.trigger` and `path.resample`.
    fn register(&mut self, path: &RelayPath) -> io::Result<()>;
    /// Stop watching them.
    fn deregister(&mut self, path: &RelayPath);
}

/// One device's live wiring.
pub struct Route {
    device: String,
    mode: Mode,
    done: Vec<Step>,
    direct: Option<(EventFd, EventFd)>,
    relay: Option<RelayPath>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("device", &self.device)
            .field("mode", &self.mode)
            .field("done", &self.done)
            .finish()
    }
}

/// Wires `dev`'s INTx to the VMM's `irq`/`resample` eventfd pair.
///
/// On failure every completed step is undone in reverse and the error names
/// the device and the step.
pub fn attach(
    dev: &mut dyn IntxDevice,
    mode: Mode,
    irq: EventFd,
    resample: EventFd,
    cfg: &RelayConfig,
    reg: &mut dyn RelayRegistrar,
) -> Result<Route, RouteError> {
    let mut route = Route {
        device: dev.name().to_string(),
        mode,
        done: Vec::new(),
        direct: None,
        relay: None,
    };
    let result = match mode {
        Mode::Direct => {
            route.direct = Some((irq, resample));
            route.wire_direct(dev)
        }
        Mode::Relay => route.wire_relay(dev, irq, resample, cfg, reg),
    };
    match result {
        Ok(()) => Ok(route),
        Err(e) => {
            for undo in route.teardown(dev, reg) {
                log::warn!("{undo}");
            }
            Err(e)
        }
    }
}

impl Route {
    fn intx_step(&mut self, step: Step, r: Result<(), IntxError>) -> Result<(), RouteError> {
        r.map_err(|source| RouteError::Intx {
            device: self.device.clone(),
            step,
            source,
        })?;
        self.done.push(step);
        Ok(())
    }

    fn wire_direct(&mut self, dev: &mut dyn IntxDevice) -> Result<(), RouteError> {
        let Some((irq, resample)) = self
            .direct
            .as_ref()
            .map(|(a, b)| (a.try_clone(), b.try_clone()))
        else {
            return Ok(());
        };
        let io_err = |step| {
            let device = self.device.clone();
            move |source| RouteError::Io {
                device,
                step,
                source,
            }
        };
        let irq = irq.map_err(io_err(Step::EnableTrigger))?;
        let resample = resample.map_err(io_err(Step::SetUnmask))?;
        self.intx_step(Step::EnableTrigger, dev.set_trigger(&irq))?;
        self.intx_step(Step::Mask, dev.mask())?;
        self.intx_step(Step::SetUnmask, dev.set_unmask(Some(&resample)))?;
        self.intx_step(Step::Unmask, dev.unmask())
    }

    fn wire_relay(
        &mut self,
        dev: &mut dyn IntxDevice,
        irq: EventFd,
        resample: EventFd,
        cfg: &RelayConfig,
        reg: &mut dyn RelayRegistrar,
    ) -> Result<(), RouteError> {
        let io_err = |step: Step, source| RouteError::Io {
            device: self.device.clone(),
            step,
            source,
        };
        let trigger = new_eventfd().map_err(|e| io_err(Step::CreateEventfds, e))?;
        let unmask = new_eventfd().map_err(|e| io_err(Step::CreateEventfds, e))?;
        self.done.push(Step::CreateEventfds);
        let path = RelayPath::new(trigger, unmask, irq, resample, cfg, Instant::now());
        reg.register(&path)
            .map_err(|e| io_err(Step::RegisterRelay, e))?;
        self.done.push(Step::RegisterRelay);
        let (t, u) = (
            path.trigger
                .try_clone()
                .map_err(|e| io_err(Step::EnableTrigger, e))?,
            path.unmask
                .try_clone()
                .map_err(|e| io_err(Step::SetUnmask, e))?,
        );
        self.relay = Some(path);
        self.intx_step(Step::EnableTrigger, dev.set_trigger(&t))?;
        self.intx_step(Step::Mask, dev.mask())?;
        self.intx_step(Step::SetUnmask, dev.set_unmask(Some(&u)))?;
        self.intx_step(Step::Unmask, dev.unmask())
    }

    /// Undoes every completed step in reverse. Idempotent: a second call does
    /// nothing. Failures are returned (and the remaining steps still run).
    pub fn teardown(
        &mut self,
        dev: &mut dyn IntxDevice,
        reg: &mut dyn RelayRegistrar,
    ) -> Vec<RouteError> {
        let mut errors = Vec::new();
        while let Some(step) = self.done.pop() {
            let r = match step {
                Step::SetUnmask => dev.set_unmask(None),
                Step::EnableTrigger => dev.disable(),
                Step::RegisterRelay => {
                    if let Some(p) = &self.relay {
                        reg.deregister(p);
                    }
                    Ok(())
                }
                Step::CreateEventfds | Step::Mask | Step::Unmask => Ok(()),
            };
            if let Err(source) = r {
                errors.push(RouteError::Teardown {
                    device: self.device.clone(),
                    step,
                    source,
                });
            }
        }
        self.relay = None;
        self.direct = None;
        errors
    }

    /// The route's mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The steps completed so far (for tests and status).
    pub fn steps_done(&self) -> &[Step] {
        &self.done
    }

    /// Whether the route is wired (every step done, not torn down).
    pub fn is_attached(&self) -> bool {
        self.done.last() == Some(&Step::Unmask)
    }

    /// The relay data path, for relay routes.
    pub fn relay_mut(&mut self) -> Option<&mut RelayPath> {
        self.relay.as_mut()
    }

    /// The relay data path, for relay routes.
    pub fn relay(&self) -> Option<&RelayPath> {
        self.relay.as_ref()
    }

    /// The relay's figures, for relay routes.
    pub fn relay_stats(&self) -> Option<RelayStats> {
        self.relay.as_ref().map(RelayPath::stats)
    }

    /// The VMM's eventfds of a direct route.
    pub fn direct_fds(&self) -> Option<(&EventFd, &EventFd)> {
        self.direct.as_ref().map(|(a, b)| (a, b))
    }

    /// Every eventfd the route holds, by role (`irq`, `resample`, and for a
    /// relay `trigger` and `unmask`), for systemd's fd store.
    pub fn fds(&self) -> Vec<(ParkedFd, BorrowedFd<'_>)> {
        match (&self.direct, &self.relay) {
            (Some((irq, resample)), _) => vec![
                (ParkedFd::Irq, borrow_eventfd(irq)),
                (ParkedFd::Resample, borrow_eventfd(resample)),
            ],
            (_, Some(p)) => vec![
                (ParkedFd::Irq, borrow_eventfd(&p.irq)),
                (ParkedFd::Resample, borrow_eventfd(&p.resample)),
                (ParkedFd::Trigger, borrow_eventfd(&p.trigger)),
                (ParkedFd::Unmask, borrow_eventfd(&p.unmask)),
            ],
            _ => Vec::new(),
        }
    }

    /// Rebuilds a route that a previous daemon wired and that is still live
    /// in the kernel (its fds came back from systemd's fd store): every step
    /// counts as done and nothing touches the device. A relay must still be
    /// registered with the event loop; the caller then re-arms the line with
    /// one unmask.
    pub fn adopt(device: &str, fds: AdoptedFds, cfg: &RelayConfig) -> Route {
        let (direct, relay, done) = match fds.relay {
            None => (
                Some((fds.irq, fds.resample)),
                None,
                vec![
                    Step::EnableTrigger,
                    Step::Mask,
                    Step::SetUnmask,
                    Step::Unmask,
                ],
            ),
            Some((trigger, unmask)) => (
                None,
                Some(RelayPath::new(
                    trigger,
                    unmask,
                    fds.irq,
                    fds.resample,
                    cfg,
                    Instant::now(),
                )),
                vec![
                    Step::CreateEventfds,
                    Step::RegisterRelay,
                    Step::EnableTrigger,
                    Step::Mask,
                    Step::SetUnmask,
                    Step::Unmask,
                ],
            ),
        };
        Route {
            device: device.to_string(),
            mode: if relay.is_some() {
                Mode::Relay
            } else {
                Mode::Direct
            },
            done,
            direct,
            relay,
        }
    }
}

/// The fds of a route that outlived its daemon.
pub struct AdoptedFds {
    /// The VMM's irq eventfd.
    pub irq: EventFd,
    /// The VMM's resample eventfd.
    pub resample: EventFd,
    /// A relay's own trigger and unmask eventfds.
    pub relay: Option<(EventFd, EventFd)>,
}
