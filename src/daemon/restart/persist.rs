//! What survives a daemon restart: a small state record in a memfd, and the
//! names under which every fd of a live route and every client connection
//! are parked in systemd's fd store.
//!
//! | fd name | what |
//! |---|---|
//! | `state` | this record (a memfd, rewritten in place) |
//! | `conn-<id>` | a client connection |
//! | `<device>-irq`, `<device>-resample` | the VMM's eventfds |
//! | `<device>-trigger`, `<device>-unmask` | a relay route's own eventfds |
//! | `<device>-dev` | what keeps the device open (VFIO fds, the sim host connection) |

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::control::proto::Owner;
use crate::route::{Irqchip, Mode};

/// Version of the record's layout.
pub const STATE_VERSION: u32 = 1;

/// A client connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnRecord {
    /// Connection id.
    pub id: u64,
    /// Peer pid.
    pub pid: u32,
    /// Peer uid.
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
    /// Peer's supplementary gids.
    pub groups: Vec<u32>,
    /// Whether it said hello.
    pub hello: bool,
}

/// A live route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteRecord {
    /// Device name.
    pub device: String,
    /// Its PCI address (checked against the config on adoption).
    pub pci: String,
    /// Route mode.
    pub mode: Mode,
    /// The VMM's irqchip.
    pub irqchip: Irqchip,
    /// The owning connection.
    pub conn_id: u64,
    /// The owner's credentials.
    pub owner: Owner,
}

/// Everything the next daemon needs besides the fds themselves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateRecord {
    /// Layout version.
    pub version: u32,
    /// The next connection id to hand out.
    pub next_conn_id: u64,
    /// Connections.
    pub conns: Vec<ConnRecord>,
    /// Routes.
    pub routes: Vec<RouteRecord>,
}

/// The name of a connection's fd.
pub fn conn_fd_name(id: u64) -> String {
    format!("conn-{id}")
}

/// The name of one of a route's fds.
pub fn route_fd_name(device: &str, role: crate::vfio::ParkedFd) -> String {
    format!("{device}-{}", role.name())
}

/// The memfd that holds the record. systemd holds a duplicate of the same
/// open file, so rewriting it in place updates what the next daemon reads.
pub struct StateFile {
    file: std::fs::File,
}

impl StateFile {
    /// A new, empty record file.
    pub fn create() -> std::io::Result<StateFile> {
        let fd =
            nix::sys::memfd::memfd_create("intxd-state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        Ok(StateFile { file: fd.into() })
    }

    /// Takes over the record a previous daemon parked.
    pub fn adopt(fd: OwnedFd) -> StateFile {
        StateFile { file: fd.into() }
    }

    /// The fd, for the fd store.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Reads the record.
    pub fn read(&mut self) -> std::io::Result<StateRecord> {
        let mut text = String::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_string(&mut text)?;
        if text.is_empty() {
            return Ok(StateRecord::default());
        }
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// Replaces the record.
    pub fn write(&mut self, rec: &StateRecord) -> std::io::Result<()> {
        let text = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&text)
    }
}
