//! Who may attach a device: `SO_PEERCRED` against the device's allow lists.
//!
//! Root (uid 0) may attach any device: it could open `/dev/vfio` itself.
//! Anyone else needs their uid in `allow_uids`, or their primary or a
//! supplementary gid in `allow_gids`. Empty lists mean root only. Reaching
//! the socket at all is governed by its mode and group.

use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::config::DeviceConfig;

/// A connected peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// pid.
    pub pid: u32,
    /// uid.
    pub uid: u32,
    /// Primary gid.
    pub gid: u32,
    /// Supplementary gids (from `/proc/PID/status`, read at connect).
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the peer of a connected unix socket.
    pub fn of<F: AsFd>(sock: &F) -> std::io::Result<Peer> {
        let cred = getsockopt(sock, PeerCredentials).map_err(std::io::Error::from)?;
        let pid = u32::try_from(cred.pid()).unwrap_or(0);
        Ok(Peer {
            pid,
            uid: cred.uid(),
            gid: cred.gid(),
            groups: supplementary_groups(pid),
        })
    }

    /// Whether this peer may attach `dev`.
    pub fn may_attach(&self, dev: &DeviceConfig) -> bool {
        self.uid == 0
            || dev.allow_uids.contains(&self.uid)
            || dev.allow_gids.contains(&self.gid)
            || self.groups.iter().any(|g| dev.allow_gids.contains(g))
    }
}

fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
