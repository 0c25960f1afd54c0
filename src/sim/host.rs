//! The thread that plays host kernel and hardware for every emulated device.
//!
//! One `mio` poll waits on each device's ack, doorbell and unmask eventfds,
//! plus the raise-after timers. Trait calls from the daemon thread change a
//! device's state directly under its lock, as an ioctl runs in its caller's
//! context; only what the kernel or the hardware would do asynchronously
//! happens here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use vmm_sys_util::eventfd::EventFd;

use super::device::{SimDevice, SimState};
use super::model::{AckPolicy, Next};
use crate::util::fd::new_eventfd;

const WAKER: Token = Token(usize::MAX);
pub(super) const KIND_ACK: usize = 0;
pub(super) const KIND_DOORBELL: usize = 1;
pub(super) const KIND_UNMASK: usize = 2;

/// Errors of the emulated-device host.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Creating the poll, an eventfd or the thread failed (at the first
    /// device).
    #[error("could not start the emulated-device thread")]
    Start(#[source] io::Error),
    /// Registering a device's eventfds failed.
    #[error("{device}: could not register the emulated device's eventfds")]
    Register {
        /// Device name.
        device: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

pub(super) type Slot = Arc<Mutex<SimState>>;

pub(super) struct Shared {
    pub(super) devices: Mutex<Vec<Option<Slot>>>,
    /// Raise-after timers started outside the host thread (by an unmask
    /// call that processed an ack first).
    pub(super) new_timers: Mutex<Vec<(Instant, usize)>>,
    pub(super) waker: Waker,
    stop: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// Hands a raise-after timer to the host thread.
    pub(super) fn start_timer(&self, at: Instant, index: usize) {
        self.new_timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((at, index));
        let _ = self.waker.wake();
    }
}

/// The emulated-device host: one thread serving every [`SimDevice`]. The
/// thread starts with the first device, so a daemon without emulated
/// devices runs none.
pub struct SimHost {
    running: Mutex<Option<Running>>,
}

/// The host thread and what reaches it.
struct Running {
    shared: Arc<Shared>,
    registry: Arc<Registry>,
    thread: Option<JoinHandle<()>>,
}

pub(super) fn token(index: usize, kind: usize) -> Token {
    Token(index * 4 + kind)
}

pub(super) fn lock(slot: &Slot) -> MutexGuard<'_, SimState> {
    // A panic while holding the lock leaves plain data; keep serving.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl Running {
    fn start() -> Result<Running, SimError> {
        let poll = Poll::new().map_err(SimError::Start)?;
        let registry = Arc::new(poll.registry().try_clone().map_err(SimError::Start)?);
        let waker = Waker::new(poll.registry(), WAKER).map_err(SimError::Start)?;
        let shared = Arc::new(Shared {
            devices: Mutex::new(Vec::new()),
            new_timers: Mutex::new(Vec::new()),
            waker,
            stop: std::sync::atomic::AtomicBool::new(false),
        });
        let s2 = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("intxd-sim".into())
            .stack_size(256 * 1024)
            .spawn(move || run(poll, s2))
            .map_err(SimError::Start)?;
        Ok(Running {
            shared,
            registry,
            thread: Some(thread),
        })
    }
}

impl SimHost {
    /// A host for emulated devices. Nothing runs until the first
    /// [`add_device`](Self::add_device) starts the host thread (which is
    /// where a thread that cannot start is reported).
    pub fn start() -> Result<SimHost, SimError> {
        Ok(SimHost {
            running: Mutex::new(None),
        })
    }

    /// Whether the host thread runs (it does once a device was added).
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Adds an emulated function `sim:index` named `name`, starting the
    /// host thread if this is the first.
    pub fn add_device(
        &self,
        name: &str,
        index: u32,
        policy: AckPolicy,
    ) -> Result<SimDevice, SimError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let run: &Running = match &mut *running {
            Some(r) => r,
            none => none.insert(Running::start()?),
        };
        let reg_err = |source| SimError::Register {
            device: name.to_string(),
            source,
        };
        let ack = new_eventfd().map_err(reg_err)?;
        let doorbell = new_eventfd().map_err(reg_err)?;
        let mut devices = run.shared.devices.lock().unwrap_or_else(|e| e.into_inner());
        let slot_index = devices
            .iter()
            .position(Option::is_none)
            .unwrap_or(devices.len());
        let state = Arc::new(Mutex::new(SimState::new(
            name,
            ack.try_clone().map_err(reg_err)?,
            doorbell.try_clone().map_err(reg_err)?,
            policy,
        )));
        run.registry
            .register(
                &mut SourceFd(&ack.as_raw_fd()),
                token(slot_index, KIND_ACK),
                Interest::READABLE,
            )
            .map_err(reg_err)?;
        if let Err(e) = run.registry.register(
            &mut SourceFd(&doorbell.as_raw_fd()),
            token(slot_index, KIND_DOORBELL),
            Interest::READABLE,
        ) {
            let _ = run.registry.deregister(&mut SourceFd(&ack.as_raw_fd()));
            return Err(reg_err(e));
        }
        if slot_index == devices.len() {
            devices.push(Some(Arc::clone(&state)));
        } else {
            devices[slot_index] = Some(Arc::clone(&state));
        }
        Ok(SimDevice::new(
            name,
            index,
            slot_index,
            state,
            Arc::clone(&run.shared),
            Arc::clone(&run.registry),
            ack,
            doorbell,
        ))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.shared.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn device(shared: &Shared, index: usize) -> Option<Slot> {
    let d = shared.devices.lock().unwrap_or_else(|e| e.into_inner());
    d.get(index).and_then(|s| s.clone())
}

fn run(mut poll: Poll, shared: Arc<Shared>) {
    let mut events = Events::with_capacity(256);
    let mut timers: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
    loop {
        let timeout = timers
            .peek()
            .map(|Reverse((t, _))| t.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            log::error!("emulated-device thread: poll failed: {e}");
            return;
        }
        if shared.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for t in shared
            .new_timers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            timers.push(Reverse(t));
        }
        let now = Instant::now();
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let (index, kind) = (ev.token().0 / 4, ev.token().0 % 4);
            let Some(slot) = device(&shared, index) else {
                continue;
            };
            let mut st = lock(&slot);
            let next = match kind {
                KIND_ACK => st.drain_acks(now),
                KIND_DOORBELL => st.drain_doorbell(now),
                KIND_UNMASK => {
                    // The guest acked the device before it EOI'd; that ack
                    // must land before the unmask looks at the line, or the
                    // unmask would re-fire for a level that is already gone.
                    let next = st.drain_acks(now);
                    st.drain_unmask();
                    next
                }
                _ => Next::Idle,
            };
            if let Next::RaiseAt(t) = next {
                timers.push(Reverse((t, index)));
            }
        }
        while let Some(Reverse((t, index))) = timers.peek().copied() {
            if t > Instant::now() {
                break;
            }
            timers.pop();
            if let Some(slot) = device(&shared, index) {
                let mut st = lock(&slot);
                let next = st.model.timer_expired();
                if let Next::RaiseAt(t) = st.apply(next, Instant::now()) {
                    timers.push(Reverse((t, index)));
                }
            }
        }
    }
}

/// Reads an eventfd's counter; 0 when it was not signalled. Never blocks,
/// even on an fd whose other holder (the VMM) cleared `O_NONBLOCK`.
pub(super) fn drain(ev: &EventFd) -> u64 {
    crate::util::fd::drain_eventfd(ev)
}
