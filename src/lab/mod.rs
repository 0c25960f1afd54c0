//! Lab reports of `intxd soak --report DIR`: what a hardware team archives
//! and looks at after a soak of hours.
//!
//! The soak's duration loop calls a [`Recorder`] about every 100 ms; at
//! each interval boundary it samples the daemon (a `status` request on a
//! connection of its own) and writes one [`IntervalRecord`]. At the end
//! [`Recorder::finish`] writes the directory:
//!
//! - `intervals.jsonl`: one [`IntervalRecord`] per line, in time order;
//! - `summary.json`: the [`Summary`]: the soak's runs, the first failing
//!   interval, the histogram's bucket edges;
//! - `report.html`: one self-contained page (no external assets, no network)
//!   whose script draws inline SVG plots from the same records: rate over
//!   time and the latency histogram, per device, and the daemon's memory and
//!   fds.
//!
//! Files: `recorder.rs` (sampling and the records), `html.rs` (the page),
//! `page.html` (its template).

mod html;
mod recorder;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::soak::SoakReport;

pub use recorder::Recorder;

/// Errors of the report writer.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The report directory or one of its files could not be written.
    #[error("cannot write the lab report {path}; check that the directory is writable")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode the lab report's {what}")]
    Encode {
        /// What.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Latency percentiles of one interval, microseconds, read off the
/// interval's histogram: each is the upper edge of the bucket that holds
/// it, at most 19 % above the exact value. 0 when nothing was timed (a
/// real function's soak has no host-side timestamps).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct IntervalLatency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// One interval of one run: one line of `intervals.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IntervalRecord {
    /// 1-based number of the interval in the whole soak.
    pub interval: usize,
    /// 0-based index of the run (mode × irqchip) in the soak.
    pub run: usize,
    /// The device.
    pub device: String,
    /// The route mode the daemon chose for the run.
    pub mode: String,
    /// The soak VM's interrupt controller.
    pub irqchip: String,
    /// Start, seconds since the soak began.
    pub t_start_s: f64,
    /// End, seconds since the soak began.
    pub t_end_s: f64,
    /// Interrupts the guest's ISR counted in the interval.
    pub delivered: u64,
    /// `delivered` per second of the interval.
    pub rate_per_s: f64,
    /// Raise-to-ack latency in the interval.
    pub latency_us: IntervalLatency,
    /// The interval's raise-to-ack latencies per bucket
    /// ([`Summary::latency_bucket_upper_us`]); empty for a real function.
    pub latency_hist: Vec<u64>,
    /// Cycles lost. Known only at the end of a run, so only a run's last
    /// interval can carry them.
    pub lost: u64,
    /// Spurious acknowledgements (the device's line was already low).
    pub spurious: u64,
    /// Storms: relay storm-limiter engagements, plus seconds in which the
    /// health scan saw a storm on a direct route.
    pub storms: u64,
    /// Re-arms of a line whose EOI was lost: the relay's EOI watchdog
    /// firings plus the health scan's safety unmasks.
    pub watchdog_rearms: u64,
    /// The daemon's resident memory at the interval's end, KiB.
    pub daemon_rss_kib: u64,
    /// The daemon's open fds at the interval's end.
    pub daemon_fds: usize,
    /// Why the interval failed (empty when it passed): lost or spurious
    /// interrupts, or none delivered in a whole interval (a stall).
    pub failures: Vec<String>,
}

/// Where and why a soak first failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstFailure {
    /// The interval's number ([`IntervalRecord::interval`]).
    pub interval: usize,
    /// Its run, device, mode and irqchip, as `direct/kernel sim0`.
    pub run: String,
    /// Its start, seconds since the soak began.
    pub t_start_s: f64,
    /// Its end.
    pub t_end_s: f64,
    /// Why it failed.
    pub failures: Vec<String>,
}

impl std::fmt::Display for FirstFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "interval {} ({}, {:.1}-{:.1} s into the soak): {}",
            self.interval,
            self.run,
            self.t_start_s,
            self.t_end_s,
            self.failures.join(", ")
        )
    }
}

/// `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The interval length asked for, seconds.
    pub interval_s: f64,
    /// How many intervals were recorded.
    pub intervals: usize,
    /// The first failing interval, if any.
    pub first_failure: Option<FirstFailure>,
    /// The upper edges of the latency histogram's buckets, microseconds.
    pub latency_bucket_upper_us: Vec<f64>,
    /// The soak's own report (its runs and the daemon's resources).
    pub soak: SoakReport,
}

/// The first record with a failure, in time order.
pub fn first_failure(records: &[IntervalRecord]) -> Option<FirstFailure> {
    records
        .iter()
        .find(|r| !r.failures.is_empty())
        .map(|r| FirstFailure {
            interval: r.interval,
            run: format!("{}/{} {}", r.mode, r.irqchip, r.device),
            t_start_s: r.t_start_s,
            t_end_s: r.t_end_s,
            failures: r.failures.clone(),
        })
}

/// Writes the report of a soak whose devices each had a recorder into
/// `dir`, and returns its summary. Each recorder comes with the index in
/// `soak.runs` of its device's first run (its records count runs from 0);
/// the records of all devices are put in time order and numbered again.
pub fn finish_all(
    dir: &std::path::Path,
    interval: std::time::Duration,
    recorders: Vec<(Recorder, usize)>,
    soak: &SoakReport,
) -> Result<Summary, LabError> {
    let mut records: Vec<IntervalRecord> = recorders
        .into_iter()
        .flat_map(|(r, first_run)| {
            r.into_records().into_iter().map(move |mut rec| {
                rec.run += first_run;
                rec
            })
        })
        .collect();
    records.sort_by(|a, b| a.t_start_s.total_cmp(&b.t_start_s).then(a.run.cmp(&b.run)));
    for (i, r) in records.iter_mut().enumerate() {
        r.interval = i + 1;
    }
    let summary = Summary {
        interval_s: interval.as_secs_f64(),
        intervals: records.len(),
        first_failure: first_failure(&records),
        latency_bucket_upper_us: (0..crate::util::latency::LATENCY_BUCKETS)
            .map(crate::util::latency::latency_bucket_upper_us)
            .collect(),
        soak: soak.clone(),
    };
    write(dir, &records, &summary)?;
    Ok(summary)
}

/// Writes `intervals.jsonl`, `summary.json` and `report.html` into `dir`
/// (created if missing).
pub fn write(
    dir: &std::path::Path,
    records: &[IntervalRecord],
    summary: &Summary,
) -> Result<(), LabError> {
    let w = |path: PathBuf, data: &[u8]| {
        std::fs::write(&path, data).map_err(|source| LabError::Write { path, source })
    };
    std::fs::create_dir_all(dir).map_err(|source| LabError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let enc = |what| move |source| LabError::Encode { what, source };
    let mut lines = String::new();
    for r in records {
        lines.push_str(&serde_json::to_string(r).map_err(enc("interval records"))?);
        lines.push('\n');
    }
    w(dir.join("intervals.jsonl"), lines.as_bytes())?;
    let s = serde_json::to_string_pretty(summary).map_err(enc("summary"))?;
    w(dir.join("summary.json"), s.as_bytes())?;
    let page = html::page(records, summary).map_err(enc("page data"))?;
    w(dir.join("report.html"), page.as_bytes())
}
