//! The `[metrics]` table: the node_exporter textfile the daemon keeps up to
//! date, and how often it rewrites it. Checked at load (so in
//! `check-config`): an absolute `*.prom` path, its directory on disk, and
//! the interval's bounds.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::daemon::{path_value, PathRule};
use super::error::{shown, ConfigError};
use super::raw::RawFile;
use super::source::Source;

/// The default rewrite interval, seconds (node_exporter's usual scrape).
pub const DEFAULT_INTERVAL_SECS: u64 = 15;

/// The bounds of `metrics.interval_secs`.
pub const INTERVAL_SECS: std::ops::RangeInclusive<u64> = 1..=3600;

/// What `[metrics]` may say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub textfile: Spanned<String>,
    pub interval_secs: Option<Spanned<u64>>,
}

/// The metrics section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    /// The exposition is written here (atomically: a temporary file in the
    /// same directory, then a rename), for node_exporter's textfile
    /// collector.
    pub textfile: PathBuf,
    /// Seconds between two writes.
    pub interval_secs: u64,
}

impl MetricsConfig {
    /// The interval as a duration.
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.interval_secs)
    }
}

/// The `[metrics]` table, validated (no file is touched).
pub(super) fn metrics_section(
    src: &Source<'_>,
    raw: &RawFile,
) -> Result<Option<MetricsConfig>, ConfigError> {
    let Some(m) = &raw.metrics else {
        return Ok(None);
    };
    let m = m.get_ref();
    let textfile = path_value(src, "metrics.textfile", &m.textfile, PathRule::Absolute)?;
    if textfile.extension().is_none_or(|x| x != "prom") {
        return Err(src.err(
            m.textfile.span(),
            "metrics.textfile",
            format!(
                "`{}` does not end in .prom, and node_exporter's textfile collector reads only *.prom files",
                shown(m.textfile.get_ref())
            ),
            "name the file NAME.prom, e.g. /var/lib/node_exporter/textfile/intxd.prom",
        ));
    }
    let interval_secs = match &m.interval_secs {
        None => DEFAULT_INTERVAL_SECS,
        Some(v) if INTERVAL_SECS.contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            return Err(src.err(
                v.span(),
                "metrics.interval_secs",
                format!("{} seconds is out of range", v.get_ref()),
                &format!(
                    "use {} to {} (the default is {DEFAULT_INTERVAL_SECS})",
                    INTERVAL_SECS.start(),
                    INTERVAL_SECS.end()
                ),
            ))
        }
    };
    Ok(Some(MetricsConfig {
        textfile,
        interval_secs,
    }))
}

/// The check that needs the file system: the textfile's directory must
/// exist and be a directory (the daemon does not create it: it belongs to
/// node_exporter).
pub(super) fn check_on_disk(src: &Source<'_>, raw: &RawFile) -> Result<(), ConfigError> {
    let (Some(cfg), Some(m)) = (metrics_section(src, raw)?, &raw.metrics) else {
        return Ok(());
    };
    let span = m.get_ref().textfile.span();
    let dir = cfg.textfile.parent().unwrap_or(std::path::Path::new("/"));
    let shown_dir = shown(&dir.display().to_string());
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(src.err(
            span,
            "metrics.textfile",
            format!("{shown_dir} is not a directory"),
            "point textfile into node_exporter's --collector.textfile.directory",
        )),
        Err(e) => Err(src.err(
            span,
            "metrics.textfile",
            format!("its directory {shown_dir} cannot be used: {e}"),
            "create the directory (node_exporter's --collector.textfile.directory), or point textfile into it",
        )),
    }
}
