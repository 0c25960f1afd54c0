//! `intxd doctor` (`intxd::doctor`): the host and device checks on a fake
//! sysfs/procfs/dev tree (tests/pci/fake.rs), above all the prediction of
//! `EBUSY` on a shared line without INTx masking; and a run against the real
//! host that must find the real facts.

#[path = "common/mod.rs"]
mod common;
#[path = "pci/fake.rs"]
mod fake;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use fake::FakeKernel;
use intxd::doctor::{
    self, shared_line_diagnosis, DeviceRef, Finding, Host, KvmFacts, Masking, Status, SystemdFacts,
};
use intxd::pci::{DirIo, SysfsIo};

const EDU: &str = "0000:00:05.0";
const VIRTIO: &str = "0000:00:06.0";

/// The fake tree as a [`Host`], with an empty `/dev` of its own.
struct Fake {
    k: Arc<FakeKernel>,
    dev: tempfile::TempDir,
}

impl Fake {
    fn host(&self) -> Host {
        Host {
            sys: self.k.clone() as Arc<dyn SysfsIo>,
            proc: Arc::new(self.k.proc_io()),
            dev: Arc::new(DirIo::new(self.dev.path())),
            arch: "x86_64",
        }
    }

    fn sys_file(&self, rel: &str, text: &str) {
        let p = self.k.sys_root().join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, text).expect("write");
    }

    fn dev_node(&self, rel: &str) {
        let p = self.dev.path().join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(p, "").expect("node");
    }
}

/// A q35-like host with VT-d and interrupt remapping, vfio-pci loaded
/// (`nointxmask` as given), QEMU's edu on vfio-pci and a virtio NIC on
/// virtio-pci, both on host IRQ 21; `interrupts` is the row of IRQ 21's
/// handlers.
fn shared_line_host(nointxmask: bool, irq21_actions: &str) -> Fake {
    let k = FakeKernel::new();
    let f = Fake {
        k,
        dev: tempfile::tempdir().expect("dev dir"),
    };
    f.k.add_driver("vfio-pci");
    f.k.add_function(EDU, 0x00ff00, Some("vfio-pci"), Some(5));
    f.k.add_function(VIRTIO, 0x020000, Some("virtio-pci"), Some(6));
    for bdf in [EDU, VIRTIO] {
        f.k.set_attr(bdf, "irq", b"21\n");
    }
    fs::create_dir_all(
        f.k.sys_root()
            .join("devices/pci0000:00")
            .join(VIRTIO)
            .join("virtio0"),
    )
    .expect("virtio0");
    f.sys_file("class/iommu/dmar0/uevent", "");
    f.sys_file("module/vfio_pci/initstate", "live\n");
    let y = if nointxmask { "Y\n" } else { "N\n" };
    f.sys_file("module/vfio_pci/parameters/nointxmask", y);
    f.sys_file("module/vfio_pci/parameters/disable_idle_d3", "N\n");
    f.dev_node("vfio/vfio");
    f.dev_node("kvm");
    f.k.set_proc("cmdline", "BOOT_IMAGE=/vmlinuz intel_iommu=on quiet\n");
    f.k.set_proc(
        "interrupts",
        &format!(
            "           CPU0       CPU1\n\
             \x20 0:         44          0  IR-IO-APIC    2-edge      timer\n\
             \x2021:       4711          0  IR-IO-APIC   21-fasteoi   {irq21_actions}\n\
             \x2024:          0          0  IR-PCI-MSI 32768-edge      virtio0-config\n\
             NMI:          0          0   Non-maskable interrupts\n"
        ),
    );
    f
}

fn edu() -> Vec<DeviceRef> {
    vec![DeviceRef {
        name: "edu0".to_string(),
        pci: EDU.parse().expect("address"),
    }]
}

fn kvm_ok() -> KvmFacts {
    KvmFacts {
        open: Ok(()),
        irqfd_resample: true,
        irqchip: true,
        arm_user_irq: false,
        vgic: Vec::new(),
    }
}

fn systemd(pid1: &str, version: u32) -> SystemdFacts {
    SystemdFacts {
        pid1: Some(pid1.to_string()),
        version: Some(version),
    }
}

fn finding<'r>(r: &'r doctor::Report, subject: &str, check: &str) -> &'r Finding {
    r.get(subject, check)
        .unwrap_or_else(|| panic!("no `{check}` finding for {subject} in\n{}", r.table()))
}

