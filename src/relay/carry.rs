//! Carrying one interrupt across the relay: learn whether VFIO's trigger
//! fired and, when it did, signal the VMM's irq eventfd, never blocking on
//! the VMM's fd.
//!
//! Two ways, one picked per daemon by [`Carrier::new`]:
//!
//! - **watched, one syscall**, the default: the triggers are watched by a
//!   ring of multishot polls ([`TriggerWatch`]) whose completion queue says,
//!   from shared memory, whether a trigger fired, so the carry is the
//!   [`write_eventfd`] alone. With the wakeup and the unmask that makes
//!   three syscalls per interrupt.
//! - **read + write, two syscalls**, where io_uring is refused (a seccomp
//!   filter or a container's, `kernel.io_uring_disabled`, a kernel without
//!   ring restrictions) or with `INTXD_IO_URING=off`: [`read`](EventFd::read)
//!   of the trigger, then the write. Four per interrupt.
//!
//! The write is [`guarded`] either way: a VMM that made its fd blocking and
//! let its counter fill is cut off, and only its route ends.

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use vmm_sys_util::eventfd::EventFd;

use super::watch::TriggerWatch;
use crate::util::fd::write_eventfd;
use crate::util::unblock::guarded;

/// The environment switch that turns the trigger watch off (`off`).
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
    /// The triggers' firings come from the watch's completion queue.
    Watched(Arc<Mutex<TriggerWatch>>),
    /// A read and a write per interrupt, and why not the watch.
    Syscalls(String),
}

impl std::fmt::Debug for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl Carrier {
    /// The watch where io_uring is there and behaves as the relay needs,
    /// unless `INTXD_IO_URING=off`; else read + write, logged with the
    /// reason.
    pub fn new() -> Carrier {
        let off = std::env::var(IO_URING_VAR).is_ok_and(|v| v == "off" || v == "0");
        let c = if off {
            Carrier::syscalls_only(&format!("{IO_URING_VAR}=off"))
        } else {
            Carrier::watched()
        };
        match &c.way {
            Way::Watched(_) => log::info!("relay: {}", c.describe()),
            Way::Syscalls(why) if off => log::info!("relay: {} ({why})", c.describe()),
            Way::Syscalls(why) => log::warn!("relay: {} ({why})", c.describe()),
        }
        c
    }

    /// The watch if io_uring is there and behaves as the relay needs, else
    /// read + write with the reason.
    pub fn watched() -> Carrier {
        match TriggerWatch::new() {
            Ok(w) => Carrier {
                way: Way::Watched(Arc::new(Mutex::new(w))),
            },
            Err(why) => Carrier::syscalls_only(&why),
        }
    }

    /// Read + write, `why`.
    pub fn syscalls_only(why: &str) -> Carrier {
        Carrier {
            way: Way::Syscalls(why.to_string()),
        }
    }

    /// Whether the triggers are watched.
    pub fn is_watched(&self) -> bool {
        matches!(self.way, Way::Watched(_))
    }

