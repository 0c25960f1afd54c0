//! Binding a function to vfio-pci and giving it back, step by step, each
//! step named in errors and a failed bind rolled back.

use std::path::Path;

use crate::config::PciAddr;

use super::error::{chain, BindStep, Cause, PciError, ReleaseStep, Rollback};
use super::group::{check_group, check_members, group_now};
use super::identify::{current_driver, identify, FunctionInfo, Target};
use super::inuse::find_uses;
use super::io::SysfsIo;
use super::record::BindRecord;
use super::VFIO_PCI;

/// `bus/pci/drivers_probe`, relative to the sysfs root.
pub const DRIVERS_PROBE: &str = "bus/pci/drivers_probe";

/// Choices of one bind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Take the function even if the host uses it (the device's
    /// `force = true`).
    pub force: bool,
    /// Functions the caller binds to vfio-pci too (normally every configured
    /// real function): in the IOMMU group check they do not count as
    /// offenders, so that a group of several configured functions can be
    /// bound one function at a time.
    pub group_peers: Vec<PciAddr>,
}

/// Binds the function at `addr` to vfio-pci. `sys` is the sysfs root, `proc`
/// the procfs root, `name` the device's name for errors.
///
/// In order: identify it (recording its driver and `driver_override`);
/// check its IOMMU group ([`check_group`] with `opts.group_peers`); if it is
/// already bound to vfio-pci, stop there (nothing changed). Otherwise check
/// that vfio-pci is loaded and that the host does not use it ([`find_uses`],
/// overridden by `opts.force`); then set `driver_override` to vfio-pci,
/// unbind from the original driver (skipped when there is none), write the
/// address to `bus/pci/drivers_probe` and verify that the `driver` link
/// names vfio-pci.
///
/// A refused check gives [`PciError::Refused`] and changes nothing. A failed
/// step gives [`PciError::Bind`] after a rollback to the original driver
/// (as [`release`] does), whose outcome the error holds. The returned
/// record is what [`release`] needs.
///
/// **A group that comes with the probe.** A function with no driver and no
/// `iommu_group` link may get its group only when a driver probe runs: on
/// arm64 with a device tree (and IORT on older kernels) the SMMU attaches
/// in `of_dma_configure` / `acpi_dma_configure`, at probe time, where x86's
/// DMAR and AMD-Vi create groups at enumeration. For such a function the
/// group check moves after the probe: the bind writes `driver_override` and
/// probes as usual, then reads the group sysfs shows now and checks it as
/// [`check_group`] does. vfio-pci itself refuses a function without a group
/// (no noiommu), so no group after the probe gives [`Cause::NoIommuGroup`]
/// with `probed`; either failure rolls back (override cleared, vfio-pci
/// unbound) and is a [`PciError::Bind`] at [`BindStep::CheckGroup`]. On an
/// x86 host without an IOMMU this costs one failed vfio-pci probe and ends
/// in the same error as before.
pub fn bind(
    sys: &dyn SysfsIo,
    proc: &dyn SysfsIo,
    name: &str,
    addr: PciAddr,
    opts: &BindOptions,
) -> Result<BindRecord, PciError> {
    let t = Target::new(name, addr)?;
    let info = check_bindable(sys, proc, name, addr, opts)?;
    let deferred = group_at_probe(&info).then_some(opts.group_peers.as_slice());
    let record = BindRecord {
        device: name.to_string(),
        addr,
        original_driver: info.driver.into(),
        original_override: info.driver_override,
    };
    if !record.changed() {
        log::info!("{name} {addr}: already bound to {VFIO_PCI}");
        return Ok(record);
    }
    match bind_steps(sys, &t, record.original_driver.driver(), deferred) {
        Ok(()) => {
            log::info!(
                "{name} {addr}: bound to {VFIO_PCI} (was {})",
                record.original_driver.driver().unwrap_or("without driver")
            );
            Ok(record)
        }
        Err((step, source)) => {
            let rollback = match restore(sys, &t, &record) {
                Ok(()) => Rollback::Restored {
                    driver: record.original_driver.driver().map(str::to_string),
                },
                Err((step, cause)) => Rollback::Failed {
                    step,
                    reason: chain(&cause),
                },
            };
            Err(PciError::Bind {
                device: t.name,
                addr,
                step,
                rollback: Box::new(rollback),
                source,
            })
        }
    }
}

