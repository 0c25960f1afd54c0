//! intxd under a real systemd (PID 1 of private namespaces, tests/systemd/):
//! socket activation, readiness and status, restart without losing an
//! interrupt in direct and relay mode, the watchdog, reload and clean stop.
//! The units under test are the shipped ones in systemd/, with a drop-in
//! each that points them at this build and at private socket paths.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{intxd_bin, require_kvm, wait_until};
use intxd::control::client::{attach_user_irqchip, Client};
use intxd::control::proto::{ModeRequest, Reply};
use intxd::route::{Irqchip, Mode};
use intxd::soak::{DaemonWiring, Session};

const HARNESS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/systemd");

/// One private systemd with intxd's units installed.
struct Sd {
    state: PathBuf,
    units: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sd {
    fn start(devices: &str) -> Sd {
        require_kvm();
        // Not under /tmp (the service has PrivateTmp=yes) nor /home or /root
        // (ProtectHome=yes): wherever the checkout is, the service must see
        // its binary, config and sockets.
        std::fs::create_dir_all("/var/cache/intxd-tests").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("sd-")
            .tempdir_in("/var/cache/intxd-tests")
            .unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let (state, units) = (dir.path().join("state"), dir.path().join("units"));
        let (socket, sim, config) = (
            dir.path().join("control.sock"),
            dir.path().join("sim.sock"),
            dir.path().join("intxd.toml"),
        );
        std::fs::create_dir_all(&units).unwrap();
        for u in ["intxd.service", "intxd.socket", "intxd-sim.service"] {
            std::fs::copy(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("systemd")
                    .join(u),
                units.join(u),
            )
            .unwrap();
        }
        let bin = dir.path().join("intxd");
        if std::fs::hard_link(intxd_bin(), &bin).is_err() {
            std::fs::copy(intxd_bin(), &bin).unwrap();
        }
        let dropin = |unit: &str, text: String| {
            let d = units.join(format!("{unit}.d"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("test.conf"), text).unwrap();
        };
        dropin(
            "intxd.service",
            format!(
                "[Service]\nExecStart=\nExecStart={} run --config {}\nExecReload=\nExecReload={} reload --socket {}\nEnvironment=INTXD_TEST_HOOKS=1 RUST_LOG=info\nWatchdogSec=2s\n",
                bin.display(),
                config.display(),
                bin.display(),
                socket.display()
            ),
        );
        dropin(
            "intxd.socket",
            format!("[Socket]\nListenSequentialPacket=\nListenSequentialPacket={}\nSocketGroup=\nSocketMode=0666\n", socket.display()),
        );
        dropin(
            "intxd-sim.service",
            format!(
                "[Service]\nExecStart=\nExecStart={} sim-host --socket {}\nReadWritePaths={}\n",
                bin.display(),
                sim.display(),
                dir.path().display()
            ),
        );
        std::fs::write(
            &config,
            format!(
                "[daemon]\nsocket = \"{}\"\nsim_host = \"{}\"\n{devices}",
                socket.display(),
                sim.display()
            ),
        )
        .unwrap();
        let sd = Sd {
            state,
            units,
            socket,
            config,
            _dir: dir,
        };
        let up = sd.script("up.sh").output().unwrap();
        assert!(
            up.status.success(),
            "systemd did not come up: {}",
            String::from_utf8_lossy(&up.stderr)
        );
        sd.ctl(&["systemctl", "start", "intxd-sim.service", "intxd.socket"]);
        assert!(
            wait_until(Duration::from_secs(5), || sd
                .dir()
                .join("sim.sock")
                .exists()),
            "sim host socket"
        );
        sd
    }

    fn dir(&self) -> &Path {
        self.socket.parent().unwrap()
    }

    fn script(&self, name: &str) -> Command {
        let mut c = Command::new(Path::new(HARNESS).join(name));
        c.env("H", &self.state).env("UNITS", &self.units);
        c
    }

    fn ctl(&self, args: &[&str]) -> String {
        let out = self.script("ctl.sh").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// Runs `args` inside; returns whether it succeeded and its output.
    fn ctl_status(&self, args: &[&str]) -> (bool, String) {
        let out = self.script("ctl.sh").args(args).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// The binary the unit runs (replace it to upgrade).
    fn unit_bin(&self) -> PathBuf {
        self.dir().join("intxd")
    }

    /// Puts `bytes` in place of the unit's binary, as a package upgrade
    /// does (a new file renamed over the old; the running daemon keeps its
    /// own).
    fn install_bin(&self, bytes: &[u8]) {
        let new = self.dir().join("intxd.new");
        std::fs::write(&new, bytes).unwrap();
        std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::rename(&new, self.unit_bin()).unwrap();
    }

    fn show(&self, prop: &str) -> String {
        self.ctl(&["systemctl", "show", "-P", prop, "intxd.service"])
            .trim()
            .to_string()
    }

    /// Waits until the journal of `unit` (with `args`) contains `text`, for
    /// up to 30 s (journald writes asynchronously); returns the journal.
    fn journal_with(&self, unit: &str, args: &[&str], text: &str) -> String {
        let t0 = Instant::now();
        loop {
            let mut a = vec!["journalctl", "--no-pager", "-o", "cat", "-u", unit];
            a.extend_from_slice(args);
            let log = self.ctl(&a);
            if log.contains(text) || t0.elapsed() > Duration::from_secs(30) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that the daemon's journal (with `args`) comes to contain `text`.
    fn assert_logged(&self, args: &[&str], text: &str) {
        let log = self.journal_with("intxd.service", args, text);
        assert!(log.contains(text), "no {text:?} in the journal:\n{log}");
    }

    fn client(&self) -> Client {
        let mut c = Client::connect(&self.socket).unwrap();
        if let Err(e) = c.hello("systemd-test") {
            panic!(
                "hello: {e}\n{}",
                self.ctl(&["journalctl", "--no-pager", "-o", "cat"])
            );
        }
        c
    }

    /// Waits until the service runs with a main pid other than `old`.
    fn wait_restarted(&self, old: &str, limit: Duration) -> bool {
        wait_until(limit, || {
            let pid = self.show("MainPID");
            pid != old && pid != "0" && self.show("SubState") == "running"
        })
    }
}

impl Drop for Sd {
    fn drop(&mut self) {
        let _ = self.script("down.sh").status();
    }
}

#[test]
fn the_first_connection_activates_the_service_which_reports_ready_and_status() {
    let sd = Sd::start("[[device]]\nname = \"sim0\"\npci = \"sim:0\"\n");
    assert_eq!(
        sd.show("ActiveState"),
        "inactive",
        "socket-activated: not started yet"
    );

    let mut c = sd.client();

    assert!(matches!(c.status().unwrap(), Reply::Status { .. }));
    assert_eq!(sd.show("ActiveState"), "active", "READY=1 came");
    assert_eq!(sd.show("StatusText"), "1 devices, 0 attached, 0 storms");
    sd.assert_logged(&[], "ready: 1 devices");
    // The shipped unit lets the relay watch its triggers with io_uring
    // polls (three syscalls per relayed interrupt, not four).
    sd.assert_logged(&[], "relay: interrupts carried by a write alone");
}

/// What happened to the guest's count around a daemon kill.
struct Gap {
    /// From the kill until systemd reported the new daemon running.
    restart: Duration,
    /// Interrupts the guest took between the kill and the restart.
    during_restart: u64,
    /// The longest time the count stood still.
    longest_stall: Duration,
}

/// How a test restarts the daemon mid-soak.
#[derive(Clone, Copy, PartialEq)]
enum How {
    /// `systemctl kill -s KILL`: a crash.
    Kill,
    /// `intxd restart`: a planned restart onto the same binary.
    Planned,
    /// `intxd restart` onto another build (the binary file stamped with the
    /// build tag `upgrade-test`).
    Upgrade,
    /// `intxd restart` onto a binary that cannot start, then, after systemd
    /// tried it twice, the good one back.
    BrokenThenGood,
}

/// This build's binary, stamped with another build tag: another binary
/// file, as an upgrade installs.
fn other_build(tag: &str) -> Vec<u8> {
    let mut bytes = std::fs::read(intxd_bin()).unwrap();
    let marker = b"INTXD-BUILD-TAG=";
    let at: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker)
        .map(|(i, _)| i + marker.len())
        .collect();
    assert_eq!(at.len(), 1, "one build-tag field in the binary");
    bytes[at[0]..at[0] + tag.len()].copy_from_slice(tag.as_bytes());
    bytes
}

/// Asks the running daemon for a planned restart, as an operator would.
fn planned_restart(sd: &Sd) {
    let out = Command::new(intxd_bin())
        .args(["restart", "--wait", "0", "--socket"])
        .arg(&sd.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 route(s) and 1 connection(s) parked"),
        "intxd restart: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restarts the daemon mid-soak (`how`), watching the guest's count every
/// 200 µs, and checks that the soak then finishes exactly on its old
/// connection.
fn restart_mid_soak(mode: Mode, how: How) -> Gap {
    let sd = Sd::start("[[device]]\nname = \"sim0\"\npci = \"sim:0\"\n");
    let mut w = DaemonWiring::connect(&sd.socket, "sim0").unwrap();
    let mut s = Session::start(&mut w, Irqchip::Kernel, mode).unwrap();
    let total: u64 = 150_000;
    s.ring(total).unwrap();
    assert!(
        // Cycling, on a loaded host too (a relay under two busy loops runs
        // a few hundred a second): a bound is a failure guard only.
        wait_until(Duration::from_secs(60), || s.ram().count() > 2_000),
        "{mode}: cycling"
    );
    assert!(
        sd.show("NFileDescriptorStore").parse::<u32>().unwrap() >= 4,
        "{mode}: fds parked"
    );
    let pid = sd.show("MainPID");
    let good = std::fs::read(sd.unit_bin()).unwrap();
    match how {
        How::Upgrade => sd.install_bin(&other_build("upgrade-test")),
        How::BrokenThenGood => {
            sd.install_bin(b"#!/bin/sh\necho 'intxd: this build is broken' >&2\nexit 1\n")
        }
        How::Kill | How::Planned => {}
    }

    let ram = s.ram();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (samples, restart, c0, c1) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut v = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                v.push((Instant::now(), ram.count()));
                std::thread::sleep(Duration::from_micros(200));
            }
            v
        });
        // A failed assertion below must still end the sampler, or the
        // scope would wait for it for ever.
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let stop = Stop(&done);
        let (c0, t0) = (u64::from(ram.count()), Instant::now());
        match how {
            How::Kill => {
                sd.ctl(&["systemctl", "kill", "-s", "KILL", "intxd.service"]);
            }
            _ => planned_restart(&sd),
        }
        if how == How::BrokenThenGood {
            assert!(
                wait_until(Duration::from_secs(20), || sd
                    .show("NRestarts")
                    .parse::<u32>()
                    .unwrap()
                    >= 3),
                "systemd tried the broken binary: {}",
                sd.ctl(&["systemctl", "status", "--no-pager", "intxd.service"])
            );
            let parked: u32 = sd.show("NFileDescriptorStore").parse().unwrap();
            assert!(parked >= 6, "the fd store outlives failed starts: {parked}");
            sd.install_bin(&good);
        }
        assert!(
            sd.wait_restarted(&pid, Duration::from_secs(20)),
            "{mode}: systemd restarted the daemon"
        );
        let (c1, restart) = (u64::from(ram.count()), t0.elapsed());
        std::thread::sleep(Duration::from_millis(100));
        drop(stop);
        (sampler.join().unwrap(), restart, c0, c1)
    });
    let mut longest_stall = Duration::ZERO;
    let mut since = samples[0];
    for &(t, c) in &samples {
        if c != since.1 {
            since = (t, c);
        }
        longest_stall = longest_stall.max(t - since.0);
    }
    let reached = s.wait_count(total, Duration::from_secs(30));
    let after = s.snapshot().unwrap();

    assert_eq!(reached, total, "{mode}: every cycle delivered");
    assert_eq!(after.sim.acked, total, "{mode}: 0 lost");
    assert_eq!(after.sim.spurious_acks, 0);
    if how != How::BrokenThenGood {
        // (once, beside two busy loops, a planned relay restart counted 2:
        // the journal says which start was the extra one)
        assert_eq!(
            sd.show("NRestarts"),
            "1",
            "{mode}: one restart; the journal:\n{}",
            sd.ctl(&[
                "journalctl",
                "--no-pager",
                "-o",
                "short-monotonic",
                "-u",
                "intxd.service"
            ])
        );
    }
    if mode == Mode::Relay && how != How::Kill {
        // The park recorded whether the last interrupt awaited its EOI and
        // the new daemon emptied the resample history before watching it:
        // no EOI came to it as a stale one (each adoption had one before).
        let Reply::Status { devices, .. } = sd.client().status().unwrap() else {
            panic!("status")
        };
        let relay = devices[0].counters.relay.clone().unwrap();
        assert_eq!(relay.stale_resamples, 0, "{relay:?}");
    }
    s.finish().unwrap();
    sd.assert_logged(&[], &format!("restart: {mode} route taken back"));
    if how != How::Kill {
        sd.assert_logged(&[], "planned restart: 1 route(s) and ");
    }
    if how == How::Upgrade {
        sd.assert_logged(
            &[],
            "intxd 0.1.0 build upgrade-test (features: test-hooks) starting",
        );
    }
    if how == How::BrokenThenGood {
        sd.assert_logged(&[], "intxd: this build is broken");
    }
    let gap = Gap {
        restart,
        during_restart: c1 - c0,
        longest_stall,
    };
    if how != How::Kill {
        eprintln!("{mode} {}", restart_timeline(&sd));
    }
    eprintln!(
        "{mode} {}: daemon back after {:.0} ms; {} interrupts delivered meanwhile; longest stall {:.1} ms; {total} cycles, 0 lost",
        match how {
            How::Kill => "restart after SIGKILL",
            How::Planned => "planned restart",
            How::Upgrade => "planned restart onto another build",
            How::BrokenThenGood => "planned restart onto a broken build, then a good one",
        },
        gap.restart.as_secs_f64() * 1e3,
        gap.during_restart,
        gap.longest_stall.as_secs_f64() * 1e3
    );
    gap
}

/// Where a planned restart's time goes, from the journal's monotonic
/// stamps: the park, systemd's `RestartSec=` and start job, the new
/// process up to `main`, and its start-up up to the adoption.
fn restart_timeline(sd: &Sd) -> String {
    let log = sd.ctl(&[
        "journalctl",
        "--no-pager",
        "-o",
        "short-monotonic",
        "-u",
        "intxd.service",
    ]);
    let stamp = |text: &str, after: f64| {
        log.lines()
            .filter(|l| l.contains(text))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.trim().parse().ok())
            .find(|t: &f64| *t >= after)
    };
    let Some(asked) = stamp("planned restart requested", 0.0) else {
        return format!("timeline: no planned restart in the journal:\n{log}");
    };
    let steps = [
        ("parked", "planned restart: "),
        ("exited", "Deactivated successfully"),
        ("restart scheduled", "Scheduled restart job"),
        ("start job", "Starting intxd.service"),
        ("main()", ") starting"),
        ("adopted", "restart: took back"),
    ];
    let mut out = String::from("timeline from the request (ms):");
    let mut at = asked;
    for (what, text) in steps {
        match stamp(text, at) {
            Some(t) => {
                out += &format!(" {what} +{:.0}", (t - asked) * 1e3);
                at = t;
            }
            None => out += &format!(" {what} ?"),
        }
    }
    out
}

#[test]
fn a_direct_route_keeps_cycling_while_the_daemon_restarts() {
    direct_keeps_cycling(restart_mid_soak(Mode::Direct, How::Kill));
}

fn direct_keeps_cycling(gap: Gap) {
    assert!(
        gap.during_restart > 0,
        "the kernel path delivered interrupts while no daemon ran"
    );
    assert!(
        gap.longest_stall < gap.restart / 2,
        "no stall as long as the restart"
    );
}

fn relay_waits(gap: Gap) {
    // Nothing moves while no daemon relays: the count stands still for most
    // of the restart, and resumes with every interrupt once it is back.
    assert!(
        gap.longest_stall >= gap.restart / 3,
        "relay interrupts waited: stall {:?} of {:?}",
        gap.longest_stall,
        gap.restart
    );
}

#[test]
fn a_planned_restart_keeps_a_direct_route_cycling() {
    direct_keeps_cycling(restart_mid_soak(Mode::Direct, How::Planned));
}

#[test]
fn a_planned_restart_delivers_every_relayed_interrupt_after() {
    relay_waits(restart_mid_soak(Mode::Relay, How::Planned));
}

#[test]
fn an_upgrade_onto_another_build_keeps_a_direct_route_cycling() {
    direct_keeps_cycling(restart_mid_soak(Mode::Direct, How::Upgrade));
}

#[test]
fn a_planned_restart_onto_a_broken_build_keeps_the_fd_store_for_the_next_good_one() {
    relay_waits(restart_mid_soak(Mode::Relay, How::BrokenThenGood));
}

#[test]
fn a_relay_route_waits_masked_and_delivers_everything_after_the_restart() {
    relay_waits(restart_mid_soak(Mode::Relay, How::Kill));
}

#[test]
fn a_stalled_event_loop_is_restarted_by_the_watchdog() {
    let sd = Sd::start("[[device]]\nname = \"sim0\"\npci = \"sim:0\"\n");
    let _c = sd.client();
    let pid = sd.show("MainPID");

    sd.ctl(&[
        "systemctl",
        "kill",
        "-s",
        "USR2",
        "--kill-who=main",
        "intxd.service",
    ]);

    assert!(
        sd.wait_restarted(&pid, Duration::from_secs(10)),
        "restarted"
    );
    let log = sd.ctl(&["journalctl", "--no-pager", "-o", "cat"]);
    assert!(log.contains("test hook: stalling the event loop"), "{log}");
    assert!(log.contains("Watchdog timeout"), "{log}");
}

#[test]
fn reload_adds_and_removes_devices_while_another_soaks_undisturbed() {
    let dev = |n: &str, i: u32| format!("[[device]]\nname = \"{n}\"\npci = \"sim:{i}\"\n");
    let sd = Sd::start(&(dev("sim0", 0) + &dev("old", 1)));
    let mut w = DaemonWiring::connect(&sd.socket, "sim0").unwrap();
    let mut s = Session::start(&mut w, Irqchip::Kernel, Mode::Direct).unwrap();
    s.ring(60_000).unwrap();
    let head = std::fs::read_to_string(&sd.config).unwrap();
    let head = &head[..head.find("[[device]]").unwrap()];

    std::fs::write(
        &sd.config,
        format!("{head}{}{}", dev("sim0", 0), dev("new", 2)),
    )
    .unwrap();
    // The operator's sequence: the reload has finished when systemctl
    // returns, so the new device is there at once.
    let (ok, out) = sd.ctl_status(&[
        "sh",
        "-c",
        &format!(
            "systemctl reload intxd && {} attach new --socket {}",
            intxd_bin().display(),
            sd.socket.display()
        ),
    ]);
    assert!(ok, "systemctl reload intxd && intxd attach new: {out}");
    std::fs::write(
        &sd.config,
        format!(
            "{head}{}mode = \"relay\"\n{}",
            dev("sim0", 0),
            dev("new", 2)
        ),
    )
    .unwrap();
    let (ok, out) = sd.ctl_status(&["systemctl", "reload", "intxd.service"]);
    assert!(!ok, "a refused change fails the reload: {out}");
    sd.assert_logged(&[], "intxd: reload refused: 1 change(s) refused");

    let names = |c: &mut Client| match c.status().unwrap() {
        Reply::Status { devices, .. } => devices
            .into_iter()
            .map(|d| (d.name, d.state.to_string()))
            .collect::<Vec<_>>(),
        _ => panic!(),
    };
    let mut c = sd.client();
    assert!(wait_until(Duration::from_secs(5), || names(&mut c)
        .iter()
        .any(|(n, _)| n == "new")));
    let now = names(&mut c);
    assert!(!now.iter().any(|(n, _)| n == "old"), "{now:?}");
    assert!(now.contains(&("sim0".into(), "attached".into())), "{now:?}");
    assert_eq!(
        s.wait_count(60_000, Duration::from_secs(5)),
        60_000,
        "the soak went on undisturbed"
    );
    let snap = s.snapshot().unwrap();
    assert_eq!((snap.sim.acked, snap.sim.spurious_acks), (60_000, 0));
    s.finish().unwrap();
    sd.assert_logged(
        &["-p", "err"],
        "sim0 sim:0: reload: the device is attached; its config change is refused",
    );
    sd.assert_logged(&[], "reload: 1 added, 1 removed, 0 changed, 0 refused");
}

#[test]
fn a_reload_of_a_refused_config_fails_with_the_reason_in_status_and_journal() {
    let sd = Sd::start("[[device]]\nname = \"sim0\"\npci = \"sim:0\"\n");
    let mut c = sd.client();
    let mut text = std::fs::read_to_string(&sd.config).unwrap();
    text.push_str("[[device]]\nname = \"bad\"\npci = \"sim:1\"\nmode = \"sideways\"\n");
    std::fs::write(&sd.config, text).unwrap();

    let (ok, out) = sd.ctl_status(&["systemctl", "reload", "intxd.service"]);

    assert!(!ok, "systemctl reload failed: {out}");
    assert!(out.contains("intxd.service"), "{out}");
    sd.assert_logged(&[], "intxd: reload refused: the config was refused:");
    sd.assert_logged(&["-p", "err"], "device[1].mode: unknown mode `sideways`");
    let status = sd.ctl(&["systemctl", "status", "--no-pager", "intxd.service"]);
    assert!(
        status.contains("ExecReload=") && status.contains("status=1/FAILURE"),
        "{status}"
    );
    assert_eq!(sd.show("ActiveState"), "active", "still serving: {status}");
    match c.status().unwrap() {
        Reply::Status { devices, .. } => assert_eq!(devices.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_tests_build_has_the_test_hooks_and_says_so() {
    let out = Command::new(intxd_bin()).arg("--version").output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    // A `cargo build --release` binary prints no features (.ci/run checks).
    assert_eq!(line.trim(), "intxd 0.1.0 (features: test-hooks)");
}

#[test]
fn a_clean_stop_releases_every_device_and_empties_the_fd_store() {
    let sd = Sd::start("[[device]]\nname = \"sim0\"\npci = \"sim:0\"\nmode = \"relay\"\n");
    let mut att = attach_user_irqchip(&sd.socket, "sim0", ModeRequest::Auto).unwrap();
    let parked: u32 = sd.show("NFileDescriptorStore").parse().unwrap();
    assert!(
        parked >= 6,
        "state, connection, 4 eventfds and the device: {parked}"
    );

    sd.ctl(&["systemctl", "stop", "intxd.service"]);

    assert_eq!(sd.show("NFileDescriptorStore"), "0");
    sd.assert_logged(&[], "sim0 sim:0: detached (the daemon is stopping)");
    let sim_log = sd.journal_with("intxd-sim.service", &[], "sim:0 released");
    assert!(sim_log.contains("sim:0 released"), "{sim_log}");
    match att.client.next_event(Duration::from_secs(2)).unwrap() {
        Some(intxd::control::proto::Event::DeviceGone { device, .. }) => assert_eq!(device, "sim0"),
        other => panic!("expected device_gone, got {other:?}"),
    }
}

#[test]
fn the_shipped_units_verify_clean() {
    let dir = tempfile::tempdir().unwrap();
    for u in ["intxd.service", "intxd.socket", "intxd-sim.service"] {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("systemd")
                .join(u),
        )
        .unwrap();
        // verify checks that ExecStart= exists: point it at this build.
        std::fs::write(
            dir.path().join(u),
            text.replace("/usr/local/bin/intxd", intxd_bin().to_str().unwrap()),
        )
        .unwrap();
    }
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs tmpfs /run && systemd-analyze verify --man=no ./intxd.service ./intxd.socket ./intxd-sim.service")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify: {text}"
    );
    let sec = Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=true",
            "--no-pager",
            "./intxd.service",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let sec = String::from_utf8_lossy(&sec.stdout);
    let line = sec
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or("");
    eprintln!("{line}");
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(level < 5.0, "exposure {level}");
}
