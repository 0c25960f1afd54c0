//! A fake sysfs tree in a temporary directory and a fake kernel behind it:
//! a `SysfsIo` whose writes have the kernel's side effects (unbind,
//! drivers_probe, driver_override) and can be made to fail, hang or bind
//! nothing. Test-only: it must never live in `src/`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use intxd::pci::{DirIo, Entry, SysfsIo, TimedIo};

/// What an injected fault does to a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// The write fails with this errno and has no effect.
    Errno(i32),
    /// The write blocks this long, then fails with EINTR and has no effect
    /// (a kernel operation that does not finish while the test looks).
    Hang(Duration),
    /// drivers_probe succeeds but binds nothing (the driver refused it).
    ProbeNothing,
    /// drivers_probe binds this driver, whatever driver_override says.
    ProbeBinds(String),
}

#[derive(Debug)]
struct Fault {
    /// Canonical path relative to the sysfs root (symlinks resolved).
    path: String,
    kind: FaultKind,
    /// How many more writes it hits; `None` = every one.
    remaining: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    /// The driver each function binds to when probed without an override.
    native: HashMap<String, String>,
    faults: Vec<Fault>,
    /// Every write, as (path as given, data).
    writes: Vec<(String, String)>,
    /// Functions that get their IOMMU group at the first driver probe, as
    /// on arm64 with a device tree (`of_dma_configure`).
    group_at_probe: HashMap<String, u32>,
}

/// The fake kernel and its tree: `sys/` and `proc/` in a temporary directory.
#[derive(Debug)]
pub struct FakeKernel {
    _dir: tempfile::TempDir,
    sys: PathBuf,
    proc: PathBuf,
    plain: DirIo,
    state: Mutex<State>,
}

/// Where functions live, relative to the sysfs root.
const PCI_ROOT: &str = "devices/pci0000:00";

/// `n` times `../`.
fn ups(n: usize) -> PathBuf {
    (0..n).map(|_| "..").collect()
}

