//! The interval recorder: called from the soak's duration loop, it samples
//! the daemon at each interval boundary and turns the differences into
//! [`IntervalRecord`]s.
//!
//! The guest's count comes from the soak itself (the `progress` callback's
//! argument), so the records' `delivered` add up exactly to the run's. The
//! device-side and daemon figures come from a `status` request on the
//! recorder's own connection: one daemon wakeup per interval.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{IntervalLatency, IntervalRecord, LabError, Summary};
use crate::control::client::{Client, ClientError};
use crate::control::proto::Reply;
use crate::soak::{RunReport, SoakReport};
use crate::util::latency::latency_bucket_upper_us;

/// Cumulative figures at one point.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// The emulated device's acks; `None` for a real function.
    acked: Option<u64>,
    spurious: u64,
    hist: Vec<u64>,
    storms: u64,
    rearms: u64,
    rss_kib: u64,
    fds: usize,
}

/// The run being recorded.
struct RunState {
    run: usize,
    device: String,
    mode: String,
    irqchip: String,
    /// Soak time at the run's start, seconds.
    t0: f64,
    next: f64,
    last: Sample,
    last_count: u64,
    last_elapsed: f64,
    seen_count: u64,
    seen_elapsed: f64,
    /// The run's elapsed time at its last delivery (its start before one).
    moved_elapsed: f64,
    first: usize,
}

/// Records a soak's intervals. One per soak; [`begin_run`](Self::begin_run)
/// before each run, [`progress`](Self::progress) from its duration loop,
/// [`end_run`](Self::end_run) with its report, [`finish`](Self::finish) at
/// the end.
pub struct Recorder {
    client: Client,
    interval: Duration,
    /// How long without a delivery an interval must end before it fails
    /// as stalled: the soak's own stall bound.
    stall: Duration,
    t0: Instant,
    records: Vec<IntervalRecord>,
    cur: Option<RunState>,
}

impl Recorder {
    /// Connects to the daemon at `socket`; intervals of `interval`.
    pub fn connect(socket: &Path, interval: Duration) -> Result<Recorder, ClientError> {
        let mut client = Client::connect(socket)?;
        client.hello("intxd-soak-report")?;
        Ok(Recorder {
            client,
            interval,
            stall: crate::soak::guest::STALL_BOUND,
            t0: Instant::now(),
            records: Vec::new(),
            cur: None,
        })
    }

    /// Counts the soak's time from `t0` (a soak of several devices has one
    /// recorder per device, all on the same clock).
    pub fn starting_at(mut self, t0: Instant) -> Recorder {
        self.t0 = t0;
        self
    }

    /// Fails an interval as stalled only once the run has gone `stall`
    /// without a delivery (the soak's `--stall`, whose default is
    /// [`STALL_BOUND`](crate::soak::guest::STALL_BOUND)): an interval without
    /// a delivery that is shorter than that is a host's pause (a loaded
    /// machine's scheduler, a page-cache flush), which its `delivered` of 0
    /// shows, not a device's failure.
    pub fn with_stall(mut self, stall: Duration) -> Recorder {
        self.stall = stall;
        self
    }

    /// The records so far.
    pub fn records(&self) -> &[IntervalRecord] {
        &self.records
    }

    /// The interval length.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Its records, for [`finish_all`](super::finish_all).
    pub fn into_records(self) -> Vec<IntervalRecord> {
        self.records
    }

    /// Starts run number `run` of `device`, before its attach.
    pub fn begin_run(&mut self, run: usize, device: &str, mode: &str, irqchip: &str) {
        let mut last = self.sample(device);
        // An attach starts the emulated device's counters from zero.
        last.spurious = 0;
        last.hist = Vec::new();
        last.acked = last.acked.map(|_| 0);
        self.cur = Some(RunState {
            run,
            device: device.to_string(),
            mode: mode.to_string(),
            irqchip: irqchip.to_string(),
            t0: self.t0.elapsed().as_secs_f64(),
            next: self.interval.as_secs_f64(),
            last,
            last_count: 0,
            last_elapsed: 0.0,
            seen_count: 0,
            seen_elapsed: 0.0,
            moved_elapsed: 0.0,
            first: self.records.len(),
        });
    }

    /// The duration loop's callback: the guest's count and the run's
    /// elapsed time. Writes a record when an interval boundary has passed.
    pub fn progress(&mut self, count: u64, elapsed: Duration) {
        let Some(st) = self.cur.as_mut() else { return };
        if count > st.seen_count {
            st.moved_elapsed = elapsed.as_secs_f64();
        }
        st.seen_count = count;
        st.seen_elapsed = elapsed.as_secs_f64();
        if st.seen_elapsed >= st.next {
            let step = self.interval.as_secs_f64();
            while st.next <= st.seen_elapsed {
                st.next += step;
            }
            self.close_interval(None);
        }
    }

