//! aarch64 vCPU loops, and the soak's userspace interrupt controller for a
//! VM without a vGIC (the `KVM_CAP_ARM_USER_IRQ` contract).
//!
//! With the vGICv3 the guest never exits: irqfd, resample, ack (ioeventfd)
//! and EOI are all in KVM.
//!
//! Without one, the soak is the GIC. Two sources share the vCPU's one IRQ
//! input: the device (the irq eventfd, [`guest::DEVICE_INTID`]) and the
//! guest's virtual timer, which lives in KVM and whose output level KVM
//! reports in `kvm_run`'s `s.regs.device_irq_level` at every exit
//! ([`guest::TIMER_INTID`]). The controller
//!
//! - raises and lowers the line with `KVM_IRQ_LINE`
//!   (`KVM_ARM_IRQ_TYPE_CPU`, `KVM_ARM_IRQ_CPU_IRQ`);
//! - reads `device_irq_level` on *every* return from `KVM_RUN` (MMIO exits,
//!   kicks, the `KVM_EXIT_INTR` KVM makes when the timer's level changes),
//!   so the timer's level is never missed;
//! - answers the guest's acknowledge read with the source's INTID (or
//!   1023) and takes its EOI write: the line drops unless another source is
//!   pending, and a device EOI signals the resample eventfd;
//! - serves the irq eventfd on a thread of its own, because a vCPU in WFI
//!   sleeps inside `KVM_RUN`. A raise from that thread must be followed by
//!   a kick (a signal that makes `KVM_RUN` return): kernels before "KVM:
//!   arm64: Wake-up from WFI when irqchip is in userspace" (2026) leave a
//!   vCPU parked in WFI asleep on a `KVM_IRQ_LINE` from another thread. The
//!   kick can be turned off (`INTXD_SOAK_KICK=off`) to show which kernels
//!   stall.
//!
//! Reading `device_irq_level` is a read of a union field of `kvm_run`, hence
//! the `unsafe` here (and for the kick's thread handle).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use kvm_bindings::{
    KVM_ARM_DEV_EL1_VTIMER, KVM_ARM_IRQ_CPU_IRQ, KVM_ARM_IRQ_TYPE_CPU, KVM_ARM_IRQ_TYPE_SHIFT,
    KVM_ARM_IRQ_VCPU_SHIFT,
};
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::signal::Killable;

use super::guest;
use crate::soak::vcpu::{kick_signal, state, ChipContext, ChipCounters, UserChipFds, VcpuError};
use crate::util::fd::borrow_eventfd;

/// `KVM_IRQ_LINE`'s number for vCPU 0's IRQ input.
const CPU_IRQ: u32 = (KVM_ARM_IRQ_TYPE_CPU << KVM_ARM_IRQ_TYPE_SHIFT)
    | (0 << KVM_ARM_IRQ_VCPU_SHIFT)
    | KVM_ARM_IRQ_CPU_IRQ;

const IAR: u64 = guest::CPU_IF_ADDR + guest::IAR_OFFSET;
const EOIR: u64 = guest::CPU_IF_ADDR + guest::EOIR_OFFSET;

/// The vCPU loop with the vGICv3: nothing to serve but the stop kick.
pub fn run_kernel_chip(mut vcpu: VcpuFd, ctx: &ChipContext) -> Result<(), VcpuError> {
    while !ctx.stop.load(Ordering::SeqCst) {
        let exit = vcpu.run();
        ctx.counters.exits.fetch_add(1, Ordering::Relaxed);
        match exit {
            Ok(VcpuExit::Intr) => {}
            Ok(other) => return Err(VcpuError::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(VcpuError::Run(e)),
        }
    }
    Ok(())
}

/// The controller's state.
#[derive(Debug, Default)]
struct Lines {
    /// The device's interrupt is pending (its eventfd fired).
    device_pending: bool,
    /// The timer's level as KVM last reported it.
    timer_level: bool,
    /// The interrupt in service (acknowledged, not yet EOIed).
    active: Option<u32>,
    /// The vCPU's IRQ line as last set.
    line: bool,
}

/// The soak's GIC: its state, shared by the vCPU thread and the thread that
/// serves the irq eventfd.
struct Controller<'a> {
    vm: &'a VmFd,
    lines: Mutex<Lines>,
    counters: &'a ChipCounters,
}

/// The vCPU thread, as a target for the kick.
struct VcpuThread(libc::pthread_t);

