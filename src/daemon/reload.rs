//! `systemctl reload` (SIGHUP): re-read the config. Devices that nobody holds
//! are added, replaced or removed; a change to an attached device is refused
//! with a log line, and no live route is touched.
//!
//! The sysfs work (giving a function back, binding one to vfio-pci) goes to
//! the binder's worker thread; a device it works on is `binding` meanwhile,
//! and the loop goes on serving. `READY=1` (the end of the reload for
//! systemd) is sent when the last job is back.

use super::binder::{Done, Job};
use super::device::{
    log_outcome, open_bound, open_sim, reopen_bound, DeviceSlot, Lifecycle, Reopen, SimPlace,
};
use super::Daemon;
use crate::config::{DeviceConfig, PciAddr};
use crate::pci::BindRecord;
use crate::util::error::chain;

fn same(a: &DeviceConfig, b: &DeviceConfig) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.defined_at.clear();
    b.defined_at.clear();
    a == b
}

/// What a reload did, for its closing log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReloadCounts {
    pub(super) added: usize,
    pub(super) removed: usize,
    pub(super) changed: usize,
    pub(super) refused: usize,
}

impl Daemon {
    /// Re-reads the config file.
    pub(super) fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            log::warn!("SIGHUP: this daemon was started without a config file; nothing to reload");
            return;
        };
        if self.reload.is_some() {
            log::warn!("SIGHUP: the last reload is still binding devices; this one is ignored, send it again when it is done");
            return;
        }
        self.sd.notifier.reloading();
        self.retry_devices(None, "reload");
        let new = match crate::config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                self.refuse_reload(chain(&e));
                self.finish_reload();
                return;
            }
        };
        for f in &new.files {
            if let Err(e) = crate::config::check_owner(f) {
                self.refuse_reload(chain(&e));
                self.finish_reload();
                return;
            }
        }
        // The group checks of this reload's binds see the functions it
        // configures (and those attached, which stay), not the start's.
        let mut peers = new.devices.clone();
        peers.extend(
            self.devices
                .iter()
                .filter(|d| d.holder().is_some())
                .map(|d| d.cfg.clone()),
        );
        self.binder.binder().set_peers(&peers);
        if new.daemon != self.config.daemon {
            log::warn!("reload: changes to the [daemon] section take effect at the next restart");
        }
        let mut n = ReloadCounts::default();
        for i in 0..self.devices.len() {
            if self.devices[i].is_removed() {
                continue;
            }
            let tag = self.devices[i].tag();
            let attached = self.devices[i].holder().is_some();
            let cfg = self.devices[i].cfg.clone();
            match new.devices.iter().find(|d| d.name == cfg.name) {
                Some(nd) if same(nd, &cfg) => {}
                _ if attached => {
                    log::error!("{tag}: reload: the device is attached; its config change is refused until it is detached");
                    n.refused += 1;
                }
                Some(nd) => {
                    // Give the old function back first (its address may have
                    // changed), so its original driver is not forgotten.
                    let record = self.devices[i].state.remove();
                    let release = (cfg.restore && record.is_some()).then_some(cfg);
                    self.devices[i] = DeviceSlot::new(nd.clone(), Lifecycle::Binding);
                    self.bring_up(i, release);
                    n.changed += 1;
                }
                None => {
                    log::info!("{tag}: removed by reload");
                    let record = self.devices[i].state.remove();
                    if cfg.restore && record.is_some() {
                        let done = self.binder.submit(Job {
                            slot: None,
                            release: Some(cfg),
                            bind: None,
                            given_back: None,
                        });
                        self.apply(done);
                    }
                    n.removed += 1;
                }
            }
        }
        for nd in &new.devices {
            let live = |d: &&DeviceSlot| !d.is_removed();
            if self
                .devices
                .iter()
                .filter(live)
                .any(|d| d.cfg.name == nd.name)
            {
                continue;
            }
            let addr_taken = self
                .devices
                .iter()
                .filter(live)
                .any(|d| d.cfg.pci == nd.pci && d.cfg.name != nd.name);
            if addr_taken {
                log::error!(
                    "{} {}: reload: the address still belongs to an attached device; not added",
                    nd.name,
                    nd.pci
                );
                n.refused += 1;
                continue;
            }
            let slot = DeviceSlot::new(nd.clone(), Lifecycle::Binding);
            let i = match self.devices.iter().position(DeviceSlot::is_removed) {
                Some(i) => {
                    self.devices[i] = slot;
                    i
                }
                None => {
                    self.devices.push(slot);
                    self.devices.len() - 1
                }
            };
            self.bring_up(i, None);
            n.added += 1;
        }
        self.config.devices = self
            .devices
            .iter()
            .filter(|d| !d.is_removed())
            .map(|d| d.cfg.clone())
            .collect();
        self.config.files = new.files;
        // The metrics timer reads it each turn: a new [metrics] applies now.
        self.config.metrics = new.metrics;
        self.reload = Some(n);
        if !self.binder.busy() {
            self.finish_reload();
        }
    }

    /// Tries again the devices (all, or `only`) that a former attempt left
    /// unusable for a reason that may have passed, at `when` (an attach, a
    /// reload): a function left `Bound` is opened again; a device that went
    /// away is looked for again (brought up anew once sysfs shows it).
    pub(super) fn retry_devices(&mut self, only: Option<usize>, when: &str) {
        for i in 0..self.devices.len() {
            if only.is_some_and(|o| o != i) {
                continue;
            }
            let dev = &mut self.devices[i];
            let was_gone = dev.state.gone();
            let sys = self.binder.binder().sysfs();
            match reopen_bound(&dev.cfg, &mut dev.state, sys, when) {
                Reopen::Opened => {
                    self.watch_request(i);
                    self.update_status();
                    continue;
                }
                Reopen::Gone(record) => {
                    self.hand_back(Some(record));
                    self.update_status();
                    continue;
                }
                Reopen::NotBound | Reopen::StillBound => {}
            }
            // A function (not an emulated device: the sim host has no
            // rescan) that sysfs shows again is brought up anew.
            let back = was_gone
                && matches!(dev.cfg.pci, PciAddr::Bdf { .. })
                && crate::pci::identify(sys, &dev.cfg.name, dev.cfg.pci).is_ok();
            if back {
                log::info!("{}: found again at {when}; bringing it up", dev.tag());
                dev.state = Lifecycle::Binding;
                self.bring_up(i, None);
            }
        }
    }

    /// The host took a function back: its `driver_override` is put back and
    /// its bind record forgotten, on the binder's worker (sysfs may block).
    pub(super) fn hand_back(&mut self, record: Option<BindRecord>) {
        let Some(rec) = record else {
            return;
        };
        let done = self.binder.submit(Job {
            slot: None,
            release: None,
            bind: None,
            given_back: Some(rec),
        });
        self.apply(done);
    }

    /// Brings slot `i` (in `Binding`, with its new config) up: an emulated
    /// device at once, unless a function must be given back first; a real
    /// function through the worker.
    fn bring_up(&mut self, i: usize, release: Option<DeviceConfig>) {
        let cfg = self.devices[i].cfg.clone();
        let bind = matches!(cfg.pci, PciAddr::Bdf { .. }).then_some(cfg);
        if release.is_none() && bind.is_none() {
            self.finish_bring_up(i, None);
            return;
        }
        let job = Job {
            slot: Some(i),
            release,
            bind,
            given_back: None,
        };
        let done = self.binder.submit(job);
        self.apply(done);
    }

    /// Opens a device whose sysfs work is done.
    fn finish_bring_up(&mut self, i: usize, bound: Option<Done>) {
        let dev = &self.devices[i];
        if !matches!(dev.state, Lifecycle::Binding) {
            return;
        }
        let cfg = dev.cfg.clone();
        let state = match (cfg.pci, bound.and_then(|d| d.bound)) {
            (_, Some((bcfg, result))) if bcfg.name == cfg.name => {
                open_bound(&cfg, result, None, &self.binder.binder().host())
            }
            (PciAddr::Sim(n), _) => {
                let at = SimPlace {
                    host: &self.sim,
                    remote: self.config.daemon.sim_host.as_deref(),
                };
                open_sim(&cfg, n, at, None)
            }
            (PciAddr::Bdf { .. }, _) => return,
        };
        log_outcome(&cfg, &state);
        self.devices[i].set_state(state);
        self.watch_request(i);
    }

    fn apply(&mut self, done: Option<Done>) {
        if let Some(d) = done {
            if let Some(i) = d.slot {
                self.finish_bring_up(i, Some(d));
            }
        }
    }

    /// The binder's worker finished jobs (it woke the loop).
    pub(super) fn on_worker(&mut self) {
        for done in self.binder.finished() {
            self.apply(Some(done));
        }
        if self.reload.is_some() && !self.binder.busy() {
            self.finish_reload();
        }
    }

    /// Waits for the worker's jobs (a clean stop).
    pub(super) fn finish_jobs(&mut self) {
        for done in self.binder.wait_all() {
            self.apply(Some(done));
        }
        self.reload = None;
    }

    fn finish_reload(&mut self) {
        let counts = self.reload.take();
        if let Some(n) = counts {
            log::info!(
                "reload: {} added, {} removed, {} changed, {} refused",
                n.added,
                n.removed,
                n.changed,
                n.refused
            );
        }
        let status = self.status_line();
        self.sd.notifier.ready(&status);
        self.sd.last_status = status;
        self.reload_finished(counts);
    }
}
