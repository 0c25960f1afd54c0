//! A soak of several devices at once: the figures per device and in total,
//! and which devices failed.

use serde::{Deserialize, Serialize};

use super::report::{RunReport, SoakReport};

/// One device's runs, added up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTally {
    /// The device.
    pub device: String,
    /// Its finished runs.
    pub runs: usize,
    /// Cycles asked for, over its runs.
    pub cycles: u64,
    /// Interrupts its guests counted.
    pub delivered: u64,
    /// Host-side triggers, over its runs ([`RunReport::triggered`]).
    #[serde(default)]
    pub triggered: u64,
    /// EOIs carried back, over its runs ([`RunReport::eois`]).
    #[serde(default)]
    pub eois: u64,
    /// Lost cycles.
    pub lost: u64,
    /// Spurious acknowledgements.
    pub spurious: u64,
    /// Storms limited.
    pub storms: u64,
    /// Whether every run was exact and none is missing.
    pub clean: bool,
    /// Why its runs stopped early, when they did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every device's runs, added up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Total {
    /// Devices soaked.
    pub devices: usize,
    /// Finished runs.
    pub runs: usize,
    /// Cycles asked for.
    pub cycles: u64,
    /// Interrupts delivered.
    pub delivered: u64,
    /// Host-side triggers.
    #[serde(default)]
    pub triggered: u64,
    /// EOIs carried back.
    #[serde(default)]
    pub eois: u64,
    /// Lost cycles.
    pub lost: u64,
    /// Spurious acknowledgements.
    pub spurious: u64,
    /// The devices that failed, in the soak's order.
    pub failed: Vec<String>,
}

impl SoakReport {
    /// Adds up the runs per device of `devices` (in that order) and in
    /// total. `stopped` names the devices whose runs stopped early, and why;
    /// `runs_each` is how many runs each device should have.
    pub fn tally(&mut self, devices: &[String], runs_each: usize, stopped: &[(String, String)]) {
        self.devices = devices
            .iter()
            .map(|name| {
                let mine: Vec<&RunReport> =
                    self.runs.iter().filter(|r| &r.device == name).collect();
                let sum = |f: fn(&RunReport) -> u64| mine.iter().map(|r| f(r)).sum::<u64>();
                let error = stopped
                    .iter()
                    .find(|(d, _)| d == name)
                    .map(|(_, e)| e.clone());
                DeviceTally {
                    device: name.clone(),
                    runs: mine.len(),
                    cycles: sum(|r| r.cycles),
                    delivered: sum(|r| r.delivered),
                    triggered: sum(|r| r.triggered),
                    eois: sum(|r| r.eois),
                    lost: sum(|r| r.lost),
                    spurious: sum(|r| r.spurious),
                    storms: sum(|r| r.storms),
                    clean: error.is_none()
                        && mine.len() == runs_each
                        && mine.iter().all(|r| r.is_clean()),
                    error,
                }
            })
            .collect();
        let sum = |f: fn(&DeviceTally) -> u64| self.devices.iter().map(f).sum::<u64>();
        self.total = Some(Total {
            devices: self.devices.len(),
            runs: self.devices.iter().map(|d| d.runs).sum(),
            cycles: sum(|d| d.cycles),
            delivered: sum(|d| d.delivered),
            triggered: sum(|d| d.triggered),
            eois: sum(|d| d.eois),
            lost: sum(|d| d.lost),
            spurious: sum(|d| d.spurious),
            failed: self
                .devices
                .iter()
                .filter(|d| !d.clean)
                .map(|d| d.device.clone())
                .collect(),
        });
    }

    /// The per-device table and its total line (empty before
    /// [`tally`](Self::tally)).
    pub fn devices_table(&self) -> String {
        let Some(t) = &self.total else {
            return String::new();
        };
        let mut out = format!(
            "{:<10} {:>4} {:>10} {:>10} {:>6} {:>6} {:>6}  result\n",
            "device", "runs", "cycles", "delivered", "lost", "spur", "storms"
        );
        let row = |name: &str, runs, cycles, delivered, lost, spur, storms: String, result| {
            format!(
                "{name:<10} {runs:>4} {cycles:>10} {delivered:>10} {lost:>6} {spur:>6} {storms:>6}  {result}\n"
            )
        };
        for d in &self.devices {
            let result = match (&d.error, d.clean) {
                (Some(e), _) => format!("FAIL ({e})"),
                (None, true) => "ok".to_string(),
                (None, false) => "FAIL".to_string(),
            };
            out.push_str(&row(
                &d.device,
                d.runs,
                d.cycles,
                d.delivered,
                d.lost,
                d.spurious,
                d.storms.to_string(),
                result,
            ));
        }
        let result = if t.failed.is_empty() {
            "ok".to_string()
        } else {
            format!(
                "FAIL ({} of {} devices: {})",
                t.failed.len(),
                t.devices,
                t.failed.join(", ")
            )
        };
        out.push_str(&row(
            "total",
            t.runs,
            t.cycles,
            t.delivered,
            t.lost,
            t.spurious,
            String::new(),
            result,
        ));
        out
    }
}
