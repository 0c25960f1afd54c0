//! What the host says about a real function, read through [`HostFs`] (so
//! tests fake it): its sysfs node and legacy IRQ, vfio-pci's INTx masking
//! switch, `/proc/interrupts`, and the link text of our own fds.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use super::interrupts::{self, vfio_intx_action, IrqRow};
use crate::pci::{HostFs, DEVICES_DIR};

/// vfio-pci's switch that turns off INTx masking through DisINTx.
const NOINTXMASK: &str = "module/vfio_pci/parameters/nointxmask";

/// The host's view of one function (`bdf`).
#[derive(Debug, Clone)]
pub(super) struct Probe {
    fs: HostFs,
    bdf: String,
}

impl Probe {
    pub(super) fn new(fs: HostFs, bdf: &str) -> Self {
        Probe {
            fs,
            bdf: bdf.to_string(),
        }
    }

    /// The function's sysfs directory, relative to the sysfs root.
    fn node(&self) -> PathBuf {
        Path::new(DEVICES_DIR).join(&self.bdf)
    }

    /// Whether the function's sysfs node is still there (a removed function's
    /// is not).
    pub(super) fn node_exists(&self) -> bool {
        self.fs.sys.list(&self.node()).is_ok()
    }

    /// The legacy IRQ the host routed the pin to (sysfs `irq`; 0 is none).
    pub(super) fn host_irq(&self) -> Option<u32> {
        irq_of(&self.fs, &self.node())
    }

    /// Whether vfio-pci masks INTx through the function's DisINTx bit (PCI
    /// 2.3 INTx masking, `vdev->pci_2_3`), which is what lets it share the
    /// line.
    ///
    /// The kernel does not show `pci_2_3` to userspace. vfio-pci sets it
    /// unless it was loaded with `nointxmask=1`, or the PCI core found at
    /// enumeration that the function's DisINTx bit does not stick
    /// (`broken_intx_masking`, also invisible here). So this is the module
    /// switch: true unless `nointxmask` is set. Where it is wrong (a function
    /// with broken masking), vfio-pci falls back to masking the whole host
    /// line and requests it exclusively, and an enable on a shared line
    /// fails with `EBUSY`.
    pub(super) fn intx_masking_enabled(&self) -> bool {
        self.fs
            .sys
            .read_string(Path::new(NOINTXMASK))
            .map(|s| !matches!(s.as_str(), "Y" | "y" | "1"))
            .unwrap_or(true)
    }

    /// `/proc/interrupts`, parsed (empty when unreadable).
    pub(super) fn interrupts(&self) -> Vec<IrqRow> {
        self.fs
            .proc
            .read(Path::new("interrupts"))
            .map(|t| interrupts::parse(&String::from_utf8_lossy(&t)))
            .unwrap_or_default()
    }

    /// The count of the line that carries `vfio-intx(<bdf>)`, if vfio-pci
    /// has it requested now.
    pub(super) fn intx_count(&self) -> Option<u64> {
        let rows = self.interrupts();
        interrupts::row_with_action(&rows, &vfio_intx_action(&self.bdf)).map(|r| r.total)
    }

    /// Whether host line `irq` is shared: another PCI function reports the
    /// same legacy IRQ in sysfs, or `/proc/interrupts` shows a handler other
    /// than ours on it.
    pub(super) fn shared_line(&self, irq: u32) -> bool {
        let ours = vfio_intx_action(&self.bdf);
        let rows = self.interrupts();
        if interrupts::row_of_irq(&rows, irq).is_some_and(|r| r.actions.iter().any(|a| *a != ours))
        {
            return true;
        }
        let Ok(entries) = self.fs.sys.list(Path::new(DEVICES_DIR)) else {
            return false;
        };
        entries
            .iter()
            .filter(|e| e.name != self.bdf)
            .any(|e| irq_of(&self.fs, &Path::new(DEVICES_DIR).join(&e.name)) == Some(irq))
    }

    /// The `/proc/self/fd` link text of one of our fds.
    pub(super) fn fd_link(&self, fd: BorrowedFd<'_>) -> String {
        let rel = PathBuf::from(format!("self/fd/{}", fd.as_raw_fd()));
        self.fs
            .proc
            .read_link(&rel)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("<unreadable: {e}>"))
    }
}

fn irq_of(fs: &HostFs, node: &Path) -> Option<u32> {
    fs.sys
        .read_string(&node.join("irq"))
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const BDF: &str = "0000:03:00.0";

    /// A fake host: `sys/bus/pci/devices/<bdf>/irq` for each function, and
    /// `proc/interrupts`.
    fn host(functions: &[(&str, u32)], interrupts: &str) -> (tempfile::TempDir, Probe) {
        let root = tempfile::tempdir().unwrap();
        for (bdf, irq) in functions {
            let dir = root.path().join("sys").join(DEVICES_DIR).join(bdf);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join("irq"), format!("{irq}\n")).unwrap();
        }
        fs::create_dir_all(root.path().join("proc")).unwrap();
        fs::write(root.path().join("proc/interrupts"), interrupts).unwrap();
        let p = Probe::new(HostFs::under(root.path()), BDF);
        (root, p)
    }

    const ROWS: &str = "           CPU0       CPU1\n  21:        40          2  IR-IO-APIC   21-fasteoi   vfio-intx(0000:03:00.0)\n";

    #[test]
    fn the_node_the_irq_and_the_count_come_from_the_fake_host() {
        let (_root, p) = host(&[(BDF, 21)], ROWS);
        assert!(p.node_exists());
        assert_eq!(p.host_irq(), Some(21));
        assert_eq!(p.intx_count(), Some(42));
        assert!(!p.shared_line(21));
    }

    #[test]
    fn a_removed_function_has_no_node() {
        let (_root, p) = host(&[("0000:04:00.0", 5)], ROWS);
        assert!(!p.node_exists());
        assert_eq!(p.host_irq(), None);
    }

    #[test]
    fn a_line_is_shared_by_sysfs_irq_or_by_another_handler() {
        let (_root, p) = host(&[(BDF, 21), ("0000:04:00.0", 21)], ROWS);
        assert!(p.shared_line(21));
        let other = "           CPU0\n  21:  7  IO-APIC  21-fasteoi  vfio-intx(0000:03:00.0), ehci_hcd:usb1\n";
        let (_root, p) = host(&[(BDF, 21)], other);
        assert!(p.shared_line(21));
    }

    #[test]
    fn intx_masking_follows_the_nointxmask_switch() {
        let (root, p) = host(&[(BDF, 21)], ROWS);
        assert!(p.intx_masking_enabled(), "no vfio_pci module: the default");
        let param = root.path().join("sys").join(NOINTXMASK);
        fs::create_dir_all(param.parent().unwrap()).unwrap();
        fs::write(&param, "Y\n").unwrap();
        assert!(!p.intx_masking_enabled());
        fs::write(&param, "N\n").unwrap();
        assert!(p.intx_masking_enabled());
    }
}
