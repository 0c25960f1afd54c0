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

use harness::{field, line, num};

const CYCLES: u64 = 3000;

#[test]
fn edu_goes_through_vfio_pci_and_back_in_a_qemu_guest() {
    if !harness::may_run_test(
        "qemu_vfio",
        "edu_goes_through_vfio_pci_and_back_in_a_qemu_guest",
        harness::x86_lane_missing(),
    ) {
        return;
    }
    let log = harness::boot_x86("qemu_vfio", "vfio-e2e", &[], &[]);

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
