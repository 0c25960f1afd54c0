//! The event loop: one `mio` poll, typed tokens (`token.rs`), three timers
//! (`timers.rs`), signals (`signals.rs`) and how a relay route joins the loop
//! (`registrar.rs`). [`Daemon::turn`] is one turn: wait, hand each ready
//! source to its handler, run the timers that are due.

mod registrar;
mod signals;
mod timers;
mod token;

pub use registrar::LoopRegistrar;
pub use signals::Signals;
pub use timers::{Timers, SCAN_INTERVAL};
pub use token::Tok;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Waker};

use super::{loop_err, Daemon, DaemonError, LoopStats, StopHandle};

/// What a readiness event says its source can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Readable, or closed by the peer, or in error (a read will say).
    Read,
    /// Writable.
    Write,
    /// Both.
    ReadWrite,
    /// Neither (a sporadic event).
    Spurious,
}

impl Ready {
    fn of(e: &mio::event::Event) -> Ready {
        let read = e.is_readable() || e.is_read_closed() || e.is_error();
        match (read, e.is_writable()) {
            (true, true) => Ready::ReadWrite,
            (true, false) => Ready::Read,
            (false, true) => Ready::Write,
            (false, false) => Ready::Spurious,
        }
    }

    /// Whether the source can be read.
    pub fn read(self) -> bool {
        matches!(self, Ready::Read | Ready::ReadWrite)
    }

    /// Whether the source can be written.
    pub fn write(self) -> bool {
        matches!(self, Ready::Write | Ready::ReadWrite)
    }
}

/// The poll, its registry, the waker and the timers.
pub struct EventLoop {
    poll: Poll,
    events: Events,
    ready: Vec<(mio::Token, Ready)>,
    registry: Arc<Registry>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    /// Loop figures.
    pub stats: LoopStats,
    /// The timers.
    pub timers: Timers,
    /// How relay routes carry an interrupt (the trigger watch and a write,
    /// or read + write).
    pub carrier: crate::relay::Carrier,
    /// The slots the trigger watch said fired, reused every turn.
    pub(in crate::daemon) fired: Vec<usize>,
}

impl EventLoop {
    /// A new loop; `pings` when systemd asked for watchdog pings.
    pub fn new(pings: bool) -> Result<EventLoop, DaemonError> {
        let poll = Poll::new().map_err(loop_err("create the poll"))?;
        let waker = Waker::new(poll.registry(), Tok::Waker.token())
            .map_err(loop_err("create the waker"))?;
        let registry = poll
            .registry()
            .try_clone()
            .map_err(loop_err("share the poll's registry"))?;
        let carrier = crate::relay::Carrier::new();
        if let Some(fd) = carrier.watch_fd() {
            poll.registry()
                .register(&mut SourceFd(&fd), Tok::Watch.token(), Interest::READABLE)
                .map_err(loop_err("wait on the relay's trigger watch"))?;
        }
        Ok(EventLoop {
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            registry: Arc::new(registry),
            waker: Arc::new(waker),
            stop: Arc::new(AtomicBool::new(false)),
            stats: LoopStats::default(),
            timers: Timers::new(Instant::now(), pings),
            carrier,
            fired: Vec::with_capacity(16),
        })
    }

    /// Watches `fd` under `tok`.
    pub fn watch(&self, fd: &impl AsRawFd, tok: Tok, interest: Interest) -> io::Result<()> {
        self.registry
            .register(&mut SourceFd(&fd.as_raw_fd()), tok.token(), interest)
    }

    /// Changes what `fd` is watched for.
    pub fn rewatch(&self, fd: &impl AsRawFd, tok: Tok, interest: Interest) -> io::Result<()> {
        self.registry
            .reregister(&mut SourceFd(&fd.as_raw_fd()), tok.token(), interest)
    }

    /// Stops watching `fd`.
    pub fn unwatch(&self, fd: &impl AsRawFd) {
        let raw: RawFd = fd.as_raw_fd();
        let _ = self.registry.deregister(&mut SourceFd(&raw));
    }

    /// A registrar for device `slot`'s relay route.
    pub fn registrar(&self, slot: usize) -> LoopRegistrar {
        LoopRegistrar {
            registry: Arc::clone(&self.registry),
            watch: self.carrier.watch(),
            slot,
        }
    }

    /// A handle that stops the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: Arc::clone(&self.stop),
            waker: Arc::clone(&self.waker),
        }
    }

    /// The waker, for threads that report back to the loop.
    pub fn waker(&self) -> Arc<Waker> {
        Arc::clone(&self.waker)
    }

    /// Asks the loop to stop after this turn.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

impl Daemon {
    /// Runs until stopped (SIGTERM, SIGINT or a [`StopHandle`]), then
    /// detaches every device.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        while !self.lp.stopping() {
            self.turn(None)?;
        }
        self.shutdown();
        Ok(())
    }

    /// One turn of the loop: wait (at most `timeout`), handle what is ready,
    /// run due timers.
    pub fn turn(&mut self, timeout: Option<Duration>) -> Result<(), DaemonError> {
        // The health scan runs while a route is live, and while a function
        // the host took back may come back with a rescan.
        let any_route = self.devices.iter().any(|d| {
            d.route().is_some()
                || (d.state.gone() && matches!(d.cfg.pci, crate::config::PciAddr::Bdf { .. }))
        });
        let wait = self.lp.timers.timeout(Instant::now(), any_route, timeout);
        let lp = &mut self.lp;
        match lp.poll.poll(&mut lp.events, wait) {
            Ok(()) => {}
            // The trigger watch's task work (a trigger that fired while the
            // loop slept) interrupts the wait; its completion is in now.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                lp.stats.wakeups += 1;
                self.on_watched(Instant::now());
                return Ok(());
            }
            Err(e) => {
                return Err(DaemonError::Loop {
                    what: "wait for events",
                    source: e,
                })
            }
        }
        lp.stats.wakeups += 1;
        let mut ready = std::mem::take(&mut lp.ready);
        ready.clear();
        ready.extend(lp.events.iter().map(|e| (e.token(), Ready::of(e))));
        let now = Instant::now();
        for &(token, r) in &ready {
            match Tok::from_token(token) {
                Some(Tok::Trigger(i)) => self.on_trigger(i, now),
                Some(Tok::Resample(i)) => self.on_resample(i, now),
                Some(Tok::Request(i)) => self.on_request(i),
                Some(Tok::Conn(i)) => self.on_conn(i, r),
                Some(Tok::Listener) => self.accept_all(),
                Some(Tok::Signal) => self.on_signal(),
                Some(Tok::Waker) => self.on_worker(),
                // Reaped below with whatever the turn's unmasks left.
                Some(Tok::Watch) => {}
                None => log::debug!("ignoring an event for unknown token {token:?}"),
            }
        }
        self.lp.ready = ready;
        self.on_watched(now);
        if self.lp.timers.scan_due(Instant::now()) {
            self.scan(Instant::now());
        }
        let now = Instant::now();
        if let Some(elapsed) = self.lp.timers.health_due(now) {
            if any_route {
                self.health_tick(now, elapsed);
            }
        }
        let interval = self.sd.notifier.watchdog_interval();
        if self.lp.timers.ping_due(Instant::now(), interval) {
            self.sd.notifier.watchdog();
            self.update_status();
        }
        let every = self.config.metrics.as_ref().map(|m| m.interval());
        if self.lp.timers.textfile_due(Instant::now(), every) {
            self.write_textfile();
        }
        Ok(())
    }
}
