//! Watching VFIO's trigger eventfds without reading them: one multishot
//! `POLL_ADD` per relay route in an io_uring whose completion queue is
//! shared memory, so "did the unmask re-fire?" costs no syscall.
//!
//! Why it works, and why it is the default: vfio-pci's unmask
//! (`VFIO_DEVICE_SET_IRQS` `ACTION_UNMASK`) signals the trigger inside the
//! call when the line is still high. The signal wakes the ring's poll,
//! which queues its completion as task work on the thread that armed it
//! (the event loop's, which is the one making the unmask); task work runs
//! before that thread returns to userspace, so the completion is in the
//! queue when the ioctl returns. The relay then knows, from memory, whether
//! to write the VMM's irq eventfd: **the unmask and the write, with the
//! wakeup three syscalls per interrupt**, instead of a `read` of the trigger
//! in between (four).
//!
//! A trigger that fires while the loop sleeps (a device raising its line
//! after a quiet spell) queues the same task work, which interrupts the
//! loop's `epoll_wait` (`EINTR`); it also posts a completion, which makes
//! the ring's fd readable, and the ring's fd is in the loop's epoll set for
//! that: whichever comes first wakes the loop, and it [`reap`]s the queue.
//! Once reaped, the ring's fd is no longer readable, so epoll (which polls
//! the fd again when it hands out an event) reports nothing more: no extra
//! turn.
//!
//! A trigger's counter is never read while it is watched: it only grows
//! (an eventfd holds 2^64 - 2; at a million interrupts a second that is
//! half a million years). Arming drains it without counting it, so a
//! restart that takes a route back does not relay a stale count; the
//! restart's own unmask re-fires a line that is still high.
//!
//! The ring is restricted before it is enabled
//! (`IORING_REGISTER_RESTRICTIONS`): it takes `POLL_ADD` and `POLL_REMOVE`
//! and nothing else, so it cannot be used to get around the daemon's
//! seccomp filter, and that filter refuses `io_uring_setup` once the daemon
//! is up. [`TriggerWatch::new`] checks all of this on eventfds of its own
//! and says why when it does not hold; the relay then reads the trigger.
//!
//! [`reap`]: TriggerWatch::reap

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::register::Restriction;
use io_uring::{cqueue, opcode, types, IoUring};
use vmm_sys_util::eventfd::EventFd;

/// The user data of a `POLL_REMOVE`'s own completion.
const REMOVE: u64 = u64::MAX;

/// The completion queue's size. Each armed trigger has at most one
/// completion outstanding between reaps (INTx stays masked until the relay
/// unmasks it), so this covers 256 routes with room to spare; beyond, the
/// kernel keeps the overflow and ends the poll, and [`TriggerWatch::reap`]
/// arms it again.
const ENTRIES: u32 = 512;

/// One watched trigger.
#[derive(Debug, Clone, Copy)]
struct Armed {
    /// The poll's user data: the slot in the low 32 bits, a generation
    /// above, so a completion of a route that has gone is not taken for
    /// its successor's.
    key: u64,
    /// The trigger's fd, open for as long as it is armed (the relay
    /// registration that armed it is released before the fd closes).
    fd: RawFd,
}

/// The relay's watched triggers: see the module's text.
pub struct TriggerWatch {
    ring: IoUring,
    /// By slot (the daemon's device index).
    armed: Vec<Option<Armed>>,
    /// Slots whose trigger fired and whose carry has not taken it yet.
    fired: Vec<usize>,
    generation: u64,
}

impl std::fmt::Debug for TriggerWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerWatch")
            .field("armed", &self.armed.iter().flatten().count())
            .field("fired", &self.fired)
            .finish()
    }
}

