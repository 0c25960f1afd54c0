//! The emulated device's fds ([`DeviceFds`]): what a VMM gets, and a new
//! owner's fresh ack and doorbell eventfds, so that the copies a former
//! owner kept drive nothing.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use mio::unix::SourceFd;
use mio::Interest;
use vmm_sys_util::eventfd::EventFd;

use super::host::{lock, token, KIND_ACK, KIND_DOORBELL};
use super::SimDevice;
use crate::util::fd::{dup_eventfd, new_eventfd};
use crate::vfio::{DeviceFds, ParkedFd, VmmFd};

impl DeviceFds for SimDevice {
    fn vmm_fds(&self) -> io::Result<Vec<(VmmFd, OwnedFd)>> {
        Ok(vec![
            (VmmFd::Ack, dup_eventfd(&self.ack)?),
            (VmmFd::Doorbell, dup_eventfd(&self.doorbell)?),
        ])
    }

    fn store_fds(&self) -> Vec<(ParkedFd, BorrowedFd<'_>)> {
        // This emulation lives in the daemon and dies with it.
        Vec::new()
    }

    fn hand_off(&mut self) -> io::Result<()> {
        self.renew_fds()
    }

    fn release_fds(&mut self) {
        self.deafen_fds();
    }
}

impl SimDevice {
    /// Stops listening to the ack and doorbell eventfds handed out so far:
    /// whatever the last owner writes to them now reaches nothing.
    pub fn deafen_fds(&mut self) {
        let _st = lock(&self.state);
        for old in [&self.ack, &self.doorbell] {
            let _ = self.registry.deregister(&mut SourceFd(&old.as_raw_fd()));
        }
    }

    /// Fresh ack and doorbell eventfds, as a new owner gets them: the copies
    /// the last owner kept still open, but nothing reads them any more, so
    /// its writes reach nobody. On error the old ones stay.
    pub fn renew_fds(&mut self) -> io::Result<()> {
        let (ack, doorbell) = (new_eventfd()?, new_eventfd()?);
        let (ack2, doorbell2) = (ack.try_clone()?, doorbell.try_clone()?);
        let mut st = lock(&self.state);
        let reg = |fd: &EventFd, kind| {
            self.registry.register(
                &mut SourceFd(&fd.as_raw_fd()),
                token(self.slot, kind),
                Interest::READABLE,
            )
        };
        reg(&ack, KIND_ACK)?;
        if let Err(e) = reg(&doorbell, KIND_DOORBELL) {
            let _ = self.registry.deregister(&mut SourceFd(&ack.as_raw_fd()));
            return Err(e);
        }
        for old in [&self.ack, &self.doorbell] {
            let _ = self.registry.deregister(&mut SourceFd(&old.as_raw_fd()));
        }
        (st.ack, st.doorbell) = (ack2, doorbell2);
        (self.ack, self.doorbell) = (ack, doorbell);
        Ok(())
    }
}
