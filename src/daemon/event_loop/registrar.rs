//! How a relay route joins the event loop: its VFIO trigger and its VMM
//! resample eventfds, under the device's tokens, with a guard that leaves
//! again.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use vmm_sys_util::eventfd::EventFd;

use super::Tok;
use crate::relay::{lock_watch, TriggerWatch};
use crate::route::{Registration, RelayRegistrar};

/// Registers one device's relay eventfds with the loop.
pub struct LoopRegistrar {
    /// The loop's registry (shared with every live registration).
    pub registry: Arc<Registry>,
    /// The relay's trigger watch, when the triggers are watched there
    /// rather than in the loop's epoll set.
    pub watch: Option<Arc<Mutex<TriggerWatch>>>,
    /// The device's slot, which its tokens carry.
    pub slot: usize,
}

fn unwatch(registry: &Registry, fd: RawFd) {
    let _ = registry.deregister(&mut SourceFd(&fd));
}

impl RelayRegistrar for LoopRegistrar {
    fn register(&mut self, trigger: &EventFd, resample: &EventFd) -> io::Result<Registration> {
        let (t, r) = (trigger.as_raw_fd(), resample.as_raw_fd());
        let slot = self.slot;
        let register = |fd, tok: Tok| {
            self.registry
                .register(&mut SourceFd(&fd), tok.token(), Interest::READABLE)
        };
        match &self.watch {
            Some(w) => lock_watch(w).arm(slot, trigger)?,
            None => register(t, Tok::Trigger(slot))?,
        }
        let disarm = {
            let (registry, w) = (Arc::clone(&self.registry), self.watch.clone());
            move || match &w {
                Some(w) => lock_watch(w).disarm(slot),
                None => unwatch(&registry, t),
            }
        };
        if let Err(e) = register(r, Tok::Resample(slot)) {
            disarm();
            return Err(e);
        }
        let registry = Arc::clone(&self.registry);
        Ok(Registration::new(move || {
            disarm();
            unwatch(&registry, r);
        }))
    }
}
