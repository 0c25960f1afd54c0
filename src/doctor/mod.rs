//! `intxd doctor`: a read-only check of the host and of each configured
//! device, each finding with its fix.
//!
//! Every sysfs, procfs and `/dev` read goes through a [`SysfsIo`] of the
//! [`Host`], so tests run the whole check on a fake tree. The only other
//! inputs are probed by the caller and passed in as facts: KVM's
//! capabilities ([`KvmFacts`], `KVM_CHECK_EXTENSION` on `/dev/kvm`) and the
//! systemd version ([`SystemdFacts`]).
//!
//! The check that matters most in the field is
//! [`shared_line_diagnosis`]: a function without working PCI 2.3 INTx
//! masking on a host line that another driver holds makes vfio-pci's INTx
//! set-up fail with `EBUSY`. The daemon calls the same function at open and
//! when an attach fails with `EBUSY`.
//!
//! Files: `host.rs` (the host's IOMMU, vfio-pci, `/dev` nodes), `line.rs`
//! (who is on a host line, INTx masking, the diagnosis), `device.rs` (one
//! configured device), `facts.rs` (KVM and systemd), `render.rs` (the
//! table).

mod device;
mod facts;
mod host;
mod line;
mod render;

use serde::Serialize;

use crate::config::PciAddr;
use crate::pci::SysfsIo;

pub use facts::{parse_version as parse_systemd_version, KvmFacts, SystemdFacts};
pub use host::Host;
pub use line::{
    ebusy_diagnosis, host_line, masking, shared_line_diagnosis, HostLine, LineUser, Masking,
};

/// How a finding bears on intxd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As intxd needs it.
    Ok,
    /// Worth knowing; nothing to do.
    Info,
    /// Works, with a limit or a risk named in the finding.
    Warn,
    /// Stops intxd (or this device) from working until fixed.
    Fail,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Info => "info",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One thing doctor found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `host`, or the configured device's name.
    pub subject: String,
    /// What was checked (`iommu`, `host line`, ...).
    pub check: String,
    /// How it bears on intxd.
    pub status: Status,
    /// What was found, as a sentence.
    pub found: String,
    /// What to do about it, most direct first (empty when nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fixes: Vec<String>,
}

impl Finding {
    fn new(subject: &str, check: &str, status: Status, found: impl Into<String>) -> Finding {
        Finding {
            subject: subject.to_string(),
            check: check.to_string(),
            status,
            found: found.into(),
            fixes: Vec::new(),
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Finding {
        self.fixes.push(fix.into());
        self
    }

    /// The finding as one log line or error message: the subject, what was
    /// found, and the numbered fixes.
    pub fn message(&self) -> String {
        let mut m = format!("{}: {}", self.subject, self.found);
        if !self.fixes.is_empty() {
            m.push_str("; fixes: ");
            let fixes: Vec<String> = self
                .fixes
                .iter()
                .enumerate()
                .map(|(i, f)| format!("({}) {f}", i + 1))
                .collect();
            m.push_str(&fixes.join(" "));
        }
        m
    }
}

/// A device doctor checks: its name and address from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRef {
    /// Its name.
    pub name: String,
    /// Its address (`sim:N` devices get one informational finding).
    pub pci: PciAddr,
}

/// Everything doctor found, host first, then each device in config order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// The worst status found (`Ok` when there is nothing).
    pub fn worst(&self) -> Status {
        self.findings
            .iter()
            .map(|f| f.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// The findings about `subject` whose check is `check`.
    pub fn get(&self, subject: &str, check: &str) -> Option<&Finding> {
        self.findings
            .iter()
            .find(|f| f.subject == subject && f.check == check)
    }

    /// The table `intxd doctor` prints.
    pub fn table(&self) -> String {
        render::table(&self.findings)
    }
}

/// Checks the host and every device in `devices`. Reads only.
pub fn run(host: &Host, kvm: &KvmFacts, systemd: &SystemdFacts, devices: &[DeviceRef]) -> Report {
    let mut findings = host::check(host);
    findings.extend(facts::kvm_findings(kvm, host.arch));
    findings.extend(facts::systemd_findings(systemd));
    // The other configured functions get bound to vfio-pci too: they do
    // not spoil a group.
    let peers: Vec<PciAddr> = devices.iter().map(|d| d.pci).collect();
    for d in devices {
        findings.extend(device::check(host, d, &peers));
    }
    Report { findings }
}

/// Whether `rel` exists under `io`'s root, without reading it (a `/dev`
/// node must not be opened): its parent's listing names it.
fn exists(io: &dyn SysfsIo, rel: &str) -> bool {
    let p = std::path::Path::new(rel);
    let (parent, name) = match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => (parent, name.to_string_lossy()),
        _ => return false,
    };
    io.list(parent)
        .map(|entries| entries.iter().any(|e| e.name == name))
        .unwrap_or(false)
}