impl TriggerWatch {
    /// A restricted ring that behaves as the module's text says, checked on
    /// eventfds of its own; else why not.
    pub fn new() -> Result<TriggerWatch, String> {
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_r_disabled()
            .build(ENTRIES)
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        let sub = ring.submitter();
        sub.register_restrictions(&mut [
            Restriction::sqe_op(opcode::PollAdd::CODE),
            Restriction::sqe_op(opcode::PollRemove::CODE),
        ])
        .map_err(|e| format!("io_uring restrictions: {e}"))?;
        sub.register_enable_rings()
            .map_err(|e| format!("io_uring enable: {e}"))?;
        let mut w = TriggerWatch {
            ring,
            armed: Vec::new(),
            fired: Vec::new(),
            generation: 0,
        };
        w.self_test()
            .map_err(|e| format!("io_uring self-test: {e}"))?;
        Ok(w)
    }

    /// The ring's fd: readable while completions wait to be reaped.
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Starts watching `trigger` for `slot` (replacing what the slot
    /// watched). Its counter is drained and not counted.
    pub fn arm(&mut self, slot: usize, trigger: &EventFd) -> io::Result<()> {
        self.disarm(slot);
        let _ = trigger.read();
        self.generation += 1;
        let key = (self.generation << 32) | slot as u64;
        let fd = trigger.as_raw_fd();
        self.poll(key, fd)?;
        if self.armed.len() <= slot {
            self.armed.resize(slot + 1, None);
        }
        self.armed[slot] = Some(Armed { key, fd });
        Ok(())
    }

    /// Stops watching `slot`'s trigger; a firing not yet taken is dropped.
    pub fn disarm(&mut self, slot: usize) {
        let Some(a) = self.armed.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.discard(slot);
        let remove = opcode::PollRemove::new(a.key).build().user_data(REMOVE);
        if let Err(e) = self.push(&remove).and_then(|()| self.ring.submit()) {
            // The poll then ends when the trigger's last fd closes.
            log::warn!("relay: could not stop watching a trigger: {e}");
        }
    }

    /// Drops a firing of `slot` not taken yet.
    pub fn discard(&mut self, slot: usize) {
        self.fired.retain(|&s| s != slot);
    }

    /// Whether `slot`'s trigger fired since its last carry; takes it.
    #[inline]
    pub fn take(&mut self, slot: usize) -> bool {
        self.reap();
        match self.fired.iter().position(|&s| s == slot) {
            Some(p) => {
                self.fired.swap_remove(p);
                true
            }
            None => false,
        }
    }

    /// Moves every completion into the fired slots (no syscall unless a
    /// poll has to be armed again), and returns them.
    #[inline]
    pub fn reap(&mut self) -> &[usize] {
        let mut ended = Vec::new();
        for cqe in self.ring.completion() {
            let key = cqe.user_data();
            let slot = (key & 0xffff_ffff) as usize;
            let Some(a) = self.armed.get(slot).copied().flatten() else {
                continue;
            };
            if a.key != key {
                continue;
            }
            if cqe.result() > 0 && !self.fired.contains(&slot) {
                self.fired.push(slot);
            }
            if !cqueue::more(cqe.flags()) {
                ended.push(a);
            }
        }
        for a in ended {
            log::debug!(
                "relay: a trigger's watch ended (an overflowed completion queue); armed again"
            );
            if let Err(e) = self.poll(a.key, a.fd) {
                log::error!("relay: a trigger's watch ended and could not be armed again: {e}");
            }
        }
        &self.fired
    }

    fn poll(&mut self, key: u64, fd: RawFd) -> io::Result<()> {
        let add = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(key);
        self.push(&add)?;
        self.ring.submit()?;
        Ok(())
    }

    fn push(&mut self, e: &io_uring::squeue::Entry) -> io::Result<()> {
        // SAFETY: a poll and a poll removal point at no memory of ours;
        // the fd stays open while it is armed (see `Armed::fd`).
        #[allow(unsafe_code)]
        unsafe { self.ring.submission().push(e) }
            .map_err(|_| io::Error::other("the trigger watch's submission queue is full"))
    }

    /// Checks, on eventfds of its own, that a signal made inside a syscall
    /// of this thread is in the completion queue when the syscall returns,
    /// that a quiet trigger posts nothing, that a stale count is not
    /// counted, and that the ring refuses anything but polls.
    fn self_test(&mut self) -> Result<(), String> {
        const SLOT: usize = 0;
        let ev = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| format!("an eventfd: {e}"))?;
        ev.write(7).map_err(|e| e.to_string())?;
        self.arm(SLOT, &ev).map_err(|e| format!("arm: {e}"))?;
        if self.take(SLOT) {
            self.disarm(SLOT);
            return Err("a count from before the arm was taken for a firing".into());
        }
        let mut out = Ok(());
        for round in 0..3 {
            ev.write(1).map_err(|e| e.to_string())?;
            if !self.take(SLOT) {
                out = Err(format!(
                    "signal {round}: no completion when the signalling syscall returned"
                ));
                break;
            }
            if self.take(SLOT) {
                out = Err(format!("signal {round}: one signal was taken twice"));
                break;
            }
        }
        self.disarm(SLOT);
        out?;
        let nop = opcode::Nop::new().build().user_data(REMOVE - 1);
        if self.push(&nop).is_ok() && self.ring.submit().is_ok() {
            for cqe in self.ring.completion() {
                if cqe.user_data() == REMOVE - 1 && cqe.result() >= 0 {
                    return Err("the restricted ring ran an operation other than a poll".into());
                }
            }
        }
        self.armed.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::util::fd::new_eventfd;

    /// CI's hosts have io_uring: there, a fallback is a failure.
    fn watch() -> Option<TriggerWatch> {
        match TriggerWatch::new() {
            Ok(w) => Some(w),
            Err(why) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "io_uring is refused on a CI host: {why}"
                );
                None
            }
        }
    }

    #[test]
    fn each_signal_is_one_firing_of_its_own_slot_with_no_read() {
        let Some(mut w) = watch() else { return };
        let (a, b) = (new_eventfd().unwrap(), new_eventfd().unwrap());
        w.arm(0, &a).unwrap();
        w.arm(3, &b).unwrap();
        assert!(!w.take(0) && !w.take(3), "nothing fired yet");
        for n in 1..=5u64 {
            a.write(1).unwrap();
            assert!(w.take(0), "signal {n} of slot 0");
            assert!(!w.take(3), "slot 3 did not fire");
        }
        b.write(1).unwrap();
        assert_eq!(w.reap(), &[3]);
        assert!(w.take(3) && !w.take(0));
        // Never read: the counter holds every signal.
        assert_eq!(a.read().unwrap(), 5);
    }

    #[test]
    fn a_disarmed_or_replaced_slot_takes_nothing_of_its_predecessor() {
        let Some(mut w) = watch() else { return };
        let (old, new) = (new_eventfd().unwrap(), new_eventfd().unwrap());
        w.arm(1, &old).unwrap();
        old.write(1).unwrap();
        w.arm(1, &new).unwrap();
        old.write(1).unwrap();
        assert!(
            !w.take(1),
            "the old trigger's firings are not the new one's"
        );
        new.write(1).unwrap();
        assert!(w.take(1));
        w.disarm(1);
        new.write(1).unwrap();
        assert!(!w.take(1), "disarmed");
    }

    #[test]
    fn a_count_from_before_the_arm_is_drained_and_not_taken() {
        let Some(mut w) = watch() else { return };
        let t = new_eventfd().unwrap();
        t.write(41).unwrap();
        w.arm(2, &t).unwrap();
        assert!(!w.take(2));
        assert!(t.read().is_err(), "drained at the arm");
    }

    #[test]
    fn a_signal_from_another_thread_makes_the_ring_readable() {
        let Some(mut w) = watch() else { return };
        let t = new_eventfd().unwrap();
        w.arm(0, &t).unwrap();
        let fd = w.fd();
        std::thread::scope(|s| {
            s.spawn(|| t.write(1).unwrap());
        });
        let mut p = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd for the call's length; a 10 s bound.
        #[allow(unsafe_code)]
        let n = unsafe { libc::poll(p.as_mut_ptr(), 1, 10_000) };
        // The completion may already be in (the task work ran at poll's
        // entry, which then returned EINTR or readable): either way it is
        // there to reap now.
        assert!(n == 1 || n == -1, "poll returned {n}");
        assert!(w.take(0), "the other thread's signal was taken");
    }
}
