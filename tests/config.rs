//! The config: every shipped file parses, and every mistake names the file,
//! the line, the key and the fix.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use intxd::config::{load, load_str, ConfigError, ModePolicy, PciAddr};
use intxd::relay::WatchdogPolicy;
use intxd::sim::AckPolicy;

fn main_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() && p.file_name().is_some_and(|n| n != "devices.d") {
            main_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml")
            && p.parent().is_some_and(|d| !d.ends_with("devices.d"))
        {
            out.push(p);
        }
    }
}

#[test]
fn every_shipped_config_file_parses() {
    let mut files = Vec::new();
    main_files(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config")),
        &mut files,
    );
    assert!(
        files.len() >= 3,
        "config/ ships the main file and examples: {files:?}"
    );
    for f in &files {
        let cfg = load(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!cfg.devices.is_empty(), "{} defines devices", f.display());
    }
}

#[test]
fn the_main_config_reads_its_drop_ins_in_order() {
    let cfg = load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/intxd.toml"
    )))
    .unwrap();

    let names: Vec<&str> = cfg.devices.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["sim0", "sim-relay"]);
    assert_eq!(cfg.files.len(), 2);
    let relay = cfg.device("sim-relay").unwrap();
    assert_eq!(relay.mode, ModePolicy::Relay);
    assert_eq!(relay.relay.storm_rate, 50_000);
    assert_eq!(
        relay.relay.watchdog,
        WatchdogPolicy::Rearm,
        "defaults fill the rest"
    );
    assert_eq!(cfg.daemon.socket_mode, 0o660);
}

