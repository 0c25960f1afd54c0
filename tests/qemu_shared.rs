//! A shared host INTx line with real vfio-pci, in a QEMU guest.
//!
//! Boots the QEMU harness of `tests/qemu/` (q35 under TCG, an emulated
//! Intel IOMMU with interrupt remapping, QEMU's `edu` at slot 1, nested KVM)
//! with a `virtio-rng-pci` at slot 5 with MSI-X off (`vectors=0`): both pin
//! A, both on GSI 21, virtio_rng holding the line. `tests/qemu/shared.sh`
//! runs in the guest: (a) with PCI 2.3 masking an exerciser soak through
//! the daemon passes with exact counts while the RNG is read beside it;
//! (b) with `vfio-pci nointxmask=1` the daemon warns at open, `intxd doctor`
//! predicts the failure, the attach is refused with the same diagnosis
//! (the virtio function, virtio-pci, the fixes) and the daemon serves on;
//! once the other driver lets go, the attach works. The guest prints one
//! `shared:` line per check and figure; this test asserts on them and
//! prints doctor's table.
//!
//! Needs root (or `qemu-system-x86_64` installed) and Debian's apt for
//! `tests/qemu/prepare.sh`. With `CI=true` a missing prerequisite is a
//! failure; elsewhere the test prints a `SKIPPED (NOT RUN)` line to the
//! real stderr and returns.

#[path = "qemu/harness.rs"]
mod harness;

use harness::{field, line, num};

/// The soak's cycles in (a): `CYCLES` of tests/qemu/shared.sh.
const CYCLES: u64 = 1000;

/// Asserts the guest printed `PASS: <what>`.
fn passed(log: &str, what: &str) {
    line(log, &format!("shared: PASS: {what}"));
}

#[test]
fn a_shared_line_works_with_masking_and_is_refused_as_doctor_predicts_without() {
    if !harness::may_run_test(
        "qemu_shared",
        "a_shared_line_works_with_masking_and_is_refused_as_doctor_predicts_without",
        harness::x86_lane_missing(),
    ) {
        return;
    }
    let log = harness::boot_x86(
        "qemu_shared",
        "shared",
        &[("INTXD_QEMU_MODULES_EXTRA", "virtio_pci,virtio_rng")],
        &[(
            "INTXD_QEMU_ARGS",
            "-device virtio-rng-pci,addr=05.0,vectors=0",
        )],
    );

    // 0. one line, held by the guest's virtio driver.
    let l = line(&log, "shared: line:");
    let irq = field(l, "edu_irq").expect("edu_irq");
    assert_eq!(field(l, "virtio_irq"), Some(irq), "{l}");
    assert_eq!(field(l, "virtio_driver"), Some("virtio-pci"), "{l}");
    passed(&log, &format!("virtio0 holds IRQ {irq}"));

    // a. with masking: exact counts beside the other driver's interrupts.
    let soak = line(&log, "shared: soak masking:");
    assert_eq!(field(soak, "rc"), Some("0"), "{soak}");
    for (k, want) in [
        ("delivered", CYCLES),
        ("eois", CYCLES),
        ("lost", 0),
        ("spurious", 0),
    ] {
        assert_eq!(num(soak, k), want, "{k}: {soak}");
    }
    let alone = line(&log, "shared: a rng alone:");
    assert!(num(alone, "irq_delta") > 0, "{alone}");
    let a = line(&log, "shared: a figures:");
    assert!(num(a, "rng_bytes") > 0, "{a}");
    let st = line(&log, "shared: a status:");
    assert!(
        st.contains("if its PCI 2.3 INTx masking is broken"),
        "the open warns while masking is unknown: {st}"
    );
    passed(&log, "the warning is cleared once INTx shared the line");

    // b. nointxmask: doctor predicts it, the attach says the same, the
    // daemon serves on, and the fix works.
    let doctor: Vec<&str> = log
        .lines()
        .filter_map(|l| l.find("shared: doctor: ").map(|i| &l[i + 16..]))
        .collect();
    eprintln!("qemu_shared: the doctor output:\n{}", doctor.join("\n"));
    for what in [
        "doctor predicts the failure",
        "doctor names 0000:00:05.0 and virtio-pci",
        "the attach is refused",
        "the refusal names 0000:00:05.0 and virtio-pci",
        "the refusal names the step and EBUSY",
        "the refusal is the open's warning, word for word",
        &format!("the kernel logged the flags mismatch on IRQ {irq}"),
        "the daemon serves on; edu is opened",
    ] {
        passed(&log, what);
    }
    let warn = line(&log, "shared: b status:");
    assert!(warn.contains("vfio_pci.nointxmask=1"), "{warn}");
    let fixed = line(&log, "shared: soak fixed:");
    assert_eq!(field(fixed, "rc"), Some("0"), "{fixed}");
    assert_eq!(num(fixed, "delivered"), 300, "{fixed}");
    assert_eq!(num(fixed, "lost"), 0, "{fixed}");
    line(&log, "shared: ALL PASSED");
}
