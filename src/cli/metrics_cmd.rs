//! `intxd metrics`: the daemon's Prometheus exposition on stdout.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use super::CmdResult;
use intxd::control::client::Client;

pub fn metrics(socket: &Path) -> CmdResult {
    let mut c = Client::connect(socket)?;
    c.hello("intxd-metrics")?;
    let text = c.metrics()?;
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
