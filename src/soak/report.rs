//! The soak's figures: one [`RunReport`] per run, a table or JSON.

use serde::{Deserialize, Serialize};

pub use super::stall::Stall;
pub use super::tally::{DeviceTally, Total};
use crate::route::{Irqchip, Mode};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// The figures of one run.
///
/// For an emulated device the device side counts itself. For a real PCI
/// function (driven by the exerciser guest) some figures have another
/// source, or none; each field says what it holds then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Route mode the daemon chose.
    pub mode: Mode,
    /// Interrupt-controller flavour.
    pub irqchip: Irqchip,
    /// Device name.
    pub device: String,
    /// Why the daemon chose the mode.
    pub mode_reason: String,
    /// Cycles the device was asked for (real function: the guest's target).
    pub cycles: u64,
    /// Interrupts the guest's ISR counted.
    pub delivered: u64,
    /// Trigger signals on the host side. Real function: hard interrupts on
    /// its host line (`/proc/interrupts`), which is fewer than the triggers:
    /// when the guest raises the next interrupt before its EOI, vfio-pci
    /// finds the line still high at the unmask and signals the trigger
    /// itself, with no hard interrupt (1 per run in the chained soak).
    pub triggered: u64,
    /// EOIs carried back (resamples). Real function, direct mode with the
    /// kernel irqchip: 0, because KVM's resampler unmasks vfio-pci directly
    /// and nothing counts it.
    pub eois: u64,
    /// Cycles the device raised that the guest never acked. Real function:
    /// the target minus the guest's count, when the count fell short.
    pub lost: u64,
    /// Acks that found the device's line low. Real function: interrupts the
    /// guest counted beyond its target.
    pub spurious: u64,
    /// Storms the relay limited.
    pub storms: u64,
    /// Run time, seconds.
    pub elapsed_s: f64,
    /// Delivered interrupts per second.
    pub rate_per_s: f64,
    /// Raise-to-ack latency. Real function: 0 (raise and ack both happen in
    /// the guest, with no host timestamp).
    pub latency_us: Latency,
    /// Daemon event-loop wakeups during the run.
    pub loop_wakeups: u64,
    /// Those wakeups divided by the delivered interrupts.
    pub loop_wakeups_per_irq: f64,
    /// Relay only: hot-path read/write syscalls plus `epoll_wait` returns,
    /// per relayed interrupt (0 in direct mode).
    #[serde(default)]
    pub relay_syscalls_per_irq: f64,
    /// Timer interrupts the guest took during the run: on aarch64 with the
    /// userspace irqchip the guest's virtual timer, whose level the soak's
    /// controller reads from `kvm_run`'s `device_irq_level` at every exit
    /// and delivers on the same CPU line as the device; 0 elsewhere.
    #[serde(default)]
    pub timer_interrupts: u64,
    /// Kicks of the vCPU after a raise of its line from the controller's
    /// own thread (aarch64 with the userspace irqchip).
    #[serde(default)]
    pub vcpu_kicks: u64,
    /// Overdue deliveries (`delivery_overdue`) the soak recovered by
    /// asserting the guest's line itself (`soak::recover`).
    #[serde(default)]
    pub recovered: u64,
    /// Acks of a low line explained by a recovery: the late `irqfd_inject`
    /// that still came after it (at most one per recovery; not in
    /// `spurious`).
    #[serde(default)]
    pub late_injections: u64,
    /// Set when the run stopped making progress: where its interrupt sat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stall: Option<Stall>,
}

/// `syscalls` per relayed interrupt (0 with none relayed: direct mode).
pub fn per_relayed(syscalls: u64, relayed: u64) -> f64 {
    if relayed == 0 {
        0.0
    } else {
        syscalls as f64 / relayed as f64
    }
}

impl RunReport {
    /// Whether the run was exact: nothing lost or spurious and the guest's
    /// count equal to the device's.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.spurious == 0
            && self.delivered == self.cycles
            && self.stall.is_none()
    }
}

/// All runs of one `intxd soak`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoakReport {
    /// The runs, in order.
    pub runs: Vec<RunReport>,
    /// The daemon's resources before the first run and after the last, to
    /// show that a long soak leaks nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Each device's runs added up ([`SoakReport::tally`]), in the soak's
    /// order.
    #[serde(default)]
    pub devices: Vec<DeviceTally>,
    /// All devices' runs added up, and the devices that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<Total>,
}

/// A daemon's fds and memory at the start and the end of a soak.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// The daemon's pid (this process for the in-process daemon).
    pub daemon_pid: u32,
    /// Its open fds before the first run.
    pub fds_before: usize,
    /// Its open fds after the last run.
    pub fds_after: usize,
    /// Its resident memory before the first run, KiB.
    pub rss_kib_before: u64,
    /// Its resident memory after the last run, KiB.
    pub rss_kib_after: u64,
}

impl SoakReport {
    /// Whether every run was clean (and, once tallied, no device failed).
    pub fn is_clean(&self) -> bool {
        self.runs.iter().all(RunReport::is_clean)
            && self.total.as_ref().is_none_or(|t| t.failed.is_empty())
    }

    /// A fixed-width summary table (with several devices, their table and
    /// the total; the resource line, when measured).
    pub fn table(&self) -> String {
        let mut out = self.runs_table();
        if self.devices.len() > 1 {
            out.push_str(&self.devices_table());
        }
        if let Some(r) = &self.resources {
            out.push_str(&format!(
                "daemon pid {}: fds {} -> {}, RSS {} -> {} KiB\n",
                r.daemon_pid, r.fds_before, r.fds_after, r.rss_kib_before, r.rss_kib_after
            ));
        }
        out
    }

    fn runs_table(&self) -> String {
        let mut out = format!(
            "{:<7} {:<7} {:<8} {:>9} {:>9} {:>9} {:>9} {:>5} {:>5} {:>10} {:>8} {:>8} {:>9} {:>9}\n",
            "mode", "irqchip", "device", "cycles", "delivered", "triggered", "eois", "lost", "spur",
            "rate/s", "p50 us", "p99 us", "max us", "wakeup/irq"
        );
        for r in &self.runs {
            out.push_str(&format!(
                "{:<7} {:<7} {:<8} {:>9} {:>9} {:>9} {:>9} {:>5} {:>5} {:>10.0} {:>8.1} {:>8.1} {:>9.1} {:>9.4}\n",
                r.mode.to_string(),
                r.irqchip.to_string(),
                r.device,
                r.cycles,
                r.delivered,
                r.triggered,
                r.eois,
                r.lost,
                r.spurious,
                r.rate_per_s,
                r.latency_us.p50,
                r.latency_us.p99,
                r.latency_us.max,
                r.loop_wakeups_per_irq
            ));
        }
        for r in &self.runs {
            if r.timer_interrupts > 0 {
                out.push_str(&format!(
                    "{}/{}: {} timer interrupts through device_irq_level, {} vCPU kicks\n",
                    r.mode, r.irqchip, r.timer_interrupts, r.vcpu_kicks
                ));
            }
            if r.recovered > 0 {
                out.push_str(&format!(
                    "RECOVERED {}/{}: {} overdue deliveries (delivery_overdue) asserted by the soak VMM itself; {} late injections after them (acks of a low line, not in spur)\n",
                    r.mode, r.irqchip, r.recovered, r.late_injections
                ));
            }
            if let Some(s) = &r.stall {
                out.push_str(&format!(
                    "STALL {}/{}: no progress for {:.1} s: {}; {}; controller: {}\n",
                    r.mode, r.irqchip, s.after_s, s.diagnosis, s.guest, s.controller
                ));
            }
        }
        out
    }
}
