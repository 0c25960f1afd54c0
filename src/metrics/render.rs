//! The text exposition format 0.0.4: `# HELP` and `# TYPE` once per
//! family, its samples together, label values escaped (backslash, double
//! quote, newline), counters named `*_total`, times in seconds.

use std::fmt::Write;

use crate::control::proto::{DaemonStatus, DeviceStatus};
use crate::util::latency::{latency_bucket_upper_us, LATENCY_BUCKETS};

/// The media type of the exposition (what a scrape's `Content-Type` says).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A relay route's interrupt-to-EOI latency.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySample {
    /// Counts in the fixed quarter-octave buckets of
    /// [`crate::util::latency::latency_buckets`].
    pub buckets: Vec<u64>,
    /// The sum of every sample, seconds.
    pub sum_secs: f64,
}

/// One device as the exposition shows it.
#[derive(Debug, Clone)]
pub struct DeviceSample {
    /// Its `status` entry (name, address, mode, counters).
    pub status: DeviceStatus,
    /// Its relay route's latency histogram (relay routes only).
    pub latency: Option<LatencySample>,
}

/// Everything one exposition shows.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The daemon, as `status` shows it.
    pub daemon: DaemonStatus,
    /// Every listed device.
    pub devices: Vec<DeviceSample>,
}

/// A per-device counter: its name, help, and where `status` keeps it
/// (`None`: the device's route does not have it).
struct Family {
    name: &'static str,
    help: &'static str,
    value: fn(&DeviceStatus) -> Option<u64>,
}

/// The per-device counters, in exposition order.
const COUNTERS: &[Family] = &[
    Family {
        name: "intxd_interrupts_total",
        help: "Host-side interrupts of the device (/proc/interrupts, or the emulated device's triggers).",
        value: |d| Some(d.counters.host_interrupts),
    },
    Family {
        name: "intxd_attaches_total",
        help: "Attaches of the device since the daemon started.",
        value: |d| Some(d.counters.attaches),
    },
    Family {
        name: "intxd_detaches_total",
        help: "Detaches of the device since the daemon started (by request, by a VMM that went away, or by the daemon).",
        value: |d| Some(d.counters.detaches),
    },
    Family {
        name: "intxd_failures_total",
        help: "Times the device could not be brought up or went away.",
        value: |d| Some(d.counters.failures),
    },
    Family {
        name: "intxd_storm_seconds_total",
        help: "Seconds in which a direct route's host interrupt rate was above the device's storm_rate.",
        value: |d| Some(d.counters.storm_seconds),
    },
    Family {
        name: "intxd_safety_unmasks_total",
        help: "Safety unmasks of direct routes whose interrupts stopped.",
        value: |d| Some(d.counters.safety_unmasks),
    },
    Family {
        name: "intxd_stuck_lines_total",
        help: "Stuck lines the health scan found on direct routes (PCI status showed the interrupt asserted scan after scan with no progress).",
        value: |d| Some(d.counters.stuck_lines),
    },
    Family {
        name: "intxd_relayed_interrupts_total",
        help: "Interrupts the relay carried to the VMM (relay routes; restarts at each attach).",
        value: |d| d.counters.relay.as_ref().map(|r| r.relayed),
    },
    Family {
        name: "intxd_eois_total",
        help: "EOIs the relay carried back to the device (relay routes; restarts at each attach).",
        value: |d| d.counters.relay.as_ref().map(|r| r.eois),
    },
    Family {
        name: "intxd_storms_total",
        help: "Times the relay's storm limiter held the line masked (relay routes; restarts at each attach).",
        value: |d| d.counters.relay.as_ref().map(|r| r.storms),
    },
    Family {
        name: "intxd_eoi_watchdog_fires_total",
        help: "Times the relay's EOI watchdog fired; each re-armed the line unless watchdog = \"log\" (relay routes; restarts at each attach).",
        value: |d| d.counters.relay.as_ref().map(|r| r.watchdog_fires),
    },
];

/// The histogram's finite `le` edges: every fourth quarter-octave edge
/// (1, 2, 4 ... 2^20 µs), the last one below the open-ended top bucket.
const OCTAVES: usize = (LATENCY_BUCKETS - 2) / 4;

/// The exposition of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::with_capacity(512 + s.devices.len() * 2048);
    let d = &s.daemon;
    let version = [("version", d.version.as_str())];
    header(
        &mut out,
        "intxd_build_info",
        "gauge",
        "The running intxd's version (always 1).",
    );
    sample(&mut out, "intxd_build_info", &version, "1");
    let gauges: [(&str, &str, String); 3] = [
        (
            "intxd_uptime_seconds",
            "Seconds since the daemon started.",
            num(d.uptime_s),
        ),
        (
            "intxd_connections",
            "Open control-socket connections.",
            d.connections.to_string(),
        ),
        (
            "intxd_open_fds",
            "File descriptors the daemon holds.",
            d.fds.to_string(),
        ),
    ];
    for (name, help, value) in &gauges {
        header(&mut out, name, "gauge", help);
        sample(&mut out, name, &[], value);
    }
    header(
        &mut out,
        "intxd_loop_wakeups_total",
        "counter",
        "Event-loop wakeups (returns from epoll_wait).",
    );
    sample(
        &mut out,
        "intxd_loop_wakeups_total",
        &[],
        &d.loop_wakeups.to_string(),
    );
    let name = "intxd_device_attached";
    header(
        &mut out,
        name,
        "gauge",
        "1 while a VMM holds the device, else 0.",
    );
    for dev in &s.devices {
        let held = u8::from(dev.status.owner.is_some());
        sample(&mut out, name, &labels(&dev.status), &held.to_string());
    }
    for f in COUNTERS {
        let values: Vec<_> = s
            .devices
            .iter()
            .filter_map(|dev| Some((&dev.status, (f.value)(&dev.status)?)))
            .collect();
        if values.is_empty() {
            continue;
        }
        header(&mut out, f.name, "counter", f.help);
        for (st, v) in values {
            sample(&mut out, f.name, &labels(st), &v.to_string());
        }
    }
    latency(&mut out, &s.devices);
    out
}

