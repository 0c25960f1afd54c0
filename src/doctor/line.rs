//! A function's host INTx line: who else is on it, whether vfio-pci can
//! mask the function itself (PCI 2.3 INTx masking), and the diagnosis of
//! the field's most common failure, `EBUSY` at INTx set-up.
//!
//! vfio-pci requests a function's host IRQ when INTx is enabled (the
//! attach), not at open. With PCI 2.3 masking (`vdev->pci_2_3`) it
//! requests it `IRQF_SHARED` and masks through the function's DisINTx bit;
//! without (module parameter `nointxmask=1`, or a function whose DisINTx bit
//! the PCI core found broken), it masks the whole line and requests it
//! exclusively: if another driver already holds the line, genirq logs
//! "Flags mismatch irq N" and the enable fails with `EBUSY`.

use std::path::Path;

use super::{Finding, Host, Status};
use crate::config::PciAddr;
use crate::pci::{self, FunctionInfo, DEVICES_DIR};
use crate::vfio::interrupts::{vfio_intx_action, IrqRow};

/// Another user of a host line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineUser {
    /// A PCI address, or the name of a handler no PCI function explains
    /// (`i8042`, `acpi`).
    pub name: String,
    /// The PCI function's driver, if any.
    pub driver: Option<String>,
    /// Its handlers on the line in `/proc/interrupts` (empty when it holds
    /// none now: no driver, or a driver that uses MSI).
    pub actions: Vec<String>,
}

impl LineUser {
    /// Whether it can hold the line: it has a handler there, or a driver
    /// that may request the line at any time.
    pub fn holds(&self) -> bool {
        !self.actions.is_empty() || self.driver.is_some()
    }

    fn describe(&self) -> String {
        match (&self.driver, self.actions.is_empty()) {
            (Some(d), true) => format!("{} ({d})", self.name),
            (Some(d), false) => format!("{} ({d}: {})", self.name, self.actions.join(", ")),
            (None, false) => format!("handler `{}`", self.actions.join(", ")),
            (None, true) => format!("{} (no driver)", self.name),
        }
    }
}

/// A function's host line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLine {
    /// The legacy IRQ (sysfs `irq`).
    pub irq: u32,
    /// Everyone else on it: PCI functions with the same `irq`, and handlers
    /// in `/proc/interrupts` that none of them explains.
    pub others: Vec<LineUser>,
    /// Whether vfio-pci's handler for this function is on the line now.
    pub ours_active: bool,
}

impl HostLine {
    /// The others that hold or may hold the line.
    pub fn holders(&self) -> Vec<&LineUser> {
        self.others.iter().filter(|u| u.holds()).collect()
    }
}

/// Whether vfio-pci masks the function itself (PCI 2.3 INTx masking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masking {
    /// It does; the evidence.
    Works(String),
    /// It does not; the reason. `param` when `nointxmask` is the reason
    /// (and dropping it is the fix).
    Broken {
        /// Why.
        reason: String,
        /// Whether `vfio_pci.nointxmask=1` is the reason.
        param: bool,
    },
    /// Not known without a write; why.
    Unknown(String),
}

/// Functions whose DisINTx bit is known not to work: the kernel's
/// `quirk_broken_intx_masking` list (drivers/pci/quirks.c, Linux 6.12).
/// The PCI core marks them broken whatever its own test says.
const BROKEN_MASKING: &[(u16, u16, &str)] = &[
    (0x1425, 0x0030, "Chelsio T3"),
    (0x1814, 0x0601, "Ralink RT2800"),
    (0x1b7c, 0x0004, "Ceton InfiniTV4"),
    (0x1102, 0x000b, "Creative EMU20k2"),
    (0x10ec, 0x8169, "Realtek RTL8169"),
];

/// Intel i40e (XL710/X710) functions, which vfio-pci gives no INTx at all
/// (`vfio_pci_nointx`): its INTx count is 0.
fn vfio_hides_intx(vendor: u16, device: u16) -> bool {
    vendor == 0x8086
        && matches!(device, 0x1572 | 0x1574 | 0x1580 | 0x1581 | 0x1583..=0x1589 | 0x37d0..=0x37d2)
}

/// The kernel quirk that says `info`'s masking is broken, if one does.
pub(crate) fn masking_quirk(info: &FunctionInfo) -> Option<String> {
    if vfio_hides_intx(info.vendor_id, info.device_id) {
        return Some("Intel i40e: vfio-pci hides its INTx entirely (vfio_pci_nointx)".to_string());
    }
    BROKEN_MASKING
        .iter()
        .find(|(v, d, _)| *v == info.vendor_id && *d == info.device_id)
        .map(|(_, _, n)| format!("{n}: on the kernel's broken INTx masking quirk list"))
}

