//! `intxd soak --device a,b` and `--device all` against a real daemon
//! process with emulated devices: several devices at once, each in KVM VMs
//! of its own, exact counts per device and in total, and one failing
//! device fails the whole soak, named.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

use common::{require_kvm, sim_device, DaemonProc};
use intxd::lab::{IntervalRecord, Summary};
use intxd::soak::SoakReport;

fn soak(d: &DaemonProc, args: &[&str]) -> Output {
    Command::new(common::intxd_bin())
        .arg("soak")
        .arg("--connect")
        .arg(&d.socket)
        .args(args)
        .output()
        .unwrap()
}

fn devices() -> String {
    format!(
        "{}{}{}[device.sim]\nafter_ack = \"ignore\"\n",
        sim_device("sim0", 0),
        sim_device("sim1", 1),
        sim_device("stuck0", 2)
    )
}

#[test]
fn two_devices_at_once_cycle_exactly_and_add_up() {
    require_kvm();
    let d = DaemonProc::start(&devices());
    let dir = tempfile::tempdir().unwrap();

    let out = soak(
        &d,
        &[
            "--device",
            "sim0,sim1",
            "--cycles",
            "4000",
            "--irqchip",
            "kernel",
            "--json",
            "--report",
            dir.path().to_str().unwrap(),
            "--interval",
            "0.1",
        ],
    );

    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: SoakReport = serde_json::from_slice(&out.stdout).unwrap();
    // Each device: direct/kernel and relay/kernel, 4000 cycles each.
    assert_eq!(r.runs.len(), 4);
    for run in &r.runs {
        let what = format!("{} {}/{}", run.device, run.mode, run.irqchip);
        assert_eq!(
            (run.cycles, run.delivered, run.lost, run.spurious),
            (4000, 4000, 0, 0),
            "{what}"
        );
    }
    let names: Vec<&str> = r.devices.iter().map(|t| t.device.as_str()).collect();
    assert_eq!(names, ["sim0", "sim1"]);
    for t in &r.devices {
        assert_eq!(
            (t.runs, t.cycles, t.delivered, t.lost, t.spurious, t.clean),
            (2, 8000, 8000, 0, 0, true),
            "{t:?}"
        );
    }
    let total = r.total.as_ref().unwrap();
    assert_eq!(
        (total.devices, total.runs, total.cycles, total.delivered),
        (2, 4, 16_000, 16_000)
    );
    assert!(total.failed.is_empty());
    let res = r.resources.as_ref().unwrap();
    assert_eq!(res.fds_after, res.fds_before, "the daemon kept no fd");

    // One report for both devices: each record's run is its device's, and
    // each run's intervals add up to it.
    let lines = std::fs::read_to_string(dir.path().join("intervals.jsonl")).unwrap();
    let records: Vec<IntervalRecord> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let numbers: Vec<usize> = records.iter().map(|x| x.interval).collect();
    assert_eq!(numbers, (1..=records.len()).collect::<Vec<_>>());
    for (i, run) in r.runs.iter().enumerate() {
        let mine: Vec<&IntervalRecord> = records.iter().filter(|x| x.run == i).collect();
        assert!(!mine.is_empty(), "run {i}");
        assert!(mine.iter().all(|x| x.device == run.device), "run {i}");
        assert_eq!(
            mine.iter().map(|x| x.delivered).sum::<u64>(),
            run.delivered,
            "run {i}"
        );
    }
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary.first_failure, None);
    assert_eq!(summary.soak.total, r.total);
}

#[test]
fn one_stuck_device_of_all_fails_the_soak_and_is_named() {
    require_kvm();
    let d = DaemonProc::start(&devices());
    let args = [
        "--device",
        "all",
        "--cycles",
        "3000",
        "--mode",
        "relay",
        "--irqchip",
        "kernel",
    ];

    let json = soak(&d, &[&args[..], &["--json"]].concat());
    let text = soak(&d, &args);

    assert_eq!(json.status.code(), Some(1));
    let r: SoakReport = serde_json::from_slice(&json.stdout).unwrap();
    let names: Vec<&str> = r.devices.iter().map(|t| t.device.as_str()).collect();
    assert_eq!(
        names,
        ["sim0", "sim1", "stuck0"],
        "all: the daemon's devices"
    );
    for t in &r.devices[..2] {
        assert_eq!(
            (t.runs, t.delivered, t.lost, t.spurious, t.clean),
            (1, 3000, 0, 0, true),
            "{t:?}"
        );
    }
    let stuck = &r.devices[2];
    assert!(!stuck.clean);
    assert_eq!(stuck.lost, 3000, "the stuck device acked none: {stuck:?}");
    let total = r.total.unwrap();
    assert_eq!(total.failed, ["stuck0"]);
    assert_eq!(total.lost, 3000);

    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("FAIL 1 of 3 devices: stuck0\n"), "{stdout}");
    assert!(stdout.contains("FAIL stuck0 relay/kernel: "), "{stdout}");
    assert!(
        stdout.contains("FAIL (1 of 3 devices: stuck0)"),
        "the total line: {stdout}"
    );
    assert!(!stdout.contains("FAIL sim0") && !stdout.contains("FAIL sim1"));
}
