//! `intxd soak`: every requested mode × irqchip through the daemon's socket,
//! on one device or several at once (each on a thread and in VMs of its
//! own: [`super::soak_device`]).

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::MultiProgress;

use super::soak_device::{DeviceSoak, Outcome, Plan};
use super::{logging, ChipArg, CmdResult, ModeArg, SoakArgs};
use intxd::config::{Config, PciAddr};
use intxd::route::{Irqchip, Mode};
use intxd::soak::{InProcessDaemon, SoakReport};

const DEFAULT_CYCLES: u64 = 50_000;

pub fn soak(args: &SoakArgs) -> CmdResult {
    logging::init("warn");
    if !std::path::Path::new("/dev/kvm").exists() {
        return Err(format!(
            "/dev/kvm is missing: the soak runs a real KVM guest; {}",
            intxd::soak::arch::setup::KVM_HINT
        )
        .into());
    }
    let config = match &args.config {
        Some(p) => intxd::config::load(p)?,
        None => intxd::config::load_str("<built-in config>".as_ref(), intxd::config::BUILTIN)?,
    };
    let devices = pick_devices(&config, args.connect.as_deref(), args.device.as_deref())?;
    if args.lifecycle {
        return super::soak_lifecycle::run(args, &config, &devices);
    }
    let (inproc, socket) = daemon(args, &config)?;
    let tty = std::io::stderr().is_terminal() && !args.json;
    let plan = Plan {
        socket: socket.clone(),
        modes: match args.mode {
            ModeArg::Direct => vec![Mode::Direct],
            ModeArg::Relay => vec![Mode::Relay],
            ModeArg::All => vec![Mode::Direct, Mode::Relay],
        },
        chips: match args.irqchip {
            ChipArg::Kernel => vec![Irqchip::Kernel],
            ChipArg::User => vec![Irqchip::User],
            ChipArg::All => vec![Irqchip::Kernel, Irqchip::User],
        },
        cycles: match (args.cycles, args.duration) {
            (Some(c), _) => Some(c),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_CYCLES),
        },
        duration: args.duration.map(Duration::from_secs_f64),
        stall: args
            .stall
            .map_or(intxd::soak::guest::STALL_BOUND, Duration::from_secs_f64),
        bars: tty.then(MultiProgress::new),
    };
    let interval = Duration::from_secs_f64(args.interval.max(0.1));
    let t0 = Instant::now();
    let mut soaks = Vec::new();
    for device in &devices {
        // A real device is driven by its exerciser (raise and ack registers)
        // from the config, or else by vfio-pci's loopback; an emulated one
        // by its doorbell.
        let recorder = match &args.report {
            Some(_) => Some(
                intxd::lab::Recorder::connect(&socket, interval)?
                    .starting_at(t0)
                    .with_stall(plan.stall),
            ),
            None => None,
        };
        soaks.push(DeviceSoak {
            device: device.clone(),
            exerciser: config.device(device).and_then(|d| d.exerciser),
            recorder,
        });
    }
    // After the recorders' own control connections are up (with the
    // in-process daemon both of their ends are this process's fds), so that
    // the before and after figures count the same connections.
    let before = daemon_figures(&socket);
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let threads: Vec<_> = soaks
            .into_iter()
            .map(|d| {
                let plan = &plan;
                std::thread::Builder::new()
                    .name(format!("soak {}", d.device))
                    .spawn_scoped(s, move || super::soak_device::soak(plan, d))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| match t {
                Ok(t) => Ok(t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))),
                Err(e) => Err(e),
            })
            .collect::<Result<_, _>>()
    })?;
    let mut report = SoakReport {
        runs: Vec::new(),
        resources: None,
        devices: Vec::new(),
        total: None,
    };
    let (mut cuts, mut stopped, mut recorders) = (Vec::new(), Vec::new(), Vec::new());
    let mut single_error = None;
    for o in outcomes {
        if let Some(r) = o.recorder {
            recorders.push((r, report.runs.len()));
        }
        report.runs.extend(o.runs);
        if let Some(c) = o.cut {
            stopped.push((o.device.clone(), c.cause.clone()));
            cuts.push(c);
        }
        if let Some(e) = o.error {
            stopped.push((o.device.clone(), super::chain(&e)));
            single_error = Some(e);
        }
    }
    if devices.len() == 1 {
        // One device: its error is the soak's, as it always was.
        if let Some(e) = single_error {
            return Err(e.into());
        }
    }
    report.tally(&devices, plan.runs(), &stopped);
    if let (Some((pid, fds_before, rss_kib_before)), Some((_, fds_after, rss_kib_after))) =
        (before, daemon_figures(&socket))
    {
        report.resources = Some(intxd::soak::report::Resources {
            daemon_pid: pid,
            fds_before,
            fds_after,
            rss_kib_before,
            rss_kib_after,
        });
    }
    drop(inproc);
    if !cuts.is_empty() {
        return super::soak_gone::report(&report, &cuts, args.json);
    }
    let first_failure = match &args.report {
        Some(dir) => intxd::lab::finish_all(dir, interval, recorders, &report)?.first_failure,
        None => None,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        print_failures(&report);
    }
    if let Some(dir) = &args.report {
        eprintln!(
            "intxd soak: report in {}",
            dir.join("report.html").display()
        );
    }
    if let Some(f) = &first_failure {
        println!("FAIL first failing {f}");
    }
    Ok(if report.is_clean() && first_failure.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The daemon to soak through: the one at `--connect`, or an in-process
/// one with `config` (kept alive by the first value), and its socket.
pub(super) fn daemon(
    args: &SoakArgs,
    config: &Config,
) -> Result<(Option<InProcessDaemon>, std::path::PathBuf), Box<dyn std::error::Error>> {
    Ok(match &args.connect {
        Some(p) => (None, p.clone()),
        None => {
            let d = InProcessDaemon::start(config.clone())?;
            let socket = d.socket().to_path_buf();
            (Some(d), socket)
        }
    })
}

/// One `FAIL` line per failed run, per device stopped early, and, with
/// several devices, one naming the failed ones.
fn print_failures(report: &SoakReport) {
    for r in report.runs.iter().filter(|r| !r.is_clean()) {
        println!(
            "FAIL {} {}/{}: delivered {} of {} cycles, {} lost, {} spurious{}",
            r.device,
            r.mode,
            r.irqchip,
            r.delivered,
            r.cycles,
            r.lost,
            r.spurious,
            if r.stall.is_some() {
                " (stalled: see STALL above)"
            } else {
                ""
            }
        );
    }
    for d in &report.devices {
        if let Some(e) = &d.error {
            println!("FAIL {}: {e}", d.device);
        }
    }
    if let Some(t) = report.total.as_ref().filter(|t| t.devices > 1) {
        if !t.failed.is_empty() {
            println!(
                "FAIL {} of {} devices: {}",
                t.failed.len(),
                t.devices,
                t.failed.join(", ")
            );
        }
    }
}

/// The devices `--device` names: one, a comma-separated list, or `all`
/// (every device of the config, or of the daemon at `connect`).
fn pick_devices(
    config: &Config,
    connect: Option<&Path>,
    arg: Option<&str>,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let names: Vec<String> = match (arg, connect) {
        (Some("all"), Some(socket)) => daemon_devices(socket)?,
        (Some("all"), None) => config.devices.iter().map(|d| d.name.clone()).collect(),
        // A running daemon has its own config; let it judge the names.
        (Some(list), Some(_)) => split(list)?,
        (Some(list), None) => split(list)?
            .iter()
            .map(|n| pick_device(config, Some(n)))
            .collect::<Result<_, _>>()?,
        (None, _) => vec![pick_device(config, None)?],
    };
    if names.is_empty() {
        return Err("--device all: the config has no device; add a [[device]] table".into());
    }
    Ok(names)
}

/// `a,b,c` as names; no empty or repeated one.
fn split(list: &str) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut names: Vec<String> = Vec::new();
    for n in list.split(',').map(str::trim) {
        if n.is_empty() {
            return Err(
                format!("--device {list:?}: an empty name; separate names with one comma").into(),
            );
        }
        if names.iter().any(|m| m == n) {
            return Err(format!(
                "--device {list:?}: `{n}` is named twice; a device is soaked by one VM at a time"
            )
            .into());
        }
        names.push(n.to_string());
    }
    Ok(names)
}

