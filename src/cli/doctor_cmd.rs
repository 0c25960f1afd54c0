//! `intxd doctor`: the host's and each configured device's readiness for
//! INTx passthrough, as a table or JSON. Reads only.

use std::path::Path;
use std::process::ExitCode;

use super::CmdResult;
use intxd::doctor::{self, DeviceRef, Host, KvmFacts, Status, SystemdFacts};

/// Runs every check. A missing config at the default path is not an error
/// (only the host is checked then); a config that does not load is.
pub fn doctor(config: &Path, explicit: bool, json: bool) -> CmdResult {
    let devices = if config.exists() || explicit {
        intxd::config::load(config)?
            .devices
            .iter()
            .map(|d| DeviceRef {
                name: d.name.clone(),
                pci: d.pci,
            })
            .collect()
    } else {
        eprintln!(
            "intxd doctor: no config at {}: checking the host only",
            config.display()
        );
        Vec::new()
    };
    let host = Host::real();
    let kvm = KvmFacts::probe();
    let systemd = SystemdFacts::probe(&*host.proc);
    let report = doctor::run(&host, &kvm, &systemd, &devices);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(if report.worst() == Status::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
