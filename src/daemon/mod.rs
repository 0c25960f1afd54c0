//! The daemon: one `mio` event loop that serves the control socket, carries
//! relay routes, runs the storm and watchdog timers and pings systemd.
//!
//! Everything happens on this one thread, so no state is shared and no lock
//! is taken on the hot path. The emulated devices' host thread stands in for
//! the kernel and the hardware, not for the daemon.

mod binder;
mod caps;
mod conn;
mod devices;
mod health;
mod listener;
mod persist;
mod reload;
mod requests;
mod restart;
pub mod seccomp;
mod token;

pub use binder::{Binder, BinderError};
pub use devices::{choose_mode, DeviceState};
pub use listener::ListenError;
pub use requests::chain as error_chain;
pub use token::Tok;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Waker};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::config::Config;
use crate::control::proto::{Capabilities, Event};
use crate::relay::{RelayPath, ResampleOutcome, TimerOutcome};
use crate::route::RelayRegistrar;
use crate::sim::{SimError, SimHost};
use crate::systemd::{FdStore, Inherited, NoFdStore, NoNotifier, Notifier};
use conn::Conn;
use devices::DeviceSlot;

/// How often the relay timers are checked while an EOI is outstanding.
const SCAN_INTERVAL: Duration = Duration::from_millis(50);

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The control socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The emulated-device host could not start.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// SIGTERM or SIGINT came while the devices were being brought up;
    /// everything bound so far was given back.
    #[error("stopped during start-up")]
    Interrupted,
    /// The event loop failed.
    #[error("event loop: could not {what}")]
    Loop {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn loop_err(what: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Loop { what, source }
}

/// How to start the daemon.
pub struct DaemonOptions {
    /// The fds systemd passed: the control socket (`control`, socket
    /// activation) and what a previous daemon parked in the fd store. Without
    /// a `control` fd the daemon binds the configured path itself.
    pub inherited: Inherited,
    /// Handle SIGTERM/SIGINT/SIGHUP through a signalfd. The caller must have
    /// blocked them (before starting any thread).
    pub handle_signals: bool,
    /// The service manager.
    pub notifier: Box<dyn Notifier>,
    /// systemd's fd store.
    pub fdstore: Box<dyn FdStore>,
    /// The config file, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// Test-only hooks (SIGUSR2 stalls the loop, to test the watchdog).
    pub test_hooks: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            inherited: Inherited::default(),
            handle_signals: false,
            notifier: Box::new(NoNotifier),
            fdstore: Box::new(NoFdStore),
            config_path: None,
            test_hooks: false,
        }
    }
}

/// Stops a daemon running on another thread.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Asks the loop to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Loop figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopStats {
    /// Returns from `epoll_wait`.
    pub wakeups: u64,
}

/// The daemon.
pub struct Daemon {
    poll: Poll,
    events: Events,
    ready: Vec<(mio::Token, bool, bool, bool)>,
    listener: OwnedFd,
    socket_path: Option<PathBuf>,
    reserve_fd: Option<std::fs::File>,
    conns: Vec<Option<Conn>>,
    next_conn_id: u64,
    devices: Vec<DeviceSlot>,
    config: Config,
    caps: Capabilities,
    stats: LoopStats,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    signals: Option<SignalFd>,
    notifier: Box<dyn Notifier>,
    fdstore: Box<dyn FdStore>,
    state_file: Option<persist::StateFile>,
    config_path: Option<PathBuf>,
    test_hooks: bool,
    next_scan: Option<Instant>,
    next_ping: Option<Instant>,
    last_health: Instant,
    last_status: String,
    started: Instant,
    // Dropped last: the devices' backends deregister from it.
    _sim: SimHost,
    binder: Binder,
}

/// Adds and removes one device's relay eventfds in the loop.
struct LoopRegistrar<'a> {
    registry: &'a Registry,
    slot: usize,
}

