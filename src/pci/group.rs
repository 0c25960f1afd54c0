//! IOMMU group viability: VFIO can only own a group whose every function
//! is out of the host's hands, so a bind checks the whole group first.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::PciAddr;

use super::error::{BindStep, Cause, PciError};
use super::identify::{identify, is_bridge_class, parse_hex, Target};
use super::io::SysfsIo;
use super::VFIO_PCI;

/// Drivers that leave a function usable by VFIO: vfio-pci itself, and
/// pci-stub, which claims functions only to keep other drivers off them.
pub const VFIO_FRIENDLY_DRIVERS: &[&str] = &[VFIO_PCI, "pci-stub"];

/// A function that makes a group not viable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    /// Its name in the group (a PCI address).
    pub name: String,
    /// The host driver it is bound to.
    pub driver: String,
}

impl fmt::Display for Offender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is bound to {}", self.name, self.driver)
    }
}

/// `kernel/iommu_groups/<group>/devices`.
pub fn group_devices_dir(group: u32) -> PathBuf {
    Path::new("kernel/iommu_groups")
        .join(group.to_string())
        .join("devices")
}

/// Checks that `addr`'s IOMMU group is viable for VFIO: every other member
/// is bound to vfio-pci (or pci-stub), has no driver, is a bridge (base
/// class 0x06), or is listed in `peers` (functions the caller binds to
/// vfio-pci too, e.g. the other configured functions). Returns the group
/// number. Reads only.
///
/// Errors: [`PciError::Refused`] at [`BindStep::CheckGroup`] with
/// [`Cause::NoIommuGroup`], [`Cause::GroupNotViable`] (the offenders and
/// their drivers) or [`Cause::Io`]; or an identification error.
pub fn check_group(
    sys: &dyn SysfsIo,
    name: &str,
    addr: PciAddr,
    peers: &[PciAddr],
) -> Result<u32, PciError> {
    let info = identify(sys, name, addr)?;
    let t = Target::new(name, addr)?;
    let refuse = |source: Cause| PciError::Refused {
        device: t.name.clone(),
        addr,
        step: BindStep::CheckGroup,
        source,
    };
    let group = info
        .iommu_group
        .ok_or_else(|| refuse(Cause::NoIommuGroup { probed: false }))?;
    check_members(sys, &t, group, peers).map_err(refuse)?;
    Ok(group)
}

/// The function's IOMMU group as sysfs shows it now (read again after a
/// probe that may have created it).
pub(super) fn group_now(sys: &dyn SysfsIo, t: &Target) -> Result<Option<u32>, Cause> {
    let Some(g) = sys.link_name(&t.path("iommu_group"))? else {
        return Ok(None);
    };
    g.parse().map(Some).map_err(|_| {
        Cause::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the iommu_group link names `{g}`, not a group number"),
        ))
    })
}

/// The viability check of [`check_group`] on group `group`'s members.
pub(super) fn check_members(
    sys: &dyn SysfsIo,
    t: &Target,
    group: u32,
    peers: &[PciAddr],
) -> Result<(), Cause> {
    let dir = group_devices_dir(group);
    let members = sys.list(&dir)?;
    let peer_names: Vec<String> = peers.iter().map(ToString::to_string).collect();
    let mut offenders = Vec::new();
    for m in members {
        if m.name == t.bdf || peer_names.contains(&m.name) {
            continue;
        }
        let Some(driver) = sys.link_name(&dir.join(&m.name).join("driver"))? else {
            continue;
        };
        if VFIO_FRIENDLY_DRIVERS.contains(&driver.as_str()) {
            continue;
        }
        let class = sys
            .read_string(&dir.join(&m.name).join("class"))
            .ok()
            .and_then(|s| parse_hex(&s));
        if class.is_some_and(is_bridge_class) {
            continue;
        }
        offenders.push(Offender {
            name: m.name,
            driver,
        });
    }
    if offenders.is_empty() {
        Ok(())
    } else {
        Err(Cause::GroupNotViable { group, offenders })
    }
}