/// Every device in the status of the daemon at `socket`.
fn daemon_devices(socket: &Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let mut c = intxd::control::client::Client::connect(socket)?;
    c.hello("intxd-soak")?;
    match c.status()? {
        intxd::control::proto::Reply::Status { devices, .. } => {
            Ok(devices.into_iter().map(|d| d.name).collect())
        }
        other => Err(format!(
            "the daemon answered status with {other:?}; is it the same intxd version as this soak?"
        )
        .into()),
    }
}

fn pick_device(config: &Config, name: Option<&str>) -> Result<String, Box<dyn std::error::Error>> {
    match name {
        Some(n) => config
            .device(n)
            .map(|d| d.name.clone())
            .ok_or_else(|| format!("no device named `{n}` in the config").into()),
        None => config
            .devices
            .iter()
            .find(|d| matches!(d.pci, PciAddr::Sim(_)))
            .map(|d| d.name.clone())
            .ok_or_else(|| {
                "the config has no emulated (sim:N) device; name one with --device".into()
            }),
    }
}

/// (pid, open fds, RSS KiB) of the daemon behind `socket`, once its
/// connections from earlier runs have closed.
fn daemon_figures(socket: &std::path::Path) -> Option<(u32, usize, u64)> {
    let mut c = intxd::control::client::Client::connect(socket).ok()?;
    c.hello("intxd-soak").ok()?;
    std::thread::sleep(Duration::from_millis(50));
    let intxd::control::proto::Reply::Status { daemon, .. } = c.status().ok()? else {
        return None;
    };
    let rss = intxd::util::proc::figures(Some(daemon.pid))
        .map(|f| f.rss_bytes / 1024)
        .unwrap_or(0);
    Some((daemon.pid, daemon.fds, rss))
}
