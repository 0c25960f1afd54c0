//! One device's part of `intxd soak`: its runs (mode × irqchip) one after
//! the other, each in a KVM VM of its own, on a thread of its own beside
//! the other devices' threads.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::soak_gone::CutShort;
use intxd::config::Exerciser;
use intxd::lab::Recorder;
use intxd::route::{Irqchip, Mode};
use intxd::soak::{run_one, DaemonWiring, RunReport, RunSpec, SoakError};

/// What every device's thread does the same way.
pub struct Plan {
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// The modes to run, in order.
    pub modes: Vec<Mode>,
    /// The irqchips to run each mode with, in order.
    pub chips: Vec<Irqchip>,
    /// Cycles per run.
    pub cycles: Option<u64>,
    /// Time per run.
    pub duration: Option<Duration>,
    /// No interrupt for this long: the run stalled.
    pub stall: Duration,
    /// Progress bars on a terminal, one per running device.
    pub bars: Option<MultiProgress>,
}

impl Plan {
    /// Runs per device.
    pub fn runs(&self) -> usize {
        self.modes.len() * self.chips.len()
    }
}

/// One device to soak.
pub struct DeviceSoak {
    /// Its name.
    pub device: String,
    /// Its exerciser from the config, if any.
    pub exerciser: Option<Exerciser>,
    /// Its lab-report recorder (`--report`), on a connection of its own.
    pub recorder: Option<Recorder>,
}

/// How one device's soak ended.
pub struct Outcome {
    /// The device.
    pub device: String,
    /// Its finished runs.
    pub runs: Vec<RunReport>,
    /// The run the daemon or the device going away cut short.
    pub cut: Option<CutShort>,
    /// The error that stopped its runs.
    pub error: Option<SoakError>,
    /// Its recorder, with its records.
    pub recorder: Option<Recorder>,
}

/// Runs every mode × irqchip of `plan` on `d`'s device.
pub fn soak(plan: &Plan, d: DeviceSoak) -> Outcome {
    let DeviceSoak {
        device,
        exerciser,
        mut recorder,
    } = d;
    let mut out = Outcome {
        device: device.clone(),
        runs: Vec::new(),
        cut: None,
        error: None,
        recorder: None,
    };
    for &mode in &plan.modes {
        for &irqchip in &plan.chips {
            let spec = RunSpec {
                mode,
                irqchip,
                cycles: plan.cycles,
                duration: plan.duration,
                stall: plan.stall,
            };
            let label = format!("{device} {mode}/{irqchip}");
            if let Some(r) = recorder.as_mut() {
                // Its own runs from 0; `lab::finish_all` places them.
                let run = out.runs.len();
                r.begin_run(run, &device, &mode.to_string(), &irqchip.to_string());
            }
            let bar = progress_bar(plan.bars.as_ref(), plan.cycles, &label);
            let mut last_line = Instant::now();
            let mut so_far = (0u64, Duration::ZERO);
            let mut progress = |count: u64, elapsed: Duration| {
                if count != so_far.0 {
                    // Until the last interrupt: a stall adds no time.
                    so_far = (count, elapsed);
                }
                if let Some(r) = recorder.as_mut() {
                    r.progress(count, elapsed);
                }
                let rate = count as f64 / elapsed.as_secs_f64().max(1e-9);
                if let Some(b) = &bar {
                    b.set_position(count);
                    b.set_message(format!("{rate:.0}/s"));
                } else if last_line.elapsed() >= Duration::from_secs(60) {
                    // Off a terminal (journals, CI logs): one line a minute.
                    eprintln!(
                        "intxd soak: {label}: {count} interrupts in {:.0}s ({rate:.0}/s)",
                        elapsed.as_secs_f64()
                    );
                    last_line = Instant::now();
                }
            };
            let run = DaemonWiring::connect(&plan.socket, &device)
                .map(|w| w.with_exerciser(exerciser))
                .and_then(|mut w| run_one(&mut w, &spec, &mut progress));
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            match run {
                Ok(run) => {
                    if let Some(r) = recorder.as_mut() {
                        r.end_run(&run);
                    }
                    out.runs.push(run);
                }
                Err(SoakError::Gone { device, cause }) => {
                    let (delivered, elapsed) = so_far;
                    out.cut = Some(CutShort {
                        device,
                        mode: mode.to_string(),
                        irqchip: irqchip.to_string(),
                        delivered,
                        elapsed_s: elapsed.as_secs_f64(),
                        cause,
                    });
                    out.recorder = recorder;
                    return out;
                }
                Err(e) => {
                    out.error = Some(e);
                    out.recorder = recorder;
                    return out;
                }
            }
        }
    }
    out.recorder = recorder;
    out
}

fn progress_bar(
    bars: Option<&MultiProgress>,
    cycles: Option<u64>,
    label: &str,
) -> Option<ProgressBar> {
    let bars = bars?;
    let bar = match cycles {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let style =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    Some(bars.add(bar))
}
