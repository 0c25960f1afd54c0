//! The host's side: the IOMMU and interrupt remapping, vfio-pci and its
//! parameters, and the VFIO and iommufd nodes in `/dev`.

use std::path::Path;
use std::sync::Arc;

use super::{exists, Finding, Status};
use crate::pci::{DirIo, SysfsIo};
use crate::vfio::interrupts;

/// The roots doctor reads: sysfs, procfs and `/dev`, and the architecture
/// whose checks apply.
#[derive(Clone)]
pub struct Host {
    /// sysfs (normally `/sys`).
    pub sys: Arc<dyn SysfsIo>,
    /// procfs (normally `/proc`).
    pub proc: Arc<dyn SysfsIo>,
    /// `/dev` (listed only, never opened).
    pub dev: Arc<dyn SysfsIo>,
    /// `x86_64` or `aarch64` (the build's, [`std::env::consts::ARCH`]).
    pub arch: &'static str,
}

impl Host {
    /// The real host: `/sys`, `/proc`, `/dev`, this build's architecture.
    pub fn real() -> Host {
        Host {
            sys: Arc::new(DirIo::new("/sys")),
            proc: Arc::new(DirIo::new("/proc")),
            dev: Arc::new(DirIo::new("/dev")),
            arch: std::env::consts::ARCH,
        }
    }

    /// A proc file's text, empty when unreadable.
    pub(crate) fn proc_text(&self, rel: &str) -> String {
        self.proc.read_string(Path::new(rel)).unwrap_or_default()
    }

    /// `/proc/interrupts`, parsed (empty when unreadable).
    pub(crate) fn interrupts(&self) -> Vec<interrupts::IrqRow> {
        self.proc
            .read(Path::new("interrupts"))
            .map(|b| interrupts::parse(&String::from_utf8_lossy(&b)))
            .unwrap_or_default()
    }

    /// A vfio-pci module parameter (`Y`, `N`, a number), if it exists.
    pub(crate) fn vfio_pci_param(&self, name: &str) -> Option<String> {
        self.sys
            .read_string(&Path::new(VFIO_PCI_PARAMS).join(name))
            .ok()
    }

    /// Whether vfio-pci's `nointxmask` parameter reads true.
    pub(crate) fn nointxmask(&self) -> bool {
        self.vfio_pci_param("nointxmask")
            .is_some_and(|v| is_true(&v))
    }

    fn names(&self, rel: &str) -> Vec<String> {
        self.sys
            .list(Path::new(rel))
            .map(|e| e.into_iter().map(|e| e.name).collect())
            .unwrap_or_default()
    }
}

/// Where vfio-pci's parameters live, relative to sysfs.
pub(crate) const VFIO_PCI_PARAMS: &str = "module/vfio_pci/parameters";

/// The kernel's spelling of a true bool parameter.
pub(crate) fn is_true(v: &str) -> bool {
    matches!(v.trim(), "Y" | "y" | "1")
}

const HOST: &str = "host";

/// Every host check.
pub(super) fn check(host: &Host) -> Vec<Finding> {
    let mut out = vec![iommu(host), remapping(host)];
    out.extend(vfio_pci(host));
    out.extend(dev_nodes(host));
    out
}

