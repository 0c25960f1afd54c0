//! The raw layer: what TOML may say, with `deny_unknown_fields` everywhere
//! and spans on the values that later checks must point at.

use serde::Deserialize;
use toml::Spanned;

use crate::relay::WatchdogPolicy;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub daemon: Option<Spanned<RawDaemon>>,
    pub metrics: Option<Spanned<super::metrics::RawMetrics>>,
    #[serde(default)]
    pub device: Vec<Spanned<RawDevice>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub socket: Option<Spanned<String>>,
    pub socket_mode: Option<Spanned<String>>,
    pub socket_group: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub devices_dir: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<u64>>,
    pub sim_host: Option<Spanned<String>>,
    pub seccomp: Option<bool>,
    pub sysfs_root: Option<Spanned<String>>,
    pub proc_root: Option<Spanned<String>>,
    pub sysfs_timeout_ms: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDevice {
    pub name: Spanned<String>,
    pub pci: Spanned<String>,
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_uids: Vec<u32>,
    #[serde(default)]
    pub allow_gids: Vec<u32>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub irqfd_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    pub restore: Option<bool>,
    #[serde(default)]
    pub relay: Option<RawRelay>,
    #[serde(default)]
    pub sim: Option<Spanned<RawSim>>,
    #[serde(default)]
    pub exerciser: Option<Spanned<super::exerciser::RawExerciser>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub storm_rate: Option<u64>,
    pub storm_backoff_ms: Option<Spanned<u64>>,
    pub storm_backoff_max_ms: Option<u64>,
    pub direct_storm_rate: Option<u64>,
    pub eoi_timeout_ms: Option<Spanned<u64>>,
    pub watchdog: Option<WatchdogPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSim {
    pub after_ack: Option<Spanned<String>>,
    pub interval_us: Option<u64>,
}
