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
    assert_eq!(key, "mdoe");
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

    assert_eq!(key, "pci");
    assert!(message.contains("missing field"), "{message}");
    assert!(fix.contains("add the key"));
}

#[test]
fn a_drop_in_may_not_hold_a_daemon_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices.d")).unwrap();
    std::fs::write(
        dir.path().join("intxd.toml"),
        "[daemon]\nsocket = \"/tmp/x.sock\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("devices.d/a.toml"),
        "[daemon]\nsocket = \"/tmp/y.sock\"\n",
    )
    .unwrap();

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
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices.d")).unwrap();
    std::fs::write(
        dir.path().join("intxd.toml"),
        "[[device]]\nname = \"a\"\npci = \"sim:0\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("devices.d/b.toml"),
        "[[device]]\nname = \"b\"\npci = \"sim:0\"\n",
    )
    .unwrap();

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
    assert!(err.contains("bad.toml:4:1: froce: unknown field"), "{err}");
    assert!(err.contains("fix:"), "{err}");
}
