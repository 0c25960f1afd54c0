//! A device's lifecycle as one enum. Each state owns exactly what it holds,
//! and every transition is a method in this file:
//!
//! ```text
//!  open ─► Opened ─attach─► Attached ─detach─► Detached ─attach─► Attached …
//!    │                         │                    │
//!    ├─► Bound (VFIO refused)  └──── go_away ───────┴─► Failed
//!    │     └─ attach, reload: open again ─► Opened
//!  Failed (gone) ─attach, reload: found again─► Binding ─► …
//!    └─► Failed (bind or open refused)
//!  any ─remove─► Removed          reload ─► Binding ─bound─► Opened | Bound | Failed
//! ```

use vmm_sys_util::eventfd::EventFd;

use crate::control::proto::{DeviceState, Owner};
use crate::doctor::Finding;
use crate::pci::BindRecord;
use crate::relay::RelayPath;
use crate::route::{Irqchip, Route};
use crate::util::error::chain;
use crate::vfio::IntxDevice;

/// A device's owner: which connection, and who is behind it.
#[derive(Debug, Clone, Copy)]
pub struct Holder {
    /// Connection id (unique for the daemon's life).
    pub conn_id: u64,
    /// Credentials.
    pub owner: Owner,
}

/// An open device: its backend and what opening it took.
pub struct Open {
    /// The backend.
    pub backend: Box<dyn IntxDevice>,
    /// What binding a real function to vfio-pci changed (`None` for an
    /// emulated device, which is bound to nothing).
    pub bound: Option<BindRecord>,
    /// The request eventfd the device signals when it is going away
    /// (`None` when the backend could not take one).
    pub request: Option<EventFd>,
    /// The shared-line diagnosis at open (`doctor::shared_line_diagnosis`):
    /// the INTx set-up will or may fail with `EBUSY`. Cleared once an
    /// attach enabled INTx beside the line's other handlers.
    pub warning: Option<Finding>,
}

/// What an attached device holds besides its backend.
pub struct Attachment {
    /// The live route.
    pub route: Route,
    /// The owner.
    pub holder: Holder,
    /// The VMM's irqchip.
    pub irqchip: Irqchip,
}

/// A device's lifecycle.
pub enum Lifecycle {
    /// Bound to vfio-pci, but VFIO could not open it.
    Bound {
        /// What the bind changed.
        record: BindRecord,
        /// Why it could not be opened (the last try's reason).
        error: String,
        /// How many times opening it was tried.
        tries: u32,
        /// The shared-line diagnosis at the bind (see [`Open::warning`]).
        warning: Option<Finding>,
    },
    /// Open, never attached since it was opened.
    Opened(Open),
    /// A VMM holds it.
    Attached(Open, Attachment),
    /// Released by its last VMM; ready for the next.
    Detached(Open),
    /// A reload's sysfs work for it runs on the binder's worker thread.
    Binding,
    /// Could not be brought up, or went away.
    Failed {
        /// Why.
        error: String,
        /// What a bind changed, still to be given back at release.
        bound: Option<BindRecord>,
        /// It went away (the host took it back, or it was removed): an
        /// attach or a reload looks for it again.
        gone: bool,
    },
    /// Dropped from the config by a reload (the slot stays, so the event
    /// loop's tokens for other devices keep their meaning).
    Removed,
}

/// Where an attach comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachOrigin {
    /// A VMM's `attach` request.
    Request,
    /// A route a previous daemon left live (restart).
    Restart,
}

impl Lifecycle {
    /// The state as the wire names it.
    pub fn name(&self) -> DeviceState {
        match self {
            Lifecycle::Bound { .. } => DeviceState::Bound,
            Lifecycle::Opened(_) => DeviceState::Opened,
            Lifecycle::Attached(..) => DeviceState::Attached,
            Lifecycle::Detached(_) => DeviceState::Detached,
            Lifecycle::Binding => DeviceState::Binding,
            Lifecycle::Failed { .. } => DeviceState::Failed,
            Lifecycle::Removed => DeviceState::Removed,
        }
    }

    /// Whether it is a state a failure leaves (`Failed`, or `Bound` when
    /// VFIO could not open the function).
    pub fn is_failure(&self) -> bool {
        matches!(self, Lifecycle::Failed { .. } | Lifecycle::Bound { .. })
    }

    /// The open backend, in the states that have one.
    pub fn open(&self) -> Option<&Open> {
        match self {
            Lifecycle::Opened(o) | Lifecycle::Detached(o) | Lifecycle::Attached(o, _) => Some(o),
            _ => None,
        }
    }

    /// The open backend, in the states that have one.
    pub fn open_mut(&mut self) -> Option<&mut Open> {
        match self {
            Lifecycle::Opened(o) | Lifecycle::Detached(o) | Lifecycle::Attached(o, _) => Some(o),
            _ => None,
        }
    }