impl RelayRegistrar for LoopRegistrar<'_> {
    fn register(&mut self, path: &RelayPath) -> io::Result<()> {
        self.registry.register(
            &mut SourceFd(&path.trigger.as_raw_fd()),
            Tok::Trigger(self.slot).token(),
            Interest::READABLE,
        )?;
        if let Err(e) = self.registry.register(
            &mut SourceFd(&path.resample.as_raw_fd()),
            Tok::Resample(self.slot).token(),
            Interest::READABLE,
        ) {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&path.trigger.as_raw_fd()));
            return Err(e);
        }
        Ok(())
    }

    fn deregister(&mut self, path: &RelayPath) {
        let _ = self
            .registry
            .deregister(&mut SourceFd(&path.trigger.as_raw_fd()));
        let _ = self
            .registry
            .deregister(&mut SourceFd(&path.resample.as_raw_fd()));
    }
}

impl Daemon {
    /// Brings the configured devices up and starts listening. On return the
    /// daemon can serve: this is when `READY=1` is due.
    pub fn new(config: Config, opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        let poll = Poll::new().map_err(loop_err("create the poll"))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), Tok::Waker.token())
                .map_err(loop_err("create the waker"))?,
        );
        let caps = caps::probe();
        let sim = SimHost::start()?;
        let mut inherited = opts.inherited;
        let record = restart::take_record(&mut inherited);
        let signals = if opts.handle_signals {
            let mut set = SigSet::empty();
            for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
                set.add(s);
            }
            if opts.test_hooks {
                set.add(Signal::SIGUSR1);
                set.add(Signal::SIGUSR2);
            }
            let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .map_err(|e| DaemonError::Loop {
                    what: "create the signalfd",
                    source: e.into(),
                })?;
            Some(sfd)
        } else {
            None
        };
        let mut signals = signals;
        let binder = Binder::new(&config);
        let mut devices: Vec<DeviceSlot> = Vec::new();
        for d in &config.devices {
            // SIGTERM while binding at start-up: stop, and give back what is
            // bound so far (a bind in progress finishes or times out and
            // rolls back first).
            if signals.as_mut().is_some_and(startup_stop_requested) {
                log::warn!(
                    "stop requested during start-up; releasing the {} device(s) bound so far",
                    devices.len()
                );
                for done in &mut devices {
                    done.release(&binder);
                }
                return Err(DaemonError::Interrupted);
            }
            // A device whose route outlived the last daemon comes back
            // through the fd that kept it open, never by a new open.
            let parked = record
                .as_ref()
                .filter(|(_, r)| r.routes.iter().any(|x| x.device == d.name))
                .and_then(|_| {
                    inherited.take(&persist::route_fd_name(
                        &d.name,
                        crate::vfio::ParkedFd::Device,
                    ))
                })
                .map(|dev| devices::Parked {
                    dev,
                    container: inherited.take(&persist::route_fd_name(
                        &d.name,
                        crate::vfio::ParkedFd::Container,
                    )),
                });
            devices.push(DeviceSlot::open(
                d.clone(),
                &sim,
                &binder,
                config.daemon.sim_host.as_deref(),
                parked,
            ));
        }
        let (listener, socket_path) = match inherited.take("control") {
            Some(fd) => (
                listener::adopt_listener(fd)
                    .map_err(loop_err("use the control socket from systemd"))?,
                None,
            ),
            None => (
                listener::bind_socket(&config.daemon)?,
                Some(config.daemon.socket.clone()),
            ),
        };
        poll.registry()
            .register(
                &mut SourceFd(&listener.as_raw_fd()),
                Tok::Listener.token(),
                Interest::READABLE,
            )
            .map_err(loop_err("watch the control socket"))?;
        if let Some(sfd) = &signals {
            poll.registry()
                .register(
                    &mut SourceFd(&sfd.as_raw_fd()),
                    Tok::Signal.token(),
                    Interest::READABLE,
                )
                .map_err(loop_err("watch the signalfd"))?;
        }
        let next_ping = opts.notifier.watchdog_interval().map(|_| Instant::now());
        let mut d = Daemon {
            poll,
            events: Events::with_capacity(1024),
            ready: Vec::with_capacity(1024),
            listener,
            socket_path,
            reserve_fd: std::fs::File::open("/dev/null").ok(),
            conns: Vec::new(),
            next_conn_id: 1,
            devices,
            config,
            caps,
            stats: LoopStats::default(),
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            signals,
            notifier: opts.notifier,
            fdstore: opts.fdstore,
            state_file: None,
            config_path: opts.config_path,
            test_hooks: opts.test_hooks,
            next_scan: None,
            next_ping,
            last_health: Instant::now(),
            last_status: String::new(),
            started: Instant::now(),
            _sim: sim,
            binder,
        };
        for i in 0..d.devices.len() {
            d.watch_request(i);
        }
        d.adopt(record, inherited);
        let status = d.status_line();
        d.notifier.ready(&status);
        d.last_status = status;
        let socket = match &d.socket_path {
            Some(p) => p.display().to_string(),
            None => "from systemd (socket activation)".to_string(),
        };
        log::info!(
            "intxd {} ready: {} devices, socket {socket}",
            env!("CARGO_PKG_VERSION"),
            d.devices.len()
        );
        Ok(d)
    }

    /// A handle that stops the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: Arc::clone(&self.stop),
            waker: Arc::clone(&self.waker),
        }
    }

    /// Loop figures.
    pub fn loop_stats(&self) -> LoopStats {
        self.stats
    }

    /// Host capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Runs until stopped (SIGTERM, SIGINT or a [`StopHandle`]), then
    /// detaches every device.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        while !self.stop.load(Ordering::SeqCst) {
            self.turn(None)?;
        }
        self.shutdown();
        Ok(())
    }

    /// One turn of the loop: wait (at most `timeout`), handle what is ready,
    /// run due timers.
    pub fn turn(&mut self, timeout: Option<Duration>) -> Result<(), DaemonError> {
        let now = Instant::now();
        let mut wait = timeout;
        let any_route = self.devices.iter().any(|d| d.route.is_some());
        let next_health = any_route.then(|| self.last_health + health::HEALTH_INTERVAL);
        for due in [self.next_scan, self.next_ping, next_health]
            .into_iter()
            .flatten()
        {
            let left = due.saturating_duration_since(now);
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        match self.poll.poll(&mut self.events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => {
                return Err(DaemonError::Loop {
                    what: "wait for events",
                    source: e,
                })
            }
        }
        self.stats.wakeups += 1;
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.events.iter().map(|e| {
            (
                e.token(),
                e.is_readable(),
                e.is_writable(),
                e.is_read_closed() || e.is_error(),
            )
        }));
        let now = Instant::now();
        for &(token, readable, writable, closed) in &ready {
            match Tok::from_token(token) {
                Some(Tok::Trigger(i)) => self.on_trigger(i, now),
                Some(Tok::Resample(i)) => self.on_resample(i, now),
                Some(Tok::Request(i)) => self.on_request(i),
                Some(Tok::Conn(i)) => self.on_conn(i, readable || closed, writable),
                Some(Tok::Listener) => self.accept_all(),
                Some(Tok::Signal) => self.on_signal(),
                Some(Tok::Waker) => {}
                None => log::debug!("ignoring an event for unknown token {token:?}"),
            }
        }
        self.ready = ready;
        if self.next_scan.is_some_and(|t| Instant::now() >= t) {
            self.scan(Instant::now());
        }
        let now = Instant::now();
        if now - self.last_health >= health::HEALTH_INTERVAL {
            if any_route {
                self.health_tick(now, now - self.last_health);
            }
            self.last_health = now;
        }
        if let (Some(t), Some(iv)) = (self.next_ping, self.notifier.watchdog_interval()) {
            if Instant::now() >= t {
                self.notifier.watchdog();
                self.next_ping = Some(Instant::now() + iv);
                self.update_status();
            }
        }
        Ok(())
    }

    #[inline]
    fn on_trigger(&mut self, i: usize, now: Instant) {
        let Some(path) = self
            .devices
            .get_mut(i)
            .and_then(|d| d.route.as_mut())
            .and_then(|r| r.relay_mut())
        else {
            return;
        };
        match path.on_trigger(now) {
            Ok(_) => {
                if self.next_scan.is_none() {
                    self.next_scan = Some(now + SCAN_INTERVAL);
                }
            }
            Err(e) => log::error!(
                "{}: relay could not signal the VMM's irq eventfd: {e}",
                self.devices[i].tag()
            ),
        }
    }

    #[inline]
    fn on_resample(&mut self, i: usize, now: Instant) {
        let Some(dev) = self.devices.get_mut(i) else {
            return;
        };
        let (Some(path), Some(backend)) = (
            dev.route.as_mut().and_then(|r| r.relay_mut()),
            dev.backend.as_mut(),
        ) else {
            return;
        };
        let mut unmask = || backend.unmask().map_err(io::Error::other);
        match path.on_resample(now, &mut unmask) {
            Ok(ResampleOutcome::Refired) => {
                if self.next_scan.is_none() {
                    self.next_scan = Some(now + SCAN_INTERVAL);
                }
            }
            Ok(ResampleOutcome::Backoff(until)) => {
                let storms = path.stats().storms;
                self.next_scan = Some(self.next_scan.map_or(until, |t| t.min(until)));
                self.storm_limited(i, until.saturating_duration_since(now), storms, now);
            }
            Ok(_) => {}
            Err(e) => log::error!(
                "{}: relay could not unmask INTx: {e}",
                self.devices[i].tag()
            ),
        }
    }

    fn storm_limited(&mut self, i: usize, backoff: Duration, storms: u64, now: Instant) {
        let dev = &mut self.devices[i];
        // One log line and one event per device per second at most.
        if dev
            .last_storm_event
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            dev.storms_unlogged += 1;
            return;
        }
        log::warn!(
            "{}: interrupt storm above {}/s; INTx held masked for {} ms ({} more limited since the last report)",
            dev.tag(),
            dev.cfg.relay.storm_rate,
            backoff.as_millis(),
            dev.storms_unlogged
        );
        dev.storms_unlogged = 0;
        dev.last_storm_event = Some(now);
        let ev = Event::StormLimited {
            device: dev.cfg.name.clone(),
            rate_limit: dev.cfg.relay.storm_rate,
            backoff_ms: backoff.as_millis() as u64,
            storms,
        };
        self.send_event(i, &ev);
    }

    /// Relay timers: storm back-offs that ended, overdue EOIs.
    fn scan(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut fired = Vec::new();
        for (i, dev) in self.devices.iter_mut().enumerate() {
            let tag = dev.tag();
            let Some(path) = dev.route.as_mut().and_then(|r| r.relay_mut()) else {
                continue;
            };
            match path.on_timer(now) {
                Ok(TimerOutcome::Watchdog(waited, rearmed)) => fired.push((i, waited, rearmed)),
                Ok(_) => {}
                Err(e) => log::error!("{tag}: relay timer could not unmask INTx: {e}"),
            }
            let due = path
                .next_deadline()
                .or_else(|| path.eoi_pending().then(|| now + SCAN_INTERVAL));
            if let Some(d) = due {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        self.next_scan = next;
        for (i, waited, rearmed) in fired {
            let dev = &mut self.devices[i];
            // Like storms: one line and one event per device per second.
            if dev
                .last_watchdog_event
                .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
            {
                continue;
            }
            dev.last_watchdog_event = Some(now);
            log::warn!(
                "{}: no EOI from the guest for {} ms; {}",
                dev.tag(),
                waited.as_millis(),
                if rearmed {
                    "re-armed INTx with an unmask"
                } else {
                    "INTx left masked (watchdog = \"log\")"
                }
            );
            let ev = Event::EoiWatchdog {
                device: dev.cfg.name.clone(),
                waited_ms: waited.as_millis() as u64,
                rearmed,
            };
            self.send_event(i, &ev);
        }
    }

    fn on_signal(&mut self) {
        let Some(sfd) = self.signals.as_mut() else {
            return;
        };
        let mut got = Vec::new();
        while let Ok(Some(info)) = sfd.read_signal() {
            got.push(info.ssi_signo);
        }
        for signo in got {
            match Signal::try_from(signo as i32) {
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => {
                    log::info!("signal {signo}: stopping");
                    self.stop.store(true, Ordering::SeqCst);
                }
                Ok(Signal::SIGHUP) => self.reload(),
                Ok(Signal::SIGUSR1) if self.test_hooks => {
                    match std::process::Command::new("/bin/true").status() {
                        Ok(s) => log::warn!("test hook: ran /bin/true ({s})"),
                        Err(e) => log::warn!("test hook: running /bin/true was refused: {e}"),
                    }
                }
                Ok(Signal::SIGUSR2) if self.test_hooks => {
                    log::warn!("test hook: stalling the event loop (INTXD_TEST_HOOKS=1)");
                    std::thread::sleep(Duration::from_secs(3600));
                }
                _ => {}
            }
        }
    }

    fn status_line(&self) -> String {
        let attached = self.devices.iter().filter(|d| d.route.is_some()).count();
        let storms: u64 = self
            .devices
            .iter()
            .filter_map(|d| d.route.as_ref().and_then(|r| r.relay_stats()))
            .map(|s| s.storms)
            .sum();
        let n = self
            .devices
            .iter()
            .filter(|d| d.state != DeviceState::Removed)
            .count();
        format!("{n} devices, {attached} attached, {storms} storms")
    }

    fn update_status(&mut self) {
        let s = self.status_line();
        if s != self.last_status {
            self.notifier.status(&s);
            self.last_status = s;
        }
    }

    /// Puts a device's request eventfd in the loop.
    fn watch_request(&mut self, i: usize) {
        if let Some(r) = &self.devices[i].request {
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&r.as_raw_fd()),
                Tok::Request(i).token(),
                Interest::READABLE,
            ) {
                log::warn!(
                    "{}: cannot watch the request interrupt: {e}",
                    self.devices[i].tag()
                );
            }
        }
    }

    /// Detaches every device and closes every connection.
    pub fn shutdown(&mut self) {
        self.notifier.stopping();
        for i in 0..self.devices.len() {
            if self.devices[i].holder.is_some() {
                let ev = Event::DeviceGone {
                    device: self.devices[i].cfg.name.clone(),
                    reason: "the daemon is stopping; the device has been detached".into(),
                };
                self.send_event(i, &ev);
            }
            self.detach_device(i, "the daemon is stopping");
        }
        for i in 0..self.conns.len() {
            self.close_conn(i);
        }
        for i in 0..self.devices.len() {
            if self.devices[i].cfg.restore {
                self.devices[i].release(&self.binder);
            }
        }
        // Nothing stays pinned in systemd after a clean stop.
        if self.state_file.take().is_some() {
            self.fdstore.remove("state");
        }
        log::info!("stopped");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether SIGTERM or SIGINT is waiting on the signalfd (read during
/// start-up, before the loop runs).
fn startup_stop_requested(sfd: &mut SignalFd) -> bool {
    let mut stop = false;
    while let Ok(Some(info)) = sfd.read_signal() {
        if matches!(
            Signal::try_from(info.ssi_signo as i32),
            Ok(Signal::SIGTERM) | Ok(Signal::SIGINT)
        ) {
            stop = true;
        }
    }
    stop
}
