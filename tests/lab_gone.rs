//! The soak and `intxd attach --hold` when the device or the daemon goes
//! away under them: the figures so far, the real cause, a failing exit.
//! Real daemon processes, real KVM, the emulated device.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/simhost.rs"]
mod simhost;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{intxd_bin, require_kvm, sim_device, wait_until, DaemonProc};
use simhost::SimHostProc;

/// Starts a long relay/user soak of `sim0` through the daemon at `d`.
fn start_soak(d: &DaemonProc) -> Child {
    Command::new(intxd_bin())
        .args(["soak", "--device", "sim0", "--mode", "relay", "--irqchip"])
        .args(["user", "--duration", "600", "--connect"])
        .arg(&d.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the soak's VM has cycled some interrupts through `sim0`.
fn wait_cycling(d: &DaemonProc) {
    assert!(
        wait_until(Duration::from_secs(30), || {
            let s = d.device("sim0");
            s.owner.is_some() && s.counters.sim.is_some_and(|c| c.acked > 100)
        }),
        "the soak never got going: {:?}",
        d.device("sim0")
    );
}

/// SIGKILLs the daemon and waits until it is gone.
fn kill_daemon(d: &mut DaemonProc) {
    let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    assert!(wait_until(Duration::from_secs(5), || d
        .child_exit()
        .is_some()));
}

/// The interrupts the soak's FAIL line says were delivered before the end.
fn cut_short(out: &Output, cause: &str) -> u64 {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("FAIL sim0 relay/user: cut short after "))
        .unwrap_or_else(|| panic!("no FAIL line: {stdout}\n{stderr}"));
    println!("{line}");
    assert!(line.contains(cause), "{line}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert!(!stderr.contains("NotAttached"), "{stderr}");
    line["FAIL sim0 relay/user: cut short after ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_soak_whose_device_is_removed_reports_its_figures_and_the_reason() {
    require_kvm();
    let host = SimHostProc::start();
    let d = DaemonProc::start_with(
        &sim_device("sim0", 0),
        &format!("sim_host = \"{}\"", host.socket.display()),
        &[],
    );
    let soak = start_soak(&d);
    wait_cycling(&d);

    host.surprise_remove(0);

    let out = soak.wait_with_output().unwrap();
    let delivered = cut_short(&out, "the device is going away");
    assert!(delivered > 100, "{delivered}");
}

#[test]
fn a_soak_whose_daemon_is_killed_reports_its_figures_and_the_cause() {
    require_kvm();
    let mut d = DaemonProc::start(&sim_device("sim0", 0));
    let soak = start_soak(&d);
    wait_cycling(&d);

    kill_daemon(&mut d);

    let out = soak.wait_with_output().unwrap();
    let delivered = cut_short(&out, "the daemon went away (connection closed)");
    assert!(delivered > 100, "{delivered}");
}

#[test]
fn attach_hold_tells_the_removal_and_the_daemon_going_away() {
    let host = SimHostProc::start();
    let extra = format!("sim_host = \"{}\"", host.socket.display());
    let devices = format!("{}{}", sim_device("sim0", 0), sim_device("sim1", 1));
    let mut d = DaemonProc::start_with(&devices, &extra, &[]);
    let hold = |dev: &str| {
        Command::new(intxd_bin())
            .args([
                "attach", dev, "--mode", "relay", "--hold", "600", "--socket",
            ])
            .arg(&d.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (hold("sim0"), hold("sim1"));
    assert!(wait_until(Duration::from_secs(10), || {
        d.device("sim0").owner.is_some() && d.device("sim1").owner.is_some()
    }));

    host.surprise_remove(0);
    let out = first.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL sim0: gone after "), "{stdout}");
    assert!(stdout.contains("the device is going away"), "{stdout}");

    kill_daemon(&mut d);
    let out = second.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("the daemon went away (connection closed)"),
        "{stdout}"
    );
}
