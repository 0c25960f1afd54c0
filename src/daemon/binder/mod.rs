//! When real functions are bound to vfio-pci and given back.
//!
//! - **Start** (and a reload that adds a device): each configured real
//!   function is bound (`pci::bind`: checks, driver_override, unbind,
//!   drivers_probe, verify; any failure rolls back to the original driver).
//!   What the bind changed is saved in `<state_dir>/bind/<name>.json` before
//!   VFIO opens the device, so the original driver is never forgotten: a
//!   daemon that crashed and comes back finds the record and does not bind
//!   again.
//! - **Clean stop** (and a reload that removes a device): the device's VFIO
//!   fds are closed, then, with `restore = true` (the default), the function
//!   goes back to its original driver and the record is deleted. With
//!   `restore = false` it stays on vfio-pci.
//! - **Crash or watchdog restart**: nothing is released; the next daemon
//!   takes the live routes back from systemd's fd store.
//! - `intxd bind NAME` / `intxd release NAME` do the same without a daemon.
//!
//! At start-up and at a clean stop the daemon binds and releases in its own
//! thread (nothing is served yet, or any more); a reload hands the work to
//! the worker thread (`worker.rs`).

mod worker;

pub use worker::{BindWorker, Done, Job};

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::{Config, DeviceConfig, PciAddr};
use crate::pci::{self, BindOptions, BindRecord, DirIo, PciError, RealSysfs, SysfsIo};
use crate::util::error::chain;

