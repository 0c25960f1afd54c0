//! Start-up and shutdown: bring the configured devices up (binding real
//! functions, taking back what a previous daemon parked), start listening,
//! and at the end detach and give everything back.

use std::time::Instant;

use mio::Interest;

use super::binder::{BindWorker, Binder};
use super::conns::{Acceptor, ConnTable};
use super::device::{open_now, DeviceSlot, Parked, SimPlace};
use super::event_loop::{EventLoop, Signals, Timers, Tok};
use super::restart::{route_fd_name, take_record};
use super::Systemd;
use super::{caps, listener, loop_err, Daemon, DaemonError, DaemonOptions, LoopStats, StopHandle};
use crate::config::Config;
use crate::control::proto::{Capabilities, Event};
use crate::sim::SimHost;
use crate::vfio::ParkedFd;

impl Daemon {
    /// Brings the configured devices up and starts listening. On return the
    /// daemon can serve: this is when `READY=1` is due.
    pub fn new(config: Config, opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        let lp = EventLoop::new(opts.notifier.watchdog_interval().is_some())?;
        let caps = caps::probe();
        let sim = SimHost::start()?;
        let mut inherited = opts.inherited;
        let record = take_record(&mut inherited);
        let mut signals = match opts.handle_signals {
            true => Some(Signals::new(opts.test_hooks)?),
            false => None,
        };
        // Everything that can fail without touching a device comes first
        // (the control socket above all): a start that fails leaves every
        // function as it found it.
        let accept = match inherited.take("control") {
            Some(fd) => Acceptor::new(
                listener::adopt_listener(fd)
                    .map_err(loop_err("use the control socket from systemd"))?,
                None,
            ),
            None => Acceptor::new(
                listener::bind_socket(&config.daemon)?,
                Some(config.daemon.socket.clone()),
            ),
        };
        lp.watch(accept.listener(), Tok::Listener, Interest::READABLE)
            .map_err(loop_err("watch the control socket"))?;
        if let Some(sfd) = &signals {
            lp.watch(sfd, Tok::Signal, Interest::READABLE)
                .map_err(loop_err("watch the signalfd"))?;
        }
        let binder = BindWorker::start(Binder::new(&config), lp.waker())
            .map_err(loop_err("start the binder's worker thread"))?;
        let at = SimPlace {
            host: &sim,
            remote: config.daemon.sim_host.as_deref(),
        };
        let mut devices: Vec<DeviceSlot> = Vec::new();
        // Which devices this start bound (an earlier run's stay as they are).
        let mut fresh: Vec<bool> = Vec::new();
        for d in &config.devices {
            // SIGTERM while binding at start-up: stop, and give back what is
            // bound so far (a bind in progress finishes or times out and
            // rolls back first).
            if signals.as_mut().is_some_and(Signals::stop_requested) {
                log::warn!(
                    "stop requested during start-up; releasing the {} device(s) bound so far",
                    fresh.iter().filter(|f| **f).count()
                );
                for (done, _) in devices.iter_mut().zip(&fresh).filter(|(_, f)| **f) {
                    done.release(binder.binder());
                }
                return Err(DaemonError::Interrupted);
            }
            // A device whose route outlived the last daemon comes back
            // through the fd that kept it open, never by a new open; not
            // when the name now stands for another address (`adopt_route`
            // drops that route and says so).
            let pci = d.pci.to_string();
            let parked = record
                .as_ref()
                .filter(|(_, r)| r.routes.iter().any(|x| x.device == d.name && x.pci == pci))
                .and_then(|_| inherited.take(&route_fd_name(&d.name, ParkedFd::Device)))
                .map(|dev| Parked {
                    dev,
                    container: inherited.take(&route_fd_name(&d.name, ParkedFd::Container)),
                });
            let earlier = binder.binder().record(&d.name).ok().flatten().is_some();
            let state = open_now(d, at, binder.binder(), parked);
            fresh.push(!earlier);
            devices.push(DeviceSlot::new(d.clone(), state));
        }
        let mut d = Daemon {
            lp,
            signals,
            accept,
            conns: ConnTable::new(),
            devices,
            config,
            caps,
            sd: Systemd {
                notifier: opts.notifier,
                fdstore: opts.fdstore,
                state_file: None,
                last_status: String::new(),
            },
            config_path: opts.config_path,
            test_hooks: opts.test_hooks,
            admin: Default::default(),
            started: Instant::now(),
            binder,
            reload: None,
            sim,
        };
        d.lp.timers = Timers::new(Instant::now(), d.sd.notifier.watchdog_interval().is_some());
        for i in 0..d.devices.len() {
            d.watch_request(i);
        }
        d.adopt(record, inherited);
        let status = d.status_line();
        d.sd.notifier.ready(&status);
        d.sd.last_status = status;
        log::info!(
            "intxd {} ready: {} devices, socket {}",
            env!("CARGO_PKG_VERSION"),
            d.devices.len(),
            d.accept.describe()
        );
        Ok(d)
    }

    /// A handle that stops the loop from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.lp.stop_handle()
    }

    /// Loop figures.
    pub fn loop_stats(&self) -> LoopStats {
        self.lp.stats
    }

    /// Host capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Puts a device's request eventfd in the loop.
    pub(super) fn watch_request(&mut self, i: usize) {
        let dev = &self.devices[i];
        if let Some(r) = dev.state.open().and_then(|o| o.request.as_ref()) {
            if let Err(e) = self.lp.watch(r, Tok::Request(i), Interest::READABLE) {
                log::warn!("{}: cannot watch the request interrupt: {e}", dev.tag());
            }
        }
    }

    /// Detaches every device and closes every connection; after a planned
    /// restart (`restart` request), parks everything instead.
    pub fn shutdown(&mut self) {
        if self.restart_planned() {
            self.park_for_restart();
            return;
        }
        self.sd.notifier.stopping();
        self.finish_jobs();
        for i in 0..self.devices.len() {
            if self.devices[i].holder().is_some() {
                let ev = Event::DeviceGone {
                    device: self.devices[i].cfg.name.clone(),
                    reason: "the daemon is stopping; the device has been detached".into(),
                };
                self.send_event(i, &ev);
            }
            self.detach_device(i, "the daemon is stopping");
        }
        for i in 0..self.conns.slots() {
            self.close_conn(i);
        }
        for i in 0..self.devices.len() {
            if self.devices[i].cfg.restore {
                self.devices[i].release(self.binder.binder());
            }
        }
        // Nothing stays pinned in systemd after a clean stop.
        if self.sd.state_file.take().is_some() {
            self.sd.fdstore.remove("state");
        }
        log::info!("stopped");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A daemon dropped without `shutdown` leaves its live routes to the
        // next one, as a crash would: their fds are in the fd store.
        for dev in &mut self.devices {
            if dev.route().is_some() {
                dev.state.remove();
            }
        }
    }
}
