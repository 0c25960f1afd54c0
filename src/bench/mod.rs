//! `intxd bench`: intxd's cost measured against the bare kernel path, as
//! ratios from interleaved rounds (these machines are shared and noisy; an
//! absolute figure does not carry from one run to the next), and scale.
//!
//! - [`bare`]: the baseline's device, in a process of its own;
//! - [`proc_daemon`]: a daemon in a child process, so its event-loop thread
//!   can be measured from `/proc` on its own;
//! - [`rounds`]: baseline, direct, relay/kernel, relay/user, interleaved;
//! - [`scale`]: N relay routes, each held by its own client;
//! - [`breakdown`]: the relay's cost taken apart (the wakeup, each
//!   syscall, the emulated unmask) and the ceiling the wakeup leaves;
//! - [`report`]: the figures, as a table or JSON.

pub mod bare;
pub mod breakdown;
pub mod proc_daemon;
pub mod report;
pub mod rounds;
pub mod scale;

use std::path::PathBuf;

pub use report::BenchReport;

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A soak run failed.
    #[error(transparent)]
    Soak(#[from] crate::soak::SoakError),
    /// The daemon process could not be started or measured.
    #[error("bench daemon: {0}")]
    Daemon(String),
    /// A client call failed.
    #[error("bench client")]
    Client(#[from] crate::control::client::ClientError),
    /// A part of the cost breakdown could not be measured.
    #[error("bench cost breakdown: {0}")]
    Breakdown(#[source] std::io::Error),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `intxd` executable (for the daemon process).
    pub exe: PathBuf,
    /// Cycles per run.
    pub cycles: u64,
    /// Rounds of the four variants.
    pub rounds: usize,
    /// Device counts for the scale part (empty: skip it).
    pub scale: Vec<usize>,
    /// Seconds per scale step.
    pub scale_secs: f64,
}

/// Runs everything.
pub fn run(opts: &BenchOptions, progress: &mut dyn FnMut(&str)) -> Result<BenchReport, BenchError> {
    let rounds = rounds::run(opts, progress)?;
    let scale = if opts.scale.is_empty() {
        Vec::new()
    } else {
        scale::run(opts, progress)?
    };
    progress("cost breakdown");
    let mut report = BenchReport::new(opts, rounds, scale);
    let of = |name: &str| report.variants.iter().find(|v| v.name == name);
    let direct = of("direct").map_or(0.0, |v| v.rate_per_s);
    let relay_cpu = of("relay-kernel").map_or(0.0, |v| v.cpu_us_per_irq);
    report.breakdown =
        Some(breakdown::Breakdown::measure(direct, relay_cpu).map_err(BenchError::Breakdown)?);
    Ok(report)
}
