//! The PCI module's errors: the steps of a bind and of a release, what can
//! cause a step to fail, and how a failed bind was rolled back.

use std::fmt;
use std::io;

use crate::config::PciAddr;

use super::group::Offender;
use super::inuse::InUse;
use super::VFIO_PCI;

/// One step of [`bind`](super::bind), in the order they run. The checks
/// change nothing; the others do and are rolled back on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindStep {
    /// Every other function of the IOMMU group is usable by VFIO.
    CheckGroup,
    /// The vfio-pci driver is loaded.
    CheckVfio,
    /// Nothing on the host uses the function (net, block, boot display).
    CheckInUse,
    /// `driver_override` = `vfio-pci`.
    SetOverride,
    /// Unbind from the original driver.
    Unbind {
        /// That driver.
        driver: String,
    },
    /// Write the address to `bus/pci/drivers_probe`.
    Probe,
    /// The `driver` link names vfio-pci.
    Verify,
}

impl fmt::Display for BindStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindStep::CheckGroup => f.write_str("check the IOMMU group"),
            BindStep::CheckVfio => write!(f, "check that {VFIO_PCI} is loaded"),
            BindStep::CheckInUse => f.write_str("check that the host does not use the function"),
            BindStep::SetOverride => write!(f, "set driver_override to {VFIO_PCI}"),
            BindStep::Unbind { driver } => write!(f, "unbind from {driver}"),
            BindStep::Probe => f.write_str("probe drivers"),
            BindStep::Verify => write!(f, "verify that {VFIO_PCI} is bound"),
        }
    }
}

/// One step of giving a function back to its original driver, in order:
/// by [`release`](super::release) and by the rollback of a failed bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseStep {
    /// Clear `driver_override` (or put back the one found at bind time).
    RestoreOverride,
    /// Read which driver is bound now.
    ReadDriver,
    /// Unbind from the driver bound now (normally vfio-pci).
    Unbind {
        /// That driver.
        driver: String,
    },
    /// Write the address to `bus/pci/drivers_probe`.
    Probe,
    /// The original driver (or none) is bound again.
    Verify {
        /// The original driver; `None` when there was none.
        expected: Option<String>,
    },
}

impl fmt::Display for ReleaseStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReleaseStep::RestoreOverride => f.write_str("clear driver_override"),
            ReleaseStep::ReadDriver => f.write_str("read the bound driver"),
            ReleaseStep::Unbind { driver } => write!(f, "unbind from {driver}"),
            ReleaseStep::Probe => f.write_str("reprobe drivers"),
            ReleaseStep::Verify { expected: Some(d) } => {
                write!(f, "verify that {d} is bound again")
            }
            ReleaseStep::Verify { expected: None } => f.write_str("verify that no driver is bound"),
        }
    }
}

/// How a failed bind was undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollback {
    /// The original driver is bound again and `driver_override` restored.
    Restored {
        /// The original driver; `None` when there was none.
        driver: Option<String>,
    },
    /// The rollback failed too: the function may be left half-bound.
    Failed {
        /// The rollback step that failed.
        step: ReleaseStep,
        /// Its cause, with its own causes.
        reason: String,
    },
}

impl fmt::Display for Rollback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rollback::Restored { driver: Some(d) } => write!(f, "rolled back to {d}"),
            Rollback::Restored { driver: None } => {
                f.write_str("rolled back: no driver is bound, as before")
            }
            Rollback::Failed { step, reason } => write!(
                f,
                "rollback failed too at step `{step}`: {reason}; \
                 check the function's driver and driver_override by hand"
            ),
        }
    }
}

/// How to give PCI functions IOMMU groups on this architecture: the one
/// architecture-specific text of the PCI module.
#[cfg(not(target_arch = "aarch64"))]
pub const IOMMU_FIX: &str = "enable the IOMMU (e.g. intel_iommu=on or amd_iommu=on)";

/// How to give PCI functions IOMMU groups on this architecture: the one
/// architecture-specific text of the PCI module. On arm64 the group comes
/// from the SMMU that the firmware places in front of the function.
#[cfg(target_arch = "aarch64")]
pub const IOMMU_FIX: &str = "the function needs an SMMU in front of it: the firmware must \
     describe the PCI host bridge's stream IDs (ACPI IORT, or `iommu-map` in the device tree) \
     and the SMMU driver (arm-smmu-v3 or arm-smmu) must be built in or loaded (check \
     `dmesg | grep -i smmu`); `iommu.passthrough=1` is fine, it keeps the groups";

