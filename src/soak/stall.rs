//! A run that stopped making progress, reported as a stall that names where
//! its interrupt sits, never as a silent loss.

use serde::{Deserialize, Serialize};

use super::vcpu::{state, ChipCounters};
use super::wiring::Snapshot;
use crate::route::{Irqchip, Mode};

/// Where a stalled run's interrupt sat when the soak gave up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stall {
    /// Seconds without a delivered interrupt before the soak gave up.
    pub after_s: f64,
    /// Where the interrupt sits, in words.
    pub diagnosis: String,
    /// The device's line (an emulated device: raised more often than
    /// acked); `None` for a real function.
    pub device_line_high: Option<bool>,
    /// Its INTx masked by VFIO's automask, waiting for an unmask (an
    /// emulated device: more triggers than unmasks); `None` for a real
    /// function.
    pub intx_masked: Option<bool>,
    /// Trigger signals the device sent during the run.
    pub triggers: u64,
    /// Of those, signals the relay forwarded to the VM's irq eventfd (relay
    /// mode).
    pub relayed: u64,
    /// Unmasks the device saw (resample or relay EOIs reaching it).
    pub unmasks: u64,
    /// The interrupt controller's state and counts.
    pub controller: String,
    /// What the guest showed (its count; an unexpected exception).
    pub guest: String,
}

/// What the run looked like when it stalled.
pub struct StallInput<'a> {
    /// The route mode.
    pub mode: Mode,
    /// The interrupt controller.
    pub irqchip: Irqchip,
    /// Figures at the start of the run.
    pub before: &'a Snapshot,
    /// Figures when the soak gave up.
    pub after: &'a Snapshot,
    /// The controller's counters.
    pub chip: &'a ChipCounters,
    /// The guest's count and the cycles asked for.
    pub delivered: u64,
    /// Cycles asked for.
    pub requested: u64,
    /// The guest's unexpected exception: (vector 1..16, ESR), if any.
    pub fault: Option<(u32, u32)>,
    /// Whether the device is a real function.
    pub real: bool,
    /// Seconds without progress.
    pub after_s: f64,
}

impl Stall {
    /// Logs the stall, naming the device, the route and where the interrupt sits.
    pub fn log(&self, device: &str, mode: Mode, irqchip: Irqchip) {
        log::error!(
            "{device} {mode}/{irqchip}: stalled, no interrupt for {:.1} s: {}; {}; controller: {}",
            self.after_s,
            self.diagnosis,
            self.guest,
            self.controller
        );
    }
}

/// Builds the stall report.
pub fn diagnose(i: &StallInput<'_>) -> Stall {
    let (a, b) = (&i.after.sim, &i.before.sim);
    let d = |x: u64, y: u64| x.saturating_sub(y);
    let line_high = (!i.real).then_some(a.raised > a.acked);
    let masked = (!i.real).then_some(a.triggers > a.unmasks);
    let triggers = d(a.triggers, b.triggers);
    let relayed = d(i.after.relayed, i.before.relayed);
    let to_vm = if i.mode == Mode::Relay {
        relayed
    } else {
        triggers
    };
    let st = i.chip.state.load(std::sync::atomic::Ordering::SeqCst);
    let load = |x: &std::sync::atomic::AtomicU64| x.load(std::sync::atomic::Ordering::SeqCst);
    let kick = i
        .chip
        .kick_enabled
        .load(std::sync::atomic::Ordering::SeqCst);
    let controller = if i.irqchip == Irqchip::Kernel {
        format!(
            "in KVM (state not visible to the VMM); {} vCPU exits",
            load(&i.chip.exits)
        )
    } else {
        i.chip.describe()
    };
    let diagnosis = if let Some((vector, esr)) = i.fault {
        format!("the guest took an unexpected exception (vector slot {vector}, ESR_EL1 {esr:#x}) and stopped")
    } else if i.irqchip != Irqchip::Kernel && to_vm > load(&i.chip.taken) {
        "the trigger is in the VM's irq eventfd: the soak's controller has not taken it".into()
    } else if i.irqchip != Irqchip::Kernel
        && st & state::LINE != 0
        && st & state::DEVICE_PENDING != 0
    {
        format!(
            "the controller raised the vCPU's IRQ line for the device but the guest never acknowledged it: the vCPU, parked in WFI/HLT, was not woken{}",
            if kick {
                " even by the kick"
            } else {
                "; the kick is off (INTXD_SOAK_KICK=off), and this kernel does not wake a vCPU parked in WFI on a KVM_IRQ_LINE from another thread (upstream fix: \"KVM: arm64: Wake-up from WFI when irqchip is in userspace\")"
            }
        )
    } else if st & state::DEVICE_ACTIVE != 0 {
        "the guest acknowledged the device's interrupt but never EOIed it".into()
    } else if masked == Some(true) && line_high == Some(true) {
        if i.irqchip == Irqchip::Kernel {
            "the device's line is high and its INTx masked: the trigger went to the VM's irqfd and no unmask came back through the resample eventfd (the interrupt is in KVM's irqchip or in the guest)".into()
        } else {
            "the device's line is high and its INTx masked after the EOI: the resample did not reach the device's unmask".into()
        }
    } else if line_high == Some(true) {
        "the device's line is high and INTx unmasked, but no trigger followed".into()
    } else if i.real {
        "the guest's chain of interrupts stopped (see the controller's counts)".into()
    } else {
        "nothing is outstanding on the host side (line low, INTx unmasked): the device was not raised again".into()
    };
    Stall {
        after_s: i.after_s,
        diagnosis,
        device_line_high: line_high,
        intx_masked: masked,
        triggers,
        relayed,
        unmasks: d(a.unmasks, b.unmasks),
        controller,
        guest: format!("{} of {} interrupts counted", i.delivered, i.requested),
    }
}
