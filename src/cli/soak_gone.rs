//! What the soak and `intxd attach --hold` say when the daemon or the device
//! goes away under them: the figures so far and the real cause.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::CmdResult;
use intxd::control::client::Client;
use intxd::control::proto::Event;
use intxd::soak::SoakReport;

/// A run cut short, with its figures so far.
#[derive(Debug, serde::Serialize)]
pub struct CutShort {
    /// The device.
    pub device: String,
    /// The route mode of the run.
    pub mode: String,
    /// Its irqchip.
    pub irqchip: String,
    /// Interrupts the guest counted before the end.
    pub delivered: u64,
    /// Seconds the run lasted.
    pub elapsed_s: f64,
    /// Why it ended.
    pub cause: String,
}

/// Prints the finished runs, the ones cut short and their causes; always
/// fails.
pub fn report(done: &SoakReport, cuts: &[CutShort], json: bool) -> CmdResult {
    if json {
        let mut v = serde_json::to_value(done)?;
        if let Some(o) = v.as_object_mut() {
            // One device: one object, as before several devices could be
            // soaked at once; several: a list.
            let cut = match cuts {
                [one] => serde_json::to_value(one)?,
                all => serde_json::to_value(all)?,
            };
            o.insert("cut_short".into(), cut);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if !done.runs.is_empty() {
            print!("{}", done.table());
        }
        for cut in cuts {
            println!(
                "FAIL {} {}/{}: cut short after {} interrupts delivered in {:.1}s ({:.0}/s): {}",
                cut.device,
                cut.mode,
                cut.irqchip,
                cut.delivered,
                cut.elapsed_s,
                cut.delivered as f64 / cut.elapsed_s.max(1e-9),
                cut.cause
            );
        }
    }
    Ok(ExitCode::FAILURE)
}

/// Holds `device` on `client` for `hold`, watching for its `device_gone`
/// event and for the daemon going away. `Err` carries the cause.
pub fn hold(client: &mut Client, device: &str, hold: Duration) -> Result<(), String> {
    let t0 = Instant::now();
    while let Some(left) = hold.checked_sub(t0.elapsed()).filter(|d| !d.is_zero()) {
        match client.next_event(left) {
            Ok(Some(Event::DeviceGone { device: d, reason })) if d == device => return Err(reason),
            Ok(_) => {}
            Err(e) if intxd::soak::error::connection_closed(&e) => {
                return Err(intxd::soak::error::DAEMON_WENT_AWAY.to_string())
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
