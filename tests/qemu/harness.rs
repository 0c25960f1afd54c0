//! Helpers shared by the QEMU lanes (`tests/qemu_vfio.rs`, `tests/arm64_lane.rs`): the CI
//! switch, timed steps, tool lookup, and reading the `key=value` lines guests print.
#![allow(dead_code)]

use std::process::{Command, Output};
use std::time::Instant;

/// `CI=true`: a lane that cannot run is a failure, not a note.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether `tool` is an executable file on `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Root with apt-get: the lane's prepare script can install what is missing.
pub fn can_install() -> bool {
    nix::unistd::geteuid().is_root() && on_path("apt-get")
}

/// Fails with `CI=true`, else says loudly that the lane did not run. Returns
/// whether it may run.
pub fn may_run(lane: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else { return true };
    assert!(!ci(), "CI=true, but the {lane} lane cannot run: {why}");
    eprintln!("{lane}: NOT RUN: {why}");
    eprintln!("{lane}: (with CI=true this is a failure)");
    false
}

/// Runs one step of a lane and says how long it took.
pub fn run(lane: &str, step: &str, cmd: &mut Command) -> Output {
    let t = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{step}: cannot run {cmd:?}: {e}"));
    eprintln!(
        "{lane}: {step}: {:.1}s, {}",
        t.elapsed().as_secs_f64(),
        out.status
    );
    out
}

/// Runs a step that must succeed, with its output in the failure.
pub fn run_ok(lane: &str, step: &str, cmd: &mut Command) -> Output {
    let out = run(lane, step, cmd);
    assert!(out.status.success(), "{step} failed:\n{}", text(&out));
    out
}

/// A command's stdout and stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The value of `key=` in a guest's line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The guest's first line that holds `prefix`, from `prefix` on (without
/// run.sh's timestamp).
pub fn line<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.find(prefix).map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("the guest printed no `{prefix}` line; guest output:\n{log}"))
}

/// The number after `key=` in `line`.
pub fn num(line: &str, key: &str) -> u64 {
    field(line, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= number in `{line}`"))
}

/// Why an x86 QEMU lane cannot run here, if it cannot.
pub fn x86_missing_prerequisite() -> Option<String> {
    if !cfg!(target_arch = "x86_64") {
        return Some(
            "the QEMU harness boots an amd64 guest kernel; this is not an x86_64 host".into(),
        );
    }
    if !(on_path("qemu-system-x86_64") || can_install()) {
        return Some("qemu-system-x86_64 is not installed, and tests/qemu/prepare.sh can only install it as root with apt-get".into());
    }
    None
}

/// `tests/qemu/prepare.sh` into `cache`, then `mkinitrd.sh` with `intxd`,
/// the guest `script` and `extras` (`SRC:/DEST`) into `initrd`.
pub fn x86_initrd(
    lane: &str,
    repo: &std::path::Path,
    intxd: &std::path::Path,
    cache: &std::path::Path,
    script: &str,
    initrd: &std::path::Path,
    extras: &[String],
) {
    let harness = repo.join("tests/qemu");
    run_ok(
        lane,
        "prepare.sh",
        Command::new(harness.join("prepare.sh")).arg(cache),
    );
    run_ok(
        lane,
        "mkinitrd.sh",
        Command::new(harness.join("mkinitrd.sh"))
            .arg(cache)
            .arg(intxd)
            .arg(harness.join(script))
            .arg(initrd)
            .args(extras),
    );
}
