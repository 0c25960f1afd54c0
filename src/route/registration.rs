//! A relay route's place in the event loop, as a guard.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Watches a relay's two readable eventfds in the event loop that serves it.
pub trait RelayRegistrar {
    /// Starts watching VFIO's `trigger` and the VMM's `resample`. On error
    /// nothing stays registered. The returned guard stops watching both when
    /// it is released or dropped; it must go before the fds close.
    fn register(&mut self, trigger: &EventFd, resample: &EventFd) -> io::Result<Registration>;
}

type Undo = Box<dyn FnOnce() + Send>;

/// A live event-loop registration; deregisters when released or dropped.
pub struct Registration {
    undo: Option<Undo>,
}

impl Registration {
    /// A registration that `undo` removes.
    pub fn new(undo: impl FnOnce() + Send + 'static) -> Registration {
        Registration {
            undo: Some(Box::new(undo)),
        }
    }

    /// Deregisters now. Idempotent.
    pub fn release(&mut self) {
        if let Some(undo) = self.undo.take() {
            undo();
        }
    }

    /// Whether it is still registered.
    pub fn is_live(&self) -> bool {
        self.undo.is_some()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("live", &self.is_live())
            .finish()
    }
}
