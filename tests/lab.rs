//! Lab reports (`intxd soak --report DIR`, `intxd::lab`): a short real soak
//! writes JSON lines per interval that add up to its runs' figures, and a
//! self-contained page that a real headless Chromium renders with the same
//! figures; a stuck device fails the soak and the report names its first
//! failing interval.
//!
//! Chromium comes from Debian (`tests/lab/setup.sh` installs it with apt
//! when it is missing; `.ci/run` installs it up front).

#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use intxd::lab::{IntervalRecord, Summary};

/// Chromium's path, installed by the set-up script if needed.
fn chromium() -> PathBuf {
    let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lab/setup.sh");
    let out = Command::new(&setup)
        .output()
        .expect("run tests/lab/setup.sh");
    assert!(
        out.status.success(),
        "tests/lab/setup.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Headless Chromium on `page` with `args`, in a fresh profile, offline.
fn browse(chromium: &Path, page: &Path, args: &[&str]) -> Output {
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The text of the element with `id` in a serialized DOM.
fn text_of<'d>(dom: &'d str, id: &str) -> &'d str {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element `{id}` in the rendered page"));
    let start = at + dom[at..].find('>').expect("tag end") + 1;
    let end = start + dom[start..].find('<').expect("text end");
    &dom[start..end]
}

fn soak(args: &[&str], dir: &Path) -> Output {
    Command::new(common::intxd_bin())
        .arg("soak")
        .args(args)
        .arg("--report")
        .arg(dir)
        .output()
        .expect("intxd soak")
}

fn read_report(dir: &Path) -> (Vec<IntervalRecord>, Summary) {
    let lines = fs::read_to_string(dir.join("intervals.jsonl")).expect("intervals.jsonl");
    let records = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("an interval record"))
        .collect();
    let summary =
        serde_json::from_str(&fs::read_to_string(dir.join("summary.json")).expect("summary"))
            .expect("summary.json");
    (records, summary)
}

#[test]
fn a_short_soak_writes_intervals_that_add_up_and_a_page_chromium_renders_with_them() {
    common::require_kvm();
    let chromium = chromium();
    let dir = tempfile::tempdir().expect("report dir");

    let out = soak(
        &[
            "--irqchip",
            "kernel",
            "--duration",
            "2",
            "--interval",
            "0.25",
        ],
        dir.path(),
    );

    assert!(
        out.status.success(),
        "soak failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (records, summary) = read_report(dir.path());
    assert_eq!(summary.intervals, records.len());
    assert_eq!(summary.first_failure, None);
    let res = summary.soak.resources.as_ref().expect("resources");
    assert_eq!(
        res.fds_after, res.fds_before,
        "the daemon's fds after the soak, exactly as before"
    );
    assert_eq!(summary.soak.runs.len(), 2);
    let numbers: Vec<usize> = records.iter().map(|r| r.interval).collect();
    assert_eq!(numbers, (1..=records.len()).collect::<Vec<_>>());
    for (i, run) in summary.soak.runs.iter().enumerate() {
        let mine: Vec<&IntervalRecord> = records.iter().filter(|r| r.run == i).collect();
        assert!(
            mine.len() >= 8,
            "run {i}: {} intervals of 0.25 s in 2 s",
            mine.len()
        );
        let sum = |f: fn(&IntervalRecord) -> u64| mine.iter().map(|r| f(r)).sum::<u64>();
        assert_eq!(sum(|r| r.delivered), run.delivered, "run {i}");
        // The device timed every interrupt the guest acked.
        assert_eq!(
            sum(|r| r.latency_hist.iter().sum()),
            run.delivered,
            "run {i}"
        );
        assert_eq!(
            (sum(|r| r.lost), sum(|r| r.spurious)),
            (run.lost, run.spurious)
        );
        for w in mine.windows(2) {
            assert_eq!(
                w[0].t_end_s, w[1].t_start_s,
                "run {i}: intervals are contiguous"
            );
        }
        for r in &mine {
            assert!(r.failures.is_empty(), "{r:?}");
            assert_eq!(r.mode, run.mode.to_string());
            assert!(r.daemon_fds > 0 && r.daemon_rss_kib > 0, "{r:?}");
            assert!(r.latency_us.p50 <= r.latency_us.p99 && r.latency_us.p99 <= r.latency_us.max);
        }
    }

    // Self-contained: no asset, no address but the SVG namespace.
    let page = dir.path().join("report.html");
    let html = fs::read_to_string(&page).expect("report.html");
    for banned in ["<link", " src=", "href=", "https:", "@import", "url("] {
        assert!(!html.contains(banned), "the page holds `{banned}`");
    }
    assert_eq!(
        html.matches("http://").count(),
        html.matches("http://www.w3.org/2000/svg").count()
    );

    // Chromium runs the page's script: its figures are the JSON lines'.
    let dom = String::from_utf8(browse(&chromium, &page, &["--dump-dom"]).stdout).expect("utf-8");
    assert!(
        dom.contains("data-rendered=\"yes\""),
        "the page's script did not finish"
    );
    assert_eq!(
        text_of(&dom, "verdict"),
        format!("PASS: {} intervals, none failed", records.len())
    );
    for (i, run) in summary.soak.runs.iter().enumerate() {
        let mine: Vec<&IntervalRecord> = records.iter().filter(|r| r.run == i).collect();
        assert_eq!(
            text_of(&dom, &format!("r{i}-intervals")),
            mine.len().to_string()
        );
        assert_eq!(
            text_of(&dom, &format!("r{i}-delivered")),
            run.delivered.to_string()
        );
        assert_eq!(
            text_of(&dom, &format!("r{i}-check")),
            format!("= {}", run.delivered)
        );
        let p99 = mine.iter().map(|r| r.latency_us.p99).fold(0.0, f64::max);
        assert_eq!(text_of(&dom, &format!("r{i}-p99")), format!("{p99:.1}"));
        assert_eq!(text_of(&dom, &format!("r{i}-lost")), "0");
        assert_eq!(text_of(&dom, &format!("r{i}-status")), "ok");
        assert!(
            dom.contains(&format!("class=\"rate\" data-points=\"{}\"", mine.len())),
            "run {i}: no rate line with {} points",
            mine.len()
        );
    }
    assert_eq!(dom.matches("class=\"rate\"").count(), 2);
    assert!(
        dom.matches("class=\"bar\"").count() >= 2,
        "no histogram bars"
    );

    let shot = dir.path().join("report.png");
    browse(
        &chromium,
        &page,
        &[
            "--window-size=1240,1250",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    let png = fs::read(&shot).expect("screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(
        png.len() > 20_000,
        "a {} byte screenshot is blank",
        png.len()
    );
}

#[test]
fn a_stuck_device_fails_the_soak_and_the_report_names_its_first_interval() {
    common::require_kvm();
    let chromium = chromium();
    let dir = tempfile::tempdir().expect("report dir");
    let config = dir.path().join("stuck.toml");
    fs::write(
        &config,
        "[daemon]\nsocket = \"/run/intxd/control.sock\"\n\n[[device]]\nname = \"stuck0\"\npci = \"sim:0\"\n\n[device.sim]\nafter_ack = \"ignore\"\n",
    )
    .expect("config");
    let report = dir.path().join("report");

    let out = soak(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--device",
            "stuck0",
            "--mode",
            "relay",
            "--irqchip",
            "kernel",
            "--duration",
            "1",
            "--interval",
            "0.25",
        ],
        &report,
    );

    assert_eq!(out.status.code(), Some(1));
    let (records, summary) = read_report(&report);
    let res = summary.soak.resources.as_ref().expect("resources");
    assert_eq!(
        res.fds_after, res.fds_before,
        "a failed soak leaves the daemon's fds exactly as before"
    );
    let first = summary.first_failure.expect("a first failing interval");
    assert_eq!(first.interval, 1);
    assert_eq!(first.run, "relay/kernel stuck0");
    assert!(
        first.failures[0].starts_with("the device acknowledged none of the"),
        "{first:?}"
    );
    assert_eq!(records[0].failures, first.failures);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("FAIL first failing {first}")),
        "{stdout}"
    );

    let dom =
        String::from_utf8(browse(&chromium, &report.join("report.html"), &["--dump-dom"]).stdout)
            .expect("utf-8");
    assert_eq!(
        text_of(&dom, "verdict"),
        format!(
            "FAIL: first failing interval 1 (relay/kernel stuck0, {:.1}-{:.1} s into the soak): {}",
            first.t_start_s,
            first.t_end_s,
            first.failures.join(", ")
        )
    );
    assert!(text_of(&dom, "r0-status").starts_with("FAIL ("));
    assert!(dom.contains("id=\"failing-table\""));
}

