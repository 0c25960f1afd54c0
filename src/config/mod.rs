//! The configuration: `/etc/intxd/intxd.toml` plus drop-ins in
//! `devices.d/*.toml`, in three layers (as zincati does): raw TOML with
//! `deny_unknown_fields` (`raw.rs`), merged files, and validated settings
//! ([`Config`]). Every mistake names the file, the line and column, the key
//! and the fix.

mod error;
mod pci_addr;
mod raw;
mod validate;

pub use error::ConfigError;
pub use pci_addr::PciAddr;
pub use validate::{load, load_str, Config, DaemonConfig, DeviceConfig, ModePolicy};

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
