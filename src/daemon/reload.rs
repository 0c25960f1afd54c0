//! `systemctl reload` (SIGHUP): re-read the config. Devices that nobody holds
//! are added, replaced or removed; a change to an attached device is refused
//! with a log line, and no live route is touched.

use super::devices::{DeviceSlot, DeviceState};
use super::Daemon;
use crate::config::DeviceConfig;

fn same(a: &DeviceConfig, b: &DeviceConfig) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.defined_at.clear();
    b.defined_at.clear();
    a == b
}

impl Daemon {
    /// Re-reads the config file.
    pub(super) fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            log::warn!("SIGHUP: this daemon was started without a config file; nothing to reload");
            return;
        };
        self.notifier.reloading();
        let new = match crate::config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                log::error!(
                    "reload: {}; keeping the running config",
                    super::requests::chain(&e)
                );
                self.finish_reload();
                return;
            }
        };
        for f in &new.files {
            if let Err(e) = crate::config::check_owner(f) {
                log::error!(
                    "reload: {}; keeping the running config",
                    super::requests::chain(&e)
                );
                self.finish_reload();
                return;
            }
        }
        if new.daemon != self.config.daemon {
            log::warn!("reload: changes to the [daemon] section take effect at the next restart");
        }
        let (mut added, mut removed, mut changed, mut refused) = (0, 0, 0, 0);
        for i in 0..self.devices.len() {
            if self.devices[i].state == DeviceState::Removed {
                continue;
            }
            let tag = self.devices[i].tag();
            let attached = self.devices[i].holder.is_some();
            match new
                .devices
                .iter()
                .find(|d| d.name == self.devices[i].cfg.name)
            {
                Some(nd) if same(nd, &self.devices[i].cfg) => {}
                _ if attached => {
                    log::error!("{tag}: reload: the device is attached; its config change is refused until it is detached");
                    refused += 1;
                }
                Some(nd) => {
                    // Give the old function back first (its address may have
                    // changed), so its original driver is not forgotten.
                    if self.devices[i].cfg.restore {
                        self.devices[i].release(&self.binder);
                    }
                    self.notifier.watchdog();
                    self.devices[i] = DeviceSlot::open(
                        nd.clone(),
                        &self._sim,
                        &self.binder,
                        self.config.daemon.sim_host.as_deref(),
                        None,
                    );
                    self.watch_request(i);
                    changed += 1;
                }
                None => {
                    log::info!("{tag}: removed by reload");
                    if self.devices[i].cfg.restore {
                        self.devices[i].release(&self.binder);
                    }
                    self.devices[i].backend = None;
                    self.devices[i].state = DeviceState::Removed;
                    removed += 1;
                }
            }
        }
        for nd in &new.devices {
            let known = self
                .devices
                .iter()
                .any(|d| d.cfg.name == nd.name && d.state != DeviceState::Removed);
            let addr_taken = self.devices.iter().any(|d| {
                d.cfg.pci == nd.pci && d.cfg.name != nd.name && d.state != DeviceState::Removed
            });
            if known {
                continue;
            }
            if addr_taken {
                log::error!(
                    "{} {}: reload: the address still belongs to an attached device; not added",
                    nd.name,
                    nd.pci
                );
                refused += 1;
                continue;
            }
            // Binding may block on sysfs for up to sysfs_timeout_ms per
            // write; keep the watchdog fed between devices.
            self.notifier.watchdog();
            let slot = DeviceSlot::open(
                nd.clone(),
                &self._sim,
                &self.binder,
                self.config.daemon.sim_host.as_deref(),
                None,
            );
            let i = match self
                .devices
                .iter()
                .position(|d| d.state == DeviceState::Removed)
            {
                Some(i) => {
                    self.devices[i] = slot;
                    i
                }
                None => {
                    self.devices.push(slot);
                    self.devices.len() - 1
                }
            };
            self.watch_request(i);
            added += 1;
        }
        self.config.devices = self
            .devices
            .iter()
            .filter(|d| d.state != DeviceState::Removed)
            .map(|d| d.cfg.clone())
            .collect();
        self.config.files = new.files;
        log::info!(
            "reload: {added} added, {removed} removed, {changed} changed, {refused} refused"
        );
        self.finish_reload();
    }

    fn finish_reload(&mut self) {
        let status = self.status_line();
        self.notifier.ready(&status);
        self.last_status = status;
    }
}
