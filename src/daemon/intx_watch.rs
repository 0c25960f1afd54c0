//! INTx changed behind intxd's back: the VMM holds the device fd, and a
//! `VFIO_DEVICE_SET_IRQS` of its own (INTx disabled, another trigger, MSI
//! enabled after a disable) leaves intxd's route stale. The health scan
//! (once a second while a route is attached, `health::HEALTH_INTERVAL`)
//! compares each enabled route with what the host shows
//! (`DeviceProbe::intx_enabled`: the `vfio-intx(<BDF>)` handler in
//! `/proc/interrupts` for a real function, the line's state for the
//! emulated one). A route whose INTx is off is marked `lost`: `status`
//! shows `intx: lost`, the owner gets `intx_changed`, the scan stops
//! sending it safety unmasks, and `resume_intx` (or `suspend_intx`, then
//! `resume_intx`) wires it again. So the latency of the report is at most
//! one scan period, one second.
//!
//! What the host does not show is not seen: a trigger eventfd replaced
//! while INTx stays enabled keeps the handler requested.

use super::device::DeviceSlot;
use super::Daemon;
use crate::control::proto::{Event, IntxState};

impl DeviceSlot {
    /// After a restart: gives the adopted route the INTx state its record
    /// carries. Returns whether the route is parked (suspended), in which
    /// case it must not be re-armed. A route that was `lost` stays lost (the
    /// health scan would find it so again).
    pub(super) fn adopt_intx_state(&mut self, intx: IntxState) -> bool {
        let Some((open, att)) = self.state.attached_mut() else {
            return false;
        };
        match intx {
            IntxState::Enabled => false,
            IntxState::Suspended => {
                att.route.adopted_suspended(open.backend.as_mut());
                true
            }
            IntxState::Lost => {
                att.route.mark_lost();
                false
            }
        }
    }
}

impl Daemon {
    /// Marks every enabled route whose INTx the host shows as off `lost`,
    /// and tells its owner.
    pub(super) fn check_intx_wiring(&mut self) {
        let mut changed = Vec::new();
        for (i, dev) in self.devices.iter_mut().enumerate() {
            let tag = dev.tag();
            let Some((open, att)) = dev.state.attached_mut() else {
                continue;
            };
            if att.route.intx() != IntxState::Enabled || open.backend.intx_enabled() != Some(false)
            {
                continue;
            }
            att.route.mark_lost();
            log::warn!("{tag}: INTx was disabled behind intxd's back (another VFIO_DEVICE_SET_IRQS on the device fd); the route is stale until resume_intx");
            changed.push(i);
        }
        if changed.is_empty() {
            return;
        }
        for &i in &changed {
            let ev = Event::IntxChanged {
                device: self.devices[i].cfg.name.clone(),
                reason: "INTx is disabled on the device, and intxd did not disable it (another VFIO_DEVICE_SET_IRQS on the device fd); use suspend_intx before an MSI switch, and resume_intx to wire INTx again".into(),
            };
            self.send_event(i, &ev);
        }
        self.update_status();
        self.save_state();
    }
}