#[test]
fn a_shared_line_with_nointxmask_is_predicted_to_fail_with_ebusy() {
    let f = shared_line_host(true, "virtio0");
    let host = f.host();

    let r = doctor::run(&host, &kvm_ok(), &systemd("systemd", 252), &edu());

    // The table of docs/operations.md (`--nocapture` shows it).
    println!("{}", r.table());
    let line = finding(&r, "edu0", "shared line");
    assert_eq!(line.status, Status::Fail, "{}", r.table());
    for part in [
        "host IRQ 21 of 0000:00:05.0 is shared with 0000:00:06.0 (virtio-pci: virtio0)",
        "vfio_pci.nointxmask=1",
        "EBUSY",
        "genirq: Flags mismatch irq 21",
    ] {
        assert!(
            line.found.contains(part),
            "`{part}` missing from: {}",
            line.found
        );
    }
    assert_eq!(line.fixes.len(), 3, "{:?}", line.fixes);
    assert!(
        line.fixes[0].starts_with("move the card"),
        "{:?}",
        line.fixes
    );
    assert!(
        line.fixes[1].contains("drop `vfio_pci.nointxmask=1`"),
        "{:?}",
        line.fixes
    );
    assert!(
        line.fixes[2].contains("echo 0000:00:06.0 > /sys/bus/pci/drivers/virtio-pci/unbind"),
        "{:?}",
        line.fixes
    );
    assert_eq!(finding(&r, "edu0", "intx masking").status, Status::Warn);
    assert_eq!(
        finding(&r, "host", "vfio-pci parameters").status,
        Status::Warn
    );
    assert_eq!(r.worst(), Status::Fail);
}

#[test]
fn the_daemon_gets_the_same_diagnosis_as_doctor() {
    let f = shared_line_host(true, "virtio0");
    let host = f.host();
    let r = doctor::run(&host, &kvm_ok(), &systemd("systemd", 252), &edu());

    let d =
        shared_line_diagnosis(&host, "edu0", EDU.parse().expect("address")).expect("a diagnosis");

    assert_eq!(&d, finding(&r, "edu0", "shared line"));
    let m = d.message();
    assert!(m.starts_with("edu0: host IRQ 21 of 0000:00:05.0"), "{m}");
    assert!(m.contains("; fixes: (1) move the card"), "{m}");
    assert!(m.contains(" (3) unbind the other driver"), "{m}");
}

#[test]
fn masking_shown_by_a_shared_vfio_handler_needs_no_diagnosis() {
    let f = shared_line_host(false, "virtio0, vfio-intx(0000:00:05.0)");
    let host = f.host();

    let r = doctor::run(&host, &kvm_ok(), &systemd("systemd", 252), &edu());

    assert_eq!(
        shared_line_diagnosis(&host, "edu0", EDU.parse().expect("a")),
        None
    );
    let m = finding(&r, "edu0", "intx masking");
    assert_eq!(m.status, Status::Ok);
    assert!(
        m.found.contains("vfio-pci shares IRQ 21 with 0000:00:06.0"),
        "{}",
        m.found
    );
    let line = finding(&r, "edu0", "host line");
    assert_eq!(line.status, Status::Ok);
    assert!(
        line.found
            .contains("shared with 0000:00:06.0 (virtio-pci) (vfio-pci's handler is on it now)"),
        "{}",
        line.found
    );
}

#[test]
fn masking_not_yet_shown_is_unknown_until_bound_and_the_shared_line_a_warning() {
    let f = shared_line_host(false, "virtio0");
    let host = f.host();

    let r = doctor::run(&host, &kvm_ok(), &systemd("systemd", 252), &edu());

    assert!(finding(&r, "edu0", "intx masking")
        .found
        .starts_with("unknown until bound"));
    let line = finding(&r, "edu0", "shared line");
    assert_eq!(line.status, Status::Warn);
    assert!(
        line.found.contains("if its PCI 2.3 INTx masking is broken"),
        "{}",
        line.found
    );
    assert!(
        !line.fixes.iter().any(|x| x.contains("drop `vfio_pci")),
        "{:?}",
        line.fixes
    );
}

#[test]
fn a_driver_without_a_handler_on_the_line_makes_nointxmask_a_warning() {
    // virtio-pci on MSI-X: bound, but no handler on IRQ 21.
    let f = shared_line_host(true, "");
    let host = f.host();

    let d = shared_line_diagnosis(&host, "edu0", EDU.parse().expect("a")).expect("diagnosis");

    assert_eq!(d.status, Status::Warn);
    assert!(d.found.contains("0000:00:06.0 (virtio-pci)"), "{}", d.found);
}