// SAFETY: the handle is the vCPU thread's own, taken on that thread, and
// the only thread that signals it is scoped inside it (joined before the
// vCPU thread returns), so the handle is live whenever it is used.
unsafe impl Killable for VcpuThread {
    fn pthread_handle(&self) -> libc::pthread_t {
        self.0
    }
}

impl Controller<'_> {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the line to what the state asks for and returns whether it rose.
    /// While an interrupt is in service the line stays as it is (the
    /// guest's ISR runs with IRQs masked; its EOI decides).
    fn sync(&self, l: &mut Lines) -> Result<bool, VcpuError> {
        let want = match l.active {
            Some(_) => l.line,
            None => l.device_pending || l.timer_level,
        };
        let rose = want && !l.line;
        if want != l.line {
            self.vm
                .set_irq_line(CPU_IRQ, want)
                .map_err(|source| VcpuError::Kvm {
                    what: "set the vCPU's IRQ line (KVM_IRQ_LINE)",
                    source,
                })?;
            l.line = want;
            if want {
                self.counters.injected.fetch_add(1, Ordering::Relaxed);
            }
        }
        let bit = |on: bool, b: u32| if on { b } else { 0 };
        self.counters.set_state(
            bit(l.line, state::LINE)
                | bit(l.device_pending, state::DEVICE_PENDING)
                | bit(l.active == Some(guest::DEVICE_INTID), state::DEVICE_ACTIVE)
                | bit(l.timer_level, state::TIMER_LEVEL)
                | bit(l.active == Some(guest::TIMER_INTID), state::TIMER_ACTIVE),
        );
        Ok(rose)
    }

    /// Raises the line again from the vCPU's own thread, after a kick. A
    /// raise from another thread was seen lost under load (suspected: 6.1's
    /// `kvm_arch_vcpu_load()` rewrites `HCR_EL2` non-atomically while
    /// `KVM_IRQ_LINE` sets its VI bit); from this thread it cannot race, and
    /// it is a no-op when KVM kept the first one.
    fn reassert(&self) -> Result<(), VcpuError> {
        self.vm
            .set_irq_line(CPU_IRQ, true)
            .map_err(|source| VcpuError::Kvm {
                what: "re-assert the vCPU's IRQ line (KVM_IRQ_LINE)",
                source,
            })
    }

    /// The guest read the acknowledge register: the source it gets.
    fn acknowledge(&self, l: &mut Lines) -> u32 {
        if l.active.is_some() {
            self.counters.spurious.fetch_add(1, Ordering::Relaxed);
            return guest::SPURIOUS_INTID;
        }
        let id = if l.timer_level {
            self.counters.timer.fetch_add(1, Ordering::Relaxed);
            guest::TIMER_INTID
        } else if l.device_pending {
            l.device_pending = false;
            self.counters.acks.fetch_add(1, Ordering::Relaxed);
            guest::DEVICE_INTID
        } else {
            self.counters.spurious.fetch_add(1, Ordering::Relaxed);
            return guest::SPURIOUS_INTID;
        };
        l.active = Some(id);
        id
    }

    /// The guest wrote `id` to the EOI register.
    fn end(&self, l: &mut Lines, id: u32, fds: &UserChipFds) -> Result<(), VcpuError> {
        if l.active != Some(id) {
            return Ok(());
        }
        l.active = None;
        // Lower the line (unless another source is pending), then tell the
        // device side: KVM's order for a resampling irqfd.
        self.sync(l)?;
        if id == guest::DEVICE_INTID {
            self.counters.eois.fetch_add(1, Ordering::Relaxed);
            fds.resample.write(1).map_err(|source| VcpuError::Eventfd {
                what: "write the resample eventfd",
                source,
            })?;
        }
        Ok(())
    }

    /// The irq eventfd's thread: each signal makes the device pending,
    /// raises the line and, when it rose, kicks the vCPU.
    fn serve_device(
        &self,
        fds: &UserChipFds,
        stop: &AtomicBool,
        done: &AtomicBool,
        kick: Option<&VcpuThread>,
    ) -> Result<(), VcpuError> {
        while !stop.load(Ordering::SeqCst) && !done.load(Ordering::SeqCst) {
            let mut p = [PollFd::new(borrow_eventfd(&fds.irq), PollFlags::POLLIN)];
            match poll(&mut p, PollTimeout::from(20u16)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    return Err(VcpuError::Eventfd {
                        what: "poll the irq eventfd",
                        source: e.into(),
                    })
                }
            }
            if fds.irq.read().is_err() {
                continue;
            }
            self.counters.taken.fetch_add(1, Ordering::Relaxed);
            let rose = {
                let mut l = self.lock();
                l.device_pending = true;
                self.sync(&mut l)?
            };
            if let (true, Some(t)) = (rose, kick) {
                // After the raise: KVM samples the line at every entry, so a
                // kick that lands before the vCPU re-enters is harmless.
                if t.kill(kick_signal()).is_ok() {
                    self.counters.kicks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }
}

/// The levels of the in-kernel devices (the timers, the PMU) KVM reported
/// at the last exit.
fn device_irq_level(vcpu: &mut VcpuFd) -> u64 {
    let run = vcpu.get_kvm_run();
    // SAFETY: on arm64 `s` is `kvm_sync_regs` (one u64, device_irq_level)
    // padded in a union; KVM writes it at every return from KVM_RUN without
    // an in-kernel irqchip, and any bit pattern is a valid u64.
    unsafe { run.s.regs.device_irq_level }
}

/// Writes `value` as the data of the MMIO read the vCPU exited on.
fn complete_mmio_read(vcpu: &mut VcpuFd, value: u32) {
    let run = vcpu.get_kvm_run();
    // SAFETY: the last exit was KVM_EXIT_MMIO (checked by the caller), so
    // `mmio` is the union's live field; its data is plain bytes.
    let mmio = unsafe { &mut run.__bindgen_anon_1.mmio };
    let len = (mmio.len as usize).min(4);
    mmio.data[..len].copy_from_slice(&value.to_le_bytes()[..len]);
}

/// What a return from `KVM_RUN` asks of the controller.
enum Exit {
    Acknowledge,
    Eoi(u32),
    Nothing,
}

/// The vCPU loop of a VM whose GIC is the soak.
pub fn run_user_chip(
    mut vcpu: VcpuFd,
    ctx: &ChipContext,
    fds: &UserChipFds,
) -> Result<(), VcpuError> {
    let chip = Controller {
        vm: &ctx.vm,
        lines: Mutex::new(Lines::default()),
        counters: &ctx.counters,
    };
    // SAFETY: pthread_self has no preconditions.
    let me = VcpuThread(unsafe { libc::pthread_self() });
    let kick = ctx.counters.kick_enabled.load(Ordering::SeqCst);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let input = std::thread::Builder::new()
            .name("soak-irqchip".into())
            .spawn_scoped(s, || {
                chip.serve_device(fds, &ctx.stop, &done, kick.then_some(&me))
            })
            .map_err(|source| VcpuError::Spawn {
                what: "interrupt controller",
                source,
            })?;
        let ran = vcpu_loop(&mut vcpu, ctx, &chip, fds);
        done.store(true, Ordering::SeqCst);
        let served = input.join().map_err(|_| VcpuError::Panicked)?;
        ran.and(served)
    })
}