    /// Ends the run with its report: the last (partial) interval, and the
    /// figures only the end knows (lost cycles; the run's exact spurious
    /// and storm counts, which the intervals then add up to).
    pub fn end_run(&mut self, report: &RunReport) {
        self.close_interval(Some(report));
        if let Some(st) = self.cur.take() {
            for r in &mut self.records[st.first..] {
                r.mode = report.mode.to_string();
            }
        }
    }

    /// Writes the report into `dir` and returns its summary.
    pub fn finish(self, dir: &Path, soak: &SoakReport) -> Result<Summary, LabError> {
        super::finish_all(dir, self.interval, vec![(self, 0)], soak)
    }

    fn close_interval(&mut self, end: Option<&RunReport>) {
        let Some(device) = self.cur.as_ref().map(|s| s.device.clone()) else {
            return;
        };
        let now = self.sample(&device);
        let number = self.records.len() + 1;
        let Some(st) = self.cur.as_mut() else { return };
        let has_time = st.seen_elapsed > st.last_elapsed || st.seen_count > st.last_count;
        if end.is_none() && !has_time {
            return;
        }
        if end.is_some() && !has_time && self.records.len() > st.first {
            // Nothing happened since the last boundary: fold the end's
            // figures into the run's last record.
            let last = self.records.len() - 1;
            let before = sums(&self.records[st.first..last]);
            apply_end(&mut self.records[last], before, end);
            return;
        }
        let dt = (st.seen_elapsed - st.last_elapsed).max(1e-9);
        let delivered = st.seen_count.saturating_sub(st.last_count);
        let hist = diff(&now.hist, &st.last.hist);
        let mut r = IntervalRecord {
            interval: number,
            run: st.run,
            device: st.device.clone(),
            mode: st.mode.clone(),
            irqchip: st.irqchip.clone(),
            t_start_s: st.t0 + st.last_elapsed,
            t_end_s: st.t0 + st.seen_elapsed,
            delivered,
            rate_per_s: delivered as f64 / dt,
            latency_us: percentiles(&hist),
            latency_hist: hist,
            lost: 0,
            spurious: now.spurious.saturating_sub(st.last.spurious),
            storms: now.storms.saturating_sub(st.last.storms),
            watchdog_rearms: now.rearms.saturating_sub(st.last.rearms),
            daemon_rss_kib: now.rss_kib,
            daemon_fds: now.fds,
            failures: Vec::new(),
        };
        let quiet = st.seen_elapsed - st.moved_elapsed;
        if end.is_none() && delivered == 0 && quiet >= self.stall.as_secs_f64() {
            r.failures.push(format!(
                "stalled: no interrupt delivered for {quiet:.1} s (the stall bound is {:.1} s)",
                self.stall.as_secs_f64()
            ));
        }
        let acked = now
            .acked
            .map(|a| a.saturating_sub(st.last.acked.unwrap_or(0)));
        if acks_stopped(acked, delivered, now.acked, st.seen_count) {
            r.failures.push(format!(
                "the device acknowledged none of the {delivered} interrupts delivered (its line stays high)"
            ));
        }
        st.last_count = st.seen_count;
        st.last_elapsed = st.seen_elapsed;
        // Figures of a route can vanish with its detach: keep the highest.
        st.last = Sample {
            acked: now.acked.max(st.last.acked),
            spurious: now.spurious.max(st.last.spurious),
            storms: now.storms.max(st.last.storms),
            rearms: now.rearms.max(st.last.rearms),
            ..now
        };
        let before = sums(&self.records[st.first..]);
        apply_end(&mut r, before, end);
        self.records.push(r);
        if end.is_none() {
            if let Some(f) = self.records.last().filter(|r| !r.failures.is_empty()) {
                log::warn!(
                    "soak report: interval {} failed: {}",
                    f.interval,
                    f.failures.join(", ")
                );
            }
        }
    }

