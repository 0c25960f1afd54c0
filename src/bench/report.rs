//! The benchmark's figures: per-variant medians, ratios, scale.

use serde::Serialize;

use super::rounds::{Sample, VARIANTS};
use super::scale::{percentile, ScaleStep};
use super::BenchOptions;

/// One variant's medians over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// Name.
    pub name: &'static str,
    /// Interrupts per second.
    pub rate_per_s: f64,
    /// Latency p50, µs.
    pub p50_us: f64,
    /// Latency p99, µs.
    pub p99_us: f64,
    /// Latency max, µs.
    pub max_us: f64,
    /// Daemon event-loop wakeups per interrupt.
    pub loop_wakeups_per_irq: f64,
    /// Daemon event-loop voluntary context switches per interrupt.
    pub vol_ctxt_switches_per_irq: f64,
    /// Daemon event-loop CPU per interrupt, µs.
    pub cpu_us_per_irq: f64,
    /// Relay hot-path syscalls per interrupt (incl. epoll_wait returns).
    pub syscalls_per_irq: f64,
    /// Whether every run was exact (0 lost, 0 spurious).
    pub clean: bool,
}

/// Ratios, each the median of the per-round ratios.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// direct rate / baseline rate.
    pub direct_over_baseline: f64,
    /// relay (kernel irqchip) rate / direct rate.
    pub relay_kernel_over_direct: f64,
    /// relay (userspace irqchip) rate / direct rate.
    pub relay_user_over_direct: f64,
}

/// Everything `intxd bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Cycles per run.
    pub cycles: u64,
    /// Rounds.
    pub rounds: usize,
    /// Per-variant medians.
    pub variants: Vec<Variant>,
    /// Ratios.
    pub ratios: Ratios,
    /// Scale steps.
    pub scale: Vec<ScaleStep>,
    /// How the relay carried interrupts on this host (a write alone, the
    /// trigger watch; or read + write and why): what its syscalls per interrupt rest on.
    pub relay_carry: String,
    /// What the figures do not show (printed under the ratios).
    pub caveats: Vec<&'static str>,
    /// The relay's cost taken apart, and the ceiling of relay/direct it
    /// implies (measured after the rounds).
    pub breakdown: Option<super::breakdown::Breakdown>,
    /// Every sample, for whoever wants the spread.
    pub samples: Vec<Sample>,
}

/// What a reader of the ratios must know: the baseline and the emulated
/// device's unmask are not real vfio-pci.
pub const CAVEATS: [&str; 3] = [
    "baseline is the same emulated device in another process, wired straight to the VM: direct/baseline is about 1 by construction; it shows that intxd adds nothing to the direct path, not how a real function fares",
    "the emulated device's unmask is a mutex call in the daemon's thread (with an eventfd read of its acks and a write of the re-fire), not a VFIO_DEVICE_SET_IRQS ioctl with config-space accesses: relay/direct here understates the relay's cost against real vfio-pci",
    "real vfio-pci (QEMU lane, edu, TCG with nested KVM): direct 4.4-5.4k/s, relay 2.7-3.0k/s, relay/direct 0.50-0.68 (docs/performance.md)",
];