fn iommu(host: &Host) -> Finding {
    let units = host.names("class/iommu");
    let groups = host.names("kernel/iommu_groups").len();
    let kind = |prefix: &str| units.iter().any(|u| u.starts_with(prefix));
    let what = if kind("dmar") {
        "Intel VT-d (DMAR)"
    } else if kind("ivhd") {
        "AMD-Vi"
    } else if kind("smmu") || kind("arm-smmu") {
        "Arm SMMU"
    } else if units.is_empty() {
        "none"
    } else {
        "an IOMMU"
    };
    let cmdline: Vec<String> = host
        .proc_text("cmdline")
        .split_whitespace()
        .filter(|t| {
            [
                "intel_iommu=",
                "amd_iommu=",
                "iommu=",
                "iommu.",
                "intremap=",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        })
        .map(str::to_string)
        .collect();
    let cmd = if cmdline.is_empty() {
        String::new()
    } else {
        format!("; kernel command line: {}", cmdline.join(" "))
    };
    let noiommu = host
        .sys
        .read_string(Path::new(
            "module/vfio/parameters/enable_unsafe_noiommu_mode",
        ))
        .is_ok_and(|v| is_true(&v));
    if groups > 0 {
        let f = Finding::new(
            HOST,
            "iommu",
            Status::Ok,
            format!(
                "{what} on: {} unit(s) ({}), {groups} IOMMU groups{cmd}",
                units.len(),
                units.join(", ")
            ),
        );
        if noiommu {
            return Finding {
                status: Status::Warn,
                found: format!("{}; vfio's enable_unsafe_noiommu_mode is on (functions without a group are passed with no DMA isolation)", f.found),
                ..f
            };
        }
        return f;
    }
    let f = Finding::new(
        HOST,
        "iommu",
        Status::Fail,
        format!("no IOMMU groups (IOMMU units: {what}){cmd}: VFIO cannot open any function"),
    );
    if host.arch == "aarch64" {
        f.fix("enable the SMMU in the firmware (ACPI IORT or the device tree) and boot a kernel with arm-smmu-v3")
    } else {
        f.fix("enable VT-d (Intel) or AMD-Vi / IOMMU (AMD) in the firmware setup")
            .fix("boot with `intel_iommu=on` (Intel; the default on newer kernels) or `amd_iommu=on`, and without `iommu=off`")
    }
}

fn remapping(host: &Host) -> Finding {
    let rows = host.interrupts();
    let chips = chips(&host.proc_text("interrupts"));
    let unsafe_ok = host
        .sys
        .read_string(Path::new(
            "module/vfio_iommu_type1/parameters/allow_unsafe_interrupts",
        ))
        .is_ok_and(|v| is_true(&v));
    if host.arch == "aarch64" {
        let its = chips.iter().any(|c| c.contains("ITS"));
        return Finding::new(
            HOST,
            "interrupt remapping",
            Status::Info,
            if its {
                "Arm: MSIs are isolated by the GICv3 ITS (ITS-MSI chips); INTx needs no remapping"
                    .to_string()
            } else {
                "Arm: no ITS-MSI chip in /proc/interrupts (no MSI isolation); INTx needs no remapping".to_string()
            },
        );
    }
    let ir: Vec<&String> = chips.iter().filter(|c| c.starts_with("IR-")).collect();
    if !ir.is_empty() {
        let names: Vec<&str> = ir.iter().map(|s| s.as_str()).collect();
        return Finding::new(
            HOST,
            "interrupt remapping",
            Status::Ok,
            format!("on ({} in /proc/interrupts)", names.join(", ")),
        );
    }
    let status = if unsafe_ok {
        Status::Warn
    } else {
        Status::Fail
    };
    let found = format!(
        "off: no IR- interrupt chip among {} /proc/interrupts rows; VFIO's type1 IOMMU refuses functions then{}",
        rows.len(),
        if unsafe_ok {
            ", but vfio_iommu_type1.allow_unsafe_interrupts=1 lets them through without isolation"
        } else {
            ""
        }
    );
    Finding::new(HOST, "interrupt remapping", status, found)
        .fix("enable interrupt remapping (x2APIC / VT-d IR, AMD-Vi IR) in the firmware and boot without `intremap=off`")
        .fix("only on a host whose devices you trust: `vfio_iommu_type1.allow_unsafe_interrupts=1`")
}

/// The interrupt chip names of `/proc/interrupts` (the token after the
/// per-CPU counts), deduplicated, in order of first appearance.
fn chips(text: &str) -> Vec<String> {
    let mut lines = text.lines();
    let ncpu = lines
        .next()
        .map(|h| h.split_whitespace().count())
        .unwrap_or(0);
    let mut out: Vec<String> = Vec::new();
    for l in lines {
        let Some((label, rest)) = l.split_once(':') else {
            continue;
        };
        if label.trim().parse::<u32>().is_err() {
            continue;
        }
        if let Some(chip) = rest.split_whitespace().nth(ncpu) {
            if !out.iter().any(|c| c == chip) {
                out.push(chip.to_string());
            }
        }
    }
    out
}

fn vfio_pci(host: &Host) -> Vec<Finding> {
    let module = exists(&*host.sys, "module/vfio_pci");
    let driver = exists(&*host.sys, "bus/pci/drivers/vfio-pci");
    if !module && !driver {
        return vec![Finding::new(
            HOST,
            "vfio-pci",
            Status::Fail,
            "vfio-pci is not loaded: intxd binds functions to it",
        )
        .fix("`modprobe vfio-pci`, and list it in /etc/modules-load.d/ so that it loads at boot")];
    }
    // A module has an `initstate`; a built-in driver does not.
    let builtin = !exists(&*host.sys, "module/vfio_pci/initstate");
    let mut out = vec![Finding::new(
        HOST,
        "vfio-pci",
        Status::Ok,
        if builtin {
            "vfio-pci is built into the kernel"
        } else {
            "vfio-pci is loaded"
        },
    )];
    let params: Vec<String> = host
        .names(VFIO_PCI_PARAMS)
        .into_iter()
        .filter_map(|p| host.vfio_pci_param(&p).map(|v| format!("{p}={v}")))
        .collect();
    let reload = if builtin {
        "vfio-pci is built in: set `vfio_pci.nointxmask=0` on the kernel command line and reboot"
    } else {
        "put `options vfio-pci nointxmask=0` in /etc/modprobe.d/, unbind every function from vfio-pci, then `modprobe -r vfio-pci && modprobe vfio-pci`"
    };
    let note = "(nointxmask and disable_idle_d3 are read at load: a change takes effect only when vfio-pci is loaded again)";
    let params = params.join(" ");
    out.push(if host.nointxmask() {
        Finding::new(
            HOST,
            "vfio-pci parameters",
            Status::Warn,
            format!("{params}: nointxmask=Y turns PCI 2.3 INTx masking off for every function, so vfio-pci requests each host line exclusively and a function on a shared line fails with EBUSY {note}"),
        )
        .fix(reload)
    } else {
        Finding::new(HOST, "vfio-pci parameters", Status::Ok, format!("{params} {note}"))
    });
    out
}

fn dev_nodes(host: &Host) -> Vec<Finding> {
    let dev = &*host.dev;
    let mut out = Vec::new();
    out.push(if exists(dev, "vfio/vfio") {
        Finding::new(
            HOST,
            "vfio container",
            Status::Ok,
            "/dev/vfio/vfio is there: intxd opens functions through their group and a type1v2 container",
        )
    } else {
        Finding::new(
            HOST,
            "vfio container",
            Status::Fail,
            "/dev/vfio/vfio is missing: VFIO is not loaded",
        )
        .fix("`modprobe vfio-pci` (it loads vfio and vfio_iommu_type1)")
    });
    let cdev = exists(dev, "vfio/devices");
    out.push(Finding::new(
        HOST,
        "vfio cdev",
        Status::Info,
        if cdev {
            "/dev/vfio/devices is there (CONFIG_VFIO_DEVICE_CDEV); intxd does not use it yet"
        } else {
            "/dev/vfio/devices is missing (no CONFIG_VFIO_DEVICE_CDEV); intxd uses the group interface, which needs none"
        },
    ));
    out.push(Finding::new(
        HOST,
        "iommufd",
        Status::Info,
        if exists(dev, "iommu") {
            "/dev/iommu is there (CONFIG_IOMMUFD); intxd reports it in `hello` and does not use it yet"
        } else {
            "/dev/iommu is missing (no CONFIG_IOMMUFD); intxd uses a type1v2 container, which needs none"
        },
    ));
    out
}
