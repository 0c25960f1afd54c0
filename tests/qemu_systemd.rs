//! `kill -9` of intxd mid-soak of a real vfio-pci device under a real
//! systemd, in a QEMU guest.
//!
//! Boots the QEMU harness of `tests/qemu/` (q35 under TCG, an emulated Intel
//! IOMMU, QEMU's `edu` with a level INTx pin, nested KVM) with Debian's
//! systemd copied from this host into the initramfs, the shipped units of
//! `systemd/` unchanged and `tests/qemu/systemd.sh` as the guest's test:
//! systemd runs as PID 1 of a pid+mount namespace, the soak's first
//! connection activates `intxd.service`, which binds edu to vfio-pci; once
//! the soak cycles, the service's main pid gets `kill -9`, systemd restarts
//! it with its fd store and the new daemon takes the route back: a direct
//! route keeps cycling meanwhile, a relay route waits and then delivers
//! everything, each soak finishes exactly on its old connection. A clean
//! `systemctl stop` then gives edu back. The guest prints `qsysd:` lines;
//! this test asserts on them.
//!
//! Needs root (or QEMU installed), Debian's apt for `tests/qemu/prepare.sh`
//! and systemd on this host (its binaries go into the guest). With
//! `CI=true` a missing prerequisite is a failure; elsewhere the test prints
//! a `SKIPPED (NOT RUN)` line to the real stderr and returns.

#[path = "qemu/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use harness::{field, line, num, text};

const LANE: &str = "qemu_systemd";
const CYCLES: u64 = 2000;
/// What of this host's systemd goes into the guest (libraries follow).
const SYSTEMD_BINARIES: [&str; 4] = [
    "/lib/systemd/systemd",
    "/lib/systemd/systemd-journald",
    "/bin/systemctl",
    "/bin/journalctl",
];

fn missing_prerequisite() -> Option<String> {
    harness::x86_lane_missing().or_else(|| {
        SYSTEMD_BINARIES
            .iter()
            .find(|b| !Path::new(b).is_file())
            .map(|b| format!("{b} is missing: the guest's systemd is copied from this host's (Debian 12: apt-get install systemd)"))
    })
}

/// The `SRC:/DEST` extras of the initramfs: systemd, the shipped units, the
/// harness's base units, intxd where the units run it, edu's config.
fn extras(repo: &Path, intxd: &Path) -> Vec<String> {
    let mut x: Vec<String> = SYSTEMD_BINARIES
        .iter()
        .map(|b| format!("{b}:{b}"))
        .collect();
    x.push(format!("{}:/usr/local/bin/intxd", intxd.display()));
    x.push(format!(
        "{}:/edu.toml",
        repo.join("config/examples/edu.toml").display()
    ));
    for u in ["intxd.service", "intxd.socket"] {
        x.push(format!(
            "{}:/etc/systemd/system/{u}",
            repo.join("systemd").join(u).display()
        ));
    }
    let base = repo.join("tests/systemd/base-units");
    let mut units: Vec<_> = std::fs::read_dir(&base)
        .unwrap_or_else(|e| panic!("{}: {e}", base.display()))
        .map(|e| e.expect("a base unit").path())
        .collect();
    units.sort();
    for u in units {
        let name = u.file_name().expect("a unit name").to_string_lossy();
        x.push(format!("{}:/usr/lib/systemd/system/{name}", u.display()));
    }
    x
}

const TEST: &str = "kill_9_of_the_daemon_mid_soak_of_edu_under_systemd_loses_nothing";

