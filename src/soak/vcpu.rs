//! The soak's vCPU thread, with the kernel irqchip or the soak's own
//! userspace one; the loops themselves are per architecture, in
//! [`super::arch`]'s `chip`.
//!
//! With the kernel irqchip the guest never exits: the interrupt controller,
//! the ack address (ioeventfd) and the irqfd are all in KVM, and the thread
//! only returns from `KVM_RUN` when [`VcpuRunner::stop`] kicks it with a
//! signal.
//!
//! With the userspace irqchip the soak *is* the interrupt controller, the
//! contract every VMM with a userspace irqchip follows: a write to the irq
//! eventfd asserts the line; the line reaches the vCPU when it can take it;
//! the guest's EOI (an access that exits to the VMM) de-asserts it and
//! writes the resample eventfd.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::arch::chip;

/// Errors of the vCPU thread and of the soak's interrupt controller.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The vCPU was already handed to a runner.
    #[error("the soak VM's vCPU is already running")]
    Taken,
    /// The thread could not be started.
    #[error("could not start the {what} thread")]
    Spawn {
        /// Which thread.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The thread panicked.
    #[error("the soak's vCPU thread panicked")]
    Panicked,
    /// `KVM_RUN` failed.
    #[error("KVM_RUN failed")]
    Run(#[source] kvm_ioctls::Error),
    /// The guest exited for something the soak does not serve.
    #[error("unexpected vCPU exit: {0}")]
    UnexpectedExit(String),
    /// A KVM ioctl of the interrupt controller failed.
    #[error("the soak's interrupt controller could not {what}")]
    Kvm {
        /// The action.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// An eventfd of the interrupt controller failed.
    #[error("the soak's interrupt controller could not {what}")]
    Eventfd {
        /// The action.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Bits of [`ChipCounters::state`].
pub mod state {
    /// The CPU's interrupt line is raised (`KVM_IRQ_LINE` 1 / an injection
    /// is pending).
    pub const LINE: u32 = 1;
    /// The device's interrupt is pending in the controller.
    pub const DEVICE_PENDING: u32 = 2;
    /// The device's interrupt is in service (acknowledged, not yet EOIed).
    pub const DEVICE_ACTIVE: u32 = 4;
    /// The virtual timer's level (`device_irq_level`) is high.
    pub const TIMER_LEVEL: u32 = 8;
    /// The timer's interrupt is in service.
    pub const TIMER_ACTIVE: u32 = 16;
}

/// Counters and state of the interrupt controller (the userspace one's;
/// with the kernel irqchip only `exits` moves).
#[derive(Debug, Default)]
pub struct ChipCounters {
    /// Times the vCPU's line was raised (x86: `KVM_INTERRUPT`s; aarch64:
    /// `KVM_IRQ_LINE` 1).
    pub injected: AtomicU64,
    /// Device EOIs seen (and resamples signalled).
    pub eois: AtomicU64,
    /// Returns from `KVM_RUN`.
    pub exits: AtomicU64,
    /// Signals of the irq eventfd the controller took.
    pub taken: AtomicU64,
    /// The guest's acknowledges of the device's interrupt.
    pub acks: AtomicU64,
    /// Timer interrupts the guest acknowledged (the timer's level comes from
    /// `kvm_run`'s `device_irq_level`; aarch64 only).
    pub timer: AtomicU64,
    /// Acknowledges that found nothing pending.
    pub spurious: AtomicU64,
    /// Kicks of the vCPU thread after a raise from another thread.
    pub kicks: AtomicU64,
    /// The [`state`] bits now.
    pub state: AtomicU32,
    /// Whether the controller kicks the vCPU after a raise.
    pub kick_enabled: AtomicBool,
}

impl ChipCounters {
    /// Records the [`state`] bits.
    pub fn set_state(&self, bits: u32) {
        self.state.store(bits, Ordering::SeqCst);
    }

    /// One sentence on the controller's state and counts, for stall reports.
    pub fn describe(&self) -> String {
        let st = self.state.load(Ordering::SeqCst);
        let on = |bit: u32| st & bit != 0;
        let l = |a: &AtomicU64| a.load(Ordering::SeqCst);
        format!(
            "CPU line {}, device {}, timer level {}{}; {} irq-eventfd signals taken, {} raises, {} device acks, {} EOIs, {} timer irqs, {} spurious acks, {} kicks (kick {}), {} vCPU exits",
            if on(state::LINE) { "raised" } else { "low" },
            if on(state::DEVICE_ACTIVE) {
                "in service"
            } else if on(state::DEVICE_PENDING) {
                "pending"
            } else {
                "idle"
            },
            if on(state::TIMER_LEVEL) { "high" } else { "low" },
            if on(state::TIMER_ACTIVE) { " (timer in service)" } else { "" },
            l(&self.taken),
            l(&self.injected),
            l(&self.acks),
            l(&self.eois),
            l(&self.timer),
            l(&self.spurious),
            l(&self.kicks),
            if self.kick_enabled.load(Ordering::SeqCst) { "on" } else { "off" },
            l(&self.exits),
        )
    }
}

/// What a vCPU loop shares with the runner.
pub struct ChipContext {
    /// The VM (the aarch64 controller raises the line through it).
    pub vm: Arc<VmFd>,
    /// Set when the runner stops the vCPU.
    pub stop: Arc<AtomicBool>,
    /// The controller's counters.
    pub counters: Arc<ChipCounters>,
}

/// The environment variable that turns the userspace controller's kick off
/// (`INTXD_SOAK_KICK=off`): a raise from the controller's thread then
/// relies on KVM alone to wake a vCPU parked in WFI/HLT. For the lanes that
/// show which kernels stall without it.
pub const KICK_ENV: &str = "INTXD_SOAK_KICK";

/// Whether the userspace controller kicks the vCPU after a raise.
pub fn kick_enabled() -> bool {
    std::env::var_os(KICK_ENV).is_none_or(|v| v != "off")
}

/// The running vCPU.
pub struct VcpuRunner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), VcpuError>>>,
    /// The controller's counters.
    pub chip: Arc<ChipCounters>,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
            log::warn!("soak: cannot install the vCPU kick handler: {e}");
        }
    });
}

