//! The configuration: `/etc/intxd/intxd.toml` plus drop-ins in
//! `devices.d/*.toml`, in three layers (as zincati does): raw TOML with
//! `deny_unknown_fields` (`raw.rs`, parsed and located in `source.rs`),
//! the files read without blocking (`files.rs`), and validated settings
//! ([`Config`]; the `[daemon]` table in `daemon.rs`). Every mistake names
//! the file, the line and column, the key's full path and the fix, with
//! whatever came from the config escaped and cut.

mod daemon;
mod error;
mod exerciser;
mod files;
mod metrics;
mod pci_addr;
mod raw;
mod source;
mod validate;

pub use daemon::DaemonConfig;
pub use error::{escape, ConfigError, MAX_FILE_BYTES};
pub use exerciser::{Exerciser, PROFILES};
pub use files::load;
pub use metrics::MetricsConfig;
pub use pci_addr::PciAddr;
pub use validate::{load_str, Config, DeviceConfig, ModePolicy};

/// Refuses a config file that anyone but root could have written: intxd
/// runs as root and binds whatever the config names.
pub fn check_owner(file: &std::path::Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(ConfigError::Unsafe {
            file: file.to_path_buf(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// The built-in config used by `intxd soak` and `intxd bench` without
/// `--config`: one emulated device. (The in-process daemon of the soak and
/// the bench adds the calling user to its allow list.)
pub const BUILTIN: &str = r#"
[daemon]
socket = "/run/intxd/control.sock"

[[device]]
name = "sim0"
pci = "sim:0"
mode = "auto"
"#;

/// Where the daemon looks by default.
pub const DEFAULT_PATH: &str = "/etc/intxd/intxd.toml";
