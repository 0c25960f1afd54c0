//! The soak's vCPU thread, with the kernel irqchip or its own userspace one.
//!
//! With the kernel irqchip the guest never exits: the PIC, the ack port
//! (ioeventfd) and the irqfd are all in KVM, and the thread only returns from
//! `KVM_RUN` when [`VcpuRunner::stop`] kicks it with a signal.
//!
//! With the userspace irqchip this thread *is* the interrupt controller, the
//! contract every VMM with a userspace irqchip follows: a write to the irq
//! eventfd asserts the line; the line is injected with `KVM_INTERRUPT` when the
//! vCPU can take it; the guest's EOI (a port write that exits to us)
//! de-asserts it and writes the resample eventfd.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_ioctls::{VcpuExit, VcpuFd};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::guest;
use super::vm::inject_interrupt;
use crate::util::fd::borrow_eventfd;

/// Counters of the userspace irqchip.
#[derive(Debug, Default)]
pub struct ChipCounters {
    /// Interrupts injected with `KVM_INTERRUPT`.
    pub injected: AtomicU64,
    /// EOIs seen (and resamples signalled).
    pub eois: AtomicU64,
    /// Returns from `KVM_RUN` (with either irqchip; with the kernel one,
    /// the set-up's port writes and the stop kick are all there should be).
    pub exits: AtomicU64,
}

/// The running vCPU.
pub struct VcpuRunner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
    /// The userspace chip's counters (with the kernel irqchip, only
    /// `exits` moves).
    pub chip: Arc<ChipCounters>,
}

fn kick_signal() -> i32 {
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
    /// Starts the vCPU. With `user_chip`, the thread plays the interrupt
    /// controller over those eventfds.
    pub fn start(vcpu: VcpuFd, user_chip: Option<UserChipFds>) -> io::Result<VcpuRunner> {
        install_kick_handler();
        let stop = Arc::new(AtomicBool::new(false));
        let chip = Arc::new(ChipCounters::default());
        let (s2, c2) = (Arc::clone(&stop), Arc::clone(&chip));
        let thread = std::thread::Builder::new()
            .name("soak-vcpu".into())
            .spawn(move || match user_chip {
                None => run_kernel_chip(vcpu, &s2, &c2),
                Some(fds) => run_user_chip(vcpu, &s2, &fds, &c2),
            })?;
        Ok(VcpuRunner {
            stop,
            thread: Some(thread),
            chip,
        })
    }

    /// Stops the vCPU and returns how it ended.
    pub fn stop(mut self) -> Result<(), String> {
        self.halt()
    }

    fn halt(&mut self) -> Result<(), String> {
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
        t.join()
            .map_err(|_| "the vCPU thread panicked".to_string())?
    }
}

impl Drop for VcpuRunner {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

fn run_kernel_chip(
    mut vcpu: VcpuFd,
    stop: &AtomicBool,
    counters: &ChipCounters,
) -> Result<(), String> {
    while !stop.load(Ordering::SeqCst) {
        let exit = vcpu.run();
        counters.exits.fetch_add(1, Ordering::Relaxed);
        match exit {
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::Intr) | Ok(VcpuExit::Hlt) => {}
            Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
            Ok(other) => return Err(format!("unexpected vCPU exit: {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("KVM_RUN failed: {e}")),
        }
    }
    Ok(())
}

fn run_user_chip(
    mut vcpu: VcpuFd,
    stop: &AtomicBool,
    fds: &UserChipFds,
    counters: &ChipCounters,
) -> Result<(), String> {
    let mut asserted = false;
    let mut in_service = false;
    while !stop.load(Ordering::SeqCst) {
        if asserted && !in_service {
            let run = vcpu.get_kvm_run();
            if run.ready_for_interrupt_injection != 0 {
                run.request_interrupt_window = 0;
                inject_interrupt(&vcpu, guest::VECTOR)
                    .map_err(|e| format!("KVM_INTERRUPT failed: {e}"))?;
                counters.injected.fetch_add(1, Ordering::Relaxed);
                in_service = true;
            } else {
                run.request_interrupt_window = 1;
            }
        }
        let exit = vcpu.run();
        counters.exits.fetch_add(1, Ordering::Relaxed);
        match exit {
            Ok(VcpuExit::Hlt) => {
                if !asserted {
                    asserted = wait_readable(&fds.irq, 20)?;
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if port == guest::EOI_PORT && data.first() == Some(&0x20) && in_service {
                    // EOI: de-assert, then tell the device side (KVM's order).
                    in_service = false;
                    counters.eois.fetch_add(1, Ordering::Relaxed);
                    fds.resample
                        .write(1)
                        .map_err(|e| format!("resample write failed: {e}"))?;
                    // De-asserted at EOI; asserted again only if the device
                    // side fired once more.
                    asserted = fds.irq.read().is_ok();
                }
            }
            Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
            Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => {}
            Ok(other) => return Err(format!("unexpected vCPU exit: {other:?}")),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(format!("KVM_RUN failed: {e}")),
        }
    }
    Ok(())
}

/// Waits up to `ms` for `ev` to be signalled; consumes the signal.
fn wait_readable(ev: &EventFd, ms: u16) -> Result<bool, String> {
    if ev.read().is_ok() {
        return Ok(true);
    }
    let mut fds = [PollFd::new(borrow_eventfd(ev), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(ev.read().is_ok()),
        Err(e) => Err(format!(
            "poll on the irq eventfd of fd {} failed: {e}",
            ev.as_raw_fd()
        )),
    }
}