/// Whether the function's IOMMU group is checked after the vfio-pci probe
/// instead of before: it has neither a group nor a driver yet.
fn group_at_probe(info: &FunctionInfo) -> bool {
    info.iommu_group.is_none() && info.driver.is_none()
}

/// The steps that change something, stopping at the first failure. With
/// `deferred_peers`, the group check runs after the probe, with those peers.
fn bind_steps(
    sys: &dyn SysfsIo,
    t: &Target,
    original: Option<&str>,
    deferred_peers: Option<&[PciAddr]>,
) -> Result<(), (BindStep, Cause)> {
    let step = |s: BindStep| move |e: std::io::Error| (s, Cause::Io(e));
    sys.write(&t.path("driver_override"), VFIO_PCI.as_bytes())
        .map_err(step(BindStep::SetOverride))?;
    if let Some(driver) = original {
        let s = BindStep::Unbind {
            driver: driver.to_string(),
        };
        sys.write(&t.path("driver/unbind"), t.bdf.as_bytes())
            .map_err(step(s))?;
    }
    sys.write(Path::new(DRIVERS_PROBE), t.bdf.as_bytes())
        .map_err(step(BindStep::Probe))?;
    if let Some(peers) = deferred_peers {
        let group = group_now(sys, t)
            .map_err(|c| (BindStep::CheckGroup, c))?
            .ok_or((BindStep::CheckGroup, Cause::NoIommuGroup { probed: true }))?;
        check_members(sys, t, group, peers).map_err(|c| (BindStep::CheckGroup, c))?;
        log::info!(
            "{} {}: IOMMU group {group} came with the vfio-pci probe, and is viable",
            t.name,
            t.addr
        );
    }
    let found = current_driver(sys, &t.bdf).map_err(step(BindStep::Verify))?;
    if found.as_deref() == Some(VFIO_PCI) {
        Ok(())
    } else {
        Err((
            BindStep::Verify,
            Cause::WrongDriver {
                expected: Some(VFIO_PCI.to_string()),
                found,
            },
        ))
    }
}

/// The `driver_override` to put back: the recorded one, or cleared (an
/// override naming vfio-pci would bind vfio-pci again on the next probe).
fn override_before(record: &BindRecord) -> String {
    match record.original_override.as_deref() {
        Some(o) if o != VFIO_PCI => o.to_string(),
        _ => "\n".to_string(),
    }
}

/// Gives the function back to `record.original_driver`: restore
/// `driver_override`, unbind whatever other driver is bound (normally
/// vfio-pci), reprobe (only when there was an original driver) and verify.
/// Idempotent: a function already back is left as it is.
fn restore(sys: &dyn SysfsIo, t: &Target, record: &BindRecord) -> Result<(), (ReleaseStep, Cause)> {
    let step = |s: ReleaseStep| move |e: std::io::Error| (s, Cause::Io(e));
    let original = record.original_driver.driver();
    let value = override_before(record);
    sys.write(&t.path("driver_override"), value.as_bytes())
        .map_err(step(ReleaseStep::RestoreOverride))?;
    let now = current_driver(sys, &t.bdf).map_err(step(ReleaseStep::ReadDriver))?;
    if now.as_deref() == original {
        return Ok(());
    }
    if let Some(driver) = now {
        sys.write(&t.path("driver/unbind"), t.bdf.as_bytes())
            .map_err(step(ReleaseStep::Unbind { driver }))?;
    }
    if original.is_some() {
        sys.write(Path::new(DRIVERS_PROBE), t.bdf.as_bytes())
            .map_err(step(ReleaseStep::Probe))?;
    }
    let verify = ReleaseStep::Verify {
        expected: original.map(str::to_string),
    };
    let found = current_driver(sys, &t.bdf).map_err(step(verify.clone()))?;
    if found.as_deref() == original {
        Ok(())
    } else {
        Err((
            verify,
            Cause::WrongDriver {
                expected: original.map(str::to_string),
                found,
            },
        ))
    }
}