/// `intxd_eoi_latency_seconds`: one histogram per relay route.
fn latency(out: &mut String, devices: &[DeviceSample]) {
    let name = "intxd_eoi_latency_seconds";
    let mut first = true;
    for dev in devices {
        let Some(h) = &dev.latency else { continue };
        if std::mem::take(&mut first) {
            header(
                out,
                name,
                "histogram",
                "Interrupt-to-EOI latency of relay routes, seconds (restarts at each attach).",
            );
        }
        let base = labels(&dev.status);
        let total: u64 = h.buckets.iter().sum();
        for k in 0..=OCTAVES {
            // Buckets 0..=4k lie below 2^k µs.
            let below: u64 = h.buckets.iter().take(4 * k + 1).sum();
            let le = num(latency_bucket_upper_us(4 * k) / 1e6);
            let mut l = base.clone();
            l.push(("le", le.as_str()));
            sample(out, &format!("{name}_bucket"), &l, &below.to_string());
        }
        let mut l = base.clone();
        l.push(("le", "+Inf"));
        sample(out, &format!("{name}_bucket"), &l, &total.to_string());
        sample(out, &format!("{name}_sum"), &base, &num(h.sum_secs));
        sample(out, &format!("{name}_count"), &base, &total.to_string());
    }
}

/// A device's labels: `device`, `pci`, and `mode` (`none` unless attached).
fn labels(d: &DeviceStatus) -> Vec<(&'static str, &str)> {
    let mode = match d.mode {
        Some(crate::route::Mode::Direct) => "direct",
        Some(crate::route::Mode::Relay) => "relay",
        None => "none",
    };
    vec![
        ("device", d.name.as_str()),
        ("pci", d.pci.as_str()),
        ("mode", mode),
    ]
}

/// `# HELP` (backslash and newline escaped) and `# TYPE`.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', r"\\").replace('\n', r"\n");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value as the format writes it: `\` `"` and newline escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str(r"\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str(r"\n"),
            c => s.push(c),
        }
    }
    s
}

/// A float as the format writes it (`NaN`, `+Inf`, `-Inf` spelled out).
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::control::proto::{DeviceCounters, DeviceState};

    fn device(name: &str) -> DeviceStatus {
        DeviceStatus {
            name: name.into(),
            pci: "sim:0".into(),
            state: DeviceState::Attached,
            mode: Some(crate::route::Mode::Relay),
            owner: None,
            facts: None,
            failure: None,
            warning: None,
            intx: None,
            counters: DeviceCounters::default(),
        }
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        assert_eq!(escape_label("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
        let mut out = String::new();
        sample(&mut out, "m", &[("device", "x\"y")], "1");
        assert_eq!(out, "m{device=\"x\\\"y\"} 1\n");
    }

    #[test]
    fn the_histogram_is_cumulative_in_seconds_and_ends_with_inf_sum_and_count() {
        let mut buckets = vec![0u64; LATENCY_BUCKETS];
        buckets[0] = 1; // below 1 µs
        buckets[4 * 4] = 2; // [2^3.75, 2^4) µs: below 16 µs
        buckets[4 * 4 + 1] = 3; // above 16 µs
        buckets[LATENCY_BUCKETS - 1] = 4; // above 2^20.75 µs
        let snap = Snapshot {
            daemon: DaemonStatus {
                version: "v".into(),
                pid: 1,
                uptime_s: 1.5,
                loop_wakeups: 0,
                connections: 0,
                fds: 0,
                capabilities: Default::default(),
            },
            devices: vec![DeviceSample {
                status: device("d"),
                latency: Some(LatencySample {
                    buckets,
                    sum_secs: 0.25,
                }),
            }],
        };
        let text = render(&snap);
        let at = |le: &str| {
            let key = format!("intxd_eoi_latency_seconds_bucket{{device=\"d\",pci=\"sim:0\",mode=\"relay\",le=\"{le}\"}} ");
            let line = text.lines().find(|l| l.starts_with(&key)).unwrap();
            line[key.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(at("0.000001"), 1);
        assert_eq!(at("0.000008"), 1);
        assert_eq!(at("0.000016"), 3);
        assert_eq!(at("0.000032"), 6);
        assert_eq!(at("1.048576"), 6);
        assert_eq!(at("+Inf"), 10);
        assert!(text.contains(
            "intxd_eoi_latency_seconds_sum{device=\"d\",pci=\"sim:0\",mode=\"relay\"} 0.25\n"
        ));
        assert!(text.contains(
            "intxd_eoi_latency_seconds_count{device=\"d\",pci=\"sim:0\",mode=\"relay\"} 10\n"
        ));
        assert_eq!(
            text.matches("# TYPE intxd_eoi_latency_seconds histogram")
                .count(),
            1
        );
    }
}
