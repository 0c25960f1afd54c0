//! From raw TOML to validated settings: merge the main file and its
//! drop-ins, check every value, and point at the offending key on failure.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::daemon::{daemon_section, DaemonConfig};
use super::error::{line_col, shown, ConfigError};
use super::metrics::{metrics_section, MetricsConfig};
use super::raw::{RawDevice, RawFile};
use super::source::Source;
use super::PciAddr;
use crate::relay::RelayConfig;
use crate::sim::AckPolicy;

/// How a device's route mode is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModePolicy {
    /// Whatever the VMM asks (`auto` picks direct unless ruled out).
    Auto,
    /// Always direct; a VMM that needs relay is refused.
    Direct,
    /// Always relay (for accounting, or a kernel without resample).
    Relay,
}

/// One `[[device]]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceConfig {
    /// Name VMMs use.
    pub name: String,
    /// PCI address or `sim:N`.
    #[serde(serialize_with = "display")]
    pub pci: PciAddr,
    /// Mode policy.
    pub mode: ModePolicy,
    /// uids that may attach (root always may).
    pub allow_uids: Vec<u32>,
    /// gids that may attach.
    pub allow_gids: Vec<u32>,
    /// Take the function from a host driver even if it looks in use.
    pub force: bool,
    /// Give the function back to its original driver when the daemon stops
    /// cleanly (true), or leave it on vfio-pci (false).
    pub restore: bool,
    /// How long the VMM's irq eventfd may go unread before intxd decides the
    /// VMM's irqfd is gone and detaches the device, milliseconds.
    pub irqfd_timeout_ms: u64,
    /// Relay limits.
    pub relay: RelayConfig,
    /// Emulated-device behaviour (only for `sim:N`).
    pub sim: AckPolicy,
    /// How a soak drives a real device (raise and ack registers).
    pub exerciser: Option<Exerciser>,
    /// Where the device was defined (`file:line`).
    pub defined_at: String,
}

pub use super::exerciser::Exerciser;

fn display<S: serde::Serializer>(v: &PciAddr, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A validated config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Daemon settings.
    pub daemon: DaemonConfig,
    /// Devices, in file order (main file first, then drop-ins by name).
    pub devices: Vec<DeviceConfig>,
    /// The metrics textfile, when `[metrics]` asks for one.
    pub metrics: Option<MetricsConfig>,
    /// Files read.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// Finds a device by name.
    pub fn device(&self, name: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.name == name)
    }
}

/// Validates config text (no drop-ins), naming `file` in errors.
pub fn load_str(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let main = Source { file, text };
    let raw = main.parse()?;
    let daemon = daemon_section(&main, &raw)?;
    build(main, raw, daemon, &[])
}

/// The validated config from the main file's raw layer and daemon table,
/// and the drop-ins' texts.
pub(super) fn build(
    main: Source<'_>,
    raw: RawFile,
    daemon: DaemonConfig,
    dropins: &[(&Path, &str)],
) -> Result<Config, ConfigError> {
    let metrics = metrics_section(&main, &raw)?;
    let mut files = vec![main.file.to_path_buf()];
    let mut devices = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut addrs: HashMap<PciAddr, String> = HashMap::new();
    for (i, d) in raw.device.iter().enumerate() {
        devices.push(device(&main, i, d, &mut names, &mut addrs)?);
    }
    for (file, text) in dropins {
        let src = Source { file, text };
        let raw = src.parse()?;
        let main_only = [
            ("daemon", raw.daemon.as_ref().map(|t| t.span())),
            ("metrics", raw.metrics.as_ref().map(|t| t.span())),
        ];
        if let Some((table, span)) = main_only.into_iter().find_map(|(t, s)| Some((t, s?))) {
            return Err(src.err(
                span,
                table,
                "a drop-in may only hold [[device]] tables".into(),
                &format!("move the [{table}] table to the main config file"),
            ));
        }
        files.push(file.to_path_buf());
        for (i, d) in raw.device.iter().enumerate() {
            devices.push(device(&src, i, d, &mut names, &mut addrs)?);
        }
    }
    Ok(Config {
        daemon,
        devices,
        metrics,
        files,
    })
}

