//! Command-line parsing and the subcommands' entry points.

mod admin_cmd;
mod bench_cmd;
mod daemon_cmd;
mod doctor_cmd;
mod logging;
mod metrics_cmd;
mod soak_cmd;
mod soak_device;
mod soak_gone;
mod soak_lifecycle;
mod status_cmd;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Level-triggered PCI INTx passthrough to virtual machines.
#[derive(Parser)]
#[command(name = "intxd", version = version::line(), about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon.
    Run {
        /// Main config file (drop-ins are read from devices.d/ beside it).
        #[arg(long, default_value = intxd::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Bind a configured PCI function to vfio-pci, without a daemon.
    Bind {
        /// Device name from the config.
        device: String,
        /// Main config file.
        #[arg(long, default_value = intxd::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Give a configured PCI function back to its original driver, without a
    /// daemon.
    Release {
        /// Device name from the config.
        device: String,
        /// Main config file.
        #[arg(long, default_value = intxd::config::DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a config (and its drop-ins) without starting anything.
    CheckConfig {
        /// Main config file.
        config: PathBuf,
    },
    /// Show every device of a running daemon.
    Status {
        /// Control socket.
        #[arg(long, default_value = "/run/intxd/control.sock")]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a running daemon's counters and latency histograms in the
    /// Prometheus text format (docs/operations.md lists the metrics).
    Metrics {
        /// Control socket.
        #[arg(long, default_value = "/run/intxd/control.sock")]
        socket: PathBuf,
    },
    /// Re-read the running daemon's config and wait until the reload has
    /// finished; exit 1 with the reason if the config was refused (the
    /// unit's ExecReload=).
    Reload {
        /// Control socket.
        #[arg(long, default_value = "/run/intxd/control.sock")]
        socket: PathBuf,
    },
    /// Planned restart (an upgrade): the daemon parks every route and
    /// connection in systemd's fd store and exits with status 75; systemd
    /// starts the binary now installed, which takes them all back.
    Restart {
        /// Control socket.
        #[arg(long, default_value = "/run/intxd/control.sock")]
        socket: PathBuf,
        /// Seconds to wait for the next daemon to serve (0: do not wait).
        #[arg(long, default_value_t = 30.0, allow_negative_numbers = true, value_parser = hold_seconds)]
        wait: f64,
    },
    /// Fire a device's trigger once (the loopback self-test).
    Trigger {
        /// Device name.
        device: String,
        /// Control socket.
        #[arg(long, default_value = "/run/intxd/control.sock")]
        socket: PathBuf,
    },
    /// Attach a device with fresh eventfds, as a VMM with its own irqchip
    /// would, print the reply, hold it, then detach (checks permissions and
    /// availability from a shell).
    Attach {
        /// Device name.
        device: String,
        /// Control socket.
        #[arg(long, default_value = "/run/intxd/control.sock")]
        socket: PathBuf,
        /// Mode to ask for.
        #[arg(long, value_enum, default_value_t = AttachModeArg::Auto)]
        mode: AttachModeArg,
        /// Seconds to hold the device before detaching.
        #[arg(long, default_value_t = 0.0, allow_negative_numbers = true, value_parser = hold_seconds)]
        hold: f64,
    },
    /// Check the host and each configured device for INTx passthrough (reads
    /// only): IOMMU, vfio-pci, KVM, systemd, shared lines, IOMMU groups.
    Doctor {
        /// Main config file (default: the daemon's; the host alone if absent).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Soak a device: a built-in VMM attaches it and counts every interrupt.
    Soak(SoakArgs),
    /// Serve emulated devices from a process of their own, so that they
    /// outlive daemon restarts as VFIO devices do (`[daemon] sim_host`).
    SimHost {
        /// Socket to listen on.
        #[arg(long, default_value = "/run/intxd/sim.sock")]
        socket: PathBuf,
    },
    /// The benchmark's baseline device process (internal).
    #[command(hide = true)]
    BenchDevice {
        /// The bench's socket.
        socket: PathBuf,
    },
    /// Measure intxd against the bare kernel path (ratios) and at scale.
    Bench {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Cycles per run.
        #[arg(long, default_value_t = 100_000, allow_negative_numbers = true, value_parser = cycles)]
        cycles: u64,
        /// Rounds of baseline, direct, relay/kernel, relay/user.
        #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = rounds)]
        rounds: u64,
        /// Device counts for the scale part (comma-separated; "" skips it).
        #[arg(long, default_value = "1,16,64,256")]
        scale: String,
        /// Seconds per scale step.
        #[arg(long, default_value_t = 2.0, allow_negative_numbers = true, value_parser = run_seconds)]
        scale_secs: f64,
    },
}

/// Arguments of `intxd soak`.
#[derive(clap::Args, Clone)]
pub struct SoakArgs {
    /// Route mode.
    #[arg(long, value_enum, default_value_t = ModeArg::All)]
    mode: ModeArg,
    /// Interrupt-controller flavour of the soak VM.
    #[arg(long, value_enum, default_value_t = ChipArg::All)]
    irqchip: ChipArg,
    /// Cycles per run.
    #[arg(long, conflicts_with = "duration", allow_negative_numbers = true, value_parser = cycles)]
    cycles: Option<u64>,
    /// Seconds per run.
    #[arg(long, allow_negative_numbers = true, value_parser = run_seconds)]
    duration: Option<f64>,
    /// Config for the in-process daemon (default: one emulated device).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Drive a running daemon at this socket instead of an in-process one.
    #[arg(long)]
    connect: Option<PathBuf>,
    /// Device(s) to soak: a name, a comma-separated list (`sim0,sim1`), or
    /// `all` (every device of the config, or of the daemon at --connect).
    /// Several devices run at once, each in KVM VMs of its own; the soak
    /// reports each and the total, and fails if any device fails (default:
    /// the first emulated device in the config).
    #[arg(long, value_name = "NAME[,NAME...]|all")]
    device: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write a lab report (JSON lines per interval, summary, HTML page) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Seconds per report interval.
    #[arg(long, default_value_t = 10.0, requires = "report")]
    interval: f64,
    /// Seconds without an interrupt before a run counts as stalled
    /// (default 10). A relay route waits while its daemon restarts: soaking
    /// through a restart that takes longer (a slow host) needs more.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = run_seconds)]
    stall: Option<f64>,
    /// The guest lifecycle instead of plain runs (x86_64, a real function
    /// with an exerciser, in-kernel irqchip): in one VM and one attach, per
    /// mode, INTx soak, suspend_intx, MSI soak (a KVM irqfd on an MSI
    /// route), MSI off, resume_intx, INTx soak, reset, INTx soak, the line
    /// moved to GSI 11 with one held level, INTx soak; --cycles per phase
    /// (default 1000). Prints one `lifecycle:` line per phase; exit 1 unless
    /// every count is exact and nothing is left pending.
    #[arg(long, conflicts_with_all = ["duration", "report"])]
    lifecycle: bool,
}

/// The mode `intxd attach` asks for.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AttachModeArg {
    Auto,
    Direct,
    Relay,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Direct,
    Relay,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ChipArg {
    Kernel,
    User,
    All,
}

/// The longest duration a flag takes: one year, in seconds.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A number of seconds from 0 to [`MAX_SECONDS`] (finite, not negative).
fn seconds(s: &str, zero_ok: bool) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    let low = if zero_ok { "from 0" } else { "above 0 and" };
    if !v.is_finite() || v < 0.0 || (v == 0.0 && !zero_ok) || v > MAX_SECONDS {
        return Err(format!(
            "give a number of seconds {low} up to {MAX_SECONDS} (one year), e.g. 2.5"
        ));
    }
    Ok(v)
}

/// A whole number from 1 to `max`.
fn count(s: &str, max: u64) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("give a whole number from 1 to {max}")),
    }
}