/// The function's host line and everyone else on it. `None` when the
/// function has no legacy IRQ.
pub fn host_line(host: &Host, info: &FunctionInfo) -> Option<HostLine> {
    let irq = info.irq?;
    let bdf = info.addr.to_string();
    let rows = host.interrupts();
    let row_actions: Vec<String> = row(&rows, irq)
        .map(|r| r.actions.clone())
        .unwrap_or_default();
    let ours = vfio_intx_action(&bdf);
    let mut unexplained: Vec<String> = row_actions
        .iter()
        .filter(|a| **a != ours)
        .cloned()
        .collect();
    let mut others = Vec::new();
    let functions = host.sys.list(Path::new(DEVICES_DIR)).unwrap_or_default();
    for f in functions.into_iter().filter(|f| f.name != bdf) {
        let dir = Path::new(DEVICES_DIR).join(&f.name);
        let their = host
            .sys
            .read_string(&dir.join("irq"))
            .ok()
            .and_then(|s| s.parse::<u32>().ok());
        if their != Some(irq) {
            continue;
        }
        let driver = host.sys.link_name(&dir.join("driver")).ok().flatten();
        // Handlers are named by their drivers: the address (`ahci[0000:…]`,
        // `vfio-intx(0000:…)`), a child device (`virtio0`, `ehci_hcd:usb1`),
        // or the driver itself.
        let children: Vec<String> = host
            .sys
            .list(&dir)
            .map(|e| e.into_iter().map(|e| e.name).collect())
            .unwrap_or_default();
        let (mine, rest): (Vec<String>, Vec<String>) = unexplained.into_iter().partition(|a| {
            a.contains(&f.name)
                || driver.as_deref().is_some_and(|d| a.contains(d))
                || children.iter().any(|c| {
                    c.starts_with(|ch: char| ch.is_ascii_alphabetic()) && a.contains(c.as_str())
                })
        });
        unexplained = rest;
        others.push(LineUser {
            name: f.name,
            driver,
            actions: mine,
        });
    }
    others.extend(unexplained.into_iter().map(|a| LineUser {
        name: a.clone(),
        driver: None,
        actions: vec![a],
    }));
    Some(HostLine {
        irq,
        others,
        ours_active: row_actions.contains(&ours),
    })
}

fn row(rows: &[IrqRow], irq: u32) -> Option<&IrqRow> {
    crate::vfio::interrupts::row_of_irq(rows, irq)
}

/// Whether vfio-pci masks `info`'s function itself, from what can be read
/// without a write. The kernel does not show `vdev->pci_2_3`, and
/// `VFIO_IRQ_INFO_MASKABLE` is set for every INTx function whatever its
/// masking, so the evidence is: the `nointxmask` parameter, the kernel's
/// quirk lists, and vfio-pci sharing the line now (it requests a line
/// shared only with masking). Otherwise the PCI core's DisINTx test result
/// stays unknown until vfio-pci enables INTx.
pub fn masking(host: &Host, info: &FunctionInfo, line: Option<&HostLine>) -> Masking {
    if host.nointxmask() {
        return Masking::Broken {
            reason: "vfio_pci.nointxmask=1".to_string(),
            param: true,
        };
    }
    if let Some(q) = masking_quirk(info) {
        return Masking::Broken {
            reason: q,
            param: false,
        };
    }
    if let Some(l) = line.filter(|l| l.ours_active) {
        if let Some(u) = l.others.iter().find(|u| !u.actions.is_empty()) {
            return Masking::Works(format!(
                "vfio-pci shares IRQ {} with {} now, which it does only with PCI 2.3 masking",
                l.irq,
                u.describe()
            ));
        }
    }
    Masking::Unknown(
        "the PCI core tests the DisINTx bit at enumeration and the kernel does not show the result; it shows when vfio-pci enables INTx (the attach)".to_string(),
    )
}

/// The diagnosis of `EBUSY` at INTx set-up, for the function `addr` of the
/// device `name`: `Some` when its host line is held (or may be held) by
/// another driver and vfio-pci may not be able to mask the function
/// itself; `None` when the line is not shared, masking is known to work,
/// or the function cannot be read. The finding names every other device
/// and driver on the line and the fixes; its status is
/// [`Status::Fail`] when the set-up will fail, [`Status::Warn`] when it
/// fails only if the function's masking is broken.
///
/// Reads sysfs and `/proc/interrupts` through `host`; the daemon calls it
/// with [`Host::real`] at open and when an INTx enable fails with `EBUSY`.
pub fn shared_line_diagnosis(host: &Host, name: &str, addr: PciAddr) -> Option<Finding> {
    let info = pci::identify(&*host.sys, name, addr).ok()?;
    let line = host_line(host, &info)?;
    diagnose(host, name, &info, &line, &masking(host, &info, Some(&line)))
}

