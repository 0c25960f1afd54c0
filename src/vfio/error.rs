//! What can go wrong with a real function, in words a user can act on:
//! the open and adopt errors ([`VfioError`], with `vfio-ioctls`' errors
//! split into a hint and their cause), and the errno mappings of INTx
//! actions that are not plain failures (a removed device, a disable of
//! INTx that is already off, and an enable refused with `EBUSY` on a busy
//! host line).

use std::io;

use crate::config::PciAddr;
use crate::vfio::{IntxError, IntxOp};

/// Why a VFIO device could not be opened or adopted.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The address is an emulated device's.
    #[error(
        "{device}: `{addr}` is not a PCI address; only real functions are opened through VFIO"
    )]
    NotPci {
        /// Device name from the config.
        device: String,
        /// The address.
        addr: PciAddr,
    },
    /// `/dev/vfio/vfio` could not be opened or does not offer type1v2.
    #[error("{device} {addr}: cannot open the VFIO container /dev/vfio/vfio: {hint}")]
    Container {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// What failed, and what to check.
        hint: String,
        /// The cause: the errno where `vfio-ioctls` kept one.
        #[source]
        source: Cause,
    },
    /// The group or the device could not be opened.
    #[error("{device} {addr}: cannot open it through its VFIO group: {hint}")]
    Open {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// What failed, and what to check.
        hint: String,
        /// The cause: the errno where `vfio-ioctls` kept one.
        #[source]
        source: Cause,
    },
    /// A query on the device fd failed.
    #[error("{device} {addr}: could not {what}")]
    Query {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// The query.
        what: &'static str,
        /// The errno.
        #[source]
        source: io::Error,
    },
    /// The device fd is not a PCI device's.
    #[error("{device} {addr}: the VFIO device is not a PCI function (device flags {flags:#x})")]
    NotPciDevice {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// `vfio_device_info.flags`.
        flags: u32,
    },
    /// VFIO reports no INTx vector.
    #[error("{device} {addr}: the function has no INTx pin (VFIO reports 0 INTx vectors; its Interrupt Pin register is 0, or vfio-pci was loaded with nointx)")]
    NoIntx {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
    },
    /// INTx cannot be masked, or not signalled through an eventfd.
    #[error("{device} {addr}: vfio-pci cannot {what} its INTx (VFIO_DEVICE_GET_IRQ_INFO flags {flags:#x}), and a level interrupt needs it")]
    Unsupported {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// `mask` or `signal through an eventfd`.
        what: &'static str,
        /// `vfio_irq_info.flags`.
        flags: u32,
    },
    /// An fd handed to [`VfioIntx::adopt`](crate::vfio::VfioIntx::adopt) is of the wrong kind.
    #[error("{device} {addr}: the {role} fd is `{found}`, not a {expected}")]
    WrongFd {
        /// Device name from the config.
        device: String,
        /// The function.
        addr: PciAddr,
        /// `device` or `container`.
        role: &'static str,
        /// What it should be.
        expected: &'static str,
        /// Its `/proc/self/fd` link text.
        found: String,
    },
}

impl VfioError {
    /// Makes the [`VfioError::Query`] of `what` on `device`'s fd from the
    /// errno it failed with (for `map_err`).
    pub(super) fn query<'a>(
        device: &'a str,
        addr: PciAddr,
        what: &'static str,
    ) -> impl FnOnce(io::Error) -> VfioError + 'a {
        move |source| VfioError::Query {
            device: device.to_string(),
            addr,
            what,
            source,
        }
    }
}

/// The cause of a failed open, boxed.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// Splits a `vfio-ioctls` error into what failed (with what to check) and
/// its cause. The crate's messages repeat their cause, so the errno becomes
/// the source here and the step goes into our own message.
pub(super) fn explain(e: vfio_ioctls::VfioError) -> (String, Cause) {
    use vfio_ioctls::VfioError as E;
    let step = |s: &str| s.to_string();
    match e {
        E::OpenContainer(io) => (
            step("is the vfio module loaded (modprobe vfio-pci)?"),
            Box::new(io),
        ),
        E::VfioApiVersion | E::VfioExtension | E::VfioInvalidType => (
            step("the kernel's VFIO offers no type1v2 IOMMU (is there an IOMMU, and vfio_iommu_type1 loaded?)"),
            Box::new(e),
        ),
        E::InvalidPath => (
            step("sysfs shows no such function, or no iommu_group for it (no IOMMU, or it is off: intel_iommu=on / amd_iommu=on)"),
            Box::new(e),
        ),
        E::OpenGroup(io, group) => {
            let hint = if io.raw_os_error() == Some(libc::EBUSY) {
                format!("/dev/vfio/{group} is already open (another VMM, or a previous intxd whose fds were not handed over)")
            } else {
                format!("cannot open /dev/vfio/{group} (is the function bound to vfio-pci?)")
            };
            (hint, Box::new(io))
        }
        E::GroupViable => (
            step("its IOMMU group is not viable: every function in the group must be bound to vfio-pci or have no driver"),
            Box::new(e),
        ),
        E::ContainerSetIOMMU(errno) => (
            step("the IOMMU refused the type1v2 container (without interrupt remapping, vfio_iommu_type1.allow_unsafe_interrupts=1 is needed)"),
            Box::new(errno),
        ),
        E::GroupGetDeviceFD(errno) => (
            step("the group refused the device fd (VFIO_GROUP_GET_DEVICE_FD; is the function bound to vfio-pci, and not open elsewhere?)"),
            Box::new(errno),
        ),
        E::VfioDeviceGetInfo(errno) => (step("VFIO_DEVICE_GET_INFO failed"), Box::new(errno)),
        E::VfioDeviceGetRegionInfo(errno) => {
            (step("VFIO_DEVICE_GET_REGION_INFO failed"), Box::new(errno))
        }
        E::SetDeviceAttr(errno) => (step("KVM refused the VFIO group"), Box::new(errno)),
        other => (step("vfio-ioctls failed"), Box::new(other)),
    }
}

