//! intxd: level-triggered PCI INTx passthrough to virtual machines.
//!
//! The folders follow the architecture in `docs/architecture.md`:
//! [`config`] (TOML), [`vfio`] (the INTx device trait and the real VFIO
//! backend), [`sim`] (the emulated INTx function), [`route`] (one device's
//! wiring, direct or relay), [`relay`] (the userspace hot path), [`daemon`]
//! (the event loop), [`control`] (the socket protocol and the Rust client),
//! [`systemd`] (notify), [`soak`] (the built-in VMM) and [`bench`](mod@bench).

pub mod bench;
pub mod config;
pub mod control;
pub mod daemon;
pub mod doctor;
pub mod lab;
pub mod metrics;
pub mod pci;
pub mod relay;
pub mod route;
pub mod sim;
pub mod soak;
pub mod systemd;
pub mod util;
pub mod vfio;

/// The control protocol version this build speaks.
pub use intxd_client::PROTOCOL_VERSION;
