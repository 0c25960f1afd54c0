//! Carrying one interrupt across the relay: drain VFIO's trigger eventfd
//! and, when it was signalled, signal the VMM's irq eventfd, never blocking
//! on the VMM's fd.
//!
//! Two ways, one picked per daemon by [`Carrier::new`]:
//!
//! - **read + write, two syscalls**, the default: [`read`](EventFd::read)
//!   of the trigger, then [`write_eventfd`] guarded against a VMM that made
//!   its fd blocking ([`guarded`]).
//! - **io_uring, one syscall**, with `INTXD_IO_URING=on`: a `READ` of the trigger with `RWF_NOWAIT`,
//!   linked (`IOSQE_IO_LINK`) to a `WRITE` of 1 to the irq eventfd with
//!   `RWF_NOWAIT`, both `IOSQE_CQE_SKIP_SUCCESS`, in one `io_uring_enter`
//!   that does not wait. An eventfd read and write complete inline, so when
//!   the call returns the completion queue (shared memory, no syscall) says
//!   everything: empty when both ran (the interrupt went to the VMM); the
//!   read's `-EAGAIN` (the trigger was not signalled; the kernel cancelled
//!   the write) when the line was low; the write's error when the VMM's fd
//!   could not take the signal (`-EAGAIN`: a full counter, or a holder who
//!   cleared `O_NONBLOCK`: `RWF_NOWAIT` refuses to wait or to hand the write
//!   to a kernel worker, "no retry on NONBLOCK nor RWF_NOWAIT").
//!
//! The ring is one syscall fewer per interrupt but not cheaper: on this
//! project's machines (kernel 6.18) the relay's loop spent about 1 µs more
//! CPU per interrupt with it (10.5–11.1 µs against 9.4–10.3 µs,
//! `intxd bench`, docs/performance.md), so it is opt-in. It is used only
//! when a self-test at start-up saw exactly the behaviour above on eventfds
//! of its own (an empty trigger, a signalled one, a blocking irq fd);
//! otherwise, or where io_uring is refused (a seccomp filter or a
//! container's, `kernel.io_uring_disabled`, kernels before 5.17), the relay
//! makes the two syscalls and says why.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU64;

use io_uring::{opcode, squeue, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

use crate::util::fd::{borrow_eventfd, is_nonblocking, write_eventfd};
use crate::util::unblock::guarded;

/// The environment switch that puts the relay on io_uring (`on`).
pub const IO_URING_VAR: &str = "INTXD_IO_URING";

/// What [`Carrier::carry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// The trigger was signalled and the VMM's irq eventfd now is.
    Sent,
    /// The trigger was not signalled: nothing was written.
    Empty,
}

/// How interrupts are carried: see the module's text.
pub struct Carrier {
    way: Way,
}

enum Way {
    /// One `io_uring_enter` per interrupt.
    Ring(Box<IoUring>),
    /// A read and a write per interrupt, and why not the ring.
    Syscalls(String),
}

impl std::fmt::Debug for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Where the ring's reads of the trigger's counter go; nothing reads it.
static SINK: AtomicU64 = AtomicU64::new(0);
/// What the ring writes to the VMM's irq eventfd.
static ONE: u64 = 1;

const READ: u64 = 1;
const WRITE: u64 = 2;

impl Carrier {
    /// Read + write, or with `INTXD_IO_URING=on` the ring when io_uring
    /// is there and behaves as the relay needs (else read + write, logged
    /// with the reason).
    pub fn new() -> Carrier {
        let wanted = std::env::var(IO_URING_VAR).is_ok_and(|v| v == "on" || v == "1");
        let c = if wanted {
            Carrier::ring()
        } else {
            Carrier::syscalls_only()
        };
        match &c.way {
            Way::Ring(_) => log::info!("relay: {}", c.describe()),
            Way::Syscalls(why) if wanted => log::warn!("relay: {} ({why})", c.describe()),
            Way::Syscalls(why) => log::debug!("relay: {} ({why})", c.describe()),
        }
        c
    }

    /// The ring if io_uring is there and behaves as the relay needs, else
    /// read + write with the reason.
    pub fn ring() -> Carrier {
        match ring_that_works() {
            Ok(ring) => Carrier {
                way: Way::Ring(Box::new(ring)),
            },
            Err(why) => Carrier {
                way: Way::Syscalls(why),
            },
        }
    }

