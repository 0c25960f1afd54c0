//! How a relay route joins the event loop: its VFIO trigger and its VMM
//! resample eventfds, under the device's tokens, with a guard that leaves
//! again.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use vmm_sys_util::eventfd::EventFd;

use super::Tok;
use crate::route::{Registration, RelayRegistrar};

/// Registers one device's relay eventfds with the loop.
pub struct LoopRegistrar {
    /// The loop's registry (shared with every live registration).
    pub registry: Arc<Registry>,
    /// The device's slot, which its tokens carry.
    pub slot: usize,
}

fn unwatch(registry: &Registry, fd: RawFd) {
    let _ = registry.deregister(&mut SourceFd(&fd));
}

impl RelayRegistrar for LoopRegistrar {
    fn register(&mut self, trigger: &EventFd, resample: &EventFd) -> io::Result<Registration> {
        let (t, r) = (trigger.as_raw_fd(), resample.as_raw_fd());
        let watch = |fd, tok: Tok| {
            self.registry
                .register(&mut SourceFd(&fd), tok.token(), Interest::READABLE)
        };
        watch(t, Tok::Trigger(self.slot))?;
        if let Err(e) = watch(r, Tok::Resample(self.slot)) {
            unwatch(&self.registry, t);
            return Err(e);
        }
        let registry = Arc::clone(&self.registry);
        Ok(Registration::new(move || {
            unwatch(&registry, t);
            unwatch(&registry, r);
        }))
    }
}
