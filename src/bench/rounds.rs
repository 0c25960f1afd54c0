//! Interleaved rounds: baseline, direct, relay/kernel, relay/user, repeated.

use super::bare::BareDevice;
use super::proc_daemon::DaemonProcess;
use super::{BenchError, BenchOptions};
use crate::route::{Irqchip, Mode};
use crate::soak::{run_one, DaemonWiring, RunReport, RunSpec};

/// The four variants, in round order.
pub const VARIANTS: [&str; 4] = ["baseline", "direct", "relay-kernel", "relay-user"];

/// One variant's figures in one round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// Variant name.
    pub variant: &'static str,
    /// Round number.
    pub round: usize,
    /// The soak's figures.
    pub run: RunReport,
    /// Daemon event-loop voluntary context switches per interrupt.
    pub vol_ctxt_switches_per_irq: f64,
    /// Daemon event-loop CPU time per interrupt, microseconds.
    pub cpu_us_per_irq: f64,
}

/// Runs `rounds` × the four variants.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<Vec<Sample>, BenchError> {
    let daemon = DaemonProcess::start(&opts.exe, "[[device]]\nname = \"sim0\"\npci = \"sim:0\"\n")?;
    let mut out = Vec::new();
    for round in 0..opts.rounds {
        for variant in VARIANTS {
            progress(&format!("round {}/{}: {variant}", round + 1, opts.rounds));
            let (mode, irqchip) = match variant {
                "baseline" | "direct" => (Mode::Direct, Irqchip::Kernel),
                "relay-kernel" => (Mode::Relay, Irqchip::Kernel),
                _ => (Mode::Relay, Irqchip::User),
            };
            let spec = RunSpec {
                mode,
                irqchip,
                cycles: Some(opts.cycles),
                duration: None,
                stall: crate::soak::guest::STALL_BOUND,
            };
            let before = daemon.loop_thread();
            let run = if variant == "baseline" {
                let mut w = BareDevice::start(&opts.exe)?;
                run_one(&mut w, &spec, &mut |_, _| {})?
            } else {
                let mut w = DaemonWiring::connect(&daemon.socket, "sim0")?;
                run_one(&mut w, &spec, &mut |_, _| {})?
            };
            let after = daemon.loop_thread();
            let n = run.delivered.max(1) as f64;
            out.push(Sample {
                variant,
                round,
                vol_ctxt_switches_per_irq: after
                    .voluntary_ctxt_switches
                    .saturating_sub(before.voluntary_ctxt_switches)
                    as f64
                    / n,
                cpu_us_per_irq: after.cpu.saturating_sub(before.cpu).as_secs_f64() * 1e6 / n,
                run,
            });
        }
    }
    Ok(out)
}
