//! `intxd metrics` and the `[metrics]` textfile, read by Prometheus's own
//! parser (`prometheus_client.parser`, Debian's python3-prometheus-client)
//! and checked against `status`, on a real daemon whose emulated device has
//! been soaked by a KVM guest and by a relay route; and the `[metrics]`
//! config checks.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{intxd_bin, require_kvm, wait_until, DaemonProc};
use intxd::control::client::attach_user_irqchip;
use intxd::control::proto::{DeviceStatus, ModeRequest};
use intxd::route::{Irqchip, Mode};
use intxd::soak::{run_one, DaemonWiring, RunSpec};
use intxd::util::fd::owned_into_eventfd;

/// Every sample of every document on stdin (a JSON list of expositions),
/// as the reference parser reads them.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
docs = []
for text in json.load(sys.stdin):
    out = []
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            out.append({"family": f.name, "type": f.type, "help": f.documentation,
                        "name": s.name, "labels": s.labels, "value": s.value})
    docs.append(out)
print(json.dumps(docs))
"#;

/// One parsed sample.
#[derive(Debug, Clone)]
struct Sample {
    family: String,
    kind: String,
    help: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A Python that has the parser: Debian's (where apt installs it) first.
/// Missing, the test fails: it must never pass without the real parser.
fn python() -> &'static str {
    for py in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(py)
            .args(["-c", "import prometheus_client.parser"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py;
        }
    }
    panic!(
        "no python3 with prometheus_client: install python3-prometheus-client (.ci/run does); \
         this test checks intxd's exposition with Prometheus's own parser and cannot be skipped (CI={})",
        std::env::var("CI").unwrap_or_default()
    );
}

/// Parses each of `texts` with the reference parser.
fn parse_all(texts: &[String]) -> Vec<Vec<Sample>> {
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(texts).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused the exposition: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        texts.join("\n----\n")
    );
    let docs: Vec<Vec<serde_json::Value>> = serde_json::from_slice(&out.stdout).unwrap();
    docs.into_iter()
        .map(|d| {
            d.into_iter()
                .map(|s| Sample {
                    family: s["family"].as_str().unwrap().into(),
                    kind: s["type"].as_str().unwrap().into(),
                    help: s["help"].as_str().unwrap().into(),
                    name: s["name"].as_str().unwrap().into(),
                    labels: serde_json::from_value(s["labels"].clone()).unwrap(),
                    value: s["value"].as_f64().unwrap(),
                })
                .collect()
        })
        .collect()
}

fn parse(text: &str) -> Vec<Sample> {
    parse_all(&[text.to_string()]).remove(0)
}

/// The value of the one sample `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(hits.len() <= 1, "{name} {labels:?}: {hits:?}");
    hits.first().map(|s| s.value)
}