fn invalid(text: &str) -> (usize, String, String, String) {
    match load_str(Path::new("test.toml"), text).unwrap_err() {
        ConfigError::Invalid {
            file,
            line,
            key,
            message,
            fix,
            ..
        } => {
            assert_eq!(file, Path::new("test.toml"));
            (line, key, message, fix)
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn an_unknown_key_names_its_line_and_says_how_to_fix_it() {
    let (line, key, message, fix) =
        invalid("[[device]]\nname = \"a\"\npci = \"sim:0\"\nmdoe = \"relay\"\n");

    assert_eq!(line, 4);
    assert_eq!(key, "device[0].mdoe", "the key's full path");
    assert!(message.contains("unknown field"), "{message}");
    assert!(fix.contains("spelling"), "{fix}");
}

#[test]
fn a_duplicate_device_name_points_at_both_places() {
    let (line, key, message, _) = invalid(
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\n\n[[device]]\nname = \"a\"\npci = \"sim:1\"\n",
    );

    assert_eq!((line, key.as_str()), (6, "device[1].name"));
    assert!(message.contains("already used at test.toml:1"), "{message}");
}

#[test]
fn a_duplicate_pci_address_is_refused() {
    let (line, key, message, fix) =
        invalid("[[device]]\nname = \"a\"\npci = \"03:00.0\"\n[[device]]\nname = \"b\"\npci = \"0000:03:00.0\"\n");

    assert_eq!((line, key.as_str()), (6, "device[1].pci"));
    assert!(
        message.contains("0000:03:00.0 is already configured"),
        "{message}"
    );
    assert!(fix.contains("one [[device]]"));
}

#[test]
fn bad_values_are_refused_with_their_key() {
    for (text, want_key, want_msg) in [
        ("[[device]]\nname = \"a\"\npci = \"0000:03:40.0\"\n", "device[0].pci", "out of range"),
        ("[[device]]\nname = \"a\"\npci = \"eth0\"\n", "device[0].pci", "not a PCI address"),
        ("[[device]]\nname = \"a b\"\npci = \"sim:0\"\n", "device[0].name", "not a valid device name"),
        ("[[device]]\nname = \"a\"\npci = \"sim:0\"\nmode = \"fast\"\n", "device[0].mode", "unknown mode"),
        ("[daemon]\nsocket_mode = \"rw\"\n", "daemon.socket_mode", "octal"),
        ("[daemon]\nmax_connections = 0\n", "daemon.max_connections", "out of range"),
        (
            "[[device]]\nname = \"a\"\npci = \"sim:0\"\n[device.relay]\neoi_timeout_ms = 1\n",
            "device[0].relay.eoi_timeout_ms",
            "too short",
        ),
        (
            "[[device]]\nname = \"a\"\npci = \"0000:01:00.0\"\n[device.sim]\nafter_ack = \"raise\"\n",
            "device[0].sim",
            "only applies to emulated devices",
        ),
        (
            "[[device]]\nname = \"a\"\npci = \"sim:0\"\n[device.sim]\nafter_ack = \"sometimes\"\n",
            "device[0].sim.after_ack",
            "unknown ack policy",
        ),
    ] {
        let (_, key, message, fix) = invalid(text);
        assert_eq!(key, want_key, "{text}");
        assert!(message.contains(want_msg), "{text}: {message}");
        assert!(!fix.is_empty());
    }
}

#[test]
fn a_missing_key_is_named() {
    let (_, key, message, fix) = invalid("[[device]]\nname = \"a\"\n");

    assert_eq!(key, "device[0].pci", "the key's full path");
    assert!(message.contains("missing field"), "{message}");
    assert!(fix.contains("add the key"));
}

/// A directory with `intxd.toml` holding `main` and, in `dropin_dir`, one
/// drop-in `a.toml` holding `dropin`.
fn tree(main: &str, dropin_dir: &str, dropin: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(dropin_dir)).unwrap();
    std::fs::write(dir.path().join("intxd.toml"), main).unwrap();
    std::fs::write(dir.path().join(dropin_dir).join("a.toml"), dropin).unwrap();
    dir
}

#[test]
fn a_drop_in_may_not_hold_a_daemon_table() {
    let dir = tree(
        "[daemon]\nsocket = \"/tmp/x.sock\"\n",
        "devices.d",
        "[daemon]\nsocket = \"/tmp/y.sock\"\n",
    );

    let err = load(&dir.path().join("intxd.toml")).unwrap_err();

    let ConfigError::Invalid { file, key, fix, .. } = err else {
        panic!("{err:?}")
    };
    assert!(file.ends_with("devices.d/a.toml"));
    assert_eq!(key, "daemon");
    assert!(fix.contains("main config file"));
}

#[test]
fn duplicates_across_drop_ins_are_caught() {
    let dir = tree(
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\n",
        "devices.d",
        "[[device]]\nname = \"b\"\npci = \"sim:0\"\n",
    );

    let err = load(&dir.path().join("intxd.toml")).unwrap_err();

    assert_eq!(err.key(), Some("device[0].pci"));
    assert!(err.to_string().contains("intxd.toml:1"), "{err}");
}

#[test]
fn a_sim_section_sets_the_ack_policy() {
    let cfg = load_str(
        Path::new("t.toml"),
        "[[device]]\nname = \"a\"\npci = \"sim:3\"\n[device.sim]\nafter_ack = \"raise-after\"\ninterval_us = 250\n",
    )
    .unwrap();

    assert_eq!(cfg.devices[0].pci, PciAddr::Sim(3));
    assert_eq!(
        cfg.devices[0].sim,
        AckPolicy::RaiseAfter { interval_us: 250 }
    );
}

#[test]
fn check_config_prints_the_devices_or_the_error() {
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_intxd"))
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/intxd.toml"),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("2 device(s) from 2 file(s)"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\nfroce = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_intxd"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:4:1: device[0].froce: unknown field"),
        "{err}"
    );
    assert!(err.contains("fix:"), "{err}");
}

#[test]
fn socket_paths_that_cannot_be_bound_are_refused() {
    let long = format!("/{}", "s".repeat(107)); // 108 bytes: no room for the NUL
    let longest = format!("/{}", "s".repeat(106)); // 107 bytes: fits
    for key in ["socket", "sim_host"] {
        for (value, want) in [
            ("\"\"".to_string(), "empty"),
            ("\"run/intxd.sock\"".to_string(), "not an absolute path"),
            ("\"/run/a\\u0000b.sock\"".to_string(), "NUL"),
            (format!("\"{long}\""), "108 bytes long"),
        ] {
            let text = format!("[daemon]\n{key} = {value}\n");
            let (line, k, message, fix) = invalid(&text);
            assert_eq!(
                (line, k.as_str()),
                (2, format!("daemon.{key}").as_str()),
                "{text}"
            );
            assert!(message.contains(want), "{text}: {message}");
            assert!(!fix.is_empty());
        }
        let ok = load_str(
            Path::new("t.toml"),
            &format!("[daemon]\n{key} = \"{longest}\"\n"),
        );
        assert!(ok.is_ok(), "a 107-byte path fits sun_path: {ok:?}");
    }
}

#[test]
fn a_state_dir_that_is_relative_or_a_file_is_refused() {
    let (line, key, message, _) = invalid("[daemon]\nstate_dir = \"var/lib/intxd\"\n");
    assert_eq!((line, key.as_str()), (2, "daemon.state_dir"));
    assert!(message.contains("not an absolute path"), "{message}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state");
    std::fs::write(&file, "").unwrap();
    let main = dir.path().join("intxd.toml");
    std::fs::write(
        &main,
        format!("[daemon]\nstate_dir = \"{}\"\n", file.display()),
    )
    .unwrap();
    let err = load(&main).unwrap_err();
    assert_eq!(err.key(), Some("daemon.state_dir"), "{err}");
    assert_eq!(err.line(), Some(2), "{err}");
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn a_relative_devices_dir_is_relative_to_the_config_file() {
    let dir = tree(
        "[daemon]\ndevices_dir = \"lab.d\"\n",
        "lab.d",
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\n",
    );
    // The tests run in the crate's directory, not in `dir`.
    assert_ne!(std::env::current_dir().unwrap(), dir.path());

    let cfg = load(&dir.path().join("intxd.toml")).unwrap();

    assert_eq!(cfg.devices.len(), 1, "the drop-in beside the file was read");
    assert_eq!(cfg.files[1], dir.path().join("lab.d/a.toml"));
}

/// Runs `intxd check-config` on `main` with a 256 MiB address-space limit
/// and a 20 s bound (a hang or a runaway read is a failure, not a stuck
/// suite); returns its exit code and stderr.
fn check_config_bounded(main: &Path) -> (Option<i32>, String) {
    let mut child = std::process::Command::new("prlimit")
        .arg("--as=268435456")
        .arg(env!("CARGO_BIN_EXE_intxd"))
        .arg("check-config")
        .arg(main)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("check-config {} hung for 20 s", main.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_drop_in_that_is_a_fifo_a_device_or_huge_is_refused_without_reading_it() {
    for (what, want) in [
        ("fifo", "not a regular file (a FIFO)"),
        ("zero", "not a regular file (a character device)"),
        ("huge", "larger than"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("devices.d")).unwrap();
        let main = dir.path().join("intxd.toml");
        std::fs::write(&main, "[[device]]\nname = \"a\"\npci = \"sim:0\"\n").unwrap();
        let dropin = dir.path().join("devices.d/x.toml");
        match what {
            "fifo" => nix::unistd::mkfifo(&dropin, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .unwrap(),
            "zero" => std::os::unix::fs::symlink("/dev/zero", &dropin).unwrap(),
            _ => std::fs::File::create(&dropin)
                .unwrap()
                .set_len(64 << 20)
                .unwrap(),
        }

        let (code, err) = check_config_bounded(&main);

        assert_eq!(code, Some(1), "{what}: {err}");
        assert!(err.contains(&dropin.display().to_string()), "{what}: {err}");
        assert!(err.contains(want), "{what}: {err}");
    }
    // The main file itself gets the same treatment.
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("intxd.toml");
    nix::unistd::mkfifo(&main, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (code, err) = check_config_bounded(&main);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a regular file (a FIFO)"), "{err}");
}

#[test]
fn control_bytes_are_escaped_and_long_values_cut_in_errors() {
    let long = "x".repeat(5000);
    for text in [
        "[[device]]\nname = \"\\u001b[2J\\u001b]0;owned\\u0007\"\npci = \"sim:0\"\n".to_string(),
        "[[device]]\nname = \"a\"\npci = \"\\u001b[31m\"\n".to_string(),
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\nmode = \"\\u009b2J\\r\\nfix: trust me\"\n"
            .to_string(),
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\n\"\\u001b[2J\" = 1\n".to_string(),
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\n[device.relay]\nstorm_rate = \"\\u001b[2J\"\n"
            .to_string(),
        format!("[[device]]\nname = \"a\"\npci = \"{long}\"\n"),
        format!("[[device]]\nname = \"{long}\"\npci = \"sim:0\"\n"),
        format!("[[device]]\nname = \"a\"\npci = \"sim:0\"\n{long} = 1\n"),
        format!("[daemon]\nsocket_group = 1\nsocket = \"/{long}\"\n"),
        format!("[daemon]\nsocket = \"/{long}\"\n"),
    ] {
        let err = load_str(Path::new("t.toml"), &text).unwrap_err();
        let shown = err.to_string();
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "raw control characters in {shown:?}"
        );
        assert_eq!(
            shown.matches('\n').count(),
            1,
            "one line for the error, one for the fix: {shown:?}"
        );
        assert!(shown.len() < 800, "{} bytes: {shown}", shown.len());
        if text.contains("\\u001b") {
            assert!(shown.contains("\\u{1b}"), "ESC shown escaped: {shown}");
        }
    }
}

#[test]
fn toml_type_errors_name_the_full_key_path() {
    let two =
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\n[[device]]\nname = \"b\"\npci = \"sim:1\"\n";
    for (extra, want_line, want_key) in [
        (
            "[device.relay]\nstorm_rate = \"fast\"\n",
            8,
            "device[1].relay.storm_rate",
        ),
        (
            "[device.relay]\nstorm_rat = 1\n",
            8,
            "device[1].relay.storm_rat",
        ),
        (
            "relay = { watchdog = \"never\" }\n",
            7,
            "device[1].relay.watchdog",
        ),
        ("allow_uids = [1, \"x\"]\n", 7, "device[1].allow_uids[1]"),
        ("force = \"yes\"\n", 7, "device[1].force"),
        ("[device.exerciser]\nbar = 0\n", 7, "device[1].exerciser"),
        ("name = \"c\"\n", 7, "device[1].name"),
    ] {
        let text = format!("{two}{extra}");
        let (line, key, message, fix) = invalid(&text);
        assert_eq!(
            (line, key.as_str()),
            (want_line, want_key),
            "{text}: {message}"
        );
        assert!(!fix.is_empty());
    }
    let (line, key, _, _) = invalid("[daemon]\nseccomp = \"no\"\n");
    assert_eq!((line, key.as_str()), (2, "daemon.seccomp"));
}
