//! `intxd run` and `intxd check-config`.

use std::path::Path;
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};

use super::{logging, CmdResult};
use intxd::daemon::{Daemon, DaemonOptions};
use intxd::systemd::SdNotifier;

pub fn run(config: &Path) -> CmdResult {
    logging::init("info");
    // Block the signals the loop reads from its signalfd before any thread
    // starts, so every thread inherits the mask.
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.add(Signal::SIGUSR1);
    set.add(Signal::SIGUSR2);
    set.thread_block()?;
    let cfg = intxd::config::load(config)?;
    for f in &cfg.files {
        intxd::config::check_owner(f)?;
    }
    let under_systemd = std::env::var_os("NOTIFY_SOCKET").is_some();
    let fdstore: Box<dyn intxd::systemd::FdStore> = if under_systemd {
        Box::new(intxd::systemd::SdFdStore)
    } else {
        Box::new(intxd::systemd::NoFdStore)
    };
    let seccomp = cfg.daemon.seccomp;
    let mut daemon = Daemon::new(
        cfg,
        DaemonOptions {
            inherited: intxd::systemd::Inherited::from_env()?,
            handle_signals: true,
            notifier: Box::new(SdNotifier::from_env()),
            fdstore,
            config_path: Some(config.to_path_buf()),
            test_hooks: std::env::var_os("INTXD_TEST_HOOKS").is_some_and(|v| v == "1"),
        },
    )?;
    if seccomp {
        // Hardening, not function: a daemon that cannot install it keeps
        // serving, and says so loudly.
        match intxd::daemon::seccomp::install() {
            Ok(()) => log::info!("seccomp filter installed"),
            Err(e) => log::error!(
                "{}; running without it (allow seccomp(2) in the service's SystemCallFilter=, or set daemon.seccomp = false to silence this)",
                super::chain(&e)
            ),
        }
    }
    daemon.run()?;
    Ok(ExitCode::SUCCESS)
}

pub fn check_config(config: &Path) -> CmdResult {
    let cfg = intxd::config::load(config)?;
    println!(
        "{}: ok: {} device(s) from {} file(s); socket {}",
        config.display(),
        cfg.devices.len(),
        cfg.files.len(),
        cfg.daemon.socket.display()
    );
    for d in &cfg.devices {
        println!(
            "  {:<16} {:<14} mode {:<6} ({})",
            d.name,
            d.pci.to_string(),
            format!("{:?}", d.mode).to_lowercase(),
            d.defined_at
        );
    }
    Ok(ExitCode::SUCCESS)
}
