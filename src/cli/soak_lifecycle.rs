//! `intxd soak --lifecycle`: a real function through the guest lifecycle
//! (INTx, suspend, MSI, resume, reset, a GSI move) in each requested mode,
//! one `lifecycle:` line per phase ([`intxd::soak::lifecycle`]).

use super::{CmdResult, SoakArgs};
use intxd::config::Config;

/// Cycles per phase unless `--cycles` says otherwise.
#[cfg(target_arch = "x86_64")]
const DEFAULT_CYCLES: u64 = 1000;

#[cfg(not(target_arch = "x86_64"))]
pub fn run(_args: &SoakArgs, _config: &Config, _devices: &[String]) -> CmdResult {
    Err("--lifecycle: the lifecycle soak's guest (MSI through its local APIC) exists on x86_64 only".into())
}

#[cfg(target_arch = "x86_64")]
pub fn run(args: &SoakArgs, config: &Config, devices: &[String]) -> CmdResult {
    use super::{ChipArg, ModeArg};
    use intxd::route::Mode;
    use intxd::soak::lifecycle::run_lifecycle;
    use intxd::soak::DaemonWiring;
    use std::process::ExitCode;

    let [device] = devices else {
        return Err("--lifecycle soaks one device: name it with --device".into());
    };
    if args.irqchip == ChipArg::User {
        return Err("--lifecycle runs with the in-kernel irqchip only (its MSI route and irqfds are KVM's); drop --irqchip user".into());
    }
    let (inproc, socket) = super::soak_cmd::daemon(args, config)?;
    let modes = match args.mode {
        ModeArg::Direct => vec![Mode::Direct],
        ModeArg::Relay => vec![Mode::Relay],
        ModeArg::All => vec![Mode::Direct, Mode::Relay],
    };
    let cycles = args.cycles.unwrap_or(DEFAULT_CYCLES);
    let stall = args.stall.map_or(
        intxd::soak::guest::STALL_BOUND,
        std::time::Duration::from_secs_f64,
    );
    let exerciser = config.device(device).and_then(|d| d.exerciser);
    let mut reports = Vec::new();
    for mode in modes {
        let mut w = DaemonWiring::connect(&socket, device)?.with_exerciser(exerciser);
        let r = run_lifecycle(&mut w, mode, cycles, stall)?;
        if !args.json {
            for p in &r.phases {
                println!(
                    "lifecycle: {} {} phase={} asked={} delivered={} intx_eois={} intx_irqs={} msi_irqs={} lost={} spurious={} pending={} elapsed={:.2}s clean={}",
                    r.device, r.mode, p.name, p.asked, p.delivered, p.intx_eois, p.intx_irqs,
                    p.msi_irqs, p.lost, p.spurious, p.pending, p.elapsed_s, p.is_clean()
                );
            }
            println!(
                "lifecycle: {} {} pci={} phases={} intx_after_reset={} clean={}{}",
                r.device,
                r.mode,
                r.pci,
                r.phases.len(),
                r.intx_after_reset
                    .map_or("-".to_string(), |s| format!("{s:?}").to_lowercase()),
                r.is_clean(),
                r.error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" error: {e}"))
            );
        }
        reports.push(r);
    }
    drop(inproc);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if reports.iter().all(|r| r.is_clean()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
