//! `intxd reload` (systemd's `ExecReload=`) and `intxd restart` (a planned
//! restart that keeps every route): requests to the running daemon.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::CmdResult;
use intxd::control::client::{Client, ClientError};
use intxd::control::proto::{Reply, Request};

/// A reload binds devices to vfio-pci; give it time.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(120);

fn connect(socket: &Path, name: &str) -> Result<Client, ClientError> {
    let mut c = Client::connect(socket)?;
    c.hello(name)?;
    Ok(c)
}

/// Asks for a reload and waits for its outcome: exit 0 when the whole config
/// was applied, 1 with the reason when it was refused (in whole or part).
pub fn reload(socket: &Path) -> CmdResult {
    let mut c = connect(socket, "intxd-reload")?;
    c.set_timeout(RELOAD_TIMEOUT);
    match c.request(&Request::Reload {}, &[]) {
        Ok((
            Reply::Reloaded {
                added,
                removed,
                changed,
            },
            _,
        )) => {
            println!("reloaded: {added} added, {removed} removed, {changed} changed");
            Ok(ExitCode::SUCCESS)
        }
        Ok((other, _)) => Err(format!("unexpected reply: {other:?}").into()),
        Err(ClientError::Refused { message, .. }) => {
            eprintln!("intxd: reload refused: {message}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// The daemon's pid, from `status`.
fn daemon_pid(c: &mut Client) -> Result<u32, ClientError> {
    match c.status()? {
        Reply::Status { daemon, .. } => Ok(daemon.pid),
        _ => Ok(0),
    }
}

/// Asks for a planned restart; with `wait` > 0, waits (up to `wait` seconds)
/// for the next daemon to serve and reports how long it took.
pub fn restart(socket: &Path, wait: f64) -> CmdResult {
    let mut c = connect(socket, "intxd-restart")?;
    let old = daemon_pid(&mut c)?;
    let t0 = Instant::now();
    let (routes, connections) = match c.request(&Request::Restart {}, &[])?.0 {
        Reply::Restarting {
            routes,
            connections,
        } => (routes, connections),
        other => return Err(format!("unexpected reply: {other:?}").into()),
    };
    println!("pid {old}: {routes} route(s) and {connections} connection(s) parked; restarting");
    drop(c);
    if wait == 0.0 {
        return Ok(ExitCode::SUCCESS);
    }
    let limit = Duration::from_secs_f64(wait);
    // The socket stays open in systemd meanwhile: a new connection is
    // answered once the next daemon serves.
    let mut last = String::new();
    while t0.elapsed() < limit {
        match connect(socket, "intxd-restart").and_then(|mut c| daemon_pid(&mut c)) {
            Ok(pid) if pid != old && pid != 0 => {
                println!(
                    "pid {pid} serves, {:.0} ms after the request",
                    t0.elapsed().as_secs_f64() * 1e3
                );
                return Ok(ExitCode::SUCCESS);
            }
            Ok(_) => last = "the old daemon still answers".into(),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "no new daemon served within {wait} s ({last}); see `systemctl status intxd` and its journal"
    )
    .into())
}