impl FakeKernel {
    /// An empty tree: no functions, no drivers, a proc with `lo` only.
    pub fn new() -> Arc<FakeKernel> {
        let dir = tempfile::Builder::new()
            .prefix("intxd-fake-sysfs-")
            .tempdir()
            .expect("tempdir");
        let sys = dir.path().join("sys");
        let proc = dir.path().join("proc");
        for d in [
            "bus/pci/devices",
            "bus/pci/drivers",
            PCI_ROOT,
            "kernel/iommu_groups",
            "class/net",
            "class/block",
        ] {
            fs::create_dir_all(sys.join(d)).expect("mkdir");
        }
        fs::write(sys.join("bus/pci/drivers_probe"), "").expect("drivers_probe");
        fs::create_dir_all(proc.join("net")).expect("mkdir proc");
        let k = FakeKernel {
            plain: DirIo::new(&sys),
            _dir: dir,
            sys,
            proc,
            state: Mutex::new(State::default()),
        };
        k.set_proc(
            "mounts",
            "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n",
        );
        k.set_proc(
            "swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        );
        k.set_proc(
            "net/route",
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n",
        );
        k.set_proc(
            "net/if_inet6",
            "00000000000000000000000000000001 01 80 10 80       lo\n",
        );
        Arc::new(k)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake kernel state")
    }

    /// The sysfs root.
    pub fn sys_root(&self) -> &Path {
        &self.sys
    }

    /// The procfs root.
    pub fn proc_root(&self) -> &Path {
        &self.proc
    }

    /// The fake kernel behind the real timed writer.
    pub fn io(self: &Arc<Self>, timeout: Duration) -> TimedIo<FakeKernel> {
        TimedIo::new(Arc::clone(self), timeout)
    }

    /// The fake procfs (plain files).
    pub fn proc_io(&self) -> DirIo {
        DirIo::new(&self.proc)
    }

    /// Replaces a procfs file.
    pub fn set_proc(&self, rel: &str, text: &str) {
        fs::write(self.proc.join(rel), text).expect("write proc file");
    }

    /// Appends a line to a procfs file.
    pub fn add_proc_line(&self, rel: &str, line: &str) {
        let mut t = fs::read_to_string(self.proc.join(rel)).expect("read proc file");
        t.push_str(line);
        t.push('\n');
        self.set_proc(rel, &t);
    }

    /// A function's directory, relative to the sysfs root.
    fn dev_rel(bdf: &str) -> PathBuf {
        Path::new(PCI_ROOT).join(bdf)
    }

    /// A symlink at `link` (relative to the root) to `target` (relative to
    /// the root), written relative like sysfs's.
    fn link(&self, link: &Path, target: &Path) {
        let depth = link.parent().map_or(0, |p| p.components().count());
        symlink(ups(depth).join(target), self.sys.join(link)).expect("symlink");
    }

    /// Registers a driver: `bus/pci/drivers/<name>/{bind,unbind}`.
    pub fn add_driver(&self, name: &str) {
        let d = self.sys.join("bus/pci/drivers").join(name);
        fs::create_dir_all(&d).expect("mkdir driver");
        fs::write(d.join("bind"), "").expect("bind");
        fs::write(d.join("unbind"), "").expect("unbind");
    }

    /// Adds a function with its ids, class, INTx pin and IRQ 16, bound to
    /// `driver` (which is also its native driver), in IOMMU `group`.
    pub fn add_function(&self, bdf: &str, class: u32, driver: Option<&str>, group: Option<u32>) {
        let rel = Self::dev_rel(bdf);
        let dir = self.sys.join(&rel);
        fs::create_dir_all(&dir).expect("mkdir function");
        let (vendor, device) = (0x8086u16, 0x10d3u16);
        fs::write(dir.join("vendor"), format!("0x{vendor:04x}\n")).expect("vendor");
        fs::write(dir.join("device"), format!("0x{device:04x}\n")).expect("device");
        fs::write(dir.join("class"), format!("0x{class:06x}\n")).expect("class");
        fs::write(dir.join("driver_override"), "(null)\n").expect("override");
        fs::write(dir.join("irq"), "16\n").expect("irq");
        let mut config = vec![0u8; 64];
        config[0..2].copy_from_slice(&vendor.to_le_bytes());
        config[2..4].copy_from_slice(&device.to_le_bytes());
        config[0x3d] = 1;
        fs::write(dir.join("config"), config).expect("config");
        self.link(&rel.join("subsystem"), Path::new("bus/pci"));
        self.link(&Path::new("bus/pci/devices").join(bdf), &rel);
        if let Some(g) = group {
            self.join_group(bdf, g);
        }
        if let Some(d) = driver {
            self.add_driver(d);
            self.bind_link(bdf, d).expect("bind");
            self.state().native.insert(bdf.to_string(), d.to_string());
        }
    }

    /// Puts a function in IOMMU group `g` (creating the group).
    fn join_group(&self, bdf: &str, g: u32) {
        let rel = Self::dev_rel(bdf);
        let gdir = Path::new("kernel/iommu_groups").join(g.to_string());
        fs::create_dir_all(self.sys.join(&gdir).join("devices")).expect("mkdir group");
        self.link(&gdir.join("devices").join(bdf), &rel);
        self.link(&rel.join("iommu_group"), &gdir);
    }

    /// Makes a function (added without a group) join IOMMU group `g` at its
    /// first driver probe, as arm64 does with a device tree.
    pub fn set_group_at_probe(&self, bdf: &str, g: u32) {
        self.state().group_at_probe.insert(bdf.to_string(), g);
    }

    /// The IOMMU group a function is in now.
    pub fn group(&self, bdf: &str) -> Option<u32> {
        fs::read_link(self.sys.join(Self::dev_rel(bdf)).join("iommu_group"))
            .ok()
            .and_then(|t| t.file_name()?.to_str()?.parse().ok())
    }

    /// The driver a function binds to when probed without override.
    pub fn set_native(&self, bdf: &str, driver: &str) {
        self.state()
            .native
            .insert(bdf.to_string(), driver.to_string());
    }

    /// Writes a function attribute directly (no kernel effect).
    pub fn set_attr(&self, bdf: &str, file: &str, value: &[u8]) {
        fs::write(self.sys.join(Self::dev_rel(bdf)).join(file), value).expect("attr");
    }

    /// Marks a function as the boot display.
    pub fn set_boot_vga(&self, bdf: &str) {
        self.set_attr(bdf, "boot_vga", b"1\n");
    }

    /// Adds a network interface below a function, as virtio-net does
    /// (`<bdf>/virtio0/net/<ifname>`). Returns its directory (relative).
    pub fn add_net(&self, bdf: &str, ifname: &str) -> PathBuf {
        let rel = Self::dev_rel(bdf).join("virtio0/net").join(ifname);
        fs::create_dir_all(self.sys.join(&rel)).expect("mkdir net");
        self.link(&rel.join("subsystem"), Path::new("class/net"));
        self.link(&Path::new("class/net").join(ifname), &rel);
        rel
    }

    /// Makes an interface a port of `master`.
    pub fn set_master(&self, bdf: &str, ifname: &str, master: &str) {
        let rel = Self::dev_rel(bdf).join("virtio0/net").join(ifname);
        let mrel = Path::new("devices/virtual/net").join(master);
        fs::create_dir_all(self.sys.join(&mrel)).expect("mkdir master");
        self.link(&rel.join("master"), &mrel);
    }

    /// Adds a disk with partitions below a function, as a SCSI HBA does
    /// (`<bdf>/host0/target0:0:0/0:0:0:0/block/<disk>/<part>`).
    pub fn add_block(&self, bdf: &str, disk: &str, parts: &[&str]) {
        let drel = Self::dev_rel(bdf)
            .join("host0/target0:0:0/0:0:0:0/block")
            .join(disk);
        let mut all = vec![(disk.to_string(), drel.clone())];
        for p in parts {
            all.push((p.to_string(), drel.join(p)));
        }
        for (i, (name, rel)) in all.iter().enumerate() {
            fs::create_dir_all(self.sys.join(rel).join("holders")).expect("mkdir block");
            fs::write(self.sys.join(rel).join("dev"), format!("8:{i}\n")).expect("dev");
            if i > 0 {
                fs::write(self.sys.join(rel).join("partition"), format!("{i}\n")).expect("part");
            }
            self.link(&rel.join("subsystem"), Path::new("class/block"));
            self.link(&Path::new("class/block").join(name), rel);
        }
    }

    /// Makes `holder` (e.g. `dm-0`) hold a block device below `bdf`.
    pub fn add_holder(&self, bdf: &str, disk: &str, dev: &str, holder: &str) {
        let mut rel = Self::dev_rel(bdf)
            .join("host0/target0:0:0/0:0:0:0/block")
            .join(disk);
        if dev != disk {
            rel = rel.join(dev);
        }
        let hrel = Path::new("devices/virtual/block").join(holder);
        fs::create_dir_all(self.sys.join(&hrel)).expect("mkdir holder");
        self.link(&rel.join("holders").join(holder), &hrel);
    }

    /// Fails, hangs or empties the next `times` writes (every one with
    /// `None`) to `path`: the path relative to the sysfs root with symlinks
    /// resolved, e.g. `bus/pci/drivers/e1000e/unbind`,
    /// `bus/pci/drivers_probe`, or [`FakeKernel::override_path`].
    pub fn inject(&self, path: &str, kind: FaultKind, times: Option<usize>) {
        self.state().faults.push(Fault {
            path: path.to_string(),
            kind,
            remaining: times,
        });
    }

    /// The canonical path of a function's `driver_override`, for [`inject`].
    pub fn override_path(bdf: &str) -> String {
        format!("{PCI_ROOT}/{bdf}/driver_override")
    }

    /// The driver bound to a function now.
    pub fn driver(&self, bdf: &str) -> Option<String> {
        fs::read_link(self.sys.join(Self::dev_rel(bdf)).join("driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// A function's driver_override now; `None` when cleared.
    pub fn driver_override(&self, bdf: &str) -> Option<String> {
        let s = fs::read_to_string(self.sys.join(Self::dev_rel(bdf)).join("driver_override"))
            .expect("read override");
        let s = s.trim();
        (s != "(null)").then(|| s.to_string())
    }

    /// Every write so far: (path as given, data).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.state().writes.clone()
    }

    /// Forgets the writes so far.
    pub fn clear_writes(&self) {
        self.state().writes.clear();
    }

    fn bind_link(&self, bdf: &str, driver: &str) -> io::Result<()> {
        let rel = Self::dev_rel(bdf);
        let drel = Path::new("bus/pci/drivers").join(driver);
        let depth = rel.components().count();
        symlink(ups(depth).join(&drel), self.sys.join(&rel).join("driver"))?;
        symlink(
            ups(drel.components().count()).join(&rel),
            self.sys.join(&drel).join(bdf),
        )
    }

    fn unbind_link(&self, bdf: &str, driver: &str) -> io::Result<()> {
        fs::remove_file(self.sys.join(Self::dev_rel(bdf)).join("driver"))?;
        fs::remove_file(self.sys.join("bus/pci/drivers").join(driver).join(bdf))
    }

    /// `rel` with symlinks resolved, relative to the root, as the kernel
    /// sees the file a write reaches.
    fn canonical(&self, rel: &Path) -> io::Result<String> {
        let root = fs::canonicalize(&self.sys)?;
        let full = fs::canonicalize(self.sys.join(rel))?;
        let r = full
            .strip_prefix(&root)
            .map_err(|_| io::Error::from_raw_os_error(libc::EXDEV))?;
        Ok(r.to_string_lossy().into_owned())
    }

    fn take_fault(&self, path: &str) -> Option<FaultKind> {
        let mut st = self.state();
        let i = st
            .faults
            .iter()
            .position(|f| f.path == path && f.remaining != Some(0))?;
        let f = &mut st.faults[i];
        if let Some(n) = f.remaining.as_mut() {
            *n -= 1;
        }
        Some(f.kind.clone())
    }

    fn probe(&self, bdf: &str, forced: Option<String>) -> io::Result<()> {
        let dir = self.sys.join(Self::dev_rel(bdf));
        if !dir.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        if self.driver(bdf).is_some() {
            return Ok(());
        }
        let target = forced
            .or_else(|| self.driver_override(bdf))
            .or_else(|| self.state().native.get(bdf).cloned());
        let Some(d) = target else { return Ok(()) };
        if !self.sys.join("bus/pci/drivers").join(&d).is_dir() {
            return Ok(());
        }
        // dma_configure runs before the driver's probe: the SMMU attaches
        // and the group appears, whether the driver then takes it or not.
        let pending = self.state().group_at_probe.remove(bdf);
        if let Some(g) = pending {
            self.join_group(bdf, g);
        }
        // vfio-pci refuses a function in no IOMMU group (no noiommu).
        if d == "vfio-pci" && self.group(bdf).is_none() {
            return Ok(());
        }
        self.bind_link(bdf, &d)
    }
}

impl SysfsIo for FakeKernel {
    fn read(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.plain.read(rel)
    }

    fn write(&self, rel: &Path, data: &[u8]) -> io::Result<()> {
        let text = String::from_utf8_lossy(data).into_owned();
        self.state()
            .writes
            .push((rel.to_string_lossy().into_owned(), text.clone()));
        let path = self.canonical(rel)?;
        let value = text.trim_end_matches('\n');
        let mut forced = None;
        match self.take_fault(&path) {
            Some(FaultKind::Errno(e)) => return Err(io::Error::from_raw_os_error(e)),
            Some(FaultKind::Hang(d)) => {
                std::thread::sleep(d);
                return Err(io::Error::from_raw_os_error(libc::EINTR));
            }
            Some(FaultKind::ProbeNothing) => return Ok(()),
            Some(FaultKind::ProbeBinds(d)) => forced = Some(d),
            None => {}
        }
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["bus", "pci", "drivers_probe"] => self.probe(value, forced),
            ["bus", "pci", "drivers", driver, "unbind"] => {
                if self.driver(value).as_deref() != Some(*driver) {
                    return Err(io::Error::from_raw_os_error(libc::ENODEV));
                }
                self.unbind_link(value, driver)
            }
            [.., bdf, "driver_override"] => {
                let v = if value.is_empty() { "(null)" } else { value };
                self.set_attr(bdf, "driver_override", format!("{v}\n").as_bytes());
                Ok(())
            }
            _ => self.plain.write(rel, data),
        }
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        self.plain.read_link(rel)
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<Entry>> {
        self.plain.list(rel)
    }
}
