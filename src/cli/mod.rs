//! Command-line parsing and the subcommands' entry points.

mod bench_cmd;
mod daemon_cmd;
mod logging;
mod soak_cmd;
mod status_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Level-triggered PCI INTx passthrough to virtual machines.
#[derive(Parser)]
#[command(name = "intxd", version, about, long_about = None)]
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
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
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
        #[arg(long, default_value_t = 100_000)]
        cycles: u64,
        /// Rounds of baseline, direct, relay/kernel, relay/user.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Device counts for the scale part (comma-separated; "" skips it).
        #[arg(long, default_value = "1,16,64,256")]
        scale: String,
        /// Seconds per scale step.
        #[arg(long, default_value_t = 2.0)]
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
    #[arg(long, conflicts_with = "duration")]
    cycles: Option<u64>,
    /// Seconds per run.
    #[arg(long)]
    duration: Option<f64>,
    /// Config for the in-process daemon (default: one emulated device).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Drive a running daemon at this socket instead of an in-process one.
    #[arg(long)]
    connect: Option<PathBuf>,
    /// Device to soak (default: the first emulated device in the config).
    #[arg(long)]
    device: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
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

/// Parses the command line and runs the subcommand. Errors are printed once,
/// with their whole chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config } => daemon_cmd::run(&config),
        Cmd::CheckConfig { config } => daemon_cmd::check_config(&config),
        Cmd::Bind { device, config } => daemon_cmd::bind(&config, &device, true),
        Cmd::Release { device, config } => daemon_cmd::bind(&config, &device, false),
        Cmd::Status { socket, json } => status_cmd::status(&socket, json),
        Cmd::Trigger { device, socket } => status_cmd::trigger(&socket, &device),
        Cmd::Attach {
            device,
            socket,
            mode,
            hold,
        } => status_cmd::attach(&socket, &device, mode, hold),
        Cmd::Soak(args) => soak_cmd::soak(&args),
        Cmd::SimHost { socket } => {
            logging::init("info");
            intxd::sim::remote::serve(&socket)
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| e.into())
        }
        Cmd::BenchDevice { socket } => intxd::bench::bare::serve(&socket)
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| e.into()),
        Cmd::Bench {
            json,
            cycles,
            rounds,
            scale,
            scale_secs,
        } => bench_cmd::bench(json, cycles, rounds, &scale, scale_secs),
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
