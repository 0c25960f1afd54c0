//! A syscall on a peer's fd that sleeps is broken off, not waited on.
//!
//! A VMM shares its eventfds' open file with the daemon, so it can clear
//! `O_NONBLOCK` at any moment after `attach` checked the flag; a write to
//! its full irq counter (or a read of an empty eventfd) would then sleep
//! until the VMM acts, with the event loop or the emulated devices' thread
//! inside. No flag check before the call closes that window: the peer can
//! flip the flag between the check and the call.
//!
//! So every call on a peer's fd runs inside [`guarded`]. A guard thread
//! looks at the guarded threads every [`PERIOD`]; a thread it finds inside
//! the same guarded call at two looks gets a signal (`SIGRTMIN + 2`, whose
//! handler does nothing and is installed without `SA_RESTART`), and the
//! sleeping syscall returns `EINTR`. [`guarded`] turns that into a
//! [`Blocked`] error, and the caller ends that peer's device only. A call
//! that was merely slow (the thread was preempted in it) has returned by
//! the time the signal lands, which then does nothing.
//!
//! On the hot path this costs two atomic stores and a load per call, no
//! syscall. The guard thread sleeps for good when no guarded call was made
//! since its last look, and the next guarded call wakes it.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// How often the guard looks; a call that sleeps is broken off after one
/// to two periods.
pub const PERIOD: Duration = Duration::from_millis(20);

/// The signal that breaks a sleeping call (the soak's vCPU kick is
/// `SIGRTMIN + 1`).
pub fn unblock_signal() -> i32 {
    SIGRTMIN() + 2
}

/// A guarded call slept on a peer's fd and was broken off.
#[derive(Debug, thiserror::Error)]
#[error("blocked on a peer's fd for over {} ms (its holder cleared O_NONBLOCK) and was broken off", PERIOD.as_millis())]
pub struct Blocked;

/// One guarded thread.
struct Slot {
    id: u64,
    thread: libc::pthread_t,
    /// Odd while the thread is inside a guarded call; bumped at entry and exit.
    seq: AtomicU64,
}

struct Guard {
    slots: Mutex<Vec<Arc<Slot>>>,
    next_id: AtomicU64,
    parked: AtomicBool,
    thread: Thread,
    /// Calls broken off so far.
    broken: AtomicU64,
}

static GUARD: OnceLock<Option<Guard>> = OnceLock::new();

extern "C" fn on_unblock(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn lock(m: &Mutex<Vec<Arc<Slot>>>) -> MutexGuard<'_, Vec<Arc<Slot>>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn guard() -> Option<&'static Guard> {
    GUARD
        .get_or_init(|| {
            if let Err(e) = register_signal_handler(unblock_signal(), on_unblock) {
                log::warn!("cannot install the handler that breaks blocked calls on peers' fds: {e}; a VMM that makes its eventfd blocking can stall the daemon");
                return None;
            }
            let spawned = std::thread::Builder::new()
                .name("intxd-unblock".into())
                .spawn(|| watch(wait_for_guard()));
            match spawned {
                Ok(h) => Some(Guard {
                    slots: Mutex::new(Vec::new()),
                    next_id: AtomicU64::new(0),
                    parked: AtomicBool::new(false),
                    thread: h.thread().clone(),
                    broken: AtomicU64::new(0),
                }),
                Err(e) => {
                    log::warn!("cannot start the thread that breaks blocked calls on peers' fds: {e}; a VMM that makes its eventfd blocking can stall the daemon");
                    None
                }
            }
        })
        .as_ref()
}

/// The guard thread starts inside `get_or_init`; it waits for the cell.
fn wait_for_guard() -> &'static Guard {
    loop {
        if let Some(Some(g)) = GUARD.get() {
            return g;
        }
        std::thread::park_timeout(PERIOD);
    }
}

/// How many guarded calls were broken off in this process.
pub fn broken() -> u64 {
    guard().map_or(0, |g| g.broken.load(SeqCst))
}

fn watch(g: &'static Guard) {
    let mut seen: Vec<(u64, u64)> = Vec::new();
    loop {
        std::thread::sleep(PERIOD);
        let (now, moved) = look(g, &seen);
        seen = now;
        if moved {
            continue;
        }
        // Nothing moved and nobody is inside: sleep until the next guarded
        // call. The store and the entering thread's store are both SeqCst,
        // so either it sees `parked` (and unparks) or the look below sees
        // its entry.
        g.parked.store(true, SeqCst);
        let (now, moved) = look(g, &seen);
        seen = now;
        if moved {
            g.parked.store(false, SeqCst);
            continue;
        }
        while g.parked.load(SeqCst) {
            std::thread::park();
        }
    }
}

