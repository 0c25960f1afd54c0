//! The `[daemon]` table: defaults, and the checks that catch at load (so in
//! `check-config`) what would otherwise fail only when the daemon starts:
//! socket paths that cannot be bound, relative paths, NUL bytes.

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml::Spanned;

use super::error::{shown, ConfigError};
use super::raw::RawFile;
use super::source::Source;

/// The daemon section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonConfig {
    /// Control socket path.
    pub socket: PathBuf,
    /// Control socket mode.
    pub socket_mode: u32,
    /// Group that owns the control socket.
    pub socket_group: Option<String>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Serve `sim:N` devices from `intxd sim-host` at this socket instead of
    /// in-process (so they outlive a daemon restart, as VFIO does).
    pub sim_host: Option<PathBuf>,
    /// Install the steady-state seccomp filter once ready (`intxd run`).
    pub seccomp: bool,
    /// Where sysfs is (a fake tree in tests).
    pub sysfs_root: PathBuf,
    /// Where procfs is (for the in-use checks).
    pub proc_root: PathBuf,
    /// How long one sysfs write may block (an unbind waits for whoever holds
    /// the device), milliseconds.
    pub sysfs_timeout_ms: u64,
}

/// `sun_path` holds 108 bytes, the terminating NUL included.
const SUN_PATH: usize = 108;

/// What a path-valued key must be.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum PathRule {
    /// Absolute, and short enough for `sun_path`.
    Socket,
    /// Absolute.
    Absolute,
    /// Absolute, or relative to the config file's directory.
    BesideTheFile,
}

/// Checks a path-valued key: not empty, no NUL or other control character,
/// and what `rule` asks.
pub(super) fn path_value(
    src: &Source<'_>,
    key: &str,
    v: &Spanned<String>,
    rule: PathRule,
) -> Result<PathBuf, ConfigError> {
    let s = v.get_ref();
    let bad = |message: String, fix: &str| Err(src.err(v.span(), key, message, fix));
    if s.is_empty() {
        return bad(
            "the path is empty".into(),
            "give an absolute path, or remove the key for the default",
        );
    }
    if s.contains('\0') {
        return bad(
            format!("`{}` contains a NUL byte, which no path can hold", shown(s)),
            "remove the \\u0000 from the path",
        );
    }
    if s.chars().any(char::is_control) {
        return bad(
            format!("`{}` contains a control character", shown(s)),
            "write the path without control characters",
        );
    }
    if rule != PathRule::BesideTheFile && !s.starts_with('/') {
        return bad(
            format!(
                "`{}` is not an absolute path (the daemon's working directory is not the config's)",
                shown(s)
            ),
            "give an absolute path, starting with /",
        );
    }
    if rule == PathRule::Socket && s.len() >= SUN_PATH {
        return bad(
            format!(
                "`{}` is {} bytes long; a unix socket path must fit sun_path ({SUN_PATH} bytes with its NUL), so at most {} bytes",
                shown(s),
                s.len(),
                SUN_PATH - 1
            ),
            "choose a shorter path, e.g. under /run/intxd/",
        );
    }
    Ok(PathBuf::from(s))
}