    /// The backend and the attachment, while attached.
    pub fn attached_mut(&mut self) -> Option<(&mut Open, &mut Attachment)> {
        match self {
            Lifecycle::Attached(o, a) => Some((o, a)),
            _ => None,
        }
    }

    /// The backend and the relay path, while attached by a relay route.
    pub fn relay_mut(&mut self) -> Option<(&mut Open, &mut RelayPath)> {
        let (open, att) = self.attached_mut()?;
        Some((open, att.route.relay_mut()?))
    }

    /// The attachment, while attached.
    pub fn attachment(&self) -> Option<&Attachment> {
        match self {
            Lifecycle::Attached(_, a) => Some(a),
            _ => None,
        }
    }

    /// Why the device is unusable, in the states that say.
    pub fn error(&self) -> Option<&str> {
        match self {
            Lifecycle::Bound { error, .. } | Lifecycle::Failed { error, .. } => Some(error),
            Lifecycle::Binding => {
                Some("a reload is binding it to vfio-pci; retry once status lists it")
            }
            _ => None,
        }
    }

    /// The shared-line diagnosis, in the states that keep one.
    pub fn warning(&self) -> Option<&Finding> {
        match self {
            Lifecycle::Bound { warning, .. } => warning.as_ref(),
            _ => self.open().and_then(|o| o.warning.as_ref()),
        }
    }

    /// Attach: an open device that nobody holds takes `att`. Any other state
    /// gives it back (the caller tears the route down).
    pub fn attach(&mut self, att: Attachment) -> Result<(), Box<Attachment>> {
        match std::mem::replace(self, Lifecycle::Removed) {
            Lifecycle::Opened(o) | Lifecycle::Detached(o) => {
                *self = Lifecycle::Attached(o, att);
                Ok(())
            }
            other => {
                *self = other;
                Err(Box::new(att))
            }
        }
    }

    /// Detach: tear the route down, reset the device, and free it for the
    /// next VMM. Returns the holder it had; `None` when it was not attached.
    pub fn detach(&mut self, tag: &str) -> Option<Holder> {
        let (mut open, mut att) = match std::mem::replace(self, Lifecycle::Removed) {
            Lifecycle::Attached(o, a) => (o, a),
            other => {
                *self = other;
                return None;
            }
        };
        for e in att.route.teardown(open.backend.as_mut()) {
            log::warn!("{tag}: {}", chain(&e));
        }
        if let Err(e) = open.backend.reset() {
            log::warn!("{}", chain(&e));
        }
        *self = Lifecycle::Detached(open);
        Some(att.holder)
    }

    /// The device went away: it is closed and marked failed, and what a
    /// bind changed is handed back (the host has the function now; the
    /// caller puts its `driver_override` back). A route must be detached
    /// first.
    pub fn go_away(&mut self, error: String) -> (Option<Open>, Option<BindRecord>) {
        debug_assert!(!matches!(self, Lifecycle::Attached(..)), "detach first");
        let (open, bound) = match std::mem::replace(self, Lifecycle::Removed) {
            Lifecycle::Opened(mut o) | Lifecycle::Detached(mut o) => {
                let bound = o.bound.take();
                (Some(o), bound)
            }
            Lifecycle::Bound { record, .. } => (None, Some(record)),
            Lifecycle::Failed { bound, .. } => (None, bound),
            other @ Lifecycle::Attached(..) => {
                *self = other;
                return (None, None);
            }
            Lifecycle::Binding | Lifecycle::Removed => (None, None),
        };
        *self = Lifecycle::Failed {
            error,
            bound: None,
            gone: true,
        };
        (open, bound)
    }

    /// Whether it went away and is to be looked for again.
    pub fn gone(&self) -> bool {
        matches!(self, Lifecycle::Failed { gone: true, .. })
    }

    /// Closes the backend (VFIO's fds close before an unbind, which would
    /// wait for them) and leaves the slot `Removed`. Returns the bind record
    /// to give back, if any. A route must be detached first.
    pub fn remove(&mut self) -> Option<BindRecord> {
        match std::mem::replace(self, Lifecycle::Removed) {
            Lifecycle::Opened(o) | Lifecycle::Detached(o) => o.bound,
            Lifecycle::Attached(o, a) => {
                // Only a daemon that exits without stopping gets here: the
                // route's fds are parked for the next one.
                a.route.park();
                o.bound
            }
            Lifecycle::Bound { record, .. } => Some(record),
            Lifecycle::Failed { bound, .. } => bound,
            Lifecycle::Binding | Lifecycle::Removed => None,
        }
    }
}
