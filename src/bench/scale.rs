//! Scale: N relay routes at once, each held by its own client connection.
//!
//! The clients are userspace-irqchip VMMs without a guest: one driver thread
//! waits on every irq eventfd and, for each interrupt, does what a guest ISR
//! and its interrupt controller would: ack the device, then signal the
//! resample eventfd (the EOI). 256 of them fit on two cores.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use super::proc_daemon::DaemonProcess;
use super::{BenchError, BenchOptions};
use crate::control::client::{attach_user_irqchip, Attachment, Client};
use crate::control::proto::{ModeRequest, Reply};
use crate::util::fd::owned_into_eventfd;

/// One scale step.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleStep {
    /// Devices attached at once.
    pub devices: usize,
    /// Interrupts per second, all devices together.
    pub irqs_per_s: f64,
    /// Median over devices of each device's p99 latency (raise to ack), µs.
    pub p99_us_median_device: f64,
    /// Worst device's p99 latency, µs.
    pub p99_us_worst_device: f64,
    /// Attach round trip p50, ms.
    pub attach_ms_p50: f64,
    /// Attach round trip p99, ms.
    pub attach_ms_p99: f64,
    /// Detach round trip p50, ms.
    pub detach_ms_p50: f64,
    /// Detach round trip p99, ms.
    pub detach_ms_p99: f64,
    /// Daemon RSS with every device attached, MiB.
    pub rss_mib: f64,
    /// Daemon fds with every device attached.
    pub fds_attached: usize,
    /// Daemon fds before the first attach.
    pub fds_baseline: usize,
    /// Daemon fds after every client detached and left.
    pub fds_after: usize,
    /// `fds_after == fds_baseline`.
    pub fds_back_to_baseline: bool,
}

struct Held {
    att: Attachment,
    ack: EventFd,
}

/// Runs every step of `opts.scale`.
pub fn run(
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<ScaleStep>, BenchError> {
    let max = opts.scale.iter().copied().max().unwrap_or(0);
    let mut devices = String::new();
    for i in 0..max {
        devices.push_str(&format!(
            "[[device]]\nname = \"s{i}\"\npci = \"sim:{i}\"\nmode = \"relay\"\n[device.relay]\nstorm_rate = 0\n"
        ));
    }
    let daemon = DaemonProcess::start(&opts.exe, &devices)?;
    let mut steps = Vec::new();
    for &n in &opts.scale {
        progress(&format!("scale: {n} devices"));
        steps.push(step(&daemon, n, Duration::from_secs_f64(opts.scale_secs))?);
    }
    Ok(steps)
}

fn step(daemon: &DaemonProcess, n: usize, secs: Duration) -> Result<ScaleStep, BenchError> {
    let fds_baseline = daemon.settled_fds();
    let mut held = Vec::with_capacity(n);
    let mut attach_ms = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let mut att = attach_user_irqchip(&daemon.socket, &format!("s{i}"), ModeRequest::Relay)?;
        attach_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let ack = owned_into_eventfd(att.device_fds.remove(0));
        let doorbell = owned_into_eventfd(att.device_fds.remove(0));
        // Keep every device raising for the whole step.
        doorbell
            .write(1 << 40)
            .map_err(|e| BenchError::Daemon(format!("doorbell: {e}")))?;
        held.push(Held { att, ack });
    }
    let (rss, fds_attached) = daemon.rss_and_fds();
    let before = acked(daemon)?;
    let t0 = Instant::now();
    drive(&held, secs).map_err(|e| BenchError::Daemon(format!("driver: {e}")))?;
    let elapsed = t0.elapsed();
    let after = acked(daemon)?;
    let (p99s, total): (Vec<f64>, u64) = {
        let mut p = Vec::new();
        let mut total = 0;
        for i in 0..n {
            let name = format!("s{i}");
            let a = after
                .iter()
                .find(|d| d.0 == name)
                .map(|d| (d.1, d.2))
                .unwrap_or((0, 0.0));
            let b = before
                .iter()
                .find(|d| d.0 == name)
                .map(|d| d.1)
                .unwrap_or(0);
            total += a.0.saturating_sub(b);
            p.push(a.1);
        }
        (p, total)
    };
    let mut detach_ms = Vec::with_capacity(n);
    for (i, h) in held.iter_mut().enumerate() {
        let t = Instant::now();
        h.att.client.detach(&format!("s{i}"))?;
        detach_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(held);
    let fds_after = daemon.settled_fds();
    Ok(ScaleStep {
        devices: n,
        irqs_per_s: total as f64 / elapsed.as_secs_f64(),
        p99_us_median_device: percentile(&p99s, 0.5),
        p99_us_worst_device: percentile(&p99s, 1.0),
        attach_ms_p50: percentile(&attach_ms, 0.5),
        attach_ms_p99: percentile(&attach_ms, 0.99),
        detach_ms_p50: percentile(&detach_ms, 0.5),
        detach_ms_p99: percentile(&detach_ms, 0.99),
        rss_mib: rss as f64 / (1024.0 * 1024.0),
        fds_attached,
        fds_baseline,
        fds_after,
        fds_back_to_baseline: fds_after == fds_baseline,
    })
}

/// (name, acked, p99 µs) of every device.
fn acked(daemon: &DaemonProcess) -> Result<Vec<(String, u64, f64)>, BenchError> {
    let mut c = Client::connect(&daemon.socket)?;
    c.hello("intxd-bench")?;
    let Reply::Status { devices, .. } = c.status()? else {
        return Err(BenchError::Daemon("unexpected reply to status".into()));
    };
    Ok(devices
        .into_iter()
        .map(|d| {
            let s = d.counters.sim.unwrap_or_default();
            (d.name, s.acked, s.latency_p99_us)
        })
        .collect())
}

/// Plays every guest for `secs`: on each interrupt, ack then EOI.
fn drive(held: &[Held], secs: Duration) -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    for (i, h) in held.iter().enumerate() {
        poll.registry().register(
            &mut SourceFd(&h.att.irq.as_raw_fd()),
            Token(i),
            Interest::READABLE,
        )?;
    }
    let mut events = Events::with_capacity(1024);
    let t0 = Instant::now();
    while t0.elapsed() < secs {
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for ev in events.iter() {
            let h = &held[ev.token().0];
            if h.att.irq.read().is_ok() {
                h.ack.write(1)?;
                h.att.resample.write(1)?;
            }
        }
    }
    for h in held {
        poll.registry()
            .deregister(&mut SourceFd(&h.att.irq.as_raw_fd()))?;
    }
    Ok(())
}

/// The `q` quantile of `v` (nearest rank), 0 for an empty slice.
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let idx = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[idx]
}
