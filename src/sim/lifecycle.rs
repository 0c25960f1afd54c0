//! The emulated function's interrupt types, as vfio-pci keeps them: one at
//! a time. `VFIO_DEVICE_SET_IRQS` on the MSI (or MSI-X) index fails with
//! `EINVAL` while INTx is enabled, and enabling INTx fails with `EINVAL`
//! while MSI is; disabling INTx (`count = 0`) tears its trigger down and
//! lets the VMM enable MSI. A function reset disables MSI again (the MSI
//! enable bit of its capability is cleared), as an FLR does.
//!
//! The emulator raises no MSI messages: MSI here is the state that decides
//! what vfio-pci would refuse, so that a VMM's MSI switch around
//! `suspend_intx` / `resume_intx` is exercised with the same refusals.

use std::io;

use super::device::{SimDevice, SimState};
use super::host::lock;
use crate::vfio::{IntxError, IntxOp};

impl SimState {
    /// vfio-pci's `vfio_pci_set_intx_trigger`: INTx cannot be enabled while
    /// MSI is.
    pub(super) fn refuse_intx_while_msi(&self) -> Result<(), IntxError> {
        if self.msi {
            return Err(self.einval(IntxOp::SetTrigger));
        }
        Ok(())
    }

    /// A function reset: MSI is off afterwards.
    pub(super) fn reset_irq_type(&mut self) {
        self.msi = false;
    }
}

impl SimDevice {
    /// What a VMM's `VFIO_DEVICE_SET_IRQS` on the MSI index with an eventfd
    /// does: `EINVAL` while INTx is enabled (suspend INTx first), otherwise
    /// MSI is enabled.
    pub fn enable_msi(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        if st.line.enabled() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        st.msi = true;
        Ok(())
    }

    /// `VFIO_DEVICE_SET_IRQS` on the MSI index with `count = 0`.
    pub fn disable_msi(&self) {
        lock(&self.state).msi = false;
    }

    /// Whether MSI is enabled.
    pub fn msi_enabled(&self) -> bool {
        lock(&self.state).msi
    }
}