    /// The daemon's figures for `device` now; the last ones (or zeros)
    /// when the status request fails, which is logged.
    fn sample(&mut self, device: &str) -> Sample {
        let status = match self.client.status() {
            Ok(Reply::Status { daemon, devices }) => (daemon, devices),
            Ok(other) => {
                log::warn!("soak report: unexpected reply to status: {other:?}");
                return Sample::default();
            }
            Err(e) => {
                log::warn!("soak report: status: {}", crate::util::error::chain(&e));
                return Sample::default();
            }
        };
        let (daemon, devices) = status;
        let rss_kib = crate::util::proc::figures(Some(daemon.pid))
            .map(|f| f.rss_bytes / 1024)
            .unwrap_or(0);
        let mut s = Sample {
            rss_kib,
            fds: daemon.fds,
            ..Sample::default()
        };
        if let Some(d) = devices.into_iter().find(|d| d.name == device) {
            let c = d.counters;
            let relay = c.relay.unwrap_or_default();
            s.acked = c.sim.as_ref().map(|x| x.acked);
            let sim = c.sim.unwrap_or_default();
            s.spurious = sim.spurious_acks;
            s.hist = sim.latency_hist;
            s.storms = relay.storms + c.storm_seconds;
            s.rearms = relay.watchdog_fires + c.safety_unmasks;
        }
        s
    }
}

/// Whether an interval shows a device that stopped acknowledging: none of
/// its `delivered` interrupts acked (`acked`, the interval's acks), and the
/// device's count of the run's acks (`acked_total`) behind the guest's
/// count (`seen`) by more than one.
///
/// The interval's own figures alone do not say it. The guest's count is
/// taken at the boundary and the device's a status request later, while
/// the VM runs on, so the acks of interrupts delivered after a boundary
/// can be counted in the interval before it: an interval can show a few
/// deliveries and no acks from a device that acked them all. But every
/// delivery after the first needs an unmask, and the emulated device's
/// unmask takes its pending acks first, so a device that acks has acked
/// all but at most one of the interrupts delivered so far.
fn acks_stopped(acked: Option<u64>, delivered: u64, acked_total: Option<u64>, seen: u64) -> bool {
    acked == Some(0) && delivered > 0 && acked_total.is_some_and(|a| a.saturating_add(1) < seen)
}

/// Puts a run's end figures into its last record: lost cycles, and
/// spurious and storm counts topped up to the run's exact totals (`before`:
/// the sums of the run's earlier records).
fn apply_end(r: &mut IntervalRecord, before: (u64, u64), end: Option<&RunReport>) {
    let Some(report) = end else { return };
    let (spurious_before, storms_before) = before;
    r.lost = report.lost;
    r.spurious = report.spurious.saturating_sub(spurious_before);
    r.storms = report.storms.max(storms_before) - storms_before;
    r.failures.retain(|f| !f.starts_with("stalled"));
    if r.lost > 0 {
        r.failures.push(format!("{} lost", r.lost));
    }
    if r.spurious > 0 {
        r.failures.push(format!("{} spurious", r.spurious));
    }
    if r.failures.is_empty() && !report.is_clean() {
        r.failures.push(format!(
            "delivered {} of {} cycles",
            report.delivered, report.cycles
        ));
    }
}

/// (spurious, storms) summed over `records`.
fn sums(records: &[IntervalRecord]) -> (u64, u64) {
    records
        .iter()
        .fold((0, 0), |(s, t), r| (s + r.spurious, t + r.storms))
}

/// `a - b` bucket by bucket (`b` may be shorter, or empty).
fn diff(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter()
        .enumerate()
        .map(|(i, v)| v.saturating_sub(b.get(i).copied().unwrap_or(0)))
        .collect()
}

/// Percentiles off a bucket histogram: the upper edge of the bucket that
/// holds each rank.
fn percentiles(hist: &[u64]) -> IntervalLatency {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return IntervalLatency::default();
    }
    let at = |q: f64| {
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return latency_bucket_upper_us(i);
            }
        }
        latency_bucket_upper_us(hist.len().saturating_sub(1))
    };
    let max = hist
        .iter()
        .rposition(|&n| n > 0)
        .map_or(0.0, latency_bucket_upper_us);
    IntervalLatency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max,
    }
}

#[cfg(test)]
mod tests {
    use super::acks_stopped;

    #[test]
    fn an_interval_whose_acks_the_last_sample_took_early_is_not_a_stuck_device() {
        // Seen beside two busy loops: the run's last interval held 6
        // deliveries whose acks the boundary's later status had counted.
        assert!(!acks_stopped(Some(0), 6, Some(4000), 4000));
        // One ack in flight is not a stop either.
        assert!(!acks_stopped(Some(0), 1, Some(3999), 4000));
        // A device that acks nothing while the guest takes its interrupts.
        assert!(acks_stopped(Some(0), 50, Some(0), 50));
        assert!(acks_stopped(Some(0), 3, Some(10), 13));
        // A real function keeps no ack count; nothing delivered, nothing
        // to ack.
        assert!(!acks_stopped(None, 50, None, 50));
        assert!(!acks_stopped(Some(0), 0, Some(0), 50));
    }
}
