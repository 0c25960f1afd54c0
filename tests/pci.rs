//! The sysfs binder (`intxd::pci`): identification, bind, release, the
//! group and in-use checks, every failure and its rollback, on a fake tree
//! with a fake kernel (tests/pci/fake.rs); and read-only enumeration of the
//! real host's `/sys`.

#[path = "pci/fake.rs"]
mod fake;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake::{FakeKernel, FaultKind};
use intxd::config::PciAddr;
use intxd::pci::{
    self, chain, BindOptions, BindRecord, BindStep, Cause, DirIo, Entry, InUse, IntxPin, Offender,
    OriginalDriver, PciError, RealSysfs, ReleaseStep, Rollback, SysfsIo, TimedIo, WriteTimedOut,
    IOMMU_FIX,
};

const NIC: &str = "0000:03:00.0";
const NIC_FN1: &str = "0000:03:00.1";
const BRIDGE: &str = "0000:00:1c.0";
/// The write timeout of the tests that make a write hang.
const TIMEOUT: Duration = Duration::from_secs(1);
/// How long a hung write blocks: well past [`TIMEOUT`].
const HANG: Duration = Duration::from_secs(4);
/// The write timeout of every other test: long enough that a loaded
/// machine never turns a slow write into a timeout.
const RELAXED: Duration = Duration::from_secs(30);

fn addr(s: &str) -> PciAddr {
    s.parse().expect("address")
}

/// A NIC on e1000e in IOMMU group 7 with its root port (a bridge, on
/// pcieport); vfio-pci is loaded.
fn setup() -> (Arc<FakeKernel>, TimedIo<FakeKernel>, DirIo) {
    let k = FakeKernel::new();
    k.add_driver("vfio-pci");
    k.add_function(NIC, 0x020000, Some("e1000e"), Some(7));
    k.add_function(BRIDGE, 0x060400, Some("pcieport"), Some(7));
    let io = k.io(RELAXED);
    let proc = k.proc_io();
    (k, io, proc)
}

fn bind(io: &dyn SysfsIo, proc: &DirIo, opts: &BindOptions) -> Result<BindRecord, PciError> {
    pci::bind(io, proc, "nic0", addr(NIC), opts)
}

/// The function is back on `driver` with driver_override cleared.
fn assert_restored(k: &FakeKernel, bdf: &str, driver: Option<&str>) {
    assert_eq!(k.driver(bdf).as_deref(), driver, "driver of {bdf}");
    assert_eq!(k.driver_override(bdf), None, "driver_override of {bdf}");
}

/// The writes so far, as (path, data).
fn writes(k: &FakeKernel) -> Vec<(String, String)> {
    k.writes()
}

fn w(path: &str, data: &str) -> (String, String) {
    (path.to_string(), data.to_string())
}

/// The io::Error under a failed step.
fn io_cause(e: &PciError) -> &io::Error {
    match e.cause() {
        Some(Cause::Io(io)) => io,
        other => panic!("expected an io cause, got {other:?} in {e:?}"),
    }
}

fn msg(e: &PciError) -> String {
    chain(e)
}

// ---------------------------------------------------------------- identify

#[test]
fn identify_reads_every_attribute() {
    let (k, io, _) = setup();
    k.set_attr(NIC, "boot_vga", b"0\n");
    let info = pci::identify(&io, "nic0", addr(NIC)).expect("identify");
    assert_eq!(info.addr, addr(NIC));
    assert_eq!(info.vendor_id, 0x8086);
    assert_eq!(info.device_id, 0x10d3);
    assert_eq!(info.class, 0x020000);
    assert!(!info.is_bridge());
    assert_eq!(info.driver.as_deref(), Some("e1000e"));
    assert_eq!(info.driver_override, None);
    assert_eq!(info.iommu_group, Some(7));
    assert_eq!(info.intx_pin, Some(IntxPin::A));
    assert_eq!(
        info.intx_pin.map(|p| p.to_string()).as_deref(),
        Some("INTA")
    );
    assert_eq!(info.irq, Some(16));
    assert!(!info.boot_vga);
    let bridge = pci::identify(&io, "rp", addr(BRIDGE)).expect("identify bridge");
    assert!(bridge.is_bridge());
    assert!(k.writes().is_empty(), "identify wrote: {:?}", k.writes());
}

#[test]
fn identify_without_driver_group_or_pin_and_with_override() {
    let k = FakeKernel::new();
    k.add_function(NIC, 0x020000, None, None);
    k.set_attr(NIC, "driver_override", b"vfio-pci\n");
    k.set_attr(NIC, "irq", b"0\n");
    k.set_attr(NIC, "boot_vga", b"1\n");
    let mut cfg = vec![0u8; 64];
    cfg[0x3d] = 0;
    k.set_attr(NIC, "config", &cfg);
    let io = k.io(RELAXED);
    let info = pci::identify(&io, "nic0", addr(NIC)).expect("identify");
    assert_eq!(info.driver, None);
    assert_eq!(info.driver_override.as_deref(), Some("vfio-pci"));
    assert_eq!(info.iommu_group, None);
    assert_eq!(info.intx_pin, None);
    assert_eq!(info.irq, None);
    assert!(info.boot_vga);
}