/// The `[daemon]` table, validated (no file is touched).
pub(super) fn daemon_section(src: &Source<'_>, raw: &RawFile) -> Result<DaemonConfig, ConfigError> {
    let mut cfg = DaemonConfig {
        socket: PathBuf::from("/run/intxd/control.sock"),
        socket_mode: 0o660,
        socket_group: None,
        state_dir: PathBuf::from("/var/lib/intxd"),
        max_connections: 256,
        sim_host: None,
        seccomp: true,
        sysfs_root: PathBuf::from("/sys"),
        proc_root: PathBuf::from("/proc"),
        sysfs_timeout_ms: 5000,
    };
    let Some(d) = &raw.daemon else {
        return Ok(cfg);
    };
    let d = d.get_ref();
    let path = |key: &str, v: &Option<Spanned<String>>, rule| {
        v.as_ref()
            .map(|v| path_value(src, &format!("daemon.{key}"), v, rule))
            .transpose()
    };
    if let Some(p) = path("socket", &d.socket, PathRule::Socket)? {
        cfg.socket = p;
    }
    cfg.sim_host = path("sim_host", &d.sim_host, PathRule::Socket)?;
    if let Some(p) = path("state_dir", &d.state_dir, PathRule::Absolute)? {
        cfg.state_dir = p;
    }
    path("devices_dir", &d.devices_dir, PathRule::BesideTheFile)?;
    if let Some(p) = path("sysfs_root", &d.sysfs_root, PathRule::Absolute)? {
        cfg.sysfs_root = p;
    }
    if let Some(p) = path("proc_root", &d.proc_root, PathRule::Absolute)? {
        cfg.proc_root = p;
    }
    if let Some(m) = &d.socket_mode {
        cfg.socket_mode = u32::from_str_radix(m.get_ref().trim_start_matches("0o"), 8)
            .ok()
            .filter(|v| *v <= 0o777)
            .ok_or_else(|| {
                src.err(
                    m.span(),
                    "daemon.socket_mode",
                    format!("`{}` is not an octal file mode", shown(m.get_ref())),
                    "write the mode as an octal string, e.g. socket_mode = \"0660\"",
                )
            })?;
    }
    if let Some(g) = &d.socket_group {
        let name = g.get_ref();
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(src.err(
                g.span(),
                "daemon.socket_group",
                format!("`{}` is not a group name", shown(name)),
                "name an existing group, e.g. socket_group = \"kvm\", or remove the key",
            ));
        }
        cfg.socket_group = Some(name.clone());
    }
    cfg.seccomp = d.seccomp.unwrap_or(true);
    if let Some(t) = &d.sysfs_timeout_ms {
        if !(100..=600_000).contains(t.get_ref()) {
            return Err(src.err(
                t.span(),
                "daemon.sysfs_timeout_ms",
                format!("{} ms is out of range", t.get_ref()),
                "use 100 to 600000 (the default is 5000)",
            ));
        }
        cfg.sysfs_timeout_ms = *t.get_ref();
    }
    if let Some(m) = &d.max_connections {
        if *m.get_ref() == 0 || *m.get_ref() > 65536 {
            return Err(src.err(
                m.span(),
                "daemon.max_connections",
                format!("{} is out of range", m.get_ref()),
                "use a number from 1 to 65536",
            ));
        }
        cfg.max_connections = *m.get_ref() as usize;
    }
    Ok(cfg)
}

/// The drop-in directory: `daemon.devices_dir` (a relative one is relative
/// to the main file's directory), or `devices.d/` beside the main file.
pub(super) fn devices_dir(main: &Path, raw: &RawFile) -> PathBuf {
    let beside = main.parent().unwrap_or(Path::new(""));
    match raw
        .daemon
        .as_ref()
        .and_then(|d| d.get_ref().devices_dir.as_ref())
    {
        Some(d) => beside.join(d.get_ref()),
        None => beside.join("devices.d"),
    }
}

/// The checks that need the file system: a `state_dir` that exists must be
/// a directory.
pub(super) fn check_on_disk(
    src: &Source<'_>,
    raw: &RawFile,
    cfg: &DaemonConfig,
) -> Result<(), ConfigError> {
    let span = raw
        .daemon
        .as_ref()
        .and_then(|d| d.get_ref().state_dir.as_ref().map(|s| s.span()));
    match std::fs::metadata(&cfg.state_dir) {
        Ok(m) if !m.is_dir() => Err(src.err(
            span.unwrap_or(0..0),
            "daemon.state_dir",
            format!("{} exists and is not a directory", shown(&cfg.state_dir.display().to_string())),
            "point state_dir at a directory (the daemon creates a missing one), or move the file away",
        )),
        _ => Ok(()),
    }
}