/// `intxd metrics` on the command line.
fn metrics_cli(socket: &Path) -> String {
    let out = Command::new(intxd_bin())
        .args(["metrics", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "intxd metrics: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `intxd metrics` and the device's status around it, once the counters
/// hold still across it (so both describe the same moment).
fn metrics_and_status(d: &DaemonProc, name: &str) -> (Vec<Sample>, DeviceStatus) {
    let t0 = Instant::now();
    loop {
        let before = d.device(name);
        let text = metrics_cli(&d.socket);
        let after = d.device(name);
        if before.counters == after.counters && before.state == after.state {
            return (parse(&text), after);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{name}: counters never held still"
        );
    }
}

/// Every per-device counter equals `status`'s, under the labels `mode`.
fn assert_counters_match(samples: &[Sample], st: &DeviceStatus, mode: &str) {
    let l = [
        ("device", st.name.as_str()),
        ("pci", st.pci.as_str()),
        ("mode", mode),
    ];
    let c = &st.counters;
    let mut want = vec![
        ("intxd_interrupts_total", c.host_interrupts),
        ("intxd_attaches_total", c.attaches),
        ("intxd_detaches_total", c.detaches),
        ("intxd_failures_total", c.failures),
        ("intxd_storm_seconds_total", c.storm_seconds),
        ("intxd_safety_unmasks_total", c.safety_unmasks),
    ];
    let relay = [
        "intxd_relayed_interrupts_total",
        "intxd_eois_total",
        "intxd_storms_total",
        "intxd_eoi_watchdog_fires_total",
    ];
    match &c.relay {
        Some(r) => {
            want.extend(
                relay
                    .into_iter()
                    .zip([r.relayed, r.eois, r.storms, r.watchdog_fires]),
            )
        }
        None => {
            for name in relay {
                assert_eq!(
                    value(samples, name, &l),
                    None,
                    "{name} without a relay route"
                );
            }
        }
    }
    for (name, v) in want {
        assert_eq!(value(samples, name, &l), Some(v as f64), "{name} {l:?}");
    }
    let held = f64::from(u8::from(st.owner.is_some()));
    assert_eq!(value(samples, "intxd_device_attached", &l), Some(held));
    for s in samples {
        assert!(!s.help.is_empty(), "{} has no HELP", s.family);
        if s.name.ends_with("_total") {
            assert_eq!(s.kind, "counter", "{}", s.name);
        }
    }
}

/// The relay route's histogram: cumulative, `+Inf` equal to `_count`, one
/// sample per EOI that had an interrupt outstanding, sum in seconds.
fn assert_histogram(samples: &[Sample], st: &DeviceStatus) {
    let eois = st.counters.relay.as_ref().unwrap().eois as f64;
    let l = [("device", st.name.as_str()), ("mode", "relay")];
    let mut buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.name == "intxd_eoi_latency_seconds_bucket" && s.labels["device"] == st.name)
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    assert!(buckets.iter().all(|b| b.0 > 0.0));
    assert!(samples
        .iter()
        .any(|s| s.family == "intxd_eoi_latency_seconds" && s.kind == "histogram"));
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(buckets.len(), 22, "1 µs .. 2^20 µs and +Inf: {buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {buckets:?}"
    );
    let (top, inf) = buckets[buckets.len() - 1];
    assert!(top.is_infinite());
    let count = value(samples, "intxd_eoi_latency_seconds_count", &l).unwrap();
    let sum = value(samples, "intxd_eoi_latency_seconds_sum", &l).unwrap();
    assert_eq!(inf, count);
    assert!(count > 0.0 && count <= eois, "count {count}, eois {eois}");
    let mean = sum / count;
    assert!((1e-7..1.0).contains(&mean), "mean EOI latency {mean} s");
}

/// Reads the textfile every few ms until stopped: every distinct content
/// seen; `replaced` counts the times its inode changed (each write renames
/// a new file over it).
fn watch(
    path: PathBuf,
    stop: Arc<AtomicBool>,
    replaced: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        let mut inodes = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            // Once it exists, the path always names a whole file.
            let Ok(text) = std::fs::read_to_string(&path) else {
                assert!(
                    order.is_empty(),
                    "{} vanished between writes",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            let ino = std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
            if inodes.last() != Some(&ino) {
                inodes.push(ino);
                replaced.store(inodes.len() - 1, Ordering::SeqCst);
            }
            if seen.insert(text.clone()) {
                order.push(text);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        order
    })
}

#[test]
fn the_exposition_parses_with_prometheus_and_equals_status_after_soaks() {
    require_kvm();
    python();
    let tf = tempfile::tempdir().unwrap();
    let textfile = tf.path().join("intxd.prom");
    let d = DaemonProc::start_with(
        "[[device]]\nname = \"sim0\"\npci = \"sim:0\"\n",
        &format!(
            "[metrics]\ntextfile = \"{}\"\ninterval_secs = 1\n",
            textfile.display()
        ),
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let replaced = Arc::new(AtomicUsize::new(0));
    let watcher = watch(textfile.clone(), Arc::clone(&stop), Arc::clone(&replaced));

    // A KVM guest soaks the device through a relay route, then detaches.
    let mut w = DaemonWiring::connect(&d.socket, "sim0").unwrap();
    let spec = RunSpec {
        mode: Mode::Relay,
        irqchip: Irqchip::Kernel,
        cycles: Some(2000),
        duration: None,
        stall: Duration::from_secs(3),
    };
    let r = run_one(&mut w, &spec, &mut |_, _| {}).unwrap();
    assert!(r.is_clean(), "{r:?}");
    drop(w);
    let (samples, st) = metrics_and_status(&d, "sim0");
    assert_eq!((st.counters.attaches, st.counters.detaches), (1, 1));
    assert!(st.counters.host_interrupts >= 2000, "{st:?}");
    assert_counters_match(&samples, &st, "none");
    assert!(!samples
        .iter()
        .any(|s| s.family == "intxd_eoi_latency_seconds"));

    // A relay route stays attached: a userspace guest serves 500 cycles
    // (irq, ack the device, EOI).
    let mut att = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay).unwrap();
    let doorbell = owned_into_eventfd(att.device_fds.remove(1));
    let ack = owned_into_eventfd(att.device_fds.remove(0));
    doorbell.write(500).unwrap();
    let mut served = 0;
    let t0 = Instant::now();
    while served < 500 && t0.elapsed() < Duration::from_secs(30) {
        match att.irq.read() {
            Ok(_) => {
                ack.write(1).unwrap();
                att.resample.write(1).unwrap();
                served += 1;
            }
            Err(_) => std::thread::sleep(Duration::from_micros(50)),
        }
    }
    assert_eq!(served, 500);
    let (samples, st) = metrics_and_status(&d, "sim0");
    assert_eq!(st.counters.relay.as_ref().unwrap().relayed, 500, "{st:?}");
    assert_counters_match(&samples, &st, "relay");
    assert_histogram(&samples, &st);

    // The textfile catches up within its interval, parses, and says the same.
    let relayed =
        "intxd_relayed_interrupts_total{device=\"sim0\",pci=\"sim:0\",mode=\"relay\"} 500\n";
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &textfile
        )
        .is_ok_and(|t| t.contains(relayed))),
        "the textfile never showed the relay route"
    );
    let file = parse(&std::fs::read_to_string(&textfile).unwrap());
    assert_counters_match(&file, &d.device("sim0"), "relay");
    assert_histogram(&file, &d.device("sim0"));
    assert_eq!(
        std::fs::metadata(&textfile).unwrap().mode() & 0o777,
        0o644,
        "node_exporter runs as its own user"
    );

    // Every content the watcher saw was a whole exposition, and the file
    // was replaced (a new inode), never rewritten in place.
    assert!(
        wait_until(Duration::from_secs(10), || replaced.load(Ordering::SeqCst)
            >= 2),
        "the textfile was replaced {} times in 10 s of a 1 s interval",
        replaced.load(Ordering::SeqCst)
    );
    stop.store(true, Ordering::SeqCst);
    let texts = watcher.join().unwrap();
    for (text, doc) in texts.iter().zip(parse_all(&texts)) {
        assert!(text.ends_with('\n'));
        assert!(
            doc.iter().any(|s| s.name == "intxd_safety_unmasks_total"),
            "a cut file: {text}"
        );
    }
    let names: Vec<_> = std::fs::read_dir(tf.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["intxd.prom".to_string()],
        "no temporary file left"
    );
    drop(att);
}