#[test]
fn identify_errors_name_device_address_and_attribute() {
    let (k, io, _) = setup();
    let e = pci::identify(&io, "gpu1", addr("0000:09:00.0")).unwrap_err();
    assert!(
        matches!(&e, PciError::NoSuchFunction { device, .. } if device == "gpu1"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "gpu1 0000:09:00.0: no such PCI function (no bus/pci/devices/0000:09:00.0 in sysfs)"
    );
    assert_eq!(
        std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .map(io::Error::kind),
        Some(io::ErrorKind::NotFound)
    );

    let e = pci::identify(&io, "emu", PciAddr::Sim(0)).unwrap_err();
    assert!(matches!(e, PciError::NotPci { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "emu sim:0: an emulated function has no sysfs entry"
    );

    k.set_attr(NIC, "class", b"0xzz\n");
    let e = pci::identify(&io, "nic0", addr(NIC)).unwrap_err();
    match &e {
        PciError::Parse { what, value, .. } => {
            assert_eq!(what, "class");
            assert_eq!(value, "0xzz");
        }
        other => panic!("expected Parse, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "nic0 0000:03:00.0: `class` holds `0xzz`, which is not a hex number"
    );
}

#[test]
fn enumerate_lists_every_function_sorted() {
    let (k, io, _) = setup();
    k.add_function(NIC_FN1, 0x020000, Some("e1000e"), Some(7));
    let all = pci::enumerate(&io).expect("enumerate");
    assert_eq!(all, vec![addr(BRIDGE), addr(NIC), addr(NIC_FN1)]);

    let empty = DirIo::new("/nonexistent-intxd-sysfs");
    let e = pci::enumerate(&empty).unwrap_err();
    assert!(matches!(e, PciError::Enumerate { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "cannot list the PCI functions in `bus/pci/devices`"
    );
}

// ------------------------------------------------------------ bind/release

#[test]
fn bind_then_release_restores_the_original_driver() {
    let (k, io, proc) = setup();
    let rec = bind(&io, &proc, &BindOptions::default()).expect("bind");
    assert_eq!(
        rec,
        BindRecord {
            device: "nic0".into(),
            addr: addr(NIC),
            original_driver: OriginalDriver::Driver("e1000e".into()),
            original_override: None,
        }
    );
    assert!(rec.changed());
    assert_eq!(k.driver(NIC).as_deref(), Some("vfio-pci"));
    assert_eq!(k.driver_override(NIC).as_deref(), Some("vfio-pci"));
    assert_eq!(
        writes(&k),
        vec![
            w("bus/pci/devices/0000:03:00.0/driver_override", "vfio-pci"),
            w("bus/pci/devices/0000:03:00.0/driver/unbind", NIC),
            w("bus/pci/drivers_probe", NIC),
        ]
    );
    k.clear_writes();

    pci::release(&io, &rec).expect("release");
    assert_restored(&k, NIC, Some("e1000e"));
    assert_eq!(
        writes(&k),
        vec![
            w("bus/pci/devices/0000:03:00.0/driver_override", "\n"),
            w("bus/pci/devices/0000:03:00.0/driver/unbind", NIC),
            w("bus/pci/drivers_probe", NIC),
        ]
    );
    // The bridge was never touched.
    assert_eq!(k.driver(BRIDGE).as_deref(), Some("pcieport"));
}

#[test]
fn release_twice_is_idempotent() {
    let (k, io, proc) = setup();
    let rec = bind(&io, &proc, &BindOptions::default()).expect("bind");
    pci::release(&io, &rec).expect("release");
    k.clear_writes();
    pci::release(&io, &rec).expect("second release");
    assert_restored(&k, NIC, Some("e1000e"));
    assert_eq!(
        writes(&k),
        vec![w("bus/pci/devices/0000:03:00.0/driver_override", "\n")]
    );
}

#[test]
fn bind_of_a_function_already_on_vfio_pci_changes_nothing() {
    let (k, io, proc) = setup();
    k.add_function(NIC_FN1, 0x020000, Some("vfio-pci"), Some(8));
    let rec = pci::bind(&io, &proc, "nic1", addr(NIC_FN1), &BindOptions::default()).expect("bind");
    assert_eq!(rec.original_driver, OriginalDriver::AlreadyVfio);
    assert!(!rec.changed());
    pci::release(&io, &rec).expect("release");
    assert!(k.writes().is_empty(), "wrote: {:?}", k.writes());
    assert_eq!(k.driver(NIC_FN1).as_deref(), Some("vfio-pci"));
}

#[test]
fn bind_of_a_driverless_function_skips_the_unbind() {
    let k = FakeKernel::new();
    k.add_driver("vfio-pci");
    k.add_function(NIC, 0x020000, None, Some(3));
    let (io, proc) = (k.io(RELAXED), k.proc_io());
    let rec = bind(&io, &proc, &BindOptions::default()).expect("bind");
    assert_eq!(rec.original_driver, OriginalDriver::None);
    assert_eq!(k.driver(NIC).as_deref(), Some("vfio-pci"));
    assert_eq!(
        writes(&k),
        vec![
            w("bus/pci/devices/0000:03:00.0/driver_override", "vfio-pci"),
            w("bus/pci/drivers_probe", NIC),
        ]
    );
    k.clear_writes();
    // Release gives it back to no driver: no reprobe.
    pci::release(&io, &rec).expect("release");
    assert_restored(&k, NIC, None);
    assert_eq!(
        writes(&k),
        vec![
            w("bus/pci/devices/0000:03:00.0/driver_override", "\n"),
            w("bus/pci/devices/0000:03:00.0/driver/unbind", NIC),
        ]
    );
}

#[test]
fn bind_restores_a_driver_override_that_was_set_before() {
    let (k, io, proc) = setup();
    k.set_attr(NIC, "driver_override", b"e1000e\n");
    let rec = bind(&io, &proc, &BindOptions::default()).expect("bind");
    assert_eq!(rec.original_override.as_deref(), Some("e1000e"));
    pci::release(&io, &rec).expect("release");
    assert_eq!(k.driver(NIC).as_deref(), Some("e1000e"));
    assert_eq!(k.driver_override(NIC).as_deref(), Some("e1000e"));
}

#[test]
fn bind_fails_when_the_driver_override_write_fails() {
    let (k, io, proc) = setup();
    k.inject(
        &FakeKernel::override_path(NIC),
        FaultKind::Errno(libc::EACCES),
        Some(1),
    );
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    match &e {
        PciError::Bind {
            device,
            step,
            rollback,
            ..
        } => {
            assert_eq!(device, "nic0");
            assert_eq!(*step, BindStep::SetOverride);
            assert_eq!(
                **rollback,
                Rollback::Restored {
                    driver: Some("e1000e".into())
                }
            );
        }
        other => panic!("expected Bind, got {other:?}"),
    }
    assert_eq!(io_cause(&e).raw_os_error(), Some(libc::EACCES));
    assert_eq!(
        e.to_string(),
        "nic0 0000:03:00.0: bind failed at step `set driver_override to vfio-pci` (rolled back to e1000e)"
    );
    assert!(
        msg(&e).ends_with(": Permission denied (os error 13)"),
        "{}",
        msg(&e)
    );
    assert_restored(&k, NIC, Some("e1000e"));
}

#[test]
fn bind_fails_when_the_unbind_fails() {
    let (k, io, proc) = setup();
    k.inject(
        "bus/pci/drivers/e1000e/unbind",
        FaultKind::Errno(libc::EBUSY),
        Some(1),
    );
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    assert!(
        matches!(&e, PciError::Bind { step: BindStep::Unbind { driver }, .. } if driver == "e1000e"),
        "{e:?}"
    );
    assert_eq!(io_cause(&e).raw_os_error(), Some(libc::EBUSY));
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: bind failed at step `unbind from e1000e` (rolled back to e1000e): \
         Device or resource busy (os error 16)"
    );
    assert_restored(&k, NIC, Some("e1000e"));
}

#[test]
fn bind_fails_when_the_unbind_times_out() {
    let (k, _, proc) = setup();
    let io = k.io(TIMEOUT);
    k.inject(
        "bus/pci/drivers/e1000e/unbind",
        FaultKind::Hang(HANG),
        Some(1),
    );
    let t0 = Instant::now();
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    let took = t0.elapsed();
    assert!(took >= TIMEOUT && took < HANG, "took {took:?}");
    assert!(
        matches!(&e, PciError::Bind { step: BindStep::Unbind { driver }, .. } if driver == "e1000e"),
        "{e:?}"
    );
    let cause = io_cause(&e);
    assert_eq!(cause.kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        cause
            .get_ref()
            .and_then(|i| i.downcast_ref::<WriteTimedOut>()),
        Some(&WriteTimedOut { after: TIMEOUT })
    );
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: bind failed at step `unbind from e1000e` (rolled back to e1000e): \
         write timed out after 1 s"
    );
    assert_restored(&k, NIC, Some("e1000e"));
}

#[test]
fn bind_fails_when_the_probe_times_out() {
    let (k, _, proc) = setup();
    let io = k.io(TIMEOUT);
    k.inject("bus/pci/drivers_probe", FaultKind::Hang(HANG), Some(1));
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    assert!(
        matches!(
            &e,
            PciError::Bind {
                step: BindStep::Probe,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(io_cause(&e).kind(), io::ErrorKind::TimedOut);
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: bind failed at step `probe drivers` (rolled back to e1000e): \
         write timed out after 1 s"
    );
    assert_restored(&k, NIC, Some("e1000e"));
}

#[test]
fn bind_fails_when_the_probe_binds_nothing() {
    let (k, io, proc) = setup();
    k.inject("bus/pci/drivers_probe", FaultKind::ProbeNothing, Some(1));
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    match &e {
        PciError::Bind {
            step: BindStep::Verify,
            rollback,
            source: Cause::WrongDriver { expected, found },
            ..
        } => {
            assert_eq!(expected.as_deref(), Some("vfio-pci"));
            assert_eq!(*found, None);
            assert!(matches!(**rollback, Rollback::Restored { .. }));
        }
        other => panic!("expected Bind at Verify, got {other:?}"),
    }
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: bind failed at step `verify that vfio-pci is bound` \
         (rolled back to e1000e): no driver is bound, expected vfio-pci"
    );
    assert_restored(&k, NIC, Some("e1000e"));
}

#[test]
fn bind_fails_when_the_probe_binds_another_driver() {
    let (k, io, proc) = setup();
    k.add_driver("pci-stub");
    k.inject(
        "bus/pci/drivers_probe",
        FaultKind::ProbeBinds("pci-stub".into()),
        Some(1),
    );
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    assert!(
        matches!(&e, PciError::Bind { step: BindStep::Verify, source: Cause::WrongDriver { found: Some(f), .. }, .. } if f == "pci-stub"),
        "{e:?}"
    );
    assert!(
        msg(&e).ends_with(
            "(rolled back to e1000e): the `driver` link names pci-stub, expected vfio-pci"
        ),
        "{}",
        msg(&e)
    );
    // The rollback unbound pci-stub and reprobed.
    assert!(k
        .writes()
        .contains(&w("bus/pci/devices/0000:03:00.0/driver/unbind", NIC)));
    assert_restored(&k, NIC, Some("e1000e"));
}

#[test]
fn a_failed_rollback_is_reported_with_its_step() {
    let (k, io, proc) = setup();
    // Every probe binds nothing: the bind fails, and so does the rollback.
    k.inject("bus/pci/drivers_probe", FaultKind::ProbeNothing, None);
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    match &e {
        PciError::Bind { step, rollback, .. } => {
            assert_eq!(*step, BindStep::Verify);
            match &**rollback {
                Rollback::Failed { step, reason } => {
                    assert_eq!(
                        *step,
                        ReleaseStep::Verify {
                            expected: Some("e1000e".into())
                        }
                    );
                    assert_eq!(reason, "no driver is bound, expected e1000e");
                }
                other => panic!("expected a failed rollback, got {other:?}"),
            }
        }
        other => panic!("expected Bind, got {other:?}"),
    }
    assert!(
        e.to_string().contains(
            "(rollback failed too at step `verify that e1000e is bound again`: \
             no driver is bound, expected e1000e; check the function's driver and driver_override by hand)"
        ),
        "{e}"
    );
    // What the rollback did manage: driver_override is cleared.
    assert_eq!(k.driver_override(NIC), None);
    assert_eq!(k.driver(NIC), None);
}

#[test]
fn release_reports_the_failed_step_and_can_be_retried() {
    let (k, _, proc) = setup();
    let io = k.io(TIMEOUT);
    let rec = bind(&io, &proc, &BindOptions::default()).expect("bind");
    k.inject(
        "bus/pci/drivers/vfio-pci/unbind",
        FaultKind::Hang(HANG),
        Some(1),
    );
    let e = pci::release(&io, &rec).unwrap_err();
    match &e {
        PciError::Release { device, step, .. } => {
            assert_eq!(device, "nic0");
            assert_eq!(
                *step,
                ReleaseStep::Unbind {
                    driver: "vfio-pci".into()
                }
            );
        }
        other => panic!("expected Release, got {other:?}"),
    }
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: release failed at step `unbind from vfio-pci`: write timed out after 1 s"
    );
    assert_eq!(k.driver(NIC).as_deref(), Some("vfio-pci"));
    pci::release(&io, &rec).expect("second release");
    assert_restored(&k, NIC, Some("e1000e"));

    // A failing reprobe.
    let rec = bind(&io, &proc, &BindOptions::default()).expect("bind again");
    k.inject(
        "bus/pci/drivers_probe",
        FaultKind::Errno(libc::ENOMEM),
        Some(1),
    );
    let e = pci::release(&io, &rec).unwrap_err();
    assert!(
        matches!(
            &e,
            PciError::Release {
                step: ReleaseStep::Probe,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: release failed at step `reprobe drivers`: Cannot allocate memory (os error 12)"
    );
    assert_eq!(k.driver(NIC), None);
    pci::release(&io, &rec).expect("release after a failed reprobe");
    assert_restored(&k, NIC, Some("e1000e"));
}

// ------------------------------------------------------------------ checks

#[test]
fn a_group_that_is_not_viable_is_refused_with_its_offenders() {
    let (k, io, proc) = setup();
    k.add_function(NIC_FN1, 0x020000, Some("e1000e"), Some(7));
    k.add_function("0000:04:00.0", 0x010802, Some("nvme"), Some(7));
    k.add_function("0000:05:00.0", 0x0c0330, None, Some(7));
    k.add_driver("pci-stub");
    k.add_function("0000:06:00.0", 0x0c0330, Some("pci-stub"), Some(7));
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    match &e {
        PciError::Refused {
            step: BindStep::CheckGroup,
            source: Cause::GroupNotViable { group, offenders },
            ..
        } => {
            assert_eq!(*group, 7);
            assert_eq!(
                offenders,
                &vec![
                    Offender {
                        name: NIC_FN1.into(),
                        driver: "e1000e".into()
                    },
                    Offender {
                        name: "0000:04:00.0".into(),
                        driver: "nvme".into()
                    },
                ]
            );
        }
        other => panic!("expected a refused group, got {other:?}"),
    }
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: refused at step `check the IOMMU group`; nothing was changed: \
         IOMMU group 7 is not viable: 0000:03:00.1 is bound to e1000e, 0000:04:00.0 is bound to nvme; \
         every function of a group must be bound to vfio-pci or have no driver (bridges aside): \
         configure those too or unbind them"
    );
    assert!(k.writes().is_empty(), "wrote: {:?}", k.writes());
    assert_restored(&k, NIC, Some("e1000e"));
    // The standalone check says the same.
    let e = pci::check_group(&io, "nic0", addr(NIC), &[]).unwrap_err();
    assert!(
        matches!(e.cause(), Some(Cause::GroupNotViable { .. })),
        "{e:?}"
    );
}

#[test]
fn group_peers_the_caller_binds_too_do_not_count() {
    let (k, io, proc) = setup();
    k.add_function(NIC_FN1, 0x020000, Some("e1000e"), Some(7));
    let peers = vec![addr(NIC), addr(NIC_FN1)];
    let opts = BindOptions {
        force: false,
        group_peers: peers.clone(),
    };
    let r0 = bind(&io, &proc, &opts).expect("bind fn 0");
    let r1 = pci::bind(&io, &proc, "nic1", addr(NIC_FN1), &opts).expect("bind fn 1");
    assert_eq!(
        pci::check_group(&io, "nic0", addr(NIC), &[]).expect("viable"),
        7
    );
    pci::release(&io, &r1).expect("release 1");
    pci::release(&io, &r0).expect("release 0");
    assert_restored(&k, NIC, Some("e1000e"));
    assert_restored(&k, NIC_FN1, Some("e1000e"));
}

#[test]
fn a_function_without_iommu_group_is_refused() {
    let k = FakeKernel::new();
    k.add_driver("vfio-pci");
    k.add_function(NIC, 0x020000, Some("e1000e"), None);
    let (io, proc) = (k.io(RELAXED), k.proc_io());
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    assert!(
        matches!(
            &e,
            PciError::Refused {
                step: BindStep::CheckGroup,
                source: Cause::NoIommuGroup { probed: false },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        msg(&e),
        format!(
            "nic0 0000:03:00.0: refused at step `check the IOMMU group`; nothing was changed: \
             the function is in no IOMMU group; {IOMMU_FIX}"
        )
    );
    assert!(k.writes().is_empty());
    assert_restored(&k, NIC, Some("e1000e"));
}

#[test]
fn the_no_group_fix_names_this_architectures_iommu() {
    if cfg!(target_arch = "aarch64") {
        for word in [
            "SMMU",
            "IORT",
            "iommu-map",
            "arm-smmu-v3",
            "iommu.passthrough",
        ] {
            assert!(IOMMU_FIX.contains(word), "{word} not in: {IOMMU_FIX}");
        }
        assert!(!IOMMU_FIX.contains("intel_iommu"), "{IOMMU_FIX}");
    } else {
        assert!(IOMMU_FIX.contains("intel_iommu=on"), "{IOMMU_FIX}");
        assert!(!IOMMU_FIX.contains("SMMU"), "{IOMMU_FIX}");
    }
}

/// A driverless function in no group yet, vfio-pci loaded, with the rest of
/// group 4 (a driverless peer function, or one on `peer_driver`).
fn arm64_style(peer_driver: Option<&str>) -> (Arc<FakeKernel>, TimedIo<FakeKernel>, DirIo) {
    let k = FakeKernel::new();
    k.add_driver("vfio-pci");
    k.add_function(NIC, 0x00ff00, None, None);
    k.set_group_at_probe(NIC, 4);
    k.add_function(NIC_FN1, 0x020000, peer_driver, Some(4));
    let (io, proc) = (k.io(RELAXED), k.proc_io());
    (k, io, proc)
}

#[test]
fn a_driverless_function_gets_its_group_from_the_vfio_pci_probe() {
    let (k, io, proc) = arm64_style(None);
    // The read-only check cannot see the group yet, and lets it through.
    pci::check_bindable(&io, &proc, "nic0", addr(NIC), &BindOptions::default())
        .expect("check_bindable defers the group check");
    assert!(k.writes().is_empty(), "{:?}", k.writes());
    let rec = bind(&io, &proc, &BindOptions::default()).expect("bind");
    assert_eq!(k.driver(NIC).as_deref(), Some("vfio-pci"));
    assert_eq!(k.group(NIC), Some(4), "the probe created the group");
    assert_eq!(rec.original_driver, OriginalDriver::None);
    assert_eq!(
        writes(&k),
        vec![
            w("bus/pci/devices/0000:03:00.0/driver_override", "vfio-pci"),
            w("bus/pci/drivers_probe", NIC),
        ]
    );
    pci::release(&io, &rec).expect("release");
    assert_restored(&k, NIC, None);
    assert_eq!(k.group(NIC), Some(4), "a group stays once made");
}

#[test]
fn a_group_that_comes_with_the_probe_but_is_not_viable_is_rolled_back() {
    let (k, io, proc) = arm64_style(Some("e1000e"));
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    match &e {
        PciError::Bind {
            step: BindStep::CheckGroup,
            rollback,
            source:
                Cause::GroupNotViable {
                    group: 4,
                    offenders,
                },
            ..
        } => {
            assert_eq!(**rollback, Rollback::Restored { driver: None });
            assert_eq!(
                offenders,
                &vec![Offender {
                    name: NIC_FN1.into(),
                    driver: "e1000e".into()
                }]
            );
        }
        other => panic!("expected a rolled-back GroupNotViable, got {other:?}"),
    }
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: bind failed at step `check the IOMMU group` \
         (rolled back: no driver is bound, as before): IOMMU group 4 is not viable: \
         0000:03:00.1 is bound to e1000e; every function of a group must be bound to vfio-pci \
         or have no driver (bridges aside): configure those too or unbind them"
    );
    assert_restored(&k, NIC, None);
    assert_eq!(k.driver(NIC_FN1).as_deref(), Some("e1000e"));
    // Listed as a peer the caller binds too, the same group is fine.
    let opts = BindOptions {
        force: false,
        group_peers: vec![addr(NIC_FN1)],
    };
    let rec = bind(&io, &proc, &opts).expect("bind with the peer");
    assert_eq!(k.driver(NIC).as_deref(), Some("vfio-pci"));
    pci::release(&io, &rec).expect("release");
    assert_restored(&k, NIC, None);
}

#[test]
fn a_driverless_function_that_the_probe_leaves_groupless_is_refused_with_the_fix() {
    let k = FakeKernel::new();
    k.add_driver("vfio-pci");
    k.add_function(NIC, 0x00ff00, None, None);
    let (io, proc) = (k.io(RELAXED), k.proc_io());
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    assert!(
        matches!(
            &e,
            PciError::Bind {
                step: BindStep::CheckGroup,
                source: Cause::NoIommuGroup { probed: true },
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        msg(&e),
        format!(
            "nic0 0000:03:00.0: bind failed at step `check the IOMMU group` \
             (rolled back: no driver is bound, as before): the function is in no IOMMU group, \
             even after a vfio-pci probe; {IOMMU_FIX}"
        )
    );
    assert_restored(&k, NIC, None);
    assert_eq!(k.group(NIC), None);
}

#[test]
fn a_missing_vfio_pci_driver_is_refused() {
    let k = FakeKernel::new();
    k.add_function(NIC, 0x020000, Some("e1000e"), Some(1));
    let (io, proc) = (k.io(RELAXED), k.proc_io());
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    assert!(
        matches!(
            &e,
            PciError::Refused {
                step: BindStep::CheckVfio,
                source: Cause::VfioNotLoaded,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(msg(&e).contains("`modprobe vfio-pci`"), "{}", msg(&e));
    assert!(k.writes().is_empty());
    assert_restored(&k, NIC, Some("e1000e"));
}

/// Refused without force with exactly `uses`, nothing written; bound with
/// force, and released back.
fn refused_then_forced(
    k: &FakeKernel,
    io: &TimedIo<FakeKernel>,
    proc: &DirIo,
    uses: &[InUse],
    text: &str,
) {
    let e = bind(io, proc, &BindOptions::default()).expect_err("bind of a function in use");
    match &e {
        PciError::Refused {
            step: BindStep::CheckInUse,
            source: Cause::InUse { uses: found },
            ..
        } => assert_eq!(found, uses),
        other => panic!("expected in use, got {other:?}"),
    }
    let m = msg(&e);
    assert!(
        m.starts_with(
            "nic0 0000:03:00.0: refused at step `check that the host does not use the function`; \
             nothing was changed: the function is in use: "
        ),
        "{m}"
    );
    assert!(m.contains(text), "{m} lacks {text}");
    assert!(m.ends_with("; `force = true` takes it anyway"), "{m}");
    assert!(k.writes().is_empty(), "wrote: {:?}", k.writes());
    let original = k.driver(NIC);
    assert_restored(k, NIC, original.as_deref());

    let forced = BindOptions {
        force: true,
        ..Default::default()
    };
    let rec = bind(io, proc, &forced).expect("forced bind");
    assert_eq!(k.driver(NIC).as_deref(), Some("vfio-pci"));
    pci::release(io, &rec).expect("release");
    assert_restored(k, NIC, original.as_deref());
}

#[test]
fn a_nic_with_ipv4_routes_is_in_use() {
    let (k, io, proc) = setup();
    k.add_net(NIC, "enp3s0");
    k.add_net(BRIDGE, "other0");
    k.add_proc_line(
        "net/route",
        "enp3s0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
    );
    k.add_proc_line(
        "net/route",
        "enp3s0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
    );
    k.add_proc_line(
        "net/route",
        "other0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0",
    );
    let uses = vec![InUse::NetRoutes {
        ifname: "enp3s0".into(),
        routes: vec!["default via 192.0.2.1".into(), "192.0.2.0/24".into()],
    }];
    assert_eq!(
        pci::find_uses(&io, &proc, "nic0", addr(NIC)).expect("uses"),
        uses
    );
    refused_then_forced(
        &k,
        &io,
        &proc,
        &uses,
        "network interface enp3s0 has IPv4 routes (default via 192.0.2.1, 192.0.2.0/24)",
    );
}

#[test]
fn a_nic_with_a_global_ipv6_address_is_in_use_but_link_local_is_not() {
    let (k, io, proc) = setup();
    k.add_net(NIC, "enp3s0");
    k.add_proc_line(
        "net/if_inet6",
        "fe800000000000000000000000000001 02 40 20 80   enp3s0",
    );
    assert_eq!(
        pci::find_uses(&io, &proc, "nic0", addr(NIC)).expect("uses"),
        vec![]
    );
    k.add_proc_line(
        "net/if_inet6",
        "20010db8000000000000000000000005 02 40 00 80   enp3s0",
    );
    let uses = vec![InUse::NetAddresses {
        ifname: "enp3s0".into(),
        addrs: vec!["2001:db8::5/64".into()],
    }];
    refused_then_forced(
        &k,
        &io,
        &proc,
        &uses,
        "network interface enp3s0 has IPv6 addresses (2001:db8::5/64)",
    );
}

#[test]
fn a_nic_enslaved_to_a_bridge_is_in_use() {
    let (k, io, proc) = setup();
    k.add_net(NIC, "enp3s0");
    k.set_master(NIC, "enp3s0", "br0");
    let uses = vec![InUse::NetMember {
        ifname: "enp3s0".into(),
        master: "br0".into(),
    }];
    refused_then_forced(
        &k,
        &io,
        &proc,
        &uses,
        "network interface enp3s0 is enslaved to br0",
    );
}

#[test]
fn a_mounted_partition_is_in_use() {
    let (k, io, proc) = setup();
    k.add_block(NIC, "sdb", &["sdb1", "sdb2"]);
    k.add_proc_line("mounts", "/dev/sdb2 /srv/my\\040data ext4 rw,relatime 0 0");
    let uses = vec![InUse::Mounted {
        dev: "sdb2".into(),
        on: "/srv/my data".into(),
    }];
    refused_then_forced(
        &k,
        &io,
        &proc,
        &uses,
        "block device sdb2 is mounted on /srv/my data",
    );
}

#[test]
fn swap_and_held_block_devices_are_in_use() {
    let (k, io, proc) = setup();
    k.add_block(NIC, "sdb", &["sdb1"]);
    k.add_proc_line(
        "swaps",
        "/dev/sdb1                               partition\t8388604\t\t0\t\t-2",
    );
    k.add_holder(NIC, "sdb", "sdb", "dm-0");
    let uses = vec![
        InUse::Held {
            dev: "sdb".into(),
            by: "dm-0".into(),
        },
        InUse::Swap { dev: "sdb1".into() },
    ];
    refused_then_forced(
        &k,
        &io,
        &proc,
        &uses,
        "block device sdb is held by dm-0, block device sdb1 is used as swap",
    );
}

#[test]
fn an_unmounted_disk_is_not_in_use() {
    let (k, io, proc) = setup();
    k.add_block(NIC, "sdb", &["sdb1"]);
    k.add_proc_line("mounts", "/dev/sdc1 /mnt ext4 rw 0 0");
    let rec = bind(&io, &proc, &BindOptions::default()).expect("bind");
    pci::release(&io, &rec).expect("release");
    assert_restored(&k, NIC, Some("e1000e"));
}

#[test]
fn the_boot_display_is_in_use_even_without_a_driver() {
    let k = FakeKernel::new();
    k.add_driver("vfio-pci");
    k.add_function(NIC, 0x030000, None, Some(2));
    k.set_boot_vga(NIC);
    let (io, proc) = (k.io(RELAXED), k.proc_io());
    refused_then_forced(
        &k,
        &io,
        &proc,
        &[InUse::BootVga],
        "it is the boot display (boot_vga = 1)",
    );
}

#[test]
fn check_bindable_checks_without_writing() {
    let (k, io, proc) = setup();
    let info = pci::check_bindable(&io, &proc, "nic0", addr(NIC), &BindOptions::default())
        .expect("bindable");
    assert_eq!(info.driver.as_deref(), Some("e1000e"));
    k.set_boot_vga(NIC);
    let e =
        pci::check_bindable(&io, &proc, "nic0", addr(NIC), &BindOptions::default()).unwrap_err();
    assert!(matches!(e.cause(), Some(Cause::InUse { .. })), "{e:?}");
    assert!(k.writes().is_empty());
}

// ------------------------------------------------------------ record and io

#[test]
fn the_record_round_trips_through_json() {
    let rec = BindRecord {
        device: "nic0".into(),
        addr: addr(NIC),
        original_driver: OriginalDriver::Driver("e1000e".into()),
        original_override: None,
    };
    let json = serde_json::to_string(&rec).expect("serialize");
    assert_eq!(
        json,
        r#"{"device":"nic0","addr":"0000:03:00.0","original_driver":"e1000e","original_override":null}"#
    );
    let back: BindRecord = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, rec);
    let old: BindRecord =
        serde_json::from_str(r#"{"device":"d","addr":"03:00.1","original_driver":null}"#)
            .expect("without original_override");
    assert_eq!(old.addr, addr(NIC_FN1));
    let bad =
        serde_json::from_str::<BindRecord>(r#"{"device":"d","addr":"zz","original_driver":null}"#)
            .unwrap_err();
    assert!(bad.to_string().contains("is not a PCI address"), "{bad}");
}

#[test]
fn the_real_io_writes_files_in_time_and_stays_under_its_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("d")).expect("mkdir");
    std::fs::write(dir.path().join("d/f"), "old").expect("write");
    std::os::unix::fs::symlink("d", dir.path().join("l")).expect("symlink");
    let io = RealSysfs::real(dir.path());
    assert_eq!(io.timeout(), pci::DEFAULT_WRITE_TIMEOUT);
    io.write(Path::new("d/f"), b"new").expect("write");
    assert_eq!(io.read_string(Path::new("d/f")).expect("read"), "new");
    assert_eq!(
        io.link_name(Path::new("l")).expect("link"),
        Some("d".into())
    );
    assert_eq!(io.link_name(Path::new("nope")).expect("no link"), None);
    assert_eq!(
        io.list(Path::new(".")).expect("list"),
        vec![
            Entry {
                name: "d".into(),
                kind: pci::EntryKind::Dir
            },
            Entry {
                name: "l".into(),
                kind: pci::EntryKind::Symlink
            },
        ]
    );
    // sysfs writes never create files.
    let e = io.write(Path::new("d/new"), b"x").unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound);
    for bad in ["../x", "/etc/passwd", "d/../../x"] {
        let e = io.read(Path::new(bad)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        let e = io.write(Path::new(bad), b"x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
    }
    assert_eq!(
        WriteTimedOut {
            after: Duration::from_secs(5)
        }
        .to_string(),
        "write timed out after 5 s"
    );
}

#[test]
fn the_brief_example_message() {
    // The documented form, with the default 5 s timeout.
    let (k, _, proc) = setup();
    let io = k.io(pci::DEFAULT_WRITE_TIMEOUT);
    k.inject(
        "bus/pci/drivers/e1000e/unbind",
        FaultKind::Hang(Duration::from_secs(6)),
        Some(1),
    );
    let e = bind(&io, &proc, &BindOptions::default()).unwrap_err();
    assert_eq!(
        msg(&e),
        "nic0 0000:03:00.0: bind failed at step `unbind from e1000e` (rolled back to e1000e): \
         write timed out after 5 s"
    );
    assert_restored(&k, NIC, Some("e1000e"));
}

// ---------------------------------------------------- the real host, read-only

/// The real `/sys` behind an io that refuses and counts writes.
struct ReadOnly {
    inner: DirIo,
    writes: AtomicUsize,
}

impl ReadOnly {
    fn host() -> ReadOnly {
        ReadOnly {
            inner: DirIo::new("/sys"),
            writes: AtomicUsize::new(0),
        }
    }
}

impl SysfsIo for ReadOnly {
    fn read(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(rel)
    }
    fn write(&self, _: &Path, _: &[u8]) -> io::Result<()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        Err(io::Error::from(io::ErrorKind::PermissionDenied))
    }
    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        self.inner.read_link(rel)
    }
    fn list(&self, rel: &Path) -> io::Result<Vec<Entry>> {
        self.inner.list(rel)
    }
}

#[test]
fn host_enumerate_and_identify_every_function() {
    let sys = ReadOnly::host();
    let all = pci::enumerate(&sys).expect("enumerate /sys");
    assert!(!all.is_empty(), "no PCI function in /sys/bus/pci/devices");
    let (mut virtio, mut identified, mut drivers_checked) = (0, 0, 0);
    for a in &all {
        let info = pci::identify(&sys, &a.to_string(), *a).expect("identify");
        identified += 1;
        eprintln!("{a}: {info:?}");
        assert_eq!(info.addr, *a);
        assert_ne!(info.vendor_id, 0, "{a}");
        assert_ne!(info.vendor_id, 0xffff, "{a}");
        let dir = Path::new("/sys/bus/pci/devices").join(a.to_string());
        // The driver agrees with the link.
        let link = std::fs::read_link(dir.join("driver"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        assert_eq!(info.driver, link, "{a}");
        drivers_checked += usize::from(link.is_some());
        if info.vendor_id == 0x1af4 && info.driver.is_some() {
            assert_eq!(info.driver.as_deref(), Some("virtio-pci"), "{a}");
            virtio += 1;
        }
        // The IOMMU group, if any, lists the function.
        let groups = Path::new("/sys/kernel/iommu_groups");
        match info.iommu_group {
            None => assert!(!dir.join("iommu_group").exists(), "{a}"),
            Some(g) => assert!(
                groups
                    .join(g.to_string())
                    .join("devices")
                    .join(a.to_string())
                    .exists(),
                "{a} in group {g}"
            ),
        }
        assert_eq!(info.is_bridge(), info.class >> 16 == 6);
    }
    eprintln!("{} functions, {virtio} on virtio-pci", all.len());
    // It checked something: every function listed was identified, and a
    // host that runs this has at least one function bound to a driver (its
    // disk or network controller), whose name was compared with the link.
    assert_eq!(identified, all.len());
    assert!(
        drivers_checked > 0,
        "no function with a driver among {}: nothing compared",
        all.len()
    );
    if std::path::Path::new("/sys/kernel/iommu_groups")
        .read_dir()
        .map_or(true, |mut d| d.next().is_none())
    {
        eprintln!("no IOMMU groups on this host");
    }
    assert_eq!(sys.writes.load(Ordering::SeqCst), 0);
}

#[test]
fn host_in_use_checks_see_the_root_disk_and_the_default_route() {
    let sys = ReadOnly::host();
    let proc = DirIo::new("/proc");
    let all = pci::enumerate(&sys).expect("enumerate /sys");
    // Which function a class device sits under, from its canonical path.
    let owner = |class_dev: PathBuf| -> Option<PciAddr> {
        let real = std::fs::canonicalize(class_dev).ok()?;
        real.components()
            .filter_map(|c| c.as_os_str().to_str()?.parse::<PciAddr>().ok())
            .rfind(|a| all.contains(a))
    };
    let mut checked = 0;
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(dev) = f[0].strip_prefix("/dev/") else {
            continue;
        };
        let Some(a) = owner(Path::new("/sys/class/block").join(dev)) else {
            continue;
        };
        let uses = pci::find_uses(&sys, &proc, &a.to_string(), a).expect("find uses");
        eprintln!("{a}: {uses:?}");
        assert!(
            uses.contains(&InUse::Mounted {
                dev: dev.into(),
                on: f[1].replace("\\040", " ")
            }),
            "{a}: {dev} on {} not reported in {uses:?}",
            f[1]
        );
        checked += 1;
    }
    let routes = std::fs::read_to_string("/proc/net/route").expect("/proc/net/route");
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(a) = owner(Path::new("/sys/class/net").join(f[0])) else {
            continue;
        };
        let uses = pci::find_uses(&sys, &proc, &a.to_string(), a).expect("find uses");
        eprintln!("{a}: {uses:?}");
        assert!(
            uses.iter()
                .any(|u| matches!(u, InUse::NetRoutes { ifname, .. } if ifname == f[0])),
            "{a}: routes of {} not reported in {uses:?}",
            f[0]
        );
        checked += 1;
    }
    eprintln!("{checked} host uses checked");
    assert_eq!(sys.writes.load(Ordering::SeqCst), 0);
}

/// A fake kernel with a NIC at `bdf` on e1000e, and a config for it as
/// `nic0` with its state in `state`.
fn nic_for_binder(bdf: &str, state: &Path) -> (Arc<FakeKernel>, intxd::config::Config) {
    let kernel = FakeKernel::new();
    kernel.add_driver("vfio-pci");
    kernel.add_function(bdf, 0x020000, Some("e1000e"), Some(4));
    let text = format!(
        "[daemon]\nsocket = \"/run/x.sock\"\nproc_root = \"{}\"\nstate_dir = \"{}\"\n[[device]]\nname = \"nic0\"\npci = \"{bdf}\"\n",
        kernel.proc_root().display(),
        state.display()
    );
    let cfg = intxd::config::load_str(Path::new("intxd.toml"), &text).expect("test step");
    (kernel, cfg)
}

#[test]
fn a_bind_whose_record_cannot_be_written_is_undone() {
    let bdf = "0000:03:00.0";
    let state = tempfile::tempdir().expect("test step");
    // Where the records go is a dangling link: no record is found there,
    // and none can be written.
    std::os::unix::fs::symlink(state.path().join("gone/away"), state.path().join("bind"))
        .expect("test step");
    let (kernel, cfg) = nic_for_binder(bdf, state.path());
    let binder =
        intxd::daemon::Binder::with_sysfs(&cfg, Box::new(kernel.io(Duration::from_secs(2))));

    let err = binder.bind(&cfg.devices[0]).expect_err("the bind fails");

    assert!(
        matches!(err, intxd::daemon::BinderError::RecordUnsaved { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("nic0: could not write the bind record")
            && text.contains("so the bind was undone (given back to e1000e)"),
        "{text}"
    );
    assert_eq!(kernel.driver(bdf).as_deref(), Some("e1000e"));
    assert_eq!(kernel.driver_override(bdf), None);
}

#[test]
fn a_function_the_host_took_back_gets_its_override_back_and_its_record_forgotten() {
    let bdf = "0000:03:00.0";
    let state = tempfile::tempdir().expect("test step");
    let (kernel, cfg) = nic_for_binder(bdf, state.path());
    let io = kernel.io(Duration::from_secs(2));
    let binder =
        intxd::daemon::Binder::with_sysfs(&cfg, Box::new(kernel.io(Duration::from_secs(2))));
    let rec = binder.bind(&cfg.devices[0]).expect("test step");
    assert_eq!(kernel.driver(bdf).as_deref(), Some("vfio-pci"));
    // The host unbinds it from vfio-pci; with the override still set, its
    // own driver cannot have it.
    io.write(Path::new("bus/pci/drivers/vfio-pci/unbind"), bdf.as_bytes())
        .expect("test step");
    io.write(Path::new(pci::DRIVERS_PROBE), bdf.as_bytes())
        .expect("test step");
    assert_eq!(
        kernel.driver(bdf).as_deref(),
        Some("vfio-pci"),
        "the override wins"
    );
    io.write(Path::new("bus/pci/drivers/vfio-pci/unbind"), bdf.as_bytes())
        .expect("test step");

    binder.given_back(&rec).expect("test step");

    assert_eq!(kernel.driver_override(bdf), None);
    assert!(
        binder.record("nic0").expect("test step").is_none(),
        "record forgotten"
    );
    io.write(Path::new(pci::DRIVERS_PROBE), bdf.as_bytes())
        .expect("test step");
    assert_eq!(kernel.driver(bdf).as_deref(), Some("e1000e"));
    // A removed function has nothing to put back.
    let gone = BindRecord {
        addr: "0000:07:00.0".parse().expect("test step"),
        ..rec
    };
    binder.given_back(&gone).expect("test step");
}
