//! The control socket: a unix `SOCK_SEQPACKET` path socket with the
//! configured mode and group, or one handed over by systemd. Binding,
//! the stale-socket check and listening are [`crate::util::sock`]'s.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::DaemonConfig;
use crate::util::sock;

pub use crate::util::sock::ListenError;

/// Binds and listens on the configured path.
pub fn bind_socket(cfg: &DaemonConfig) -> Result<OwnedFd, ListenError> {
    let path = &cfg.socket;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ListenError::Io {
            path: path.clone(),
            what: "create the socket's directory",
            source,
        })?;
    }
    sock::listen(path, 128, |p| set_owner(cfg, p))
}

/// Gives the socket file its configured mode and group.
fn set_owner(cfg: &DaemonConfig, path: &Path) -> Result<(), ListenError> {
    let err = |what, source: io::Error| ListenError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.socket_mode))
        .map_err(|e| err("set the socket's mode", e))?;
    if let Some(g) = &cfg.socket_group {
        let group = nix::unistd::Group::from_name(g)
            .map_err(|e| err("look up the socket group", e.into()))?
            .ok_or_else(|| ListenError::NoGroup(g.clone()))?;
        nix::unistd::chown(path, None, Some(group.gid))
            .map_err(|e| err("give the socket to its group", e.into()))?;
    }
    Ok(())
}

/// Takes over a listening socket from systemd. systemd hands it over in
/// blocking mode, and the loop drains `accept` until `EAGAIN`.
pub fn adopt_listener(fd: OwnedFd) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let kind = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)?;
    if kind != nix::sys::socket::SockType::SeqPacket {
        return Err(io::Error::other(format!(
            "the socket systemd passed is {kind:?}, not SOCK_SEQPACKET; use ListenSequentialPacket= in intxd.socket"
        )));
    }
    Ok(fd)
}