#[test]
fn a_line_of_its_own_needs_no_diagnosis() {
    let f = shared_line_host(true, "");
    f.k.set_attr(VIRTIO, "irq", b"22\n");
    let host = f.host();

    let r = doctor::run(&host, &kvm_ok(), &systemd("systemd", 252), &edu());

    assert_eq!(
        shared_line_diagnosis(&host, "edu0", EDU.parse().expect("a")),
        None
    );
    assert_eq!(finding(&r, "edu0", "host line").found, "IRQ 21, not shared");
}

#[test]
fn the_host_checks_read_iommu_remapping_vfio_and_dev_nodes() {
    let f = shared_line_host(false, "virtio0");
    let host = f.host();

    let r = doctor::run(&host, &kvm_ok(), &systemd("systemd", 255), &[]);

    let iommu = finding(&r, "host", "iommu");
    assert_eq!(iommu.status, Status::Ok);
    assert!(
        iommu
            .found
            .contains("Intel VT-d (DMAR) on: 1 unit(s) (dmar0), 2 IOMMU groups"),
        "{}",
        iommu.found
    );
    assert!(iommu.found.contains("intel_iommu=on"), "{}", iommu.found);
    let ir = finding(&r, "host", "interrupt remapping");
    assert_eq!(ir.found, "on (IR-IO-APIC, IR-PCI-MSI in /proc/interrupts)");
    assert_eq!(finding(&r, "host", "vfio-pci").found, "vfio-pci is loaded");
    let params = finding(&r, "host", "vfio-pci parameters");
    assert_eq!(params.status, Status::Ok);
    assert!(
        params.found.starts_with("disable_idle_d3=N nointxmask=N ("),
        "{}",
        params.found
    );
    assert!(params
        .found
        .contains("a change takes effect only when vfio-pci is loaded again"));
    assert_eq!(finding(&r, "host", "vfio container").status, Status::Ok);
    assert!(finding(&r, "host", "vfio cdev")
        .found
        .starts_with("/dev/vfio/devices is missing"));
    assert!(finding(&r, "host", "systemd")
        .found
        .contains("FileDescriptorStorePreserve= (254+)"));
    assert!(r.worst() <= Status::Info, "{}", r.table());
}

#[test]
fn no_iommu_and_no_vfio_pci_fail_with_their_fixes() {
    let k = FakeKernel::new();
    let f = Fake {
        k,
        dev: tempfile::tempdir().expect("dev"),
    };
    f.k.set_proc(
        "interrupts",
        "           CPU0\n  0:         44   IO-APIC    2-edge      timer\n",
    );
    let host = f.host();

    let r = doctor::run(&host, &kvm_ok(), &systemd("bash", 252), &[]);

    for check in ["iommu", "interrupt remapping", "vfio-pci", "vfio container"] {
        let x = finding(&r, "host", check);
        assert_eq!(x.status, Status::Fail, "{check}: {}", x.found);
        assert!(!x.fixes.is_empty(), "{check} has no fix");
    }
    let s = finding(&r, "host", "systemd");
    assert!(
        s.found
            .starts_with("PID 1 is `bash` (systemd 252 installed): no fd store"),
        "{}",
        s.found
    );
}

#[test]
fn a_group_member_on_a_host_driver_and_an_i40e_are_named() {
    let f = shared_line_host(false, "virtio0");
    f.k.add_function("0000:00:05.1", 0x020000, Some("e1000e"), Some(5));
    f.k.add_function("0000:00:07.0", 0x020000, None, Some(7));
    f.k.set_attr("0000:00:07.0", "vendor", b"0x8086\n");
    f.k.set_attr("0000:00:07.0", "device", b"0x1572\n");
    let host = f.host();
    let mut devs = edu();
    devs.push(DeviceRef {
        name: "xl710".to_string(),
        pci: "0000:00:07.0".parse().expect("a"),
    });

    let r = doctor::run(&host, &kvm_ok(), &systemd("systemd", 252), &devs);

    let g = finding(&r, "edu0", "iommu group");
    assert_eq!(g.status, Status::Warn);
    assert_eq!(g.found, "group 5: 0000:00:05.0 (vfio-pci), 0000:00:05.1 (e1000e); VFIO opens the group only when no member is on a host driver");
    assert!(
        g.fixes[0].starts_with("0000:00:05.1 is bound to e1000e"),
        "{:?}",
        g.fixes
    );
    let x = finding(&r, "xl710", "function");
    assert_eq!(x.status, Status::Fail);
    assert!(
        x.found.contains("vfio-pci hides its INTx entirely"),
        "{}",
        x.found
    );
    // Configured for intxd too, the member no longer spoils the group.
    devs.push(DeviceRef {
        name: "edu0fn1".to_string(),
        pci: "0000:00:05.1".parse().expect("a"),
    });
    let r2 = doctor::run(&host, &kvm_ok(), &systemd("systemd", 252), &devs);
    assert_eq!(finding(&r2, "edu0", "iommu group").status, Status::Ok);
    let m = doctor::masking(
        &host,
        &intxd::pci::identify(&*host.sys, "xl710", "0000:00:07.0".parse().expect("a")).expect("id"),
        None,
    );
    assert!(matches!(m, Masking::Broken { param: false, .. }), "{m:?}");
}