    /// Read + write, whatever the host has: the default.
    pub fn syscalls_only() -> Carrier {
        Carrier {
            way: Way::Syscalls(format!("the default; {IO_URING_VAR}=on for io_uring")),
        }
    }

    /// Whether interrupts go through the ring.
    pub fn uses_ring(&self) -> bool {
        matches!(self.way, Way::Ring(_))
    }

    /// One line for logs and `intxd doctor`.
    pub fn describe(&self) -> &'static str {
        match self.way {
            Way::Ring(_) => "interrupts carried by io_uring: one syscall each (trigger read linked to the irq write)",
            Way::Syscalls(_) => "interrupts carried by read + write: two syscalls each",
        }
    }

    /// Why the ring is not used, when it is not.
    pub fn fallback_reason(&self) -> Option<&str> {
        match &self.way {
            Way::Ring(_) => None,
            Way::Syscalls(why) => Some(why),
        }
    }

    /// Drains `trigger` and, when it was signalled, signals `irq`; adds the
    /// syscalls it made to `syscalls`. An error is the irq fd's (or, never
    /// seen, the trigger's): the caller ends that route only.
    #[inline]
    pub fn carry(
        &mut self,
        trigger: &EventFd,
        irq: &EventFd,
        syscalls: &mut u64,
    ) -> io::Result<Carried> {
        match &mut self.way {
            Way::Ring(ring) => {
                *syscalls += 1;
                ring_carry(ring, trigger, irq)
            }
            Way::Syscalls(_) => {
                *syscalls += 1;
                match trigger.read() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Carried::Empty),
                    Err(e) => return Err(e),
                }
                *syscalls += 1;
                // The VMM may have cleared O_NONBLOCK since the attach: a
                // write that sleeps is broken off (`unblock`), and the
                // route ends.
                guarded(|| write_eventfd(irq, 1))?;
                Ok(Carried::Sent)
            }
        }
    }
}

impl Default for Carrier {
    fn default() -> Self {
        Carrier::new()
    }
}

/// One carry through the ring: the linked pair, one `io_uring_enter`, and
/// the completion queue read back.
fn ring_carry(ring: &mut IoUring, trigger: &EventFd, irq: &EventFd) -> io::Result<Carried> {
    let read = opcode::Read::new(
        types::Fd(trigger.as_raw_fd()),
        SINK.as_ptr().cast::<u8>(),
        8,
    )
    .rw_flags(libc::RWF_NOWAIT)
    .build()
    .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
    .user_data(READ);
    let write = opcode::Write::new(
        types::Fd(irq.as_raw_fd()),
        std::ptr::addr_of!(ONE).cast::<u8>(),
        8,
    )
    .rw_flags(libc::RWF_NOWAIT)
    .build()
    .flags(squeue::Flags::SKIP_SUCCESS)
    .user_data(WRITE);
    // SAFETY: both buffers are statics, valid for as long as any request
    // could use them; the write's is only read by the kernel and the read's
    // is an atomic that nothing reads. The queue has room: every carry
    // leaves it empty (the submit below takes both entries).
    #[allow(unsafe_code)]
    unsafe { ring.submission().push_multiple(&[read, write]) }
        .map_err(|_| io::Error::other("the relay's submission queue is full"))?;
    ring.submit()?;
    let mut out = Ok(Carried::Sent);
    for cqe in ring.completion() {
        let res = cqe.result();
        match cqe.user_data() {
            READ if res == -libc::EAGAIN && out.is_ok() => out = Ok(Carried::Empty),
            READ if res == -libc::EAGAIN => {}
            READ if res < 0 => out = Err(io::Error::from_raw_os_error(-res)),
            // Cancelled because the read found nothing: that is all.
            WRITE if res == -libc::ECANCELED => {}
            WRITE if res == -libc::EAGAIN && !is_nonblocking(borrow_eventfd(irq)).unwrap_or(false) => {
                out = Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "the write would have blocked (its holder cleared O_NONBLOCK) and was refused, not waited on",
                ))
            }
            WRITE if res < 0 => out = Err(io::Error::from_raw_os_error(-res)),
            WRITE if res != 8 => {
                out = Err(io::Error::other(format!(
                    "eventfd write took {res} of 8 bytes"
                )))
            }
            _ => {}
        }
    }
    out
}

