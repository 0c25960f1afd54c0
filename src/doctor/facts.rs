//! The facts doctor cannot read from a file: KVM's capabilities
//! (`KVM_CHECK_EXTENSION` on `/dev/kvm`, a system ioctl) and the systemd
//! version, with what each means for intxd.

use std::path::Path;
use std::process::Command;

use kvm_ioctls::{Cap, Kvm};
use serde::Serialize;

use super::{Finding, Status};
use crate::pci::SysfsIo;

/// What `/dev/kvm` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KvmFacts {
    /// `/dev/kvm` could be opened; otherwise why not.
    pub open: Result<(), String>,
    /// `KVM_CAP_IRQFD_RESAMPLE`: direct mode.
    pub irqfd_resample: bool,
    /// `KVM_CAP_IRQCHIP`: an in-kernel interrupt controller (x86 PIC and
    /// IOAPIC; arm64 vGIC).
    pub irqchip: bool,
    /// `KVM_CAP_ARM_USER_IRQ` (arm64): VMs with a userspace irqchip.
    pub arm_user_irq: bool,
    /// The vGIC models KVM can create (arm64; `KVM_CREATE_DEVICE_TEST`).
    pub vgic: Vec<String>,
}

impl KvmFacts {
    /// Probes `/dev/kvm`: system ioctls only, plus (on arm64) a throwaway
    /// VM to test which vGIC models it can create.
    pub fn probe() -> KvmFacts {
        let kvm = match Kvm::new() {
            Ok(k) => k,
            Err(e) => {
                return KvmFacts {
                    open: Err(e.to_string()),
                    irqfd_resample: false,
                    irqchip: false,
                    arm_user_irq: false,
                    vgic: Vec::new(),
                }
            }
        };
        let arm_user_irq =
            kvm.check_extension_raw(libc::c_ulong::from(kvm_bindings::KVM_CAP_ARM_USER_IRQ)) > 0;
        KvmFacts {
            open: Ok(()),
            irqfd_resample: kvm.check_extension(Cap::IrqfdResample),
            irqchip: kvm.check_extension(Cap::Irqchip),
            arm_user_irq: cfg!(target_arch = "aarch64") && arm_user_irq,
            vgic: vgic_models(&kvm),
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn vgic_models(kvm: &Kvm) -> Vec<String> {
    use kvm_bindings::{
        kvm_create_device, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2 as V2,
        kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3 as V3, KVM_CREATE_DEVICE_TEST,
    };
    let Ok(vm) = kvm.create_vm() else {
        return Vec::new();
    };
    [(V3, "v3"), (V2, "v2")]
        .into_iter()
        .filter(|(t, _)| {
            let mut d = kvm_create_device {
                type_: *t,
                fd: 0,
                flags: KVM_CREATE_DEVICE_TEST,
            };
            vm.create_device(&mut d).is_ok()
        })
        .map(|(_, n)| n.to_string())
        .collect()
}

#[cfg(not(target_arch = "aarch64"))]
fn vgic_models(_kvm: &Kvm) -> Vec<String> {
    Vec::new()
}

/// What runs as PID 1, and the installed systemd's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SystemdFacts {
    /// PID 1's command name (`/proc/1/comm`), if readable.
    pub pid1: Option<String>,
    /// The version `systemctl --version` prints, if it runs.
    pub version: Option<u32>,
}

impl SystemdFacts {
    /// Reads PID 1's name through `proc` and runs `systemctl --version`.
    pub fn probe(proc: &dyn SysfsIo) -> SystemdFacts {
        let pid1 = proc.read_string(Path::new("1/comm")).ok();
        let version = Command::new("systemctl")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| parse_version(&String::from_utf8_lossy(&o.stdout)));
        SystemdFacts { pid1, version }
    }
}

/// `systemd 252 (252.39-1~deb12u1)` -> 252.
pub fn parse_version(out: &str) -> Option<u32> {
    let first = out.lines().next()?;
    let rest = first.strip_prefix("systemd ")?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

const HOST: &str = "host";

pub(super) fn kvm_findings(k: &KvmFacts, arch: &str) -> Vec<Finding> {
    if let Err(e) = &k.open {
        return vec![Finding::new(
            HOST,
            "kvm",
            Status::Fail,
            format!("/dev/kvm cannot be opened: {e}"),
        )
        .fix("load kvm_intel or kvm_amd (x86) and enable virtualisation in the firmware; VMMs need KVM")];
    }
    let mut out = vec![
        if k.irqfd_resample {
            Finding::new(HOST, "kvm irqfd resample", Status::Ok, "KVM_CAP_IRQFD_RESAMPLE: yes, so direct mode (no daemon wakeup per interrupt) is available")
        } else {
            Finding::new(HOST, "kvm irqfd resample", Status::Warn, "KVM_CAP_IRQFD_RESAMPLE: no, so every route is a relay (one daemon wakeup per interrupt)")
                .fix("a host kernel whose KVM has resampling irqfds (KVM_IRQFD_FLAG_RESAMPLE)")
        },
        if k.irqchip {
            Finding::new(
                HOST,
                "kvm irqchip",
                Status::Ok,
                "KVM_CAP_IRQCHIP: yes (in-kernel interrupt controller)",
            )
        } else {
            Finding::new(HOST, "kvm irqchip", Status::Warn, "KVM_CAP_IRQCHIP: no: only VMMs with a userspace interrupt controller can be served")
        },
    ];
    if arch == "aarch64" {
        out.push(Finding::new(
            HOST,
            "kvm arm user irq",
            Status::Info,
            if k.arm_user_irq {
                "KVM_CAP_ARM_USER_IRQ: yes (VMMs without a vGIC can raise the vCPU's line; they must kick a vCPU in WFI)"
            } else {
                "KVM_CAP_ARM_USER_IRQ: no (every VM needs the in-kernel vGIC)"
            },
        ));
        out.push(if k.vgic.is_empty() {
            Finding::new(
                HOST,
                "kvm vgic",
                Status::Warn,
                "KVM can create no vGIC: only userspace irqchips",
            )
        } else {
            Finding::new(
                HOST,
                "kvm vgic",
                Status::Ok,
                format!("vGIC {}", k.vgic.join(", ")),
            )
        });
    }
    out
}

pub(super) fn systemd_findings(s: &SystemdFacts) -> Vec<Finding> {
    let pid1 = s.pid1.as_deref().unwrap_or("unknown");
    let under = pid1 == "systemd";
    let ver = s
        .version
        .map_or("no systemctl".to_string(), |v| format!("systemd {v}"));
    let f = match s.version {
        _ if !under => Finding::new(
            HOST,
            "systemd",
            Status::Info,
            format!("PID 1 is `{pid1}` ({ver} installed): no fd store, so a daemon that dies takes its routes with it (VMMs see their devices detached)"),
        )
        .fix("run intxd as systemd's intxd.service for restart without loss"),
        Some(v) if v >= 254 => Finding::new(
            HOST,
            "systemd",
            Status::Ok,
            format!("{ver} is PID 1: a daemon that dies is restarted with its routes (fd store); FileDescriptorStorePreserve= (254+) could keep the store across `systemctl restart` too, but intxd's clean stop empties it"),
        ),
        Some(v) if v >= 219 => Finding::new(
            HOST,
            "systemd",
            Status::Ok,
            format!("{ver} is PID 1: a daemon that dies is restarted with its routes (the fd store is kept across automatic restarts); `systemctl restart` is a clean stop, and FileDescriptorStorePreserve= needs systemd 254"),
        ),
        Some(_) => Finding::new(
            HOST,
            "systemd",
            Status::Warn,
            format!("{ver} is PID 1 but has no fd store (needs 219): a restart loses every route"),
        )
        .fix("a newer systemd"),
        None => Finding::new(
            HOST,
            "systemd",
            Status::Warn,
            "systemd is PID 1 but `systemctl --version` did not answer: the fd store's behaviour is unknown",
        ),
    };
    vec![f]
}