/// The real host, read through the real roots: the CI host has KVM with
/// resampling irqfds and an in-kernel irqchip, and no VFIO.
#[test]
fn doctor_on_the_real_host_finds_the_real_facts() {
    common::require_kvm();
    let host = Host::real();
    let kvm = KvmFacts::probe();
    let sd = SystemdFacts::probe(&*host.proc);

    let r = doctor::run(&host, &kvm, &sd, &[]);

    assert_eq!(kvm.open, Ok(()));
    assert!(kvm.irqfd_resample && kvm.irqchip, "{kvm:?}");
    assert_eq!(finding(&r, "host", "kvm irqfd resample").status, Status::Ok);
    assert_eq!(finding(&r, "host", "kvm irqchip").status, Status::Ok);
    let groups = fs::read_dir("/sys/kernel/iommu_groups")
        .map(|d| d.count())
        .unwrap_or(0);
    let iommu = finding(&r, "host", "iommu");
    assert_eq!(iommu.status == Status::Ok, groups > 0, "{}", iommu.found);
    let vfio = Path::new("/dev/vfio/vfio").exists();
    assert_eq!(
        finding(&r, "host", "vfio container").status == Status::Ok,
        vfio
    );
    let iommufd = finding(&r, "host", "iommufd");
    assert_eq!(
        iommufd.found.starts_with("/dev/iommu is there"),
        Path::new("/dev/iommu").exists()
    );
    let pid1 = fs::read_to_string("/proc/1/comm")
        .expect("pid 1")
        .trim()
        .to_string();
    assert_eq!(sd.pid1.as_deref(), Some(pid1.as_str()));
    let out = Command::new("systemctl").arg("--version").output();
    if let Ok(o) = out {
        let v = doctor::parse_systemd_version(&String::from_utf8_lossy(&o.stdout));
        assert_eq!(sd.version, v);
        let s = finding(&r, "host", "systemd");
        assert!(
            s.found
                .contains(&format!("systemd {}", v.expect("version"))),
            "{}",
            s.found
        );
    }

    // The binary prints the same findings as JSON.
    let o = Command::new(common::intxd_bin())
        .args(["doctor", "--json", "--config"])
        .arg(write_config().path())
        .output()
        .expect("intxd doctor");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let found = j["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["check"] == "kvm irqfd resample")
        .expect("resample finding");
    assert_eq!(found["status"], "ok");
    let sim = j["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["subject"] == "sim0")
        .expect("the configured device");
    assert_eq!(sim["status"], "info");
}

fn write_config() -> tempfile::NamedTempFile {
    let f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("config");
    fs::write(
        f.path(),
        "[daemon]\nsocket = \"/tmp/intxd-doctor-test.sock\"\n\n[[device]]\nname = \"sim0\"\npci = \"sim:0\"\n",
    )
    .expect("write config");
    f
}

#[test]
fn an_ebusy_at_the_intx_enable_is_a_failure_naming_the_other_device_and_driver() {
    // Masking not known from the reads: the EBUSY settles it.
    let f = shared_line_host(false, "virtio0");
    let host = f.host();
    let addr = EDU.parse().expect("address");
    assert_eq!(
        shared_line_diagnosis(&host, "edu0", addr).map(|d| d.status),
        Some(Status::Warn)
    );

    let d = doctor::ebusy_diagnosis(&host, "edu0", addr).expect("a diagnosis");

    assert_eq!(d.status, Status::Fail);
    for part in [
        "host IRQ 21 of 0000:00:05.0 is shared with 0000:00:06.0 (virtio-pci: virtio0)",
        "the enable's EBUSY shows vfio-pci does not mask it",
        "genirq: Flags mismatch irq 21",
    ] {
        assert!(d.found.contains(part), "`{part}` missing from: {}", d.found);
    }
    assert_eq!(d.fixes.len(), 2, "{:?}", d.fixes);
    assert!(d.fixes[0].starts_with("move the card"), "{:?}", d.fixes);
    assert!(
        d.fixes[1].contains("echo 0000:00:06.0 > /sys/bus/pci/drivers/virtio-pci/unbind"),
        "{:?}",
        d.fixes
    );

    // With nointxmask, what doctor predicted is what the attach says.
    let f = shared_line_host(true, "virtio0");
    let host = f.host();
    assert_eq!(
        doctor::ebusy_diagnosis(&host, "edu0", addr),
        shared_line_diagnosis(&host, "edu0", addr)
    );
}

#[test]
fn an_ebusy_on_a_line_that_shows_no_other_user_still_names_the_line_and_a_fix() {
    let f = shared_line_host(false, "");
    f.k.set_attr(VIRTIO, "irq", b"22\n");
    let host = f.host();

    let d = doctor::ebusy_diagnosis(&host, "edu0", EDU.parse().expect("a")).expect("a diagnosis");

    assert_eq!(d.status, Status::Fail);
    let (head, _) = d.found.split_once(" (EBUSY)").expect("EBUSY named");
    assert_eq!(
        head,
        "vfio-pci could not request host IRQ 21 of 0000:00:05.0"
    );
    assert_eq!(d.fixes.len(), 1, "{:?}", d.fixes);
}

/// A daemon on the fake tree (its sysfs and procfs roots) with edu0
/// configured, and its state directory.
fn daemon_on(f: &Fake) -> (common::DaemonProc, tempfile::TempDir) {
    let state = tempfile::tempdir().expect("state dir");
    let extra = format!(
        "sysfs_root = \"{}\"\nproc_root = \"{}\"\nstate_dir = \"{}\"",
        f.k.sys_root().display(),
        f.k.proc_root().display(),
        state.path().display()
    );
    let devices = format!("[[device]]\nname = \"edu0\"\npci = \"{EDU}\"\n");
    (common::DaemonProc::start_with(&devices, &extra, &[]), state)
}

/// The daemon, on the fake tree (edu already on vfio-pci, which VFIO cannot
/// open here, so it stays `bound`): the open's warning names the other
/// device and driver and the fixes, in the log and in `status`, and is
/// doctor's finding word for word.
#[test]
fn the_daemon_warns_at_open_of_a_function_whose_intx_set_up_will_fail() {
    let f = shared_line_host(true, "virtio0");
    let (d, _state) = daemon_on(&f);
    let want = shared_line_diagnosis(&f.host(), "edu0", EDU.parse().expect("a"))
        .expect("a diagnosis")
        .message();

    let s = d.device("edu0");

    assert_eq!(s.state.to_string(), "bound", "{s:?}");
    assert_eq!(s.warning.as_deref(), Some(want.as_str()), "{s:?}");
    // `intxd status` shows the warning and the failure under the device's row.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_intxd"))
        .args(["status", "--socket"])
        .arg(&d.socket)
        .output()
        .expect("intxd status");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let row = table
        .lines()
        .position(|l| l.starts_with("edu0 "))
        .expect("edu0's row");
    let under: Vec<&str> = table.lines().skip(row + 1).take(2).collect();
    assert!(
        under.iter().any(|l| *l == format!("  warning: {want}")),
        "{table}"
    );
    assert!(
        under.iter().any(|l| l.starts_with("  failure: ")),
        "{table}"
    );
    let log = d.stop();
    let line = log
        .lines()
        .find(|l| l.contains("its INTx set-up at attach will fail"))
        .unwrap_or_else(|| panic!("no open warning in the log:\n{log}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.ends_with(&format!(
            "edu0 0000:00:05.0: its INTx set-up at attach will fail: {want}"
        )),
        "{line}"
    );
}

#[test]
fn the_daemon_says_nothing_at_open_of_a_function_on_a_line_of_its_own() {
    let f = shared_line_host(true, "");
    f.k.set_attr(VIRTIO, "irq", b"22\n");
    let (d, _state) = daemon_on(&f);

    let s = d.device("edu0");

    assert_eq!(s.warning, None, "{s:?}");
    let log = d.stop();
    assert!(!log.contains("its INTx set-up at attach"), "{log}");
}
