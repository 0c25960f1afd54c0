//! What the host can do, probed once at start with system-level calls only
//! (`KVM_CHECK_EXTENSION` on `/dev/kvm`; intxd never issues VM ioctls).
//!
//! The same probe runs on every architecture: the capability numbers are
//! KVM's, and an x86 kernel answers 0 for `KVM_CAP_ARM_USER_IRQ`.

use kvm_ioctls::{Cap, Kvm};

use crate::control::proto::Capabilities;

/// Probes the host.
pub fn probe() -> Capabilities {
    let kvm = Kvm::new().ok();
    let has = |c: Cap| kvm.as_ref().is_some_and(|k| k.check_extension(c));
    Capabilities {
        kvm: kvm.is_some(),
        irqfd: has(Cap::Irqfd),
        irqfd_resample: has(Cap::IrqfdResample),
        // kvm-ioctls has no `Cap` for it; the number is KVM's on every arch.
        arm_user_irq: kvm.as_ref().is_some_and(|k| {
            k.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_ARM_USER_IRQ)) > 0
        }),
        vfio: std::path::Path::new("/dev/vfio/vfio").exists(),
        iommufd: std::path::Path::new("/dev/iommu").exists(),
        // This build serves suspend_intx, resume_intx and reset.
        lifecycle: true,
    }
}