fn device(
    src: &Source<'_>,
    i: usize,
    d: &toml::Spanned<RawDevice>,
    names: &mut HashMap<String, String>,
    addrs: &mut HashMap<PciAddr, String>,
) -> Result<DeviceConfig, ConfigError> {
    let at = |span: Range<usize>| {
        let (l, _) = line_col(src.text, span.start);
        format!("{}:{l}", src.file.display())
    };
    let raw = d.get_ref();
    let key = |k: &str| format!("device[{i}].{k}");
    let name = raw.name.get_ref().clone();
    if name.is_empty()
        || name.len() > 32
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(src.err(
            raw.name.span(),
            &key("name"),
            format!("`{}` is not a valid device name", shown(&name)),
            "use 1 to 32 characters from a-z, A-Z, 0-9, '-' and '_'",
        ));
    }
    if let Some(prev) = names.get(&name) {
        return Err(src.err(
            raw.name.span(),
            &key("name"),
            format!("device name `{name}` is already used at {prev}"),
            "give each [[device]] its own name",
        ));
    }
    let pci: PciAddr = raw.pci.get_ref().parse().map_err(|m| {
        src.err(
            raw.pci.span(),
            &key("pci"),
            m,
            "write the address as `lspci -D` prints it (0000:03:00.0), or sim:N for an emulated device",
        )
    })?;
    if let Some(prev) = addrs.get(&pci) {
        return Err(src.err(
            raw.pci.span(),
            &key("pci"),
            format!("{pci} is already configured at {prev}"),
            "a PCI function can belong to one [[device]] only; remove the duplicate",
        ));
    }
    let mode = match raw.mode.as_ref().map(|m| m.get_ref().as_str()) {
        None | Some("auto") => ModePolicy::Auto,
        Some("direct") => ModePolicy::Direct,
        Some("relay") => ModePolicy::Relay,
        Some(other) => {
            let span = raw.mode.as_ref().map(|m| m.span()).unwrap_or(d.span());
            return Err(src.err(
                span,
                &key("mode"),
                format!("unknown mode `{}`", shown(other)),
                "use \"auto\", \"direct\" or \"relay\"",
            ));
        }
    };
    let mut relay = RelayConfig::default();
    if let Some(r) = &raw.relay {
        if let Some(v) = r.storm_rate {
            relay.storm_rate = v;
        }
        if let Some(v) = &r.storm_backoff_ms {
            if *v.get_ref() == 0 || *v.get_ref() > 60_000 {
                return Err(src.err(
                    v.span(),
                    &key("relay.storm_backoff_ms"),
                    format!("{} ms is out of range", v.get_ref()),
                    "use a value from 1 to 60000",
                ));
            }
            relay.storm_backoff_ms = *v.get_ref();
        }
        if let Some(v) = r.storm_backoff_max_ms {
            relay.storm_backoff_max_ms = v;
        }
        // A `storm_rate` set without `direct_storm_rate` keeps its older
        // meaning on direct routes too.
        if let Some(v) = r.direct_storm_rate.or(r.storm_rate) {
            relay.direct_storm_rate = v;
        }
        if let Some(v) = &r.eoi_timeout_ms {
            if *v.get_ref() < 10 {
                return Err(src.err(
                    v.span(),
                    &key("relay.eoi_timeout_ms"),
                    format!("{} ms is too short for a guest's EOI", v.get_ref()),
                    "use at least 10 (the default is 1000)",
                ));
            }
            relay.eoi_timeout_ms = *v.get_ref();
        }
        if let Some(w) = r.watchdog {
            relay.watchdog = w;
        }
    }
    let sim = match &raw.sim {
        None => AckPolicy::Raise,
        Some(s) => {
            if !matches!(pci, PciAddr::Sim(_)) {
                return Err(src.err(
                    s.span(),
                    &key("sim"),
                    format!(
                        "[device.sim] only applies to emulated devices, and {pci} is a real one"
                    ),
                    "remove the [device.sim] table, or set pci = \"sim:N\"",
                ));
            }
            let s = s.get_ref();
            let interval = s.interval_us.unwrap_or(100);
            match s.after_ack.as_ref().map(|a| a.get_ref().as_str()) {
                None | Some("raise") => AckPolicy::Raise,
                Some("raise-after") => AckPolicy::RaiseAfter {
                    interval_us: interval,
                },
                Some("stay-low") => AckPolicy::StayLow,
                Some("ignore") => AckPolicy::Ignore,
                Some(other) => {
                    let span = s.after_ack.as_ref().map(|a| a.span()).unwrap_or(0..0);
                    return Err(src.err(
                        span,
                        &key("sim.after_ack"),
                        format!("unknown ack policy `{}`", shown(other)),
                        "use \"raise\", \"raise-after\", \"stay-low\" or \"ignore\"",
                    ));
                }
            }
        }
    };
    let irqfd_timeout_ms = match &raw.irqfd_timeout_ms {
        None => 5000,
        Some(v) if *v.get_ref() >= 100 => *v.get_ref(),
        Some(v) => {
            return Err(src.err(
                v.span(),
                &key("irqfd_timeout_ms"),
                format!(
                    "{} ms is too short: a busy VMM may take that long to read its irq eventfd",
                    v.get_ref()
                ),
                "use at least 100 (the default is 5000)",
            ))
        }
    };
    let exerciser = match &raw.exerciser {
        None => None,
        Some(e) if matches!(pci, PciAddr::Sim(_)) => {
            return Err(src.err(
                e.span(),
                &key("exerciser"),
                "an emulated device needs no exerciser: its doorbell raises it".into(),
                "remove the [device.exerciser] table, or give a real PCI address",
            ))
        }
        Some(e) => match e.get_ref().resolve() {
            Ok(x) => Some(x),
            Err((msg, fix)) => return Err(src.err(e.span(), &key("exerciser"), msg, fix)),
        },
    };
    let defined_at = at(d.span());
    names.insert(name.clone(), defined_at.clone());
    addrs.insert(pci, defined_at.clone());
    Ok(DeviceConfig {
        name,
        pci,
        mode,
        allow_uids: raw.allow_uids.clone(),
        allow_gids: raw.allow_gids.clone(),
        force: raw.force,
        restore: raw.restore.unwrap_or(true),
        irqfd_timeout_ms,
        relay,
        sim,
        exerciser,
        defined_at,
    })
}
