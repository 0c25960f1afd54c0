//! Test hook (cargo feature `test-hooks`, with `INTXD_TEST_HOOKS=1`): a
//! late `irqfd_inject`, modelled. With a resampling irqfd KVM asserts the
//! guest's GSI from a work item that a loaded host may run seconds late;
//! until it runs, every further signal of the irqfd merges into it. The
//! model drops the `N`th signal of a line and every signal after it until
//! the line's next resample (the work item that never ran); the kworker's
//! own late run is left out (it would be one interrupt more, which the soak
//! counts as a late injection).
//!
//! `INTXD_TEST_LATE_IRQFD=N` drops the relay's writes to the VMM's irq
//! eventfd on each relay route; `INTXD_TEST_LATE_TRIGGER=N` the emulated
//! device's trigger signals (on a direct route: the VMM's irqfd itself).
//! Without the feature this file is not built.

/// The relay's hook.
pub const RELAY_VAR: &str = "INTXD_TEST_LATE_IRQFD";
/// The emulated device's hook.
pub const SIM_VAR: &str = "INTXD_TEST_LATE_TRIGGER";

/// One line's late-injection model.
#[derive(Debug, Default, Clone)]
pub struct LateInjection {
    at: u64,
    seen: u64,
    holding: bool,
    /// Signals dropped so far.
    pub dropped: u64,
}

impl LateInjection {
    /// The model `var` asks for (off without `INTXD_TEST_HOOKS=1`).
    pub fn from_env(var: &str) -> LateInjection {
        let on = std::env::var("INTXD_TEST_HOOKS").is_ok_and(|v| v == "1");
        let at = std::env::var(var).ok().and_then(|v| v.parse().ok());
        LateInjection {
            at: at.filter(|_| on).unwrap_or(0),
            ..LateInjection::default()
        }
    }

    /// Whether the model is on (`N` was given): the relay then takes the
    /// trigger's firing and writes the irq itself, so that it can drop a
    /// signal between the two.
    pub fn active(&self) -> bool {
        self.at != 0
    }

    /// A signal is about to go out: whether the model drops it.
    pub fn drops(&mut self) -> bool {
        self.seen += 1;
        if self.at != 0 && self.seen == self.at {
            log::warn!("test hook: signal {} of this line is held as a late irqfd_inject would hold it, until the next resample", self.seen);
            self.holding = true;
        }
        self.dropped += u64::from(self.holding);
        self.holding
    }

    /// The line was resampled (the guest EOIed): the hold ends.
    pub fn resampled(&mut self) {
        self.holding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nth_signal_and_those_after_it_are_held_until_the_resample() {
        let mut l = LateInjection {
            at: 2,
            ..LateInjection::default()
        };
        assert!(!l.drops());
        assert!(l.drops(), "the 2nd");
        assert!(l.drops(), "merged into the held one");
        l.resampled();
        assert!(!l.drops());
        assert!(!l.drops(), "once only");
        assert_eq!(l.dropped, 2);
    }
}
