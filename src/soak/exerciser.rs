//! The VMM's side of a real PCI function in the soak: what it does with the
//! VFIO fds an attach hands it.
//!
//! It turns on memory decoding (and clears the virtual DisINTx bit) in the
//! function's command register, maps the first page of the exerciser's BAR,
//! and raises or acks the device through that mapping. The same page goes
//! into the guest as a memslot ([`super::vm::SoakVm::load_exerciser`]), so
//! the guest's ISR reaches the registers without exits.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use super::run::SoakError;
use super::wiring::VfioAttached;
use crate::config::Exerciser;
use crate::vfio::{enable_memory_and_intx, BarPage, RegionError, BAR_PAGE};

/// A real function the soak drives through its BAR.
pub struct DeviceDriver {
    page: Arc<BarPage>,
    exerciser: Exerciser,
    // Kept open for the session, as a VMM keeps them for its guest's life.
    _device: OwnedFd,
    _container: OwnedFd,
}

impl DeviceDriver {
    /// Prepares the function behind `attached` for the soak: checks the
    /// exerciser's registers, enables memory decoding, maps the BAR page,
    /// and acks the device once, so that a line its last user left high
    /// drops before the run.
    pub fn prepare(name: &str, attached: VfioAttached) -> Result<DeviceDriver, SoakError> {
        let ex = attached.exerciser;
        for (what, offset) in [("raise", ex.raise_offset), ("ack", ex.ack_offset)] {
            if offset % 4 != 0 || offset + 4 > BAR_PAGE as u64 {
                return Err(SoakError::BadExerciser {
                    device: name.to_string(),
                    what,
                    offset,
                    page: BAR_PAGE,
                    bar: ex.bar,
                });
            }
        }
        let fd = attached.device.as_fd();
        enable_memory_and_intx(name, fd)?;
        let page = BarPage::map(name, fd, ex.bar)?;
        let driver = DeviceDriver {
            page: Arc::new(page),
            exerciser: ex,
            _device: attached.device,
            _container: attached.container,
        };
        driver.ack()?;
        Ok(driver)
    }

    /// The mapped BAR page, for the guest's memslot.
    pub fn page(&self) -> Arc<BarPage> {
        Arc::clone(&self.page)
    }

    /// The registers.
    pub fn exerciser(&self) -> &Exerciser {
        &self.exerciser
    }

    /// Raises the device's interrupt (writes `raise_value` to `raise_offset`).
    pub fn raise(&self) -> Result<(), RegionError> {
        self.page
            .write32(self.exerciser.raise_offset, self.exerciser.raise_value)
    }

    /// Acknowledges it (writes `ack_value` to `ack_offset`).
    pub fn ack(&self) -> Result<(), RegionError> {
        self.page
            .write32(self.exerciser.ack_offset, self.exerciser.ack_value)
    }
}