/// The diagnosis after vfio-pci's INTx enable of `addr` failed with
/// `EBUSY`: the failure is a fact now, so the finding is [`Status::Fail`],
/// and masking the reads could not settle is known to be off (vfio-pci
/// requests the line exclusively only without it). Names every other
/// device and driver on the line and the fixes, as
/// [`shared_line_diagnosis`] does; when the line shows no other user, says
/// that the exclusive request met a handler the host does not show, with
/// the fix that always applies (another slot). `None` only when the
/// function or its legacy IRQ cannot be read.
pub fn ebusy_diagnosis(host: &Host, name: &str, addr: PciAddr) -> Option<Finding> {
    let info = pci::identify(&*host.sys, name, addr).ok()?;
    let line = host_line(host, &info)?;
    let masking = match masking(host, &info, Some(&line)) {
        Masking::Unknown(_) | Masking::Works(_) => Masking::Broken {
            reason: "the enable's EBUSY shows vfio-pci does not mask it: the PCI core found its DisINTx bit broken".to_string(),
            param: false,
        },
        m => m,
    };
    if let Some(mut f) = diagnose(host, name, &info, &line, &masking) {
        f.status = Status::Fail;
        return Some(f);
    }
    Some(
        Finding::new(
            name,
            "shared line",
            Status::Fail,
            format!(
                "vfio-pci could not request host IRQ {} of {} (EBUSY): another handler holds it in a way sysfs and /proc/interrupts do not show (the kernel logs \"genirq: Flags mismatch irq {}\")",
                line.irq, info.addr, line.irq
            ),
        )
        .fix(move_fix(line.irq)),
    )
}

/// The fix that always applies to a busy line.
fn move_fix(irq: u32) -> String {
    format!("move the card to a slot whose INTx line no other device uses (IRQ {irq} is the host line now)")
}

/// [`shared_line_diagnosis`] on facts already read.
pub(crate) fn diagnose(
    host: &Host,
    name: &str,
    info: &FunctionInfo,
    line: &HostLine,
    masking: &Masking,
) -> Option<Finding> {
    let holders = line.holders();
    if holders.is_empty() {
        return None;
    }
    // A driver bound without a handler on the line (it uses MSI) does not
    // hold it now: the exclusive request succeeds, and that driver cannot
    // fall back to INTx while vfio-pci holds the line.
    let active = holders.iter().any(|u| !u.actions.is_empty());
    let (status, why) = match masking {
        Masking::Works(_) => return None,
        Masking::Broken { reason, .. } if active => (
            Status::Fail,
            format!("PCI 2.3 INTx masking is off for it ({reason}): vfio-pci will request the line exclusively and the INTx set-up fails with EBUSY"),
        ),
        Masking::Broken { reason, .. } => (
            Status::Warn,
            format!("PCI 2.3 INTx masking is off for it ({reason}): vfio-pci requests the line exclusively, which fails with EBUSY as soon as one of them holds a handler there"),
        ),
        Masking::Unknown(_) => (
            Status::Warn,
            "if its PCI 2.3 INTx masking is broken, vfio-pci requests the line exclusively and the INTx set-up fails with EBUSY".to_string(),
        ),
    };
    let who: Vec<String> = holders.iter().map(|u| u.describe()).collect();
    let found = format!(
        "host IRQ {} of {} is shared with {}; {why} (the kernel logs \"genirq: Flags mismatch irq {}\")",
        line.irq,
        info.addr,
        who.join(", "),
        line.irq
    );
    let mut f = Finding::new(name, "shared line", status, found).fix(move_fix(line.irq));
    match masking {
        Masking::Broken { param: true, .. } => {
            f = f.fix("enable INTx masking: drop `vfio_pci.nointxmask=1` (/etc/modprobe.d/ or the kernel command line) and load vfio-pci again with no function bound (`modprobe -r vfio-pci && modprobe vfio-pci`)");
        }
        Masking::Broken { param: false, .. } => {}
        _ if host.nointxmask() => {}
        _ => {
            f = f.fix(
                "keep `vfio_pci.nointxmask` unset: with working masking vfio-pci shares the line",
            );
        }
    }
    for u in holders {
        f = f.fix(match &u.driver {
            Some(d) => format!(
                "unbind the other driver: `echo {} > /sys/bus/pci/drivers/{d}/unbind` (or configure that function for intxd too)",
                u.name
            ),
            None => format!(
                "stop the host's handler `{}` on IRQ {} (disable that device in the firmware or unload its driver)",
                u.name, line.irq
            ),
        });
    }
    Some(f)
}