impl BenchReport {
    /// Builds the report from the samples.
    pub fn new(opts: &BenchOptions, samples: Vec<Sample>, scale: Vec<ScaleStep>) -> Self {
        let of = |name: &'static str| samples.iter().filter(move |s| s.variant == name);
        let med = |name: &'static str, f: &dyn Fn(&Sample) -> f64| {
            percentile(&of(name).map(f).collect::<Vec<_>>(), 0.5)
        };
        let variants = VARIANTS
            .iter()
            .map(|&name| Variant {
                name,
                rate_per_s: med(name, &|s| s.run.rate_per_s),
                p50_us: med(name, &|s| s.run.latency_us.p50),
                p99_us: med(name, &|s| s.run.latency_us.p99),
                max_us: med(name, &|s| s.run.latency_us.max),
                loop_wakeups_per_irq: med(name, &|s| s.run.loop_wakeups_per_irq),
                vol_ctxt_switches_per_irq: med(name, &|s| s.vol_ctxt_switches_per_irq),
                cpu_us_per_irq: med(name, &|s| s.cpu_us_per_irq),
                syscalls_per_irq: med(name, &|s| s.run.relay_syscalls_per_irq),
                clean: of(name).all(|s| s.run.is_clean()),
            })
            .collect();
        let ratio = |a: &str, b: &str| {
            let r: Vec<f64> = (0..opts.rounds)
                .filter_map(|round| {
                    let x = samples
                        .iter()
                        .find(|s| s.variant == a && s.round == round)?;
                    let y = samples
                        .iter()
                        .find(|s| s.variant == b && s.round == round)?;
                    Some(x.run.rate_per_s / y.run.rate_per_s.max(1e-9))
                })
                .collect();
            percentile(&r, 0.5)
        };
        BenchReport {
            cycles: opts.cycles,
            rounds: opts.rounds,
            ratios: Ratios {
                direct_over_baseline: ratio("direct", "baseline"),
                relay_kernel_over_direct: ratio("relay-kernel", "direct"),
                relay_user_over_direct: ratio("relay-user", "direct"),
            },
            variants,
            scale,
            relay_carry: {
                let c = crate::relay::Carrier::new();
                match c.fallback_reason() {
                    None => c.describe().to_string(),
                    Some(why) => format!("{} ({why})", c.describe()),
                }
            },
            caveats: CAVEATS.to_vec(),
            breakdown: None,
            samples,
        }
    }

    /// Whether every run delivered exactly.
    pub fn is_clean(&self) -> bool {
        self.variants.iter().all(|v| v.clean) && self.scale.iter().all(|s| s.fds_back_to_baseline)
    }

    /// The human-readable tables.
    pub fn table(&self) -> String {
        let mut o = format!(
            "intxd bench: {} rounds x {} cycles, interleaved ({})\n\n",
            self.rounds,
            self.cycles,
            VARIANTS.join(", ")
        );
        o.push_str(&format!(
            "{:<13} {:>9} {:>7} {:>7} {:>8} {:>11} {:>9} {:>10} {:>12} {:>5}\n",
            "variant",
            "rate/s",
            "p50 us",
            "p99 us",
            "max us",
            "wakeup/irq",
            "vcsw/irq",
            "cpu us/irq",
            "syscalls/irq",
            "exact"
        ));
        for v in &self.variants {
            o.push_str(&format!(
                "{:<13} {:>9.0} {:>7.1} {:>7.1} {:>8.1} {:>11.4} {:>9.4} {:>10.3} {:>12.2} {:>5}\n",
                v.name,
                v.rate_per_s,
                v.p50_us,
                v.p99_us,
                v.max_us,
                v.loop_wakeups_per_irq,
                v.vol_ctxt_switches_per_irq,
                v.cpu_us_per_irq,
                v.syscalls_per_irq,
                if v.clean { "yes" } else { "NO" }
            ));
        }
        o.push_str(&format!(
            "\nratios (median of per-round ratios): direct/baseline {:.3}   relay-kernel/direct {:.3}   relay-user/direct {:.3}\n",
            self.ratios.direct_over_baseline, self.ratios.relay_kernel_over_direct, self.ratios.relay_user_over_direct
        ));
        o.push_str(&format!("relay: {}\n", self.relay_carry));
        for c in &self.caveats {
            o.push_str(&format!("note: {c}\n"));
        }
        if let Some(b) = &self.breakdown {
            o.push_str(&b.table());
            o.push_str(&format!(
                "  {:<68} {:>8.3}\n",
                "measured relay-kernel/direct (above)", self.ratios.relay_kernel_over_direct
            ));
        }
        if !self.scale.is_empty() {
            o.push_str(&format!(
                "\nscale: relay routes, one client each (userspace-irqchip style, no guest)\n{:>5} {:>10} {:>13} {:>13} {:>15} {:>15} {:>8} {:>11}\n",
                "N", "irqs/s", "p99us median", "p99us worst", "attach ms p50/99", "detach ms p50/99", "RSS MiB", "fds (base/after)"
            ));
            for s in &self.scale {
                o.push_str(&format!(
                    "{:>5} {:>10.0} {:>13.1} {:>13.1} {:>7.3}/{:<7.3} {:>7.3}/{:<7.3} {:>8.1} {:>5} ({}/{}{})\n",
                    s.devices,
                    s.irqs_per_s,
                    s.p99_us_median_device,
                    s.p99_us_worst_device,
                    s.attach_ms_p50,
                    s.attach_ms_p99,
                    s.detach_ms_p50,
                    s.detach_ms_p99,
                    s.rss_mib,
                    s.fds_attached,
                    s.fds_baseline,
                    s.fds_after,
                    if s.fds_back_to_baseline { "" } else { " LEAK" }
                ));
            }
        }
        o
    }
}
