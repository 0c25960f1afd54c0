//! One configured device: its function, INTx pin, host line and who shares
//! it, PCI 2.3 masking, and its IOMMU group with its members' drivers.

use std::path::Path;

use super::line::{self, diagnose, host_line, masking, Masking};
use super::{DeviceRef, Finding, Host, Status};
use crate::config::PciAddr;
use crate::pci::{self, group_devices_dir, is_bridge_class, FunctionInfo, VFIO_FRIENDLY_DRIVERS};

/// Every check of one device.
pub(super) fn check(host: &Host, d: &DeviceRef, peers: &[PciAddr]) -> Vec<Finding> {
    let n = d.name.as_str();
    if let PciAddr::Sim(_) = d.pci {
        return vec![Finding::new(
            n,
            "function",
            Status::Info,
            format!(
                "{}: an emulated device; nothing to check on the host",
                d.pci
            ),
        )];
    }
    let info = match pci::identify(&*host.sys, n, d.pci) {
        Ok(i) => i,
        Err(e) => {
            return vec![
                Finding::new(n, "function", Status::Fail, crate::util::error::chain(&e)).fix(
                    "check the address with `lspci -D` and the device's `pci =` in the config",
                ),
            ]
        }
    };
    let mut out = vec![function(n, &info)];
    out.push(match info.intx_pin {
        Some(pin) => Finding::new(n, "intx pin", Status::Ok, format!("{pin}")),
        None => Finding::new(
            n,
            "intx pin",
            Status::Fail,
            "no INTx pin (Interrupt Pin register 0): the function has MSI or MSI-X only",
        )
        .fix("pass it with a VMM's MSI support instead; intxd carries INTx only"),
    });
    let line = host_line(host, &info);
    let m = masking(host, &info, line.as_ref());
    out.push(match &m {
        Masking::Works(e) => Finding::new(
            n,
            "intx masking",
            Status::Ok,
            format!("PCI 2.3 masking works: {e}"),
        ),
        Masking::Broken { reason, .. } => Finding::new(
            n,
            "intx masking",
            Status::Warn,
            format!("no PCI 2.3 masking ({reason}): the function needs a host line of its own"),
        ),
        Masking::Unknown(why) => Finding::new(
            n,
            "intx masking",
            Status::Info,
            format!("unknown until bound: {why}"),
        ),
    });
    out.push(match &line {
        None if info.intx_pin.is_some() => Finding::new(
            n,
            "host line",
            Status::Fail,
            "no host IRQ is routed to its INTx pin (sysfs `irq` is 0 or missing)",
        )
        .fix("check the firmware's interrupt routing (ACPI _PRT); try another slot"),
        None => Finding::new(n, "host line", Status::Info, "none (no INTx pin)"),
        Some(l) => match diagnose(host, n, &info, l, &m) {
            Some(f) => f,
            None => line_ok(n, l),
        },
    });
    out.push(group(host, n, &info, peers));
    out
}

fn function(n: &str, info: &FunctionInfo) -> Finding {
    let driver = info.driver.as_deref().unwrap_or("no driver");
    let f = Finding::new(
        n,
        "function",
        Status::Ok,
        format!(
            "{} [{:04x}:{:04x}] class {:06x}, bound to {driver}",
            info.addr, info.vendor_id, info.device_id, info.class
        ),
    );
    match line::masking_quirk(info) {
        Some(q) if q.contains("hides") => Finding {
            status: Status::Fail,
            found: format!("{}; {q}", f.found),
            ..f
        }
        .fix("pass this function with MSI or MSI-X instead; intxd cannot serve its INTx"),
        _ => f,
    }
}

fn line_ok(n: &str, l: &line::HostLine) -> Finding {
    let active = if l.ours_active {
        " (vfio-pci's handler is on it now)"
    } else {
        ""
    };
    let idle: Vec<String> = l.others.iter().map(|u| u.name.clone()).collect();
    if l.holders().is_empty() && idle.is_empty() {
        return Finding::new(
            n,
            "host line",
            Status::Ok,
            format!("IRQ {}, not shared{active}", l.irq),
        );
    }
    let who: Vec<String> = l
        .others
        .iter()
        .map(|u| match &u.driver {
            Some(d) => format!("{} ({d})", u.name),
            None => format!("{} (no driver)", u.name),
        })
        .collect();
    Finding::new(
        n,
        "host line",
        Status::Ok,
        format!(
            "IRQ {}, shared with {}{active}; PCI 2.3 masking lets vfio-pci share it",
            l.irq,
            who.join(", ")
        ),
    )
}

fn group(host: &Host, n: &str, info: &FunctionInfo, peers: &[PciAddr]) -> Finding {
    let Some(g) = info.iommu_group else {
        return Finding::new(
            n,
            "iommu group",
            Status::Fail,
            "the function is in no IOMMU group",
        )
        .fix("turn the IOMMU on (see the host's `iommu` finding)");
    };
    let dir = group_devices_dir(g);
    let members = host.sys.list(&dir).unwrap_or_default();
    let bdf = info.addr.to_string();
    let mut listed = Vec::new();
    let mut offenders = Vec::new();
    for m in &members {
        let driver = host
            .sys
            .link_name(&dir.join(&m.name).join("driver"))
            .ok()
            .flatten();
        let class = host
            .sys
            .read_string(&Path::new(&dir).join(&m.name).join("class"))
            .ok()
            .and_then(|s| u32::from_str_radix(s.trim_start_matches("0x"), 16).ok());
        listed.push(format!(
            "{} ({})",
            m.name,
            driver.as_deref().unwrap_or("no driver")
        ));
        let bridge = class.is_some_and(is_bridge_class);
        let peer = peers.iter().any(|p| p.to_string() == m.name);
        if m.name != bdf && !bridge && !peer {
            if let Some(d) = driver.filter(|d| !VFIO_FRIENDLY_DRIVERS.contains(&d.as_str())) {
                offenders.push((m.name.clone(), d));
            }
        }
    }
    let found = format!("group {g}: {}", listed.join(", "));
    if offenders.is_empty() {
        return Finding::new(n, "iommu group", Status::Ok, found);
    }
    let mut f = Finding::new(
        n,
        "iommu group",
        Status::Warn,
        format!("{found}; VFIO opens the group only when no member is on a host driver"),
    );
    for (m, d) in offenders {
        f = f.fix(format!(
            "{m} is bound to {d}: configure it for intxd too (it is then bound to vfio-pci), or unbind it (`echo {m} > /sys/bus/pci/drivers/{d}/unbind`)"
        ));
    }
    f
}
