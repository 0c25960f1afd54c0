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
    log::info!("intxd {} starting", super::version::line());
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
    let daemon = Daemon::new(
        cfg,
        DaemonOptions {
            inherited: intxd::systemd::Inherited::from_env()?,
            handle_signals: true,
            notifier: Box::new(SdNotifier::from_env()),
            fdstore,
            config_path: Some(config.to_path_buf()),
            test_hooks: test_hooks_wanted(),
        },
    );
    let mut daemon = match daemon {
        Err(intxd::daemon::DaemonError::Interrupted) => {
            log::info!("stopped during start-up; every device bound so far was given back");
            return Ok(ExitCode::SUCCESS);
        }
        other => other?,
    };
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
    if daemon.restart_planned() {
        // Every route is in the fd store. Exit as a crash would, without
        // running a single destructor (no backend's, no route's), so the
        // kernel only closes this process's copies of the fds; the unit
        // restarts on this status and the next daemon adopts them all.
        std::mem::forget(daemon);
        return Ok(ExitCode::from(intxd::control::proto::RESTART_EXIT_STATUS));
    }
    Ok(ExitCode::SUCCESS)
}

/// `INTXD_TEST_HOOKS=1`, honoured only by a build with the test hooks.
fn test_hooks_wanted() -> bool {
    let wanted = std::env::var_os("INTXD_TEST_HOOKS").is_some_and(|v| v == "1");
    if wanted && !intxd::daemon::TEST_HOOKS_BUILT {
        log::warn!("INTXD_TEST_HOOKS=1 is ignored: this build has no test hooks (they are a cargo feature of the tests' build only)");
    }
    wanted && intxd::daemon::TEST_HOOKS_BUILT
}

pub fn bind(config: &Path, device: &str, bind: bool) -> CmdResult {
    logging::init("info");
    let cfg = intxd::config::load(config)?;
    let dev = cfg
        .device(device)
        .ok_or_else(|| format!("no device named `{device}` in {}", config.display()))?;
    let binder = intxd::daemon::Binder::new(&cfg);
    if bind {
        let rec = binder.bind(dev)?;
        println!(
            "{} {}: bound to vfio-pci (was {})",
            dev.name,
            dev.pci,
            rec.original_driver.driver().unwrap_or("unbound")
        );
    } else {
        binder.release(dev)?;
        let info = intxd::pci::identify(binder.sysfs(), &dev.name, dev.pci)?;
        println!(
            "{} {}: released; driver now {}",
            dev.name,
            dev.pci,
            info.driver.as_deref().unwrap_or("none")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn check_config(config: &Path) -> CmdResult {
    let cfg = intxd::config::load(config)?;
    // File names may hold anything; never echo their control bytes.
    let shown = |p: &Path| intxd::config::escape(&p.display().to_string());
    println!(
        "{}: ok: {} device(s) from {} file(s); socket {}",
        shown(config),
        cfg.devices.len(),
        cfg.files.len(),
        shown(&cfg.daemon.socket)
    );
    for d in &cfg.devices {
        println!(
            "  {:<16} {:<14} mode {:<6} ({})",
            d.name,
            d.pci.to_string(),
            format!("{:?}", d.mode).to_lowercase(),
            intxd::config::escape(&d.defined_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}
