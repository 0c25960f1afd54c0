//! The VMM's side of a real PCI function in the soak: what it does with the
//! VFIO fds an attach hands it.
//!
//! It turns on memory decoding (and clears the virtual DisINTx bit) in the
//! function's command register. A function with no exerciser is driven by
//! vfio-pci's loopback ([`super::hostside`]). With one, it maps the first
//! page of the exerciser's BAR,
//! and raises or acks the device through that mapping. The same page goes
//! into the guest as a memslot ([`super::vm::SoakVm::load_exerciser`]), so
//! the guest's ISR reaches the registers without exits.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::run::SoakError;
use super::vm::GuestRam;
use super::wiring::VfioAttached;
use crate::config::Exerciser;
use crate::vfio::{enable_memory_and_intx, is_bar_register, BarPage, RegionError, BAR_PAGE};

/// A real function the soak drives through its BAR (with an exerciser) or
/// by vfio-pci's loopback (without one).
pub struct DeviceDriver {
    page: Option<Arc<BarPage>>,
    exerciser: Option<Exerciser>,
    pci: String,
    // Kept open for the session, as a VMM keeps them for its guest's life.
    device: OwnedFd,
    _container: OwnedFd,
}

impl DeviceDriver {
    /// Prepares the function behind `attached` for the soak: enables
    /// memory decoding and INTx in its command register; with an exerciser,
    /// checks its registers, maps the BAR page, and acks the device once,
    /// so that a line its last user left high drops before the run.
    pub fn prepare(name: &str, attached: VfioAttached) -> Result<DeviceDriver, SoakError> {
        let fd = attached.device.as_fd();
        enable_memory_and_intx(name, fd)?;
        let Some(ex) = attached.exerciser else {
            return Ok(DeviceDriver {
                page: None,
                exerciser: None,
                pci: attached.pci,
                device: attached.device,
                _container: attached.container,
            });
        };
        for (what, offset) in [("raise", ex.raise_offset), ("ack", ex.ack_offset)] {
            if !is_bar_register(offset) {
                return Err(SoakError::BadExerciser {
                    device: name.to_string(),
                    what,
                    offset,
                    page: BAR_PAGE,
                    bar: ex.bar,
                });
            }
        }
        let page = BarPage::map(name, fd, ex.bar)?;
        if let Some((offset, value)) = ex.enable {
            // A cause enable (e1000's IMS), written once.
            page.write32(offset, value)?;
        }
        let driver = DeviceDriver {
            page: Some(Arc::new(page)),
            exerciser: Some(ex),
            pci: attached.pci,
            device: attached.device,
            _container: attached.container,
        };
        driver.ack()?;
        Ok(driver)
    }

    /// The mapped BAR page, for the guest's memslot, and the registers
    /// (`None` for a loopback-driven function).
    pub fn exerciser(&self) -> Option<(Arc<BarPage>, &Exerciser)> {
        Some((Arc::clone(self.page.as_ref()?), self.exerciser.as_ref()?))
    }

    /// The function's PCI address.
    pub fn pci(&self) -> &str {
        &self.pci
    }

    /// A copy of the device fd, for the loopback driver.
    pub fn device_fd(&self) -> std::io::Result<OwnedFd> {
        self.device.try_clone()
    }

    /// Raises the device's interrupt (writes `raise_value` to
    /// `raise_offset`); nothing without an exerciser.
    pub fn raise(&self) -> Result<(), RegionError> {
        match self.exerciser() {
            Some((page, ex)) => page.write32(ex.raise_offset, ex.raise_value),
            None => Ok(()),
        }
    }

    /// Acknowledges it (writes `ack_value` to `ack_offset`); nothing
    /// without an exerciser.
    pub fn ack(&self) -> Result<(), RegionError> {
        match self.exerciser() {
            Some((page, ex)) => page.write32(ex.ack_offset, ex.ack_value),
            None => Ok(()),
        }
    }

    /// Lets an interrupt that was pending at attach (a line the device's
    /// last user left high fires as soon as INTx is enabled) reach the guest
    /// and end (with an exerciser), then starts the count from zero. The device was acked when
    /// it was prepared, so nothing raises it again.
    pub fn settle(&self, name: &str, ram: &GuestRam) -> Result<(), SoakError> {
        if self.exerciser.is_none() {
            return Ok(());
        }
        self.ack()?;
        let quiet = Duration::from_millis(50);
        let t0 = Instant::now();
        let mut last = ram.count();
        let mut moved = Instant::now();
        while moved.elapsed() < quiet && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
            let c = ram.count();
            if c != last {
                last = c;
                moved = Instant::now();
            }
        }
        if last > 0 {
            log::info!(
                "{}: {last} interrupt(s) left pending by the device's last user were taken before the run",
                name
            );
        }
        ram.set_count(0);
        ram.set_target(0);
        Ok(())
    }
}