/// Why one step failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// A sysfs or procfs operation failed (or a write timed out).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The `driver` link names another driver than it should.
    #[error("{}", wrong_driver(.expected, .found))]
    WrongDriver {
        /// The driver that should be bound; `None` for no driver.
        expected: Option<String>,
        /// The driver that is; `None` for no driver.
        found: Option<String>,
    },
    /// `bus/pci/drivers/vfio-pci` does not exist.
    #[error("the {VFIO_PCI} driver is not loaded (no bus/pci/drivers/{VFIO_PCI}); load it with `modprobe {VFIO_PCI}`")]
    VfioNotLoaded,
    /// The function has no `iommu_group` link.
    #[error(
        "the function is in no IOMMU group{}; {IOMMU_FIX}",
        if *.probed { ", even after a vfio-pci probe" } else { "" }
    )]
    NoIommuGroup {
        /// A vfio-pci probe ran and did not give it one (a driverless
        /// function, whose group may come only with a driver probe).
        probed: bool,
    },
    /// Some function of the group is bound to a host driver.
    #[error(
        "IOMMU group {group} is not viable: {}; every function of a group must be bound to \
         {VFIO_PCI} or have no driver (bridges aside): configure those too or unbind them",
        join(.offenders)
    )]
    GroupNotViable {
        /// The group number.
        group: u32,
        /// The functions in the way, with their drivers.
        offenders: Vec<Offender>,
    },
    /// The host uses the function.
    #[error("the function is in use: {}; `force = true` takes it anyway", join(.uses))]
    InUse {
        /// What uses it.
        uses: Vec<InUse>,
    },
}

fn wrong_driver(expected: &Option<String>, found: &Option<String>) -> String {
    let want = expected.as_deref().unwrap_or("no driver");
    match found {
        Some(d) => format!("the `driver` link names {d}, expected {want}"),
        None => format!("no driver is bound, expected {want}"),
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// An error of the PCI module. Every variant names the device (its name
/// from the config) and its address; the cause is in `source()` and is not
/// repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    /// The address is an emulated function (`sim:N`), which has no sysfs entry.
    #[error("{device} {addr}: an emulated function has no sysfs entry")]
    NotPci {
        /// Device name.
        device: String,
        /// Its address.
        addr: PciAddr,
    },
    /// `bus/pci/devices/<addr>` does not exist.
    #[error("{device} {addr}: no such PCI function (no bus/pci/devices/{addr} in sysfs)")]
    NoSuchFunction {
        /// Device name.
        device: String,
        /// Its address.
        addr: PciAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Reading one of the function's attributes failed.
    #[error("{device} {addr}: cannot read `{what}`")]
    Read {
        /// Device name.
        device: String,
        /// Its address.
        addr: PciAddr,
        /// The attribute (the step of identification).
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// An attribute holds something unexpected.
    #[error("{device} {addr}: `{what}` holds `{value}`, which is not {expected}")]
    Parse {
        /// Device name.
        device: String,
        /// Its address.
        addr: PciAddr,
        /// The attribute (the step of identification).
        what: String,
        /// What it holds.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// Listing `bus/pci/devices` failed.
    #[error("cannot list the PCI functions in `{path}`")]
    Enumerate {
        /// The directory, relative to the sysfs root.
        path: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A check refused the bind before anything was changed.
    #[error("{device} {addr}: refused at step `{step}`; nothing was changed")]
    Refused {
        /// Device name.
        device: String,
        /// Its address.
        addr: PciAddr,
        /// The check.
        step: BindStep,
        /// What it found.
        #[source]
        source: Cause,
    },
    /// A bind step failed; the rollback's outcome is in the message.
    #[error("{device} {addr}: bind failed at step `{step}` ({rollback})")]
    Bind {
        /// Device name.
        device: String,
        /// Its address.
        addr: PciAddr,
        /// The failed step.
        step: BindStep,
        /// How it was undone (boxed to keep the error small).
        rollback: Box<Rollback>,
        /// Cause.
        #[source]
        source: Cause,
    },
    /// A release step failed; the steps after it did not run.
    #[error("{device} {addr}: release failed at step `{step}`")]
    Release {
        /// Device name.
        device: String,
        /// Its address.
        addr: PciAddr,
        /// The failed step.
        step: ReleaseStep,
        /// Cause.
        #[source]
        source: Cause,
    },
}

impl PciError {
    /// The cause of a refusal, failed bind or failed release.
    pub fn cause(&self) -> Option<&Cause> {
        match self {
            PciError::Refused { source, .. }
            | PciError::Bind { source, .. }
            | PciError::Release { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An error and its causes on one line, each once (`a: b: c`).
pub use crate::util::error::chain;