/// Gives a function bound by [`bind`] back to its original driver: clear
/// `driver_override` (or put back the one recorded), unbind from vfio-pci,
/// write the address to `bus/pci/drivers_probe`, and verify that the
/// original driver is bound again (or, if there was none, that no driver
/// is). Does nothing when the record says the function was already on
/// vfio-pci. Stops at the first failed step with [`PciError::Release`].
pub fn release(sys: &dyn SysfsIo, record: &BindRecord) -> Result<(), PciError> {
    if !record.changed() {
        return Ok(());
    }
    let t = Target::new(&record.device, record.addr)?;
    match restore(sys, &t, record) {
        Ok(()) => {
            log::info!(
                "{} {}: released to {}",
                t.name,
                t.addr,
                record.original_driver.driver().unwrap_or("no driver")
            );
            Ok(())
        }
        Err((step, source)) => Err(PciError::Release {
            device: t.name,
            addr: t.addr,
            step,
            source,
        }),
    }
}

/// The host took a function bound by [`bind`] back (an unbind from
/// vfio-pci, or a remove): put `driver_override` back as the record had it,
/// so that the original driver (or the next rescan's probe) can bind it. A
/// removed function, whose sysfs node is gone, has nothing to put back.
/// Binds and unbinds nothing.
pub fn give_up(sys: &dyn SysfsIo, record: &BindRecord) -> Result<(), PciError> {
    if !record.changed() {
        return Ok(());
    }
    let t = Target::new(&record.device, record.addr)?;
    let value = override_before(record);
    match sys.write(&t.path("driver_override"), value.as_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PciError::Release {
            device: t.name,
            addr: t.addr,
            step: ReleaseStep::RestoreOverride,
            source: Cause::Io(e),
        }),
    }
}

/// Checks, without changing anything, what [`bind`] checks before its first
/// change: the IOMMU group, and (unless the function is already on
/// vfio-pci) vfio-pci loaded and the host not using it (unless `force`).
/// Returns the function's identity. With `force`, each use found is logged
/// as a warning instead. A function with neither driver nor group passes
/// the group check here: its group may come with the probe, and [`bind`]
/// checks it then.
pub fn check_bindable(
    sys: &dyn SysfsIo,
    proc: &dyn SysfsIo,
    name: &str,
    addr: PciAddr,
    opts: &BindOptions,
) -> Result<FunctionInfo, PciError> {
    let info = identify(sys, name, addr)?;
    if group_at_probe(&info) {
        log::info!("{name} {addr}: no IOMMU group yet; it is checked after the vfio-pci probe, which may create it");
    } else {
        check_group(sys, name, addr, &opts.group_peers)?;
    }
    if info.driver.as_deref() == Some(VFIO_PCI) {
        return Ok(info);
    }
    let refuse = |step: BindStep, source: Cause| PciError::Refused {
        device: name.to_string(),
        addr,
        step,
        source,
    };
    match sys.list(Path::new("bus/pci/drivers")) {
        Ok(drivers) if drivers.iter().any(|d| d.name == VFIO_PCI) => {}
        Ok(_) => return Err(refuse(BindStep::CheckVfio, Cause::VfioNotLoaded)),
        Err(e) => return Err(refuse(BindStep::CheckVfio, e.into())),
    }
    let uses = find_uses(sys, proc, name, addr)?;
    if uses.is_empty() {
        return Ok(info);
    }
    if !opts.force {
        return Err(refuse(BindStep::CheckInUse, Cause::InUse { uses }));
    }
    for u in &uses {
        log::warn!("{name} {addr}: taken although {u} (force = true)");
    }
    Ok(info)
}
