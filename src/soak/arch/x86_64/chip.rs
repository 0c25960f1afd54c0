//! x86_64 vCPU loops. With the kernel irqchip the guest only exits when
//! kicked. With the userspace one this thread is the PIC: it waits on the
//! irq eventfd while the guest halts, injects the vector with
//! `KVM_INTERRUPT` when the vCPU can take it, and takes the guest's EOI (a
//! port write that exits) as the de-assert. `KVM_INTERRUPT` has no wrapper
//! in `kvm-ioctls`, hence the `unsafe` here.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::Ordering;

use kvm_bindings::kvm_interrupt;
use kvm_ioctls::{VcpuExit, VcpuFd};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::guest;
use crate::soak::vcpu::{state, ChipContext, UserChipFds, VcpuError};
use crate::util::fd::borrow_eventfd;

mod ioctls {
    #![allow(missing_docs)]
    use kvm_bindings::kvm_interrupt;
    use vmm_sys_util::ioctl_iow_nr;
    const KVMIO: u32 = 0xAE;
    ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
}
use ioctls::KVM_INTERRUPT;

/// `KVM_INTERRUPT`: queue an external interrupt for a vCPU whose interrupt
/// controller lives in userspace. Must be called on the vCPU's thread.
fn inject_interrupt(vcpu: &VcpuFd, vector: u32) -> io::Result<()> {
    let irq = kvm_interrupt { irq: vector };
    // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt`, which lives across the
    // call; the fd is a vCPU fd.
    let ret = unsafe { ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The vCPU loop with the in-kernel irqchip: nothing to serve but the
/// set-up's port writes and the stop kick.
pub fn run_kernel_chip(mut vcpu: VcpuFd, ctx: &ChipContext) -> Result<(), VcpuError> {
    while !ctx.stop.load(Ordering::SeqCst) {
        let exit = vcpu.run();
        ctx.counters.exits.fetch_add(1, Ordering::Relaxed);
        match exit {
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::Intr) | Ok(VcpuExit::Hlt) => {}
            Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
            Ok(other) => return Err(VcpuError::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(VcpuError::Run(e)),
        }
    }
    Ok(())
}

/// The vCPU loop that is also the guest's PIC.
pub fn run_user_chip(
    mut vcpu: VcpuFd,
    ctx: &ChipContext,
    fds: &UserChipFds,
) -> Result<(), VcpuError> {
    let counters = &ctx.counters;
    let mut asserted = false;
    let mut in_service = false;
    while !ctx.stop.load(Ordering::SeqCst) {
        if asserted && !in_service {
            let run = vcpu.get_kvm_run();
            if run.ready_for_interrupt_injection != 0 {
                run.request_interrupt_window = 0;
                inject_interrupt(&vcpu, guest::VECTOR).map_err(|source| VcpuError::Eventfd {
                    what: "inject the interrupt with KVM_INTERRUPT",
                    source,
                })?;
                counters.injected.fetch_add(1, Ordering::Relaxed);
                counters.acks.fetch_add(1, Ordering::Relaxed);
                in_service = true;
            } else {
                run.request_interrupt_window = 1;
            }
        }
        counters.set_state(
            if asserted {
                state::LINE | state::DEVICE_PENDING
            } else {
                0
            } | if in_service { state::DEVICE_ACTIVE } else { 0 },
        );
        let exit = vcpu.run();
        counters.exits.fetch_add(1, Ordering::Relaxed);
        match exit {
            Ok(VcpuExit::Hlt) => {
                if !asserted {
                    asserted = wait_readable(&fds.irq, 20)?;
                    if asserted {
                        counters.taken.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if port == guest::EOI_PORT && data.first() == Some(&0x20) && in_service {
                    // EOI: de-assert, then tell the device side (KVM's order).
                    in_service = false;
                    counters.eois.fetch_add(1, Ordering::Relaxed);
                    fds.resample.write(1).map_err(|source| VcpuError::Eventfd {
                        what: "write the resample eventfd",
                        source,
                    })?;
                    // De-asserted at EOI; asserted again only if the device
                    // side fired once more.
                    asserted = fds.irq.read().is_ok();
                    if asserted {
                        counters.taken.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
            Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => {}
            Ok(other) => return Err(VcpuError::UnexpectedExit(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(VcpuError::Run(e)),
        }
    }
    Ok(())
}

/// Waits up to `ms` for `ev` to be signalled; consumes the signal.
fn wait_readable(ev: &EventFd, ms: u16) -> Result<bool, VcpuError> {
    if ev.read().is_ok() {
        return Ok(true);
    }
    let mut fds = [PollFd::new(borrow_eventfd(ev), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(ev.read().is_ok()),
        Err(e) => Err(VcpuError::Eventfd {
            what: "poll the irq eventfd",
            source: e.into(),
        }),
    }
}
