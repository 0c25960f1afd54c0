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
    // The line's own state when the daemon has it (an emulated device of
    // this version); the counts are only a fallback: an unmask that found
    // INTx unmasked (a safety unmask, a watchdog re-arm) moves them too.
    let known = a.state.enabled;
    let line_high = (!i.real).then_some(if known {
        a.state.high
    } else {
        a.raised > a.acked
    });
    let masked = (!i.real).then_some(if known {
        a.state.masked
    } else {
        a.triggers > a.unmasks
    });
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
            format!("the device's line is high and its INTx masked: the trigger went to the VM's irqfd ({to_vm} this run) and no unmask came back through the resample eventfd. The interrupt is in KVM: with a resampling irqfd KVM asserts the GSI from a kworker (irqfd_inject on the system workqueue), which a loaded host runs late (measured up to 6.4 s; tests/load/irqfd-inject-latency.sh shows it), or the guest has not EOIed it; re-firing the trigger cannot help while that work is pending")
        } else {
            "the device's line is high and its INTx masked after the EOI: the resample did not reach the device's unmask".into()
        }
    } else if line_high == Some(true) && known {
        "the device's line is high and INTx unmasked, but no trigger followed (the emulated line broke vfio-pci's rule: a high line fires when unmasked)".into()
    } else if line_high == Some(true) {
        "the device's line is high and every trigger was answered by an unmask, but no trigger followed (from the counts: this daemon does not report the line's state)".into()
    } else if known && a.state.timer_pending {
        "the device's line is low and its next raise waits on its raise-after timer".into()
    } else if known && a.state.budget > 0 && !a.state.masked {
        format!("the device's line is low and INTx unmasked with {} cycles left: the device did not raise again", a.state.budget)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::SimLineState;

    fn stall_with(before: Snapshot, after: Snapshot) -> Stall {
        let chip = ChipCounters::default();
        diagnose(&StallInput {
            mode: Mode::Direct,
            irqchip: Irqchip::Kernel,
            before: &before,
            after: &after,
            chip: &chip,
            delivered: 8259,
            requested: 12288,
            fault: None,
            real: false,
            after_s: 2.0,
        })
    }

    fn snap(raised: u64, acked: u64, triggers: u64, unmasks: u64, state: SimLineState) -> Snapshot {
        let mut s = Snapshot::default();
        (s.sim.raised, s.sim.acked, s.sim.triggers, s.sim.unmasks) =
            (raised, acked, triggers, unmasks);
        s.sim.state = state;
        s
    }

    #[test]
    fn a_masked_high_line_is_reported_as_in_kvm_even_when_unmasks_caught_up_with_triggers() {
        // A safety unmask that found INTx unmasked moved `unmasks` as far as
        // `triggers`: the counts alone said "unmasked".
        let state = SimLineState {
            enabled: true,
            masked: true,
            high: true,
            timer_pending: false,
            budget: 4028,
        };
        let st = stall_with(Snapshot::default(), snap(8260, 8259, 8261, 8261, state));

        assert_eq!(
            (st.device_line_high, st.intx_masked),
            (Some(true), Some(true))
        );
        assert!(st.diagnosis.contains("INTx masked"), "{}", st.diagnosis);
        assert!(st.diagnosis.contains("irqfd_inject"), "{}", st.diagnosis);
        assert_eq!(st.triggers, 8261);
    }

    #[test]
    fn without_the_lines_state_the_counts_are_named_as_the_source() {
        let st = stall_with(
            Snapshot::default(),
            snap(10, 9, 9, 9, SimLineState::default()),
        );

        assert_eq!(st.intx_masked, Some(false));
        assert!(st.diagnosis.contains("from the counts"), "{}", st.diagnosis);
    }

    #[test]
    fn a_pending_raise_after_timer_is_named() {
        let state = SimLineState {
            enabled: true,
            timer_pending: true,
            budget: 3,
            ..SimLineState::default()
        };
        let st = stall_with(Snapshot::default(), snap(1, 1, 1, 1, state));

        assert!(
            st.diagnosis.contains("raise-after timer"),
            "{}",
            st.diagnosis
        );
    }
}
