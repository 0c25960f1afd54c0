//! The real vfio-pci path, end to end, in a QEMU guest.
//!
//! The host kernel has no VFIO, so this boots the QEMU harness of
//! `tests/qemu/` (q35 under TCG, an emulated Intel IOMMU with interrupt
//! remapping, QEMU's `edu` PCI device with a level INTx pin, nested KVM from
//! TCG's SVM) with this build's `intxd` and `tests/qemu/vfio-e2e.sh` as the
//! guest's test: the daemon binds edu to vfio-pci through the real sysfs, the
//! soak attaches it over the control socket and drives it from a nested KVM
//! guest whose ISR acks and re-raises edu through its BAR (direct, then
//! relay mode), and SIGTERM must give the device back. The guest prints one
//! `vfio-e2e:` line per check and figure; this test asserts on them.
//!
//! Needs root (or `qemu-system-x86_64` installed) and Debian's apt for
//! `tests/qemu/prepare.sh`; about 15 s with a warm cache. With `CI=true` a
//! missing prerequisite is a failure; elsewhere the test prints a
//! `SKIPPED (NOT RUN)` line to the real stderr (past the harness's capture,
//! so it shows in a passing run) and returns.

#[path = "qemu/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use harness::{field, line, num, text};

const CYCLES: u64 = 3000;

fn run(step: &str, cmd: &mut Command) -> std::process::Output {
    harness::run("qemu_vfio", step, cmd)
}

#[test]
fn edu_goes_through_vfio_pci_and_back_in_a_qemu_guest() {
    let missing = harness::x86_missing_prerequisite();
    if !harness::may_run("qemu_vfio", missing.clone()) {
        // Past the harness's output capture (which hides a passing test's
        // eprintln!), so the run's own log says this test did not run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "test edu_goes_through_vfio_pci_and_back_in_a_qemu_guest: SKIPPED (NOT RUN): {}; with CI=true this is a failure",
            missing.unwrap_or_default()
        );
        return;
    }
    let t0 = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let intxd = Path::new(env!("CARGO_BIN_EXE_intxd"));
    let harness = repo.join("tests/qemu");
    let cache = std::env::var_os("INTXD_QEMU_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/qemu-cache"));
    let initrd = cache.join("vfio-e2e.cpio.gz");

    let out = run(
        "prepare.sh",
        Command::new(harness.join("prepare.sh")).arg(&cache),
    );
    assert!(
        out.status.success(),
        "tests/qemu/prepare.sh failed:\n{}",
        text(&out)
    );

    let out = run(
        "mkinitrd.sh",
        Command::new(harness.join("mkinitrd.sh"))
            .arg(&cache)
            .arg(intxd)
            .arg(harness.join("vfio-e2e.sh"))
            .arg(&initrd)
            .arg(format!(
                "{}:/edu.toml",
                repo.join("config/examples/edu.toml").display()
            )),
    );
    assert!(
        out.status.success(),
        "tests/qemu/mkinitrd.sh failed:\n{}",
        text(&out)
    );

    let out = run(
        "run.sh (boot, test, power-off)",
        Command::new(harness.join("run.sh"))
            .arg(&cache)
            .arg(&initrd)
            .arg("150")
            .env("INTXD_QEMU_LOG", cache.join("vfio-e2e.log")),
    );
    let log = text(&out);
    for l in log
        .lines()
        .filter(|l| l.contains("vfio-e2e: ") || l.starts_with("run: guest"))
    {
        eprintln!("qemu_vfio: {l}");
    }
    eprintln!("qemu_vfio: total {:.1}s", t0.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "the guest test failed ({}); its output:\n{log}",
        out.status
    );

    // 1. bound through the real sysfs, from no driver.
    let before = line(&log, "vfio-e2e: sysfs before:");
    assert_eq!(field(before, "driver"), Some("none"), "{before}");
    assert_eq!(field(before, "driver_override"), Some("(null)"), "{before}");
    let bound = line(&log, "vfio-e2e: sysfs bound:");
    assert_eq!(field(bound, "driver"), Some("vfio-pci"), "{bound}");
    let status = line(&log, "vfio-e2e: status:");
    assert_eq!(field(status, "state"), Some("opened"), "{status}");
    assert_eq!(
        field(status, "vendor"),
        Some("4660"),
        "edu is 1234:11e8: {status}"
    );
    assert_eq!(
        field(status, "device"),
        Some("4584"),
        "edu is 1234:11e8: {status}"
    );
    assert_eq!(field(status, "pin"), Some("1"), "edu has INTA#: {status}");

    // 2-4. attached over the socket, BAR0 in the nested guest, acked by its
    // ISR: every cycle, in both modes.
    for mode in ["direct", "relay", "directloopback", "relayloopback"] {
        let soak = line(&log, &format!("vfio-e2e: soak {mode}:"));
        assert_eq!(field(soak, "rc"), Some("0"), "{soak}");
        assert_eq!(field(soak, "mode"), Some(mode), "{soak}");
        let num = |k: &str| num(soak, k);
        assert_eq!(num("cycles"), CYCLES, "{soak}");
        assert_eq!(num("delivered"), CYCLES, "{soak}");
        assert_eq!(num("lost"), 0, "{soak}");
        assert_eq!(num("spurious"), 0, "{soak}");
        assert_eq!(
            num("eois"),
            CYCLES,
            "KVM's EOIs, counted by the host: {soak}"
        );
        if mode.ends_with("loopback") {
            assert_eq!(num("triggered"), CYCLES, "host triggers: {soak}");
            line(&log, &format!("vfio-e2e: soak {mode} stderr: intxd INFO  edu0: {CYCLES} interrupts delivered by vfio-pci's loopback and EOId by the guest; host: {CYCLES} loopback triggers, {CYCLES} EOIs seen by KVM"));
            continue;
        }
        line(
            &log,
            &format!(
                "vfio-e2e: soak {mode} stderr: intxd INFO  edu0: BAR 0 page mapped into the guest"
            ),
        );
        line(&log, &format!("vfio-e2e: soak {mode} stderr: intxd INFO  edu0: {CYCLES} interrupts acked and re-raised by the guest's ISR through the BAR; host: 0 loopback triggers, {CYCLES} EOIs seen by KVM"));
    }

    // 5. given back at SIGTERM: the driver link as before, no override.
    let after = line(&log, "vfio-e2e: sysfs after:");
    assert_eq!(field(after, "driver"), field(before, "driver"), "{after}");
    assert_eq!(field(after, "driver_override"), Some("(null)"), "{after}");
    line(&log, "vfio-e2e: ALL PASSED");
}