/// A pause shorter than the soak's stall bound is a host's, not a device's:
/// the intervals in it show no delivery and fail nothing (issue 11: beside
/// two busy loops KVM ran an injection 0.85 s late and a 0.25 s interval
/// failed the soak). The pause here is a real one: the daemon's test hook
/// holds the 100th relayed interrupt as a late `irqfd_inject` would, the
/// relay's EOI watchdog gives up on it after 700 ms, and the soak VMM
/// asserts the line itself (`delivery_overdue`); the daemon's control loop
/// keeps answering the recorder throughout.
#[test]
fn a_pause_shorter_than_the_stall_bound_shows_in_the_intervals_and_fails_nothing() {
    common::require_kvm();
    let d = common::DaemonProc::start_with(
        "[[device]]\nname = \"sim0\"\npci = \"sim:0\"\nmode = \"relay\"\n[device.relay]\neoi_timeout_ms = 700\n",
        "",
        &[("INTXD_TEST_HOOKS", "1"), ("INTXD_TEST_LATE_IRQFD", "100")],
    );
    let dir = tempfile::tempdir().expect("report dir");
    let out = soak(
        &[
            "--connect",
            d.socket.to_str().expect("utf-8"),
            "--config",
            d.config.to_str().expect("utf-8"),
            "--device",
            "sim0",
            "--mode",
            "relay",
            "--irqchip",
            "kernel",
            "--duration",
            "2",
            "--interval",
            "0.2",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "soak failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (records, summary) = read_report(dir.path());
    assert_eq!(summary.first_failure, None, "{records:?}");
    let run = &summary.soak.runs[0];
    assert!(
        run.recovered >= 1,
        "the held interrupt was recovered: {run:?}"
    );
    // The pause: intervals within the run without a delivery, at least two
    // of the 0.2 s in the watchdog's 700 ms.
    let quiet: Vec<&IntervalRecord> = records[..records.len() - 1]
        .iter()
        .filter(|r| r.delivered == 0)
        .collect();
    assert!(
        quiet.len() >= 2,
        "intervals without a delivery: {records:?}"
    );
    assert!(quiet.iter().all(|r| r.failures.is_empty()), "{quiet:?}");
    assert_eq!(
        records.iter().map(|r| r.delivered).sum::<u64>(),
        run.delivered
    );
    assert_eq!((run.lost, run.spurious), (0, 0), "{run:?}");
}