#[test]
fn kill_9_of_the_daemon_mid_soak_of_edu_under_systemd_loses_nothing() {
    if !harness::may_run_test(LANE, TEST, missing_prerequisite()) {
        return;
    }
    let t0 = Instant::now();
    let (repo, intxd) = (
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Path::new(env!("CARGO_BIN_EXE_intxd")),
    );
    let qemu = repo.join("tests/qemu");
    let cache: PathBuf = match std::env::var_os("INTXD_QEMU_CACHE") {
        Some(c) => c.into(),
        None => repo.join("target/qemu-cache"),
    };
    let initrd = cache.join("qemu-systemd.cpio.gz");

    harness::run_ok(
        LANE,
        "prepare.sh",
        Command::new(qemu.join("prepare.sh")).arg(&cache),
    );
    harness::run_ok(
        LANE,
        "mkinitrd.sh",
        Command::new(qemu.join("mkinitrd.sh"))
            .args([
                &cache,
                &intxd.to_path_buf(),
                &qemu.join("systemd.sh"),
                &initrd,
            ])
            .args(extras(repo, intxd)),
    );
    let out = harness::run_guest(
        LANE,
        "run.sh (boot, systemd, two soaks with a kill -9 each, power-off)",
        || {
            let mut c = Command::new(qemu.join("run.sh"));
            c.arg(&cache)
                .arg(&initrd)
                .arg("480")
                // The soak's vCPU holds one guest CPU while its VM runs (a
                // direct route's guest never idles); systemd and the restarting
                // daemon get the other, as on a real host.
                .env("INTXD_QEMU_SMP", "2")
                // The guest's timers run late while the soak's vCPU runs; a
                // break every 0.2 s keeps the guest script's clock and pauses
                // near time (tests/qemu/README.md).
                .env("INTXD_QEMU_BREAK_SECS", "0.2")
                .env("INTXD_QEMU_LOG", cache.join("qemu-systemd.log"));
            c
        },
    );
    let log = text(&out);
    let figures: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains("qsysd: ") && !l.contains(" stderr: ")) || l.starts_with("run: "))
        .collect();
    eprintln!(
        "{LANE}: {}\n{LANE}: total {:.1}s",
        // (the guest's console echoes each serial break's NUL as `^@`)
        figures.join(&format!("\n{LANE}: ")).replace("^@", ""),
        t0.elapsed().as_secs_f64()
    );
    if !out.status.success() {
        panic!(
            "{}",
            harness::guest_failed(&out.status, &log.replace("^@", ""))
        );
    }

    // 1. a real systemd, and socket activation by the soak's connection.
    let sd = line(&log, "qsysd: systemd: systemd 252");
    assert!(
        matches!(field(sd, "state"), Some("running" | "degraded")),
        "{sd}"
    );
    let before = line(&log, "qsysd: before:");
    assert_eq!(field(before, "service"), Some("inactive"), "{before}");
    assert_eq!(field(before, "socket"), Some("active"), "{before}");

    // 2-4. per mode: kill -9, a restart by systemd, the route taken back,
    // every cycle delivered on the soak's old connection.
    for (mode, restarts) in [("direct", 1), ("relay", 2)] {
        let killed = line(&log, &format!("qsysd: {mode}: killed:"));
        assert!(num(killed, "fd_store") >= 4, "fds parked: {killed}");
        let back = line(&log, &format!("qsysd: {mode}: restarted:"));
        assert_ne!(field(back, "new_pid"), field(back, "old_pid"), "{back}");
        assert_eq!(num(back, "restarts"), restarts, "{back}");
        let journal = line(&log, &format!("qsysd: {mode}: journal:"));
        assert!(
            journal.contains(&format!("restart: {mode} route taken back")),
            "{journal}"
        );
        let soak = line(&log, &format!("qsysd: soak {mode}:"));
        assert_eq!(field(soak, "rc"), Some("0"), "{soak}");
        assert_eq!(field(soak, "mode"), Some(mode), "{soak}");
        for (k, want) in [
            ("cycles", CYCLES),
            ("delivered", CYCLES),
            ("lost", 0),
            ("spurious", 0),
            ("eois", CYCLES),
        ] {
            assert_eq!(num(soak, k), want, "{k}: {soak}");
        }
        let gap = line(&log, &format!("qsysd: gap {mode}:"));
        let (restart, stall) = (num(gap, "restart_cs"), num(gap, "stall_cs"));
        assert!(restart > 0 && num(gap, "changes") > 0, "{gap}");
        if mode == "direct" {
            // The kernel path needs no daemon: it cycled while none ran.
            assert!(num(gap, "during_restart") > 0, "{gap}");
            assert!(
                stall < restart / 2,
                "no stall as long as the restart: {gap}"
            );
        } else {
            // Nothing is relayed while no daemon runs: the count stood still
            // for most of the restart, and every interrupt came after.
            assert!(stall >= restart / 3, "relay interrupts waited: {gap}");
        }
    }

    // 5. a clean stop empties the fd store and gives edu back.
    let stopped = line(&log, "qsysd: stopped:");
    assert_eq!(field(stopped, "fd_store"), Some("0"), "{stopped}");
    assert_eq!(field(stopped, "result"), Some("success"), "{stopped}");
    let after = line(&log, "qsysd: sysfs after:");
    assert_eq!(field(after, "driver"), Some("none"), "{after}");
    assert_eq!(field(after, "driver_override"), Some("(null)"), "{after}");
    line(&log, "qsysd: ALL PASSED");
}
