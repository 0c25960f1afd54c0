//! Helpers shared by the QEMU lanes (`tests/qemu_vfio.rs`, `tests/qemu_shared.rs`, `tests/arm64_lane.rs`): the CI
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

/// run.sh's exit status when QEMU ended without the guest's `INTXD-QEMU-RESULT` line: the
/// guest died (a kernel panic, a triple fault of the emulated machine) before the test's verdict.
pub const GUEST_DIED: i32 = 125;

/// Runs a guest boot (`step`, the command `make` builds), and once more if the guest died
/// before its verdict ([`GUEST_DIED`]): an emulated machine's crash (TCG with nested KVM) is not
/// the test's verdict, but it is said, with the first boot's last lines, past the test harness's
/// capture so that a passing run's log shows it too. A test's own failure is never retried.
pub fn run_guest(lane: &str, step: &str, make: impl Fn() -> Command) -> Output {
    let out = run(lane, step, &mut make());
    if out.status.code() != Some(GUEST_DIED) {
        return out;
    }
    use std::io::Write;
    let log = text(&out).replace("^@", "");
    let lines: Vec<&str> = log.lines().collect();
    let _ = writeln!(
        std::io::stderr().lock(),
        "{lane}: RETRY: the guest died before its verdict ({}); booting it once more. Its last lines:\n{}",
        out.status,
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    );
    run(lane, &format!("{step}, second boot"), &mut make())
}

/// A command's stdout and stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The panic message of a failed guest run: its status, then the last lines of its output first
/// (a CI log shows a failure's beginning: a guest that died shows it at the end), then all of it.
pub fn guest_failed(status: &std::process::ExitStatus, log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    format!(
        "the guest test failed ({status}); its last {} lines:\n{}\n---- its whole output ----\n{log}",
        tail.len(),
        tail.join("\n")
    )
}

/// How many of a failed guest's last lines [`guest_failed`] puts first.
const TAIL_LINES: usize = 60;

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

/// Why an x86_64 QEMU lane (`qemu_vfio`, `qemu_shared`, `qemu_lab`, …) cannot run here, if it cannot.
pub fn x86_lane_missing() -> Option<String> {
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

/// [`may_run`] for test `test` of `lane`; when it may not, also says so past the harness's
/// output capture (which hides a passing test's eprintln!), so the run's own log shows
/// that the test did not run.
pub fn may_run_test(lane: &str, test: &str, missing: Option<String>) -> bool {
    if may_run(lane, missing.clone()) {
        return true;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "test {test}: SKIPPED (NOT RUN): {}; with CI=true this is a failure",
        missing.unwrap_or_default()
    );
    false
}

/// Boots the x86 guest with `tests/qemu/NAME.sh` as its test (initrd `NAME.cpio.gz` and log
/// `NAME.log` in the cache, `config/examples/edu.toml` as `/edu.toml`): prepare.sh, mkinitrd.sh
/// (with `mk_env`), run.sh with a 150 s timeout (with `run_env`). Echoes the guest's lines that
/// hold `NAME: ` and the total time, asserts the guest test passed, and returns its output.
pub fn boot_x86(
    lane: &str,
    name: &str,
    mk_env: &[(&str, &str)],
    run_env: &[(&str, &str)],
) -> String {
    boot_x86_with(lane, name, mk_env, run_env, &[], 150)
}

/// [`boot_x86`] with more `SRC:/DEST` files in the initramfs (`extras`) and run.sh's timeout.
/// The serial breaks (run.sh) reach the guest's tty as NULs, which it echoes as `^@` into the
/// console lines: the returned log has them taken out.
pub fn boot_x86_with(
    lane: &str,
    name: &str,
    mk_env: &[(&str, &str)],
    run_env: &[(&str, &str)],
    extras: &[String],
    timeout_s: u32,
) -> String {
    use std::path::{Path, PathBuf};
    let t0 = Instant::now();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let harness = repo.join("tests/qemu");
    let cache = std::env::var_os("INTXD_QEMU_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/qemu-cache"));
    let initrd = cache.join(format!("{name}.cpio.gz"));
    let prepare = harness.join("prepare.sh");
    run_ok(lane, "prepare.sh", Command::new(prepare).arg(&cache));
    let mut mk = Command::new(harness.join("mkinitrd.sh"));
    mk.arg(&cache)
        .arg(env!("CARGO_BIN_EXE_intxd"))
        .arg(harness.join(format!("{name}.sh")))
        .arg(&initrd)
        .arg(format!(
            "{}:/edu.toml",
            repo.join("config/examples/edu.toml").display()
        ))
        .args(extras)
        .envs(mk_env.iter().copied());
    run_ok(lane, "mkinitrd.sh", &mut mk);
    let out = run_guest(lane, "run.sh (boot, test, power-off)", || {
        let mut boot = Command::new(harness.join("run.sh"));
        boot.arg(&cache)
            .arg(&initrd)
            .arg(timeout_s.to_string())
            .env("INTXD_QEMU_LOG", cache.join(format!("{name}.log")))
            .envs(run_env.iter().copied());
        boot
    });
    let log = text(&out).replace("^@", "");
    let tag = format!("{name}: ");
    for l in log
        .lines()
        .filter(|l| l.contains(&tag) || l.starts_with("run: guest"))
    {
        eprintln!("{lane}: {l}");
    }
    eprintln!("{lane}: total {:.1}s", t0.elapsed().as_secs_f64());
    assert!(out.status.success(), "{}", guest_failed(&out.status, &log));
    log
}