#[test]
fn escaped_label_values_survive_the_reference_parser() {
    use intxd::control::proto::{DaemonStatus, DeviceCounters, DeviceState};
    use intxd::metrics::{render, DeviceSample, Snapshot};
    let odd = "a\\b\"c\nd";
    let status = DeviceStatus {
        name: odd.into(),
        pci: "sim:\"0\"".into(),
        state: DeviceState::Opened,
        mode: None,
        owner: None,
        facts: None,
        failure: None,
        warning: None,
        intx: None,
        counters: DeviceCounters {
            host_interrupts: 7,
            ..Default::default()
        },
    };
    let snap = Snapshot {
        daemon: DaemonStatus {
            version: "0.1.0\n\"x\"".into(),
            pid: 1,
            uptime_s: 2.5,
            loop_wakeups: 3,
            connections: 1,
            fds: 9,
            capabilities: Default::default(),
        },
        devices: vec![DeviceSample {
            status,
            latency: None,
        }],
    };
    let samples = parse(&render(&snap));
    let l = [("device", odd), ("pci", "sim:\"0\""), ("mode", "none")];
    assert_eq!(value(&samples, "intxd_interrupts_total", &l), Some(7.0));
    assert_eq!(
        value(&samples, "intxd_build_info", &[("version", "0.1.0\n\"x\"")]),
        Some(1.0)
    );
    assert_eq!(value(&samples, "intxd_uptime_seconds", &[]), Some(2.5));
}