/// Errors of binding and release.
#[derive(Debug, thiserror::Error)]
pub enum BinderError {
    /// The sysfs side failed (it names the device, the step and the
    /// rollback).
    #[error(transparent)]
    Pci(#[from] PciError),
    /// The record could not be written or read.
    #[error("{device}: could not {what} the bind record {}", .path.display())]
    Record {
        /// Device name.
        device: String,
        /// read / write / remove.
        what: &'static str,
        /// The record's path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The record of a bind could not be written, so the bind was undone:
    /// a function on vfio-pci whose original driver is written nowhere
    /// would stay there.
    #[error("{device}: could not write the bind record {}, so the bind was undone ({rollback}); make the state directory writable", .path.display())]
    RecordUnsaved {
        /// Device name.
        device: String,
        /// The record's path.
        path: PathBuf,
        /// What undoing the bind gave.
        rollback: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a real PCI function.
    #[error("{0}: an emulated device is not bound to any driver")]
    NotReal(String),
}

/// Binds and releases real functions for one config.
pub struct Binder {
    sys: Arc<dyn SysfsIo>,
    proc: DirIo,
    state_dir: PathBuf,
    peers: Mutex<Vec<PciAddr>>,
}

/// The configured real functions: the peers a group check lets through.
fn real_addrs(devices: &[DeviceConfig]) -> Vec<PciAddr> {
    devices
        .iter()
        .map(|d| d.pci)
        .filter(|a| matches!(a, PciAddr::Bdf { .. }))
        .collect()
}

impl Binder {
    /// A binder for `config`'s sysfs root, proc root and state directory.
    pub fn new(config: &Config) -> Binder {
        let sys = RealSysfs::real_with_timeout(
            &config.daemon.sysfs_root,
            Duration::from_millis(config.daemon.sysfs_timeout_ms),
        );
        Self::with_sysfs(config, Box::new(sys))
    }

    /// A binder on another sysfs (a test's fake kernel), with `config`'s
    /// proc root and state directory.
    pub fn with_sysfs(config: &Config, sys: Box<dyn SysfsIo>) -> Binder {
        Binder {
            sys: Arc::from(sys),
            proc: DirIo::new(&config.daemon.proc_root),
            state_dir: config.daemon.state_dir.clone(),
            peers: Mutex::new(real_addrs(&config.devices)),
        }
    }

    /// Takes the configured functions from `devices` (a reload), so that
    /// each group check sees the config it binds for, not the one at start.
    pub fn set_peers(&self, devices: &[DeviceConfig]) {
        *self.peers.lock().unwrap_or_else(PoisonError::into_inner) = real_addrs(devices);
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("bind").join(format!("{name}.json"))
    }

    /// The record a previous bind left, if any.
    pub fn record(&self, name: &str) -> Result<Option<BindRecord>, BinderError> {
        let path = self.record_path(name);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| BinderError::Record {
                    device: name.to_string(),
                    what: "read",
                    path,
                    source: std::io::Error::other(e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(BinderError::Record {
                device: name.to_string(),
                what: "read",
                path,
                source,
            }),
        }
    }

    /// Binds `dev` to vfio-pci (or finds it bound by an earlier run).
    pub fn bind(&self, dev: &DeviceConfig) -> Result<BindRecord, BinderError> {
        if !matches!(dev.pci, PciAddr::Bdf { .. }) {
            return Err(BinderError::NotReal(dev.name.clone()));
        }
        if let Some(rec) = self.record(&dev.name)? {
            let info = pci::identify(&*self.sys, &dev.name, dev.pci)?;
            if rec.addr == dev.pci && info.driver.as_deref() == Some(pci::VFIO_PCI) {
                log::info!(
                    "{} {}: still bound to vfio-pci from an earlier run",
                    dev.name,
                    dev.pci
                );
                return Ok(rec);
            }
        }
        let opts = BindOptions {
            force: dev.force,
            group_peers: self
                .peers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .copied()
                .filter(|a| *a != dev.pci)
                .collect(),
        };
        let rec = pci::bind(&*self.sys, &self.proc, &dev.name, dev.pci, &opts)?;
        if let Err(source) = self.save(&rec) {
            let rollback = match pci::release(&*self.sys, &rec) {
                Ok(()) => format!(
                    "given back to {}",
                    rec.original_driver.driver().unwrap_or("no driver")
                ),
                Err(e) => format!("giving it back failed too: {}", chain(&e)),
            };
            return Err(BinderError::RecordUnsaved {
                device: dev.name.clone(),
                path: self.record_path(&dev.name),
                rollback,
                source,
            });
        }
        Ok(rec)
    }

    /// Writes the record.
    fn save(&self, rec: &BindRecord) -> std::io::Result<()> {
        let path = self.record_path(&rec.device);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.state_dir))?;
        let text = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
        std::fs::write(&path, text)
    }

    /// The host took `rec`'s function back (unbind or remove): its
    /// `driver_override` is put back and its record forgotten, so that its
    /// original driver can bind it, and a rescan finds it as the host had it.
    pub fn given_back(&self, rec: &BindRecord) -> Result<(), BinderError> {
        pci::give_up(&*self.sys, rec)?;
        log::info!(
            "{} {}: the host took it back; driver_override put back and the bind record forgotten",
            rec.device,
            rec.addr
        );
        self.forget(&rec.device)
    }

    /// Forgets `name`'s record (the function is no longer on vfio-pci).
    pub fn forget(&self, name: &str) -> Result<(), BinderError> {
        let path = self.record_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(BinderError::Record {
                device: name.to_string(),
                what: "remove",
                path,
                source,
            }),
        }
    }

    /// Gives `dev` back to its original driver and forgets the record.
    /// Without a record (bound by hand, or the record was lost) a function on
    /// vfio-pci is unbound and reprobed, so the kernel picks its driver; a
    /// function on any other driver is left alone.
    pub fn release(&self, dev: &DeviceConfig) -> Result<(), BinderError> {
        let rec = match self.record(&dev.name)? {
            Some(r) => r,
            None => {
                let info = pci::identify(&*self.sys, &dev.name, dev.pci)?;
                if info.driver.as_deref() != Some(pci::VFIO_PCI) {
                    log::info!(
                        "{} {}: not on vfio-pci ({}); nothing to release",
                        dev.name,
                        dev.pci,
                        info.driver.as_deref().unwrap_or("no driver")
                    );
                    return Ok(());
                }
                let rec = BindRecord {
                    device: dev.name.clone(),
                    addr: dev.pci,
                    original_driver: pci::OriginalDriver::None,
                    original_override: None,
                };
                return match pci::release(&*self.sys, &rec) {
                    Ok(()) => Ok(()),
                    // The record said "no driver", but the kernel found one
                    // at reprobe: that is what a release without a record is for.
                    Err(PciError::Release {
                        step: pci::ReleaseStep::Verify { .. },
                        ..
                    }) if pci::identify(&*self.sys, &dev.name, dev.pci)?
                        .driver
                        .is_some_and(|d| d != pci::VFIO_PCI) =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(e.into()),
                };
            }
        };
        pci::release(&*self.sys, &rec)?;
        self.forget(&dev.name)
    }

    /// The sysfs access, for identify.
    pub fn sysfs(&self) -> &dyn SysfsIo {
        &*self.sys
    }

    /// The host as doctor reads it (this binder's sysfs and procfs), for the
    /// shared-line diagnosis at open and at an attach's `EBUSY`.
    pub fn host(&self) -> crate::doctor::Host {
        crate::doctor::Host {
            sys: self.sys.clone(),
            proc: Arc::new(self.proc.clone()),
            dev: Arc::new(DirIo::new("/dev")),
            arch: std::env::consts::ARCH,
        }
    }
}
