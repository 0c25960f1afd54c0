//! The `intxd` command line, run as the real binary: bad numbers are
//! refused by the parser (exit 2) instead of panicking later, a closed
//! stdout ends a command as it ends `cat`, and errors say who and what.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{intxd_bin, require_kvm, sim_device, DaemonProc};

/// Runs `cmd` in its own process group with a 30 s bound (the whole group
/// is killed if it runs over: an old binary that starts a bench instead of
/// refusing its arguments must not linger).
fn bounded(mut cmd: Command) -> Output {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            panic!("{cmd:?} ran for 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn intxd(args: &[&str]) -> Output {
    let mut cmd = Command::new(intxd_bin());
    cmd.args(args).stdout(Stdio::piped());
    bounded(cmd)
}

#[test]
fn bad_durations_and_zero_counts_are_refused_with_exit_2() {
    let nowhere = "--socket=/nonexistent/intxd-test.sock";
    for (args, flag) in [
        (&["soak", "--duration=-1"][..], "--duration"),
        (&["soak", "--duration", "NaN"], "--duration"),
        (&["soak", "--duration", "inf"], "--duration"),
        (&["soak", "--duration", "1e300"], "--duration"),
        (&["soak", "--duration", "0"], "--duration"),
        (&["soak", "--cycles", "0"], "--cycles"),
        (&["soak", "--stall", "0"], "--stall"),
        (&["soak", "--stall", "nan"], "--stall"),
        (&["attach", "sim0", nowhere, "--hold=-1"], "--hold"),
        (&["attach", "sim0", nowhere, "--hold", "nan"], "--hold"),
        (&["attach", "sim0", nowhere, "--hold", "inf"], "--hold"),
        (&["attach", "sim0", nowhere, "--hold", "1e20"], "--hold"),
        (&["bench", "--scale-secs=-1"], "--scale-secs"),
        (&["bench", "--scale-secs", "nan"], "--scale-secs"),
        (&["bench", "--scale-secs", "inf"], "--scale-secs"),
        (&["bench", "--cycles", "0"], "--cycles"),
        (&["bench", "--rounds", "0"], "--rounds"),
    ] {
        let out = intxd(args);

        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("error: invalid value"), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?} names {flag}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} started nothing");
    }
}

#[test]
fn a_zero_hold_and_plain_numbers_are_still_accepted() {
    // The parser lets good values through to the command, which then
    // fails on the missing socket (exit 1), not on its arguments (exit 2).
    for args in [
        &[
            "attach",
            "sim0",
            "--socket=/nonexistent/x.sock",
            "--hold",
            "0",
        ][..],
        &[
            "attach",
            "sim0",
            "--socket=/nonexistent/x.sock",
            "--hold",
            "2.5",
        ],
    ] {
        let out = intxd(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot connect"), "{args:?}: {err}");
    }
}

/// Runs `cmd` with its stdout a pipe whose read end is already closed.
/// The pipe is close-on-exec: a child another test forks meanwhile must
/// not inherit the read end and keep the pipe open (cat then wrote into
/// it and exited 0 in CI).
fn with_closed_stdout(mut cmd: Command) -> Output {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    drop(r);
    cmd.stdout(Stdio::from(w));
    bounded(cmd)
}

#[test]
fn a_closed_stdout_ends_a_command_quietly_as_it_ends_cat() {
    require_kvm();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/intxd.toml");
    let mut cat = Command::new("cat");
    cat.arg(config);
    let cat = with_closed_stdout(cat);
    assert_eq!(
        cat.status.signal(),
        Some(libc::SIGPIPE),
        "cat dies of SIGPIPE"
    );

    let d = DaemonProc::start(&sim_device("sim0", 0));
    let socket = d.socket.to_str().unwrap().to_string();
    for args in [
        vec!["check-config", config],
        vec!["status", "--socket", &socket],
        vec!["status", "--json", "--socket", &socket],
    ] {
        let mut cmd = Command::new(intxd_bin());
        cmd.args(&args);

        let out = with_closed_stdout(cmd);

        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{args:?} ends quietly: {err}");
        assert_eq!(
            (out.status.code(), out.status.signal()),
            (cat.status.code(), cat.status.signal()),
            "{args:?} ends as cat does"
        );
    }
}

#[test]
fn bench_as_a_user_other_than_root_says_it_needs_root() {
    let mut cmd = Command::new(intxd_bin());
    cmd.args(["bench", "--cycles", "10", "--rounds", "1", "--scale", ""])
        .uid(65534)
        .gid(65534)
        .current_dir("/")
        .stdout(Stdio::piped());

    let out = bounded(cmd);

    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("intxd bench needs root"), "{err}");
    assert_eq!(
        err.lines().count(),
        1,
        "it stops before doing anything: {err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn sim_host_and_bench_device_errors_name_the_path_and_the_action() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir/x.sock");
    let p = missing.to_str().unwrap();
    for (args, action) in [
        (["sim-host", "--socket", p], "cannot listen at"),
        (["bench-device", p, ""], "cannot connect to"),
    ] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();

        let out = intxd(&args);

        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("{action} {p}")), "{args:?}: {err}");
        assert!(err.contains("No such file or directory"), "{args:?}: {err}");
    }
    assert!(!Path::new(p).exists());
}