/// A ring, if io_uring is allowed here and its eventfd read and write
/// behave as [`ring_carry`] needs (inline, never waiting); else why not.
fn ring_that_works() -> Result<IoUring, String> {
    let mut ring = IoUring::builder()
        .setup_coop_taskrun()
        .build(8)
        .map_err(|e| format!("io_uring_setup: {e}"))?;
    let ev = |flags| EventFd::new(flags).map_err(|e| format!("an eventfd for the self-test: {e}"));
    let (trigger, irq) = (
        ev(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        ev(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
    );
    let blocking = ev(libc::EFD_CLOEXEC)?;
    let fail = |what: &str| format!("io_uring self-test: {what}");
    let carry = |ring: &mut IoUring, to: &EventFd| {
        ring_carry(ring, &trigger, to).map_err(|e| fail(&e.to_string()))
    };
    if carry(&mut ring, &irq)? != Carried::Empty {
        return Err(fail("an empty trigger was not reported empty"));
    }
    if irq.read().is_ok() {
        return Err(fail("an empty trigger's carry wrote the irq eventfd"));
    }
    trigger.write(3).map_err(|e| fail(&e.to_string()))?;
    if carry(&mut ring, &irq)? != Carried::Sent {
        return Err(fail("a signalled trigger was not carried"));
    }
    if irq.read().ok() != Some(1) || trigger.read().is_ok() {
        return Err(fail(
            "the carry did not drain the trigger and add 1 to the irq",
        ));
    }
    // A holder who made the irq fd blocking: refused at once, not waited on
    // and not handed to a kernel worker.
    trigger.write(1).map_err(|e| fail(&e.to_string()))?;
    match ring_carry(&mut ring, &trigger, &blocking) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => {
            return Err(fail(&format!(
                "a blocking irq eventfd gave {other:?}, not EAGAIN"
            )))
        }
    }
    if ring.completion().next().is_some() {
        return Err(fail("a completion came late"));
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::util::fd::new_eventfd;

    /// CI's hosts have io_uring: there, a fallback is a failure.
    fn ci() -> bool {
        std::env::var("CI").is_ok_and(|v| v == "true")
    }

    fn both_ways() -> Vec<Carrier> {
        let ring = Carrier::ring();
        assert!(
            ring.uses_ring() || !ci(),
            "io_uring is not used on this host: {:?}",
            ring.fallback_reason()
        );
        vec![ring, Carrier::syscalls_only()]
    }

    #[test]
    fn a_signalled_trigger_is_carried_once_and_an_empty_one_writes_nothing() {
        for mut c in both_ways() {
            let (trigger, irq) = (new_eventfd().unwrap(), new_eventfd().unwrap());
            let mut n = 0;
            assert_eq!(
                c.carry(&trigger, &irq, &mut n).unwrap(),
                Carried::Empty,
                "{c:?}"
            );
            assert!(irq.read().is_err(), "{c:?}: nothing written");
            trigger.write(5).unwrap();
            assert_eq!(
                c.carry(&trigger, &irq, &mut n).unwrap(),
                Carried::Sent,
                "{c:?}"
            );
            assert_eq!(
                irq.read().unwrap(),
                1,
                "{c:?}: one signal, however many triggers"
            );
            assert!(trigger.read().is_err(), "{c:?}: the trigger is drained");
            let per = if c.uses_ring() { 1 } else { 2 };
            assert_eq!(n, 1 + per, "{c:?}: syscalls");
        }
    }

    #[test]
    fn a_full_irq_counter_is_an_error_and_blocks_nothing() {
        for mut c in both_ways() {
            let (trigger, irq) = (new_eventfd().unwrap(), new_eventfd().unwrap());
            irq.write(0xffff_ffff_ffff_fffe).unwrap();
            trigger.write(1).unwrap();
            let e = c.carry(&trigger, &irq, &mut 0).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{c:?}: {e}");
            assert_eq!(irq.read().unwrap(), 0xffff_ffff_ffff_fffe, "{c:?}");
        }
    }

    #[test]
    fn the_ring_refuses_an_irq_eventfd_its_holder_made_blocking() {
        let mut c = Carrier::ring();
        if !c.uses_ring() {
            assert!(!ci(), "{:?}", c.fallback_reason());
            return;
        }
        let trigger = new_eventfd().unwrap();
        let blocking = EventFd::new(libc::EFD_CLOEXEC).unwrap();
        trigger.write(1).unwrap();
        let e = c.carry(&trigger, &blocking, &mut 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
        assert!(e.to_string().contains("cleared O_NONBLOCK"), "{e}");
    }
}
