//! The hardware lab's scenarios on real vfio-pci, in one QEMU guest.
//!
//! Boots the harness of `tests/qemu/` (q35 under TCG, an emulated Intel
//! IOMMU, nested KVM) with QEMU's `-device edu` twice and `-device e1000`,
//! this build's `intxd` and `tests/qemu/lab.sh` as the guest's test, which
//! prints one `lab:` line per check and figure (each soak's JSON on one
//! line); this test asserts on them:
//!
//! 1. one daemon with all three functions; `intxd soak --connect --device
//!    all` with edu's and e1000's exerciser profiles, direct and relay, and
//!    a loopback soak of all three: per device and in total, every cycle
//!    delivered and EOId, loopback triggers exact, 0 lost, 0 spurious;
//! 2. the host takes edu1 back while attached: an unbind under a soak, a
//!    `remove` under `intxd attach --hold`: the holder is told the real
//!    cause with its figures, the unbind completes within 2 s,
//!    driver_override and the bind record are given up, the other devices
//!    stay served; after `rescan` the daemon offers edu1 again by itself.
//!
//! Needs root (or `qemu-system-x86_64` installed) and Debian's apt for
//! `tests/qemu/prepare.sh`; about 70-100 s with a warm cache. With
//! `CI=true` a missing prerequisite is a failure; elsewhere the test prints
//! a `SKIPPED (NOT RUN)` line to the real stderr and returns.

#[path = "qemu/harness.rs"]
mod harness;

use std::path::Path;

use harness::{line, num};
use intxd::soak::SoakReport;
use serde_json::Value;

/// Cycles per soak run (lab.sh's default).
const CYCLES: u64 = 1000;
const DEVICES: [&str; 3] = ["edu0", "edu1", "nic0"];

/// The JSON after `lab: json NAME rc=RC:`, and RC.
fn json<'a>(log: &'a str, name: &str) -> (u64, &'a str) {
    let l = line(log, &format!("lab: json {name} rc="));
    let (head, body) = l
        .split_once(": ")
        .and_then(|(_, rest)| rest.split_once(": "))
        .unwrap_or_else(|| panic!("no JSON in `{l}`"));
    (num(head, "rc"), body.trim())
}

/// A soak that must have passed, parsed.
fn clean_soak(log: &str, name: &str) -> SoakReport {
    let (rc, body) = json(log, name);
    assert_eq!(rc, 0, "soak {name} failed: {body}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("soak {name}: {e}: {body}"))
}

/// Every run exact; per device and in total the sums of `runs_each` runs
/// of `devices`.
fn assert_exact(name: &str, r: &SoakReport, devices: &[&str], runs_each: u64, loopback: bool) {
    assert_eq!(
        r.runs.len() as u64,
        devices.len() as u64 * runs_each,
        "{name}"
    );
    for run in &r.runs {
        let what = format!("{name}: {} {}/{}", run.device, run.mode, run.irqchip);
        assert_eq!(
            (run.cycles, run.delivered, run.eois, run.lost, run.spurious),
            (CYCLES, CYCLES, CYCLES, 0, 0),
            "{what}: cycles, delivered, EOIs, lost, spurious"
        );
        if loopback {
            assert_eq!(run.triggered, CYCLES, "{what}: host loopback triggers");
        } else {
            // Hard interrupts on the host line: the chain re-fires at the
            // unmask with none, so at least the first.
            assert!(
                run.triggered >= 1,
                "{what}: no hard interrupt on the host line"
            );
        }
    }
    let names: Vec<&str> = r.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(names, devices, "{name}: the devices, in order");
    let n = runs_each * CYCLES;
    for d in &r.devices {
        let what = format!("{name}: {}", d.device);
        assert_eq!(
            (
                d.runs as u64,
                d.cycles,
                d.delivered,
                d.eois,
                d.lost,
                d.spurious
            ),
            (runs_each, n, n, n, 0, 0),
            "{what}"
        );
        assert!(d.clean && d.error.is_none(), "{what}: {d:?}");
        if loopback {
            assert_eq!(d.triggered, n, "{what}: triggers");
        }
    }
    let t = r
        .total
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no total"));
    let all = devices.len() as u64 * n;
    assert_eq!(
        (t.devices, t.cycles, t.delivered, t.eois, t.lost, t.spurious),
        (devices.len(), all, all, all, 0, 0),
        "{name}: total"
    );
    assert!(t.failed.is_empty(), "{name}: {t:?}");
    if loopback {
        assert_eq!(t.triggered, all, "{name}: total triggers");
    }
}

/// Seconds after QEMU started, from run.sh's `[ 12.34]` prefix of the line
/// that holds `what`.
fn host_at(log: &str, what: &str) -> f64 {
    let l = log
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no `{what}` line"));
    l.trim_start_matches('[')
        .split(']')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no timestamp in `{l}`"))
}

/// The host taking edu1 back (`how`: unbind or remove): how long it took,
/// guest and host clocks; what the daemon says of each device after.
fn assert_taken_back(log: &str, how: &str) {
    let done = line(log, &format!("lab: {how} edu1: done"));
    let guest_ms = num(done, "took_ms");
    let host_s = host_at(log, &format!("lab: {how} edu1: done"))
        - host_at(log, &format!("lab: {how} edu1: writing"));
    eprintln!("qemu_lab: {how} of edu1 under its holder: {guest_ms} ms (guest clock), {host_s:.2} s between the host's timestamps");
    assert!(guest_ms <= 2000, "{how} took {guest_ms} ms: {done}");
    // The host's figure holds the guest's process starts too; a holder
    // that kept its fds to the soak's stall bound would take 10 s.
    assert!(
        host_s <= 5.0,
        "{how} took {host_s:.2} s by the host's clock"
    );

    let (_, body) = line(log, &format!("lab: status {how}: "))
        .split_once(&format!("status {how}: "))
        .unwrap_or_default();
    let status: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let dev = |n: &str| {
        status["devices"]
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == n))
            .unwrap_or_else(|| panic!("no {n} in {status}"))
            .clone()
    };
    let edu1 = dev("edu1");
    assert_eq!(edu1["state"], "failed", "{edu1}");
    let failure = edu1["failure"].as_str().unwrap_or_default();
    assert!(failure.contains("went away"), "{failure}");
    for n in ["edu0", "nic0"] {
        let d = dev(n);
        assert!(
            d["state"] == "detached" || d["state"] == "opened",
            "{n} after the {how}: {d}"
        );
    }
    let sysfs = line(log, &format!("lab: sysfs {how}:"));
    assert_eq!(harness::field(sysfs, "record"), Some("no"), "{sysfs}");
    if how == "unbind" {
        assert_eq!(
            harness::field(sysfs, "driver_override"),
            Some("(null)"),
            "{sysfs}"
        );
        assert_eq!(harness::field(sysfs, "driver"), Some("none"), "{sysfs}");
    } else {
        assert_eq!(harness::field(sysfs, "present"), Some("no"), "{sysfs}");
    }
    let after = format!("after-{how}");
    assert_exact(&after, &clean_soak(log, &after), &["edu0"], 1, false);
}

