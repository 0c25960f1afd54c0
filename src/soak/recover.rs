//! The soak VMM's answer to `delivery_overdue`: an interrupt that intxd
//! handed to the VM's irq eventfd has not come back as a resample within
//! the bound. With the in-kernel irqchip the usual cause is KVM's
//! `irqfd_inject` work item running late on a loaded host (docs/testing.md,
//! "Stalls under load"); re-firing the irqfd only merges into that work.
//! The VMM, the one process KVM lets touch its VM, asserts the guest's line
//! itself, once, when the guest's interrupt controller shows nothing
//! pending or in service on the pin (otherwise the guest has it, and is
//! only slow).
//!
//! The soak's guest takes its device on a level pin of the 8259 PIC, and
//! there a `KVM_IRQ_LINE` pulse (1, then 0) is wrong: a level pin's request
//! follows the line, so lowering it before the vCPU acknowledges drops the
//! request, and the slave's cascade (IRQ2, edge on the master) then
//! delivers the spurious vector of IRQ15; holding it until after the EOI
//! makes the PIC request it again. So the soak sets the pin's request bit
//! (`irr`) with `KVM_SET_IRQCHIP` and leaves the line's sources alone: the
//! guest takes it, and at its EOI KVM's resampler (an ack notifier on the
//! GSI) lowers its own source, which clears that bit (a level pin's `irr`
//! is recomputed from its sources), and signals the resamplefd as for any
//! interrupt. A VMM whose guest uses the IOAPIC pulses with `KVM_IRQ_LINE`
//! instead: the IOAPIC latches the delivery in the pin's remote IRR
//! (docs/interrupts.md, "Overdue deliveries"). (Here the pulse on the PIC
//! pin, `INTXD_SOAK_RECOVER=irq-line`, worked in 18 runs of 18, 8 of them
//! beside two busy loops: a halt-polling vCPU acknowledges within the
//! microseconds between the two ioctls. The request bit needs no such
//! luck.)
//!
//! The late work item may still run afterwards: one more interrupt, which
//! the guest counts and the device sees as an ack of a low line (unless
//! its next interrupt is already waiting). The run counts those spurious
//! acks, up to one per recovery, as `late_injections`, apart from
//! `spurious`.

#![allow(unsafe_code)]

use std::time::Duration;

use kvm_ioctls::VmFd;

use super::error::SoakError;
use super::guest;
use super::run::Session;

/// How long the guest's count stands still before the soak reads the
/// daemon's events (every 500 µs from then on).
const POLL_AFTER: Duration = Duration::from_millis(20);

/// Whether the soak recovers overdue deliveries: yes, unless
/// `INTXD_SOAK_RECOVER=off`. `INTXD_SOAK_RECOVER=irq-line` recovers with a
/// `KVM_IRQ_LINE` pulse instead of the PIC's request bit (for comparison:
/// it worked in every run here, but on a PIC pin it races the vCPU's
/// acknowledge).
pub fn enabled_by_env() -> bool {
    std::env::var("INTXD_SOAK_RECOVER").map_or(true, |v| v != "off")
}

/// What one run did about overdue deliveries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovery {
    /// Overdue deliveries the soak asserted itself.
    pub recovered: u64,
    /// Overdue events left alone: the guest's count moved within the
    /// event's `waited_ms` (the event is older than the guest's progress),
    /// or its controller already has the interrupt (pending or in service).
    pub skipped: u64,
}

impl Recovery {
    /// Serves the `delivery_overdue` events that came for the session's
    /// device, once the guest's count has stood still for `idle` (an
    /// overdue delivery stops it; a run that makes progress reads none).
    pub fn poll(&mut self, s: &mut Session<'_>, idle: Duration) -> Result<(), SoakError> {
        if idle < POLL_AFTER {
            return Ok(());
        }
        for waited_ms in s.wiring.overdue() {
            if idle < Duration::from_millis(waited_ms) {
                self.skipped += 1;
                log::info!("{}: delivery overdue for {waited_ms} ms, but the guest took an interrupt {} ms ago: left alone", s.wiring.device(), idle.as_millis());
            } else if assert_line(&s.vm.vm, guest::GSI)? {
                self.recovered += 1;
                log::warn!("{}: delivery overdue for {waited_ms} ms and nothing pending in the guest's PIC: asserted GSI {} itself (recovery {})", s.wiring.device(), guest::GSI, self.recovered);
            } else {
                self.skipped += 1;
                log::info!("{}: delivery overdue for {waited_ms} ms, but the guest's PIC already has it: left alone", s.wiring.device());
            }
        }
        Ok(())
    }

    /// Splits the run's spurious acks into late injections (at most one
    /// per recovery) and the rest: `(spurious, late_injections)`.
    pub fn split(&self, spurious_acks: u64) -> (u64, u64) {
        let late = spurious_acks.min(self.recovered);
        (spurious_acks - late, late)
    }
}

/// Requests `gsi` on the guest's PIC unless it is already requested or in
/// service there. Returns whether it did.
#[cfg(target_arch = "x86_64")]
fn assert_line(vm: &VmFd, gsi: u32) -> Result<bool, SoakError> {
    use kvm_bindings::{kvm_irqchip, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE};

    use super::vcpu::VcpuError;

    let (chip_id, pin) = match gsi {
        0..=7 => (KVM_IRQCHIP_PIC_MASTER, gsi),
        _ => (KVM_IRQCHIP_PIC_SLAVE, gsi - 8),
    };
    let kvm = |what| move |source| SoakError::from(VcpuError::Kvm { what, source });
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm("read the guest's PIC (KVM_GET_IRQCHIP)"))?;
    // SAFETY: `chip` is plain data that KVM_GET_IRQCHIP filled for a PIC
    // chip id, which is the union's `pic` member.
    let pic = unsafe { &mut chip.chip.pic };
    let bit = 1u8 << pin;
    if (pic.irr | pic.isr) & bit != 0 {
        return Ok(false);
    }
    if std::env::var("INTXD_SOAK_RECOVER").is_ok_and(|v| v == "irq-line") {
        // The IOAPIC's way, for comparison (see the module's docs).
        let line = |level| vm.set_irq_line(gsi, level);
        line(true)
            .and_then(|()| line(false))
            .map_err(kvm("pulse the device's GSI (KVM_IRQ_LINE)"))?;
        return Ok(true);
    }
    pic.irr |= bit;
    pic.last_irr |= bit;
    vm.set_irqchip(&chip).map_err(kvm(
        "request the device's pin on the guest's PIC (KVM_SET_IRQCHIP)",
    ))?;
    Ok(true)
}

/// On arm64 the soak does not recover yet (a vGIC SPI would be asserted
/// with `KVM_IRQ_LINE`); the event is only logged.
#[cfg(not(target_arch = "x86_64"))]
fn assert_line(_vm: &VmFd, _gsi: u32) -> Result<bool, SoakError> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spurious_acks_up_to_the_recoveries_are_late_injections() {
        let r = Recovery {
            recovered: 2,
            skipped: 0,
        };
        assert_eq!(r.split(0), (0, 0));
        assert_eq!(r.split(1), (0, 1));
        assert_eq!(r.split(5), (3, 2));
        assert_eq!(Recovery::default().split(4), (4, 0));
    }
}