impl IntxError {
    /// Whether the kernel refused the action with `EBUSY`: at the INTx
    /// enable, vfio-pci's request of the host line met another driver's
    /// handler it cannot share the line with (no PCI 2.3 masking; the
    /// kernel logs "genirq: Flags mismatch irq N"). The daemon answers it
    /// with the shared-line diagnosis (`doctor::ebusy_diagnosis`).
    pub fn is_busy(&self) -> bool {
        matches!(self, IntxError::Action { source, .. } if source.raw_os_error() == Some(libc::EBUSY))
    }
}

/// Turns the errno of a failed INTx action into an [`IntxError`].
///
/// `ENODEV` with the function's sysfs node gone is a removal: the device is
/// marked `gone` and every later action fails with [`IntxError::Gone`].
/// `ENODEV` alone also means "no IRQ assigned" at enable, which is not a
/// removal, so `node_exists` decides (it is asked only on `ENODEV`).
pub(super) fn action_error(
    device: &str,
    op: IntxOp,
    source: io::Error,
    gone: &mut bool,
    node_exists: impl FnOnce() -> bool,
) -> IntxError {
    if source.raw_os_error() == Some(libc::ENODEV) && !node_exists() {
        *gone = true;
    }
    if *gone {
        return IntxError::Gone {
            device: device.to_string(),
        };
    }
    IntxError::Action {
        device: device.to_string(),
        op,
        source,
    }
}

/// The outcome of a disable (`count = 0`): vfio-pci answers `EINVAL` when
/// INTx is already off (`vfio_pci_set_intx_trigger`), so disable is
/// idempotent here; anything else stands.
pub(super) fn disable_outcome(r: Result<(), IntxError>) -> Result<(), IntxError> {
    match r {
        Err(IntxError::Action { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            Ok(())
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(e: i32) -> io::Error {
        io::Error::from_raw_os_error(e)
    }

    /// `action_error` for device `nic0`, with the node's presence given.
    fn act(op: IntxOp, e: i32, gone: &mut bool, node: bool) -> IntxError {
        action_error("nic0", op, errno(e), gone, || node)
    }

    #[test]
    fn enodev_with_the_sysfs_node_gone_is_a_removal_and_stays_one() {
        let mut gone = false;
        let e = act(IntxOp::Unmask, libc::ENODEV, &mut gone, false);
        assert!(
            matches!(&e, IntxError::Gone { device } if device == "nic0"),
            "{e}"
        );
        assert!(gone);
        let later = act(IntxOp::Mask, libc::EIO, &mut gone, true);
        assert!(matches!(later, IntxError::Gone { .. }), "{later}");
    }

    #[test]
    fn enodev_with_the_node_present_is_an_action_failure() {
        let mut gone = false;
        let e = act(IntxOp::SetTrigger, libc::ENODEV, &mut gone, true);
        match e {
            IntxError::Action { device, op, source } => {
                assert_eq!((device.as_str(), op), ("nic0", IntxOp::SetTrigger));
                assert_eq!(source.raw_os_error(), Some(libc::ENODEV));
            }
            other => panic!("{other}"),
        }
        assert!(!gone);
    }

    #[test]
    fn another_errno_never_asks_for_the_sysfs_node() {
        let mut gone = false;
        let e = action_error("nic0", IntxOp::Mask, errno(libc::EBUSY), &mut gone, || {
            panic!("sysfs consulted for EBUSY")
        });
        assert!(
            matches!(
                e,
                IntxError::Action {
                    op: IntxOp::Mask,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().starts_with("nic0: could not mask INTx"),
            "{e}"
        );
    }

    #[test]
    fn only_an_action_refused_with_ebusy_is_a_busy_line() {
        let mut gone = false;
        let busy = act(IntxOp::SetTrigger, libc::EBUSY, &mut gone, true);
        assert!(busy.is_busy(), "{busy}");
        assert!(!act(IntxOp::SetTrigger, libc::EINVAL, &mut gone, true).is_busy());
        let gone = IntxError::Gone {
            device: "nic0".into(),
        };
        assert!(!gone.is_busy());
    }

    #[test]
    fn a_disable_of_intx_already_off_succeeds() {
        let off = Err(IntxError::Action {
            device: "nic0".into(),
            op: IntxOp::Disable,
            source: errno(libc::EINVAL),
        });
        assert!(disable_outcome(off).is_ok());
    }

    #[test]
    fn a_disable_that_really_failed_or_found_the_device_gone_stands() {
        let busy = Err(IntxError::Action {
            device: "nic0".into(),
            op: IntxOp::Disable,
            source: errno(libc::EBUSY),
        });
        assert!(matches!(
            disable_outcome(busy),
            Err(IntxError::Action {
                op: IntxOp::Disable,
                ..
            })
        ));
        let gone = Err(IntxError::Gone {
            device: "nic0".into(),
        });
        assert!(matches!(disable_outcome(gone), Err(IntxError::Gone { .. })));
    }

    #[test]
    fn the_errno_stays_the_source_and_is_not_repeated_in_the_message() {
        let e = VfioError::Query {
            device: "nic0".into(),
            addr: "0000:03:00.0".parse().unwrap(),
            what: "read config space",
            source: errno(libc::EIO),
        };
        assert_eq!(
            e.to_string(),
            "nic0 0000:03:00.0: could not read config space"
        );
        let src = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(src, Some(errno(libc::EIO).to_string()));
    }
}