/// The userspace pair the soak's own chip serves.
pub struct UserChipFds {
    /// Asserts the line.
    pub irq: EventFd,
    /// Written at EOI.
    pub resample: EventFd,
}

impl VcpuRunner {
    /// Starts the vCPU. With `user_chip`, the soak plays the interrupt
    /// controller over those eventfds.
    pub fn start(
        vcpu: VcpuFd,
        vm: Arc<VmFd>,
        user_chip: Option<UserChipFds>,
    ) -> Result<VcpuRunner, VcpuError> {
        install_kick_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(ChipCounters::default());
        counters
            .kick_enabled
            .store(user_chip.is_some() && kick_enabled(), Ordering::SeqCst);
        let ctx = ChipContext {
            vm,
            stop: Arc::clone(&stop),
            counters: Arc::clone(&counters),
        };
        let thread = std::thread::Builder::new()
            .name("soak-vcpu".into())
            .spawn(move || match user_chip {
                None => chip::run_kernel_chip(vcpu, &ctx),
                Some(fds) => chip::run_user_chip(vcpu, &ctx, &fds),
            })
            .map_err(|source| VcpuError::Spawn {
                what: "vCPU",
                source,
            })?;
        Ok(VcpuRunner {
            stop,
            thread: Some(thread),
            chip: counters,
        })
    }

    /// Stops the vCPU and returns how it ended.
    pub fn stop(mut self) -> Result<(), VcpuError> {
        self.halt()
    }

    fn halt(&mut self) -> Result<(), VcpuError> {
        self.stop.store(true, Ordering::SeqCst);
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        // A kick that lands just before KVM_RUN is lost, so keep kicking until
        // the thread is out.
        while !t.is_finished() {
            let _ = t.kill(kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        t.join().map_err(|_| VcpuError::Panicked)?
    }
}

impl Drop for VcpuRunner {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