/// `--cycles`: at least one.
fn cycles(s: &str) -> Result<u64, String> {
    count(s, u64::MAX)
}

/// `bench --rounds`: 1 to 1000.
fn rounds(s: &str) -> Result<u64, String> {
    count(s, 1000)
}

/// `attach --hold`: 0 (detach at once) up to a year.
fn hold_seconds(s: &str) -> Result<f64, String> {
    seconds(s, true)
}

/// `soak --duration`, `bench --scale-secs`: above 0, up to a year.
fn run_seconds(s: &str) -> Result<f64, String> {
    seconds(s, false)
}

/// Lets a write to a closed stdout end the process as it ends `cat`
/// (killed by SIGPIPE, silently), instead of Rust's default of ignoring
/// SIGPIPE, which turns `intxd status | head -0` into a panic. Only for the
/// commands that print and exit: the daemon and the two servers keep
/// SIGPIPE ignored, so a vanished peer can never kill them (their socket
/// writes also use `MSG_NOSIGNAL`).
#[allow(unsafe_code)]
fn default_sigpipe() {
    // SAFETY: SIG_DFL installs no handler code, and this runs at the start
    // of main, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parses the command line and runs the subcommand. Errors are printed once,
/// with their whole chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(
        cli.cmd,
        Cmd::Run { .. } | Cmd::SimHost { .. } | Cmd::BenchDevice { .. }
    ) {
        default_sigpipe();
    }
    let result = match cli.cmd {
        Cmd::Run { config } => daemon_cmd::run(&config),
        Cmd::CheckConfig { config } => daemon_cmd::check_config(&config),
        Cmd::Bind { device, config } => daemon_cmd::bind(&config, &device, true),
        Cmd::Release { device, config } => daemon_cmd::bind(&config, &device, false),
        Cmd::Status { socket, json } => status_cmd::status(&socket, json),
        Cmd::Reload { socket } => admin_cmd::reload(&socket),
        Cmd::Restart { socket, wait } => admin_cmd::restart(&socket, wait),
        Cmd::Trigger { device, socket } => status_cmd::trigger(&socket, &device),
        Cmd::Metrics { socket } => metrics_cmd::metrics(&socket),
        Cmd::Attach {
            device,
            socket,
            mode,
            hold,
        } => status_cmd::attach(&socket, &device, mode, hold),
        Cmd::Doctor { config, json } => match config {
            Some(c) => doctor_cmd::doctor(&c, true, json),
            None => doctor_cmd::doctor(intxd::config::DEFAULT_PATH.as_ref(), false, json),
        },
        Cmd::Soak(args) => soak_cmd::soak(&args),
        Cmd::SimHost { socket } => {
            logging::init("info");
            intxd::sim::remote::serve(&socket)
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| {
                    format!(
                        "sim-host: cannot listen at {} (or serve emulated devices there): {}; check that its directory exists and is writable",
                        socket.display(),
                        intxd::util::error::chain(&e)
                    )
                    .into()
                })
        }
        Cmd::BenchDevice { socket } => intxd::bench::bare::serve(&socket)
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| {
                format!(
                    "bench-device: cannot connect to {} (the bench's socket) or serve its baseline device: {}",
                    socket.display(),
                    intxd::util::error::chain(&e)
                )
                .into()
            }),
        Cmd::Bench {
            json,
            cycles,
            rounds,
            scale,
            scale_secs,
        } => bench_cmd::bench(
            json,
            cycles,
            usize::try_from(rounds).unwrap_or(usize::MAX),
            &scale,
            scale_secs,
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("intxd: {}", chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

pub use intxd::util::error::chain;

/// A boxed error for the subcommands.
pub type CmdResult = Result<ExitCode, Box<dyn std::error::Error>>;