    /// One line for logs, `intxd bench` and `intxd doctor`.
    pub fn describe(&self) -> &'static str {
        match self.way {
            Way::Watched(_) => "interrupts carried by a write alone: the triggers are watched by io_uring polls, read from shared memory",
            Way::Syscalls(_) => "interrupts carried by read + write: two syscalls each",
        }
    }

    /// Why the triggers are not watched, when they are not.
    pub fn fallback_reason(&self) -> Option<&str> {
        match &self.way {
            Way::Watched(_) => None,
            Way::Syscalls(why) => Some(why),
        }
    }

    /// The watch, shared with the relay registrations that arm and disarm
    /// their triggers in it; `None` when the event loop waits on the
    /// triggers themselves.
    pub fn watch(&self) -> Option<Arc<Mutex<TriggerWatch>>> {
        match &self.way {
            Way::Watched(w) => Some(Arc::clone(w)),
            Way::Syscalls(_) => None,
        }
    }

    /// The watch's fd, for the event loop to wait on (a trigger that fires
    /// while it sleeps).
    pub fn watch_fd(&self) -> Option<RawFd> {
        match &self.way {
            Way::Watched(w) => Some(lock(w).fd()),
            Way::Syscalls(_) => None,
        }
    }

    /// The slots whose triggers fired and were not carried yet, into
    /// `out` (none without the watch: their trigger events come from the
    /// loop).
    pub fn fired(&self, out: &mut Vec<usize>) {
        out.clear();
        if let Way::Watched(w) = &self.way {
            out.extend_from_slice(lock(w).reap());
        }
    }

    /// Drops a firing of `slot` the watch kept (its relay has gone).
    pub fn discard(&self, slot: usize) {
        if let Way::Watched(w) = &self.way {
            lock(w).discard(slot);
        }
    }

    /// Whether `slot`'s `trigger` fired since its last carry, taking it;
    /// adds the syscalls it made to `syscalls` (none when watched).
    #[inline]
    pub fn take(&mut self, slot: usize, trigger: &EventFd, syscalls: &mut u64) -> io::Result<bool> {
        match &mut self.way {
            Way::Watched(w) => Ok(lock(w).take(slot)),
            Way::Syscalls(_) => {
                *syscalls += 1;
                match trigger.read() {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Signals `irq` once (one syscall, added to `syscalls`). The VMM may
    /// have cleared `O_NONBLOCK` since the attach: a write that sleeps is
    /// broken off ([`guarded`]), and the caller ends that route only.
    #[inline]
    pub fn send(irq: &EventFd, syscalls: &mut u64) -> io::Result<()> {
        *syscalls += 1;
        guarded(|| write_eventfd(irq, 1))
    }

    /// [`take`](Self::take) and, when the trigger fired, [`send`](Self::send).
    #[inline]
    pub fn carry(
        &mut self,
        slot: usize,
        trigger: &EventFd,
        irq: &EventFd,
        syscalls: &mut u64,
    ) -> io::Result<Carried> {
        if !self.take(slot, trigger, syscalls)? {
            return Ok(Carried::Empty);
        }
        Carrier::send(irq, syscalls)?;
        Ok(Carried::Sent)
    }
}

/// The watch, whatever a panic elsewhere left in its lock (its state is a
/// ring and two lists, each consistent after every call).
pub fn lock(w: &Mutex<TriggerWatch>) -> MutexGuard<'_, TriggerWatch> {
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for Carrier {
    fn default() -> Self {
        Carrier::new()
    }
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
        let w = Carrier::watched();
        assert!(
            w.is_watched() || !ci(),
            "io_uring is not used on this host: {:?}",
            w.fallback_reason()
        );
        vec![w, Carrier::syscalls_only("the test's")]
    }

    fn arm(c: &Carrier, slot: usize, trigger: &EventFd) {
        if let Some(w) = c.watch() {
            lock(&w).arm(slot, trigger).unwrap();
        }
    }

    #[test]
    fn a_signalled_trigger_is_carried_once_and_an_empty_one_writes_nothing() {
        for mut c in both_ways() {
            let (trigger, irq) = (new_eventfd().unwrap(), new_eventfd().unwrap());
            arm(&c, 4, &trigger);
            let mut n = 0;
            assert_eq!(
                c.carry(4, &trigger, &irq, &mut n).unwrap(),
                Carried::Empty,
                "{c:?}"
            );
            assert!(irq.read().is_err(), "{c:?}: nothing written");
            trigger.write(1).unwrap();
            assert_eq!(
                c.carry(4, &trigger, &irq, &mut n).unwrap(),
                Carried::Sent,
                "{c:?}"
            );
            assert_eq!(irq.read().unwrap(), 1, "{c:?}: one signal");
            assert_eq!(
                c.carry(4, &trigger, &irq, &mut n).unwrap(),
                Carried::Empty,
                "{c:?}: taken once"
            );
            let per_empty = if c.is_watched() { 0 } else { 1 };
            assert_eq!(n, 3 * per_empty + 1, "{c:?}: syscalls");
            if let Some(w) = c.watch() {
                lock(&w).disarm(4);
            }
        }
    }

    #[test]
    fn a_full_irq_counter_is_an_error_and_blocks_nothing() {
        for mut c in both_ways() {
            let (trigger, irq) = (new_eventfd().unwrap(), new_eventfd().unwrap());
            arm(&c, 0, &trigger);
            irq.write(0xffff_ffff_ffff_fffe).unwrap();
            trigger.write(1).unwrap();
            let e = c.carry(0, &trigger, &irq, &mut 0).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{c:?}: {e}");
            assert_eq!(irq.read().unwrap(), 0xffff_ffff_ffff_fffe, "{c:?}");
        }
    }
}