#[test]
fn two_edu_and_an_e1000_soak_at_once_and_the_host_takes_one_back() {
    if !harness::may_run_test(
        "qemu_lab",
        "two_edu_and_an_e1000_soak_at_once_and_the_host_takes_one_back",
        harness::x86_lane_missing(),
    ) {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // run.sh has one edu of its own.
    let log = harness::boot_x86_with(
        "qemu_lab",
        "lab",
        &[],
        &[("INTXD_QEMU_ARGS", "-device edu -device e1000")],
        &[format!(
            "{}:/lab.toml",
            repo.join("tests/qemu/lab.toml").display()
        )],
        400,
    );

    // 1. three functions at once, by their exercisers and by loopback.
    let devices = line(&log, "lab: devices:");
    for d in DEVICES {
        assert!(
            harness::field(devices, d).is_some_and(|a| a.starts_with("0000:")),
            "{devices}"
        );
    }
    let direct = clean_soak(&log, "exerciser-direct");
    assert_exact("exerciser-direct", &direct, &DEVICES, 1, false);
    assert!(direct.runs.iter().all(|r| r.mode.to_string() == "direct"));
    let relay = clean_soak(&log, "exerciser-relay");
    assert_exact("exerciser-relay", &relay, &DEVICES, 1, false);
    assert!(relay.runs.iter().all(|r| r.mode.to_string() == "relay"));
    for r in direct.runs.iter().chain(&relay.runs) {
        let profile = if r.device == "nic0" { "+0xc0" } else { "+0x64" };
        line(&log, &format!("stderr: intxd INFO  {}: BAR 0 page mapped into the guest at 0xe0000; its ISR acks at {profile}", r.device));
    }
    let loopback = clean_soak(&log, "loopback");
    assert_exact("loopback", &loopback, &DEVICES, 2, true);

    // 2a. unbind under a soak: its figures so far and the real cause.
    let (rc, body) = json(&log, "gone-unbind");
    assert_eq!(rc, 1, "{body}");
    let cut: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let cut = &cut["cut_short"];
    assert_eq!(cut["device"], "edu1", "{cut}");
    assert!(cut["delivered"].as_u64().is_some_and(|n| n > 0), "{cut}");
    assert!(
        cut["cause"]
            .as_str()
            .is_some_and(|c| c.contains("the device is going away")),
        "{cut}"
    );
    assert_taken_back(&log, "unbind");
    line(&log, "lab: PASS: a reload bound edu1 again");

    // 2b. remove under `intxd attach --hold`.
    line(&log, "lab: attach gone-remove: FAIL edu1: gone after");
    line(
        &log,
        "the 600s hold: the device is going away (surprise removal, or the host wants it back)",
    );
    assert_taken_back(&log, "remove");

    // 2c. a rescan: offered again by the daemon, and it cycles.
    let again = line(
        &log,
        "lab: PASS: rescan: the daemon offers edu1 again after",
    );
    eprintln!("qemu_lab: {again}");
    assert_exact(
        "after-rescan",
        &clean_soak(&log, "after-rescan"),
        &["edu1"],
        1,
        false,
    );
    line(&log, "lab: ALL PASSED");
}