/// `intxd check-config` on a main file holding `metrics`.
fn check_config(metrics: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("intxd.toml");
    std::fs::write(
        &file,
        format!("[daemon]\nsocket = \"/run/x.sock\"\n\n{metrics}"),
    )
    .unwrap();
    let out = Command::new(intxd_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.success(),
        text.replace(&dir.path().display().to_string(), "DIR"),
    )
}

#[test]
fn check_config_names_the_file_line_key_and_fix_of_a_bad_metrics_table() {
    let tf = tempfile::tempdir().unwrap();
    let good = format!(
        "[metrics]\ntextfile = \"{}/intxd.prom\"\n",
        tf.path().display()
    );
    let (ok, err) = check_config(&good);
    assert!(ok, "{err}");
    let cases = [
        (
            "[metrics]\ntextfile = \"intxd.prom\"\n".to_string(),
            "DIR/intxd.toml:5:12: metrics.textfile: `intxd.prom` is not an absolute path",
            "fix: give an absolute path",
        ),
        (
            "[metrics]\ntextfile = \"/nonexistent-intxd-dir/intxd.prom\"\n".into(),
            "DIR/intxd.toml:5:12: metrics.textfile: its directory /nonexistent-intxd-dir cannot be used",
            "fix: create the directory",
        ),
        (
            format!("[metrics]\ntextfile = \"{}/intxd.txt\"\n", tf.path().display()),
            "does not end in .prom",
            "fix: name the file NAME.prom",
        ),
        (
            format!("{good}interval_secs = 0\n"),
            "DIR/intxd.toml:6:17: metrics.interval_secs: 0 seconds is out of range",
            "fix: use 1 to 3600 (the default is 15)",
        ),
        (
            format!("{good}interval = 5\n"),
            "DIR/intxd.toml:6:1: metrics.interval: unknown field `interval`",
            "fix: remove the key",
        ),
    ];
    for (metrics, what, fix) in cases {
        let (ok, err) = check_config(&metrics);
        assert!(
            !ok && err.contains(what) && err.contains(fix),
            "{metrics}: {err}"
        );
    }
    // A drop-in may not hold it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices.d")).unwrap();
    std::fs::write(dir.path().join("intxd.toml"), "").unwrap();
    std::fs::write(dir.path().join("devices.d/a.toml"), &good).unwrap();
    let e = intxd::config::load(&dir.path().join("intxd.toml")).unwrap_err();
    assert_eq!(e.key(), Some("metrics"), "{e}");
    assert!(
        e.to_string()
            .contains("move the [metrics] table to the main config file"),
        "{e}"
    );
    let cfg = intxd::config::load_str(Path::new("x.toml"), &good).unwrap();
    assert_eq!(cfg.metrics.unwrap().interval_secs, 15);
}

#[test]
fn a_reload_turns_the_textfile_on_and_a_device_that_cannot_open_counts_a_failure() {
    // The sim host is not running: the emulated device fails to open.
    let d = DaemonProc::start_with(
        "[[device]]\nname = \"sim0\"\npci = \"sim:0\"\n",
        "sim_host = \"/nonexistent-intxd/sim.sock\"\n",
        &[],
    );
    let st = d.device("sim0");
    assert_eq!((st.state.as_str(), st.counters.failures), ("failed", 1));
    let samples = parse(&metrics_cli(&d.socket));
    assert_counters_match(&samples, &st, "none");

    let tf = tempfile::tempdir().unwrap();
    let textfile = tf.path().join("intxd.prom");
    let text = std::fs::read_to_string(&d.config).unwrap();
    let table = format!("[metrics]\ntextfile = \"{}\"\n", textfile.display());
    std::fs::write(&d.config, format!("{table}{text}")).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || textfile.exists()),
        "the reload did not start the textfile"
    );
    let file = parse(&std::fs::read_to_string(&textfile).unwrap());
    assert_counters_match(&file, &d.device("sim0"), "none");
}
