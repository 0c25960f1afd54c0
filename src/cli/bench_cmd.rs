//! `intxd bench`.

use std::io::IsTerminal;
use std::process::ExitCode;

use super::{logging, CmdResult};
use intxd::bench::BenchOptions;

pub fn bench(json: bool, cycles: u64, rounds: usize, scale: &str, scale_secs: f64) -> CmdResult {
    // Before anything else: the bench starts `intxd run`, which refuses a
    // config not owned by root and binds devices.
    if !nix::unistd::geteuid().is_root() {
        return Err("intxd bench needs root: it starts `intxd run` daemons (which refuse a config not owned by root) and real KVM guests; run it as root, e.g. with sudo".into());
    }
    logging::init("warn");
    if !std::path::Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm is missing: the benchmark runs real KVM guests".into());
    }
    let scale = scale
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--scale: {e}; give device counts like 1,16,64,256"))?;
    let opts = BenchOptions {
        exe: std::env::current_exe()?,
        cycles,
        rounds: rounds.max(1),
        scale,
        scale_secs,
    };
    let tty = std::io::stderr().is_terminal();
    let report = intxd::bench::run(&opts, &mut |what| {
        if tty {
            eprint!("\r\x1b[2Kintxd bench: {what}");
        }
    })?;
    if tty {
        eprint!("\r\x1b[2K");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