/// One look at every slot: breaks off a call seen inside twice; returns
/// what it saw and whether anything moved or is inside.
fn look(g: &Guard, seen: &[(u64, u64)]) -> (Vec<(u64, u64)>, bool) {
    let slots = lock(&g.slots);
    let mut busy = false;
    let mut now = Vec::with_capacity(slots.len());
    for s in slots.iter() {
        let v = s.seq.load(SeqCst);
        let before = seen.iter().find(|(id, _)| *id == s.id).map(|(_, v)| *v);
        busy |= before != Some(v) || v & 1 == 1;
        if v & 1 == 1 && before == Some(v) {
            // SAFETY: `s.thread` is a live thread of this process: a guarded
            // thread removes its slot under this same lock before it exits,
            // and the lock is held here. The signal's handler does nothing.
            #[allow(unsafe_code)]
            let rc = unsafe { libc::pthread_kill(s.thread, unblock_signal()) };
            if rc == 0 {
                g.broken.fetch_add(1, SeqCst);
            }
        }
        now.push((s.id, v));
    }
    (now, busy)
}

/// This thread's slot, registered at its first guarded call.
struct Registered(Option<Arc<Slot>>);

impl Registered {
    fn new() -> Registered {
        let Some(g) = guard() else {
            return Registered(None);
        };
        let slot = Arc::new(Slot {
            id: g.next_id.fetch_add(1, SeqCst),
            thread: nix::sys::pthread::pthread_self(),
            seq: AtomicU64::new(0),
        });
        lock(&g.slots).push(Arc::clone(&slot));
        Registered(Some(slot))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let (Some(slot), Some(g)) = (&self.0, guard()) {
            lock(&g.slots).retain(|s| s.id != slot.id);
        }
    }
}

thread_local! {
    static SLOT: Registered = Registered::new();
    static SEQ: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    let _ = SLOT.try_with(|r| {
        if let Some(slot) = &r.0 {
            let v = SEQ.with(|c| {
                c.set(c.get() + 1);
                c.get()
            });
            slot.seq.store(v, SeqCst);
        }
    });
}

/// Runs `call` (one syscall on a peer's fd, made with a call that returns
/// `EINTR` rather than retrying it: [`crate::util::fd::write_eventfd`]) so that it cannot sleep for
/// longer than two [`PERIOD`]s: a call that does is broken off and returns
/// [`Blocked`] (as an [`io::ErrorKind::TimedOut`] error).
#[inline]
pub fn guarded<T>(call: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    bump();
    if let Some(g) = guard() {
        if g.parked.load(SeqCst) && g.parked.swap(false, SeqCst) {
            g.thread.unpark();
        }
    }
    let got = call();
    bump();
    match got {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            Err(io::Error::new(io::ErrorKind::TimedOut, Blocked))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::util::fd::{borrow_eventfd, new_eventfd, read_eventfd};
    use nix::fcntl::{fcntl, FcntlArg, OFlag};

    #[test]
    fn a_read_that_sleeps_on_an_eventfd_made_blocking_is_broken_off() {
        let ev = new_eventfd().unwrap();
        fcntl(borrow_eventfd(&ev), FcntlArg::F_SETFL(OFlag::empty())).unwrap();
        let before = broken();

        let err = guarded(|| read_eventfd(&ev)).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("cleared O_NONBLOCK"), "{err}");
        assert!(broken() > before);
        // A call that does not sleep is untouched, again and again (the
        // guard parks and is woken between them).
        ev.write(3).unwrap();
        assert_eq!(guarded(|| read_eventfd(&ev)).unwrap(), 3);
        let parked = || guard().is_some_and(|g| g.parked.load(SeqCst));
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !parked() {
            assert!(
                std::time::Instant::now() < deadline,
                "the guard never parked"
            );
            std::thread::yield_now();
        }
        ev.write(1).unwrap();
        assert_eq!(guarded(|| read_eventfd(&ev)).unwrap(), 1);
        assert!(
            guarded(|| read_eventfd(&ev)).is_err(),
            "it sleeps again and is broken off again"
        );
    }
}