fn vcpu_loop(
    vcpu: &mut VcpuFd,
    ctx: &ChipContext,
    chip: &Controller<'_>,
    fds: &UserChipFds,
) -> Result<(), VcpuError> {
    while !ctx.stop.load(Ordering::SeqCst) {
        let exit = match vcpu.run() {
            Ok(VcpuExit::MmioRead(IAR, _)) => Exit::Acknowledge,
            Ok(VcpuExit::MmioWrite(EOIR, data)) => {
                let mut b = [0u8; 4];
                let n = data.len().min(4);
                b[..n].copy_from_slice(&data[..n]);
                Exit::Eoi(u32::from_le_bytes(b))
            }
            Ok(VcpuExit::Intr) => Exit::Nothing,
            Ok(other) => return Err(VcpuError::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Nothing,
            Err(e) => return Err(VcpuError::Run(e)),
        };
        ctx.counters.exits.fetch_add(1, Ordering::Relaxed);
        let woken = matches!(exit, Exit::Nothing);
        let level = device_irq_level(vcpu);
        let mut l = chip.lock();
        l.timer_level = level & u64::from(KVM_ARM_DEV_EL1_VTIMER) != 0;
        match exit {
            Exit::Acknowledge => {
                let id = chip.acknowledge(&mut l);
                complete_mmio_read(vcpu, id);
            }
            Exit::Eoi(id) => chip.end(&mut l, id, fds)?,
            Exit::Nothing => {}
        }
        chip.sync(&mut l)?;
        if woken && l.line && l.active.is_none() {
            chip.reassert()?;
        }
    }
    Ok(())
}
