//! `intxd soak`: every requested mode × irqchip through the daemon's socket.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::{logging, ChipArg, CmdResult, ModeArg, SoakArgs};
use intxd::config::{Config, PciAddr};
use intxd::route::{Irqchip, Mode};
use intxd::soak::{run_one, DaemonWiring, InProcessDaemon, RunSpec, SoakError, SoakReport};

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
    let device = match (&args.connect, &args.device) {
        // A running daemon has its own config; let it judge the name.
        (Some(_), Some(d)) => d.clone(),
        _ => pick_device(&config, args.device.as_deref())?,
    };
    // A real device needs its exerciser (raise and ack registers) from the
    // config; an emulated one has its doorbell.
    let exerciser = config.device(&device).and_then(|d| d.exerciser);
    let inproc = match &args.connect {
        Some(_) => None,
        None => Some(InProcessDaemon::start(config.clone())?),
    };
    let socket = match (&args.connect, &inproc) {
        (Some(p), _) => p.clone(),
        (None, Some(d)) => d.socket().to_path_buf(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let modes = match args.mode {
        ModeArg::Direct => vec![Mode::Direct],
        ModeArg::Relay => vec![Mode::Relay],
        ModeArg::All => vec![Mode::Direct, Mode::Relay],
    };
    let chips = match args.irqchip {
        ChipArg::Kernel => vec![Irqchip::Kernel],
        ChipArg::User => vec![Irqchip::User],
        ChipArg::All => vec![Irqchip::Kernel, Irqchip::User],
    };
    let cycles = match (args.cycles, args.duration) {
        (Some(c), _) => Some(c),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_CYCLES),
    };
    let duration = args.duration.map(Duration::from_secs_f64);
    let tty = std::io::stderr().is_terminal() && !args.json;
    let mut recorder = match &args.report {
        Some(_) => Some(intxd::lab::Recorder::connect(
            &socket,
            Duration::from_secs_f64(args.interval.max(0.1)),
        )?),
        None => None,
    };
    // After the recorder's own control connection is up (with the
    // in-process daemon both of its ends are this process's fds), so that
    // the before and after figures count the same connections.
    let before = daemon_figures(&socket);
    let mut report = SoakReport {
        runs: Vec::new(),
        resources: None,
    };
    for &mode in &modes {
        for &irqchip in &chips {
            let spec = RunSpec {
                mode,
                irqchip,
                cycles,
                duration,
                stall: intxd::soak::guest::STALL_BOUND,
            };
            let label = format!("{device} {mode}/{irqchip}");
            if let Some(r) = recorder.as_mut() {
                r.begin_run(
                    report.runs.len(),
                    &device,
                    &mode.to_string(),
                    &irqchip.to_string(),
                );
            }
            let bar = progress_bar(tty, cycles, &label);
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
            let mut wiring = DaemonWiring::connect(&socket, &device)?.with_exerciser(exerciser);
            let run = run_one(&mut wiring, &spec, &mut progress);
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let run = match run {
                Err(SoakError::Gone { device, cause }) => {
                    let (delivered, elapsed) = so_far;
                    let cut = super::soak_gone::CutShort {
                        device,
                        mode: mode.to_string(),
                        irqchip: irqchip.to_string(),
                        delivered,
                        elapsed_s: elapsed.as_secs_f64(),
                        cause,
                    };
                    return super::soak_gone::report(&report, &cut, args.json);
                }
                r => r?,
            };
            if let Some(r) = recorder.as_mut() {
                r.end_run(&run);
            }
            report.runs.push(run);
        }
    }
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
    let first_failure = match (recorder, &args.report) {
        (Some(r), Some(dir)) => r.finish(dir, &report)?.first_failure,
        _ => None,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        for r in &report.runs {
            if !r.is_clean() {
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
        }
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

fn progress_bar(tty: bool, cycles: Option<u64>, label: &str) -> Option<ProgressBar> {
    if !tty {
        return None;
    }
    let bar = match cycles {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let style =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    Some(bar)
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
