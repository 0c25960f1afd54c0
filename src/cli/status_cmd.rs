//! `intxd status` and `intxd trigger`.

use std::path::Path;
use std::process::ExitCode;

use super::{AttachModeArg, CmdResult};
use intxd::control::client::Client;
use intxd::control::proto::{ModeRequest, Reply};

pub fn status(socket: &Path, json: bool) -> CmdResult {
    let mut c = Client::connect(socket)?;
    c.hello("intxd-status")?;
    let reply = c.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Reply::Status { daemon, devices } = reply else {
        return Err(format!("unexpected reply: {reply:?}").into());
    };
    println!(
        "intxd {} pid {}  up {:.0}s  {} connections  {} fds  {} loop wakeups",
        daemon.version,
        daemon.pid,
        daemon.uptime_s,
        daemon.connections,
        daemon.fds,
        daemon.loop_wakeups
    );
    println!(
        "{:<16} {:<14} {:<9} {:<6} {:>8} {:>12} {:>10} {:>7}",
        "DEVICE", "PCI", "STATE", "MODE", "OWNER", "HOST IRQS", "RELAYED", "STORMS"
    );
    for d in devices {
        let relay = d.counters.relay.as_ref();
        println!(
            "{:<16} {:<14} {:<9} {:<6} {:>8} {:>12} {:>10} {:>7}",
            d.name,
            d.pci,
            d.state,
            d.mode.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            d.owner
                .map(|o| o.pid.to_string())
                .unwrap_or_else(|| "-".into()),
            d.counters.host_interrupts,
            relay
                .map(|r| r.relayed.to_string())
                .unwrap_or_else(|| "-".into()),
            relay
                .map(|r| r.storms.to_string())
                .unwrap_or_else(|| "-".into()),
        );
        // Why a device is not usable, and what its open found about its line: under its row,
        // as a person reads the table.
        for (what, text) in [("failure", &d.failure), ("warning", &d.warning)] {
            if let Some(text) = text {
                println!("  {what}: {}", intxd::config::escape(text));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn trigger(socket: &Path, device: &str) -> CmdResult {
    let mut c = Client::connect(socket)?;
    c.hello("intxd-trigger")?;
    c.trigger(device)?;
    println!("{device}: trigger fired");
    Ok(ExitCode::SUCCESS)
}

pub fn attach(socket: &Path, device: &str, mode: AttachModeArg, hold: f64) -> CmdResult {
    let mode = match mode {
        AttachModeArg::Auto => ModeRequest::Auto,
        AttachModeArg::Direct => ModeRequest::Direct,
        AttachModeArg::Relay => ModeRequest::Relay,
    };
    let mut att = intxd::control::client::attach_user_irqchip(socket, device, mode)?;
    println!("{}", serde_json::to_string(&att.reply)?);
    let t0 = std::time::Instant::now();
    if let Err(cause) = super::soak_gone::hold(
        &mut att.client,
        device,
        std::time::Duration::from_secs_f64(hold),
    ) {
        println!(
            "FAIL {device}: gone after {:.1}s of the {hold}s hold: {cause}",
            t0.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::FAILURE);
    }
    att.client.detach(device)?;
    Ok(ExitCode::SUCCESS)
}
