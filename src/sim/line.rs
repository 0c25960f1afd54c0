//! vfio-pci's INTx state machine, for one level line.
//!
//! This mirrors `drivers/vfio/pci/vfio_pci_intrs.c`: the hard-irq handler
//! masks and signals the trigger (`vfio_intx_handler`), the unmask handler
//! re-signals instead of unmasking while the device still asserts
//! (`vfio_pci_intx_unmask_handler`), `DATA_NONE|ACTION_TRIGGER` signals
//! without masking, and `count = 0` tears it all down.

use vmm_sys_util::eventfd::EventFd;

/// The INTx line of one function as vfio-pci sees it.
#[derive(Debug, Default)]
pub struct IntxLine {
    enabled: bool,
    masked: bool,
    level: bool,
    trigger: Option<EventFd>,
    /// Trigger signals so far (the host interrupt count).
    pub triggers: u64,
    /// Unmask requests so far.
    pub unmasks: u64,
    /// Unmasks that re-fired because the line was still high.
    pub refires: u64,
    /// Loopback triggers so far.
    pub loopbacks: u64,
    /// The test hook's late-injection model (`relay/late.rs`).
    #[cfg(feature = "test-hooks")]
    late: crate::relay::late::LateInjection,
}

impl IntxLine {
    /// Whether INTx is enabled (a trigger eventfd is set).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether INTx is masked.
    pub fn masked(&self) -> bool {
        self.masked
    }

    /// The device's line level.
    pub fn level(&self) -> bool {
        self.level
    }

    /// Enables INTx with `trigger`. A line that is already high fires now,
    /// as the host irq handler would the moment it is requested.
    pub fn enable(&mut self, trigger: EventFd) {
        #[cfg(feature = "test-hooks")]
        {
            self.late = crate::relay::late::LateInjection::from_env(crate::relay::late::SIM_VAR);
        }
        self.trigger = Some(trigger);
        if !self.enabled {
            self.enabled = true;
            self.masked = false;
        }
        if self.level && !self.masked {
            self.fire_and_mask();
        }
    }

    /// Disables INTx: no more signals, the trigger is dropped, the mask is
    /// cleared (the next enable starts unmasked).
    pub fn disable(&mut self) {
        self.enabled = false;
        self.masked = false;
        self.trigger = None;
    }

    /// The device drives its line.
    pub fn set_level(&mut self, high: bool) {
        self.level = high;
        if high && self.enabled && !self.masked {
            self.fire_and_mask();
        }
    }

    /// `ACTION_MASK`.
    pub fn mask(&mut self) {
        if self.enabled {
            self.masked = true;
        }
    }

    /// `ACTION_UNMASK` (by call or by the unmask eventfd): with the line still
    /// high, stay masked and signal again; with the line low, unmask.
    pub fn unmask(&mut self) {
        if !self.enabled {
            return;
        }
        self.unmasks += 1;
        #[cfg(feature = "test-hooks")]
        self.late.resampled();
        if !self.masked {
            return;
        }
        if self.level {
            self.refires += 1;
            self.signal();
        } else {
            self.masked = false;
        }
    }

    /// `DATA_NONE|ACTION_TRIGGER`: signal the trigger without masking.
    pub fn loopback(&mut self) {
        if self.enabled {
            self.loopbacks += 1;
            self.signal();
        }
    }

    fn fire_and_mask(&mut self) {
        self.masked = true;
        self.signal();
    }

    fn signal(&mut self) {
        #[cfg(feature = "test-hooks")]
        if self.late.drops() {
            self.triggers += 1;
            return;
        }
        if let Some(t) = &self.trigger {
            // As the kernel's eventfd_signal: never blocks. A full counter
            // already says "asserted", so nothing is lost; an fd its holder
            // made blocking is left alone (the daemon detaches that route).
            let _ = crate::util::fd::signal_eventfd(t);
            self.triggers += 1;
        }
    }
}
