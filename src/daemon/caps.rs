//! What the host can do, probed once at start with system-level calls only
//! (`KVM_CHECK_EXTENSION` on `/dev/kvm`; intxd never issues VM ioctls).

use kvm_ioctls::{Cap, Kvm};

use crate::control::proto::Capabilities;

/// Probes the host.
pub fn probe() -> Capabilities {
    let kvm = Kvm::new().ok();
    Capabilities {
        kvm: kvm.is_some(),
        irqfd_resample: kvm
            .as_ref()
            .is_some_and(|k| k.check_extension(Cap::IrqfdResample)),
        vfio: std::path::Path::new("/dev/vfio/vfio").exists(),
        iommufd: std::path::Path::new("/dev/iommu").exists(),
    }
}
