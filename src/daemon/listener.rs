//! The control socket: a unix `SOCK_SEQPACKET` path socket with the
//! configured mode and group, or one handed over by systemd.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};

use crate::config::DaemonConfig;

/// Errors while setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another daemon answers on the path.
    #[error("{}: another intxd is already listening there; stop it first (systemctl stop intxd)", .0.display())]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{}: exists and is not a socket; remove it or set daemon.socket to another path", .0.display())]
    NotASocket(PathBuf),
    /// A step failed.
    #[error("{}: could not {what}", .path.display())]
    Io {
        /// Path.
        path: PathBuf,
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The configured group does not exist.
    #[error("daemon.socket_group: no group named `{0}` on this host; create it or fix the config")]
    NoGroup(String),
}

/// Binds and listens on the configured path.
pub fn bind_socket(cfg: &DaemonConfig) -> Result<OwnedFd, ListenError> {
    let path = &cfg.socket;
    let err = |what, source: io::Error| ListenError::Io {
        path: path.clone(),
        what,
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("create the socket's directory", e))?;
    }
    clear_stale(path)?;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err("create the socket", e.into()))?;
    let addr = UnixAddr::new(path.as_path()).map_err(|e| err("use the path", e.into()))?;
    bind(sock.as_raw_fd(), &addr).map_err(|e| err("bind", e.into()))?;
    finish_socket(cfg, &sock).inspect_err(|_| {
        // Leave nothing behind for the next start to trip over.
        let _ = std::fs::remove_file(path);
    })?;
    Ok(sock)
}

fn finish_socket(cfg: &DaemonConfig, sock: &OwnedFd) -> Result<(), ListenError> {
    let path = &cfg.socket;
    let err = |what, source: io::Error| ListenError::Io {
        path: path.clone(),
        what,
        source,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(cfg.socket_mode))
        .map_err(|e| err("set the socket's mode", e))?;
    if let Some(g) = &cfg.socket_group {
        let group = nix::unistd::Group::from_name(g)
            .map_err(|e| err("look up the socket group", e.into()))?
            .ok_or_else(|| ListenError::NoGroup(g.clone()))?;
        nix::unistd::chown(path.as_path(), None, Some(group.gid))
            .map_err(|e| err("give the socket to its group", e.into()))?;
    }
    listen(sock, Backlog::new(128).unwrap_or(Backlog::MAXCONN)).map_err(|e| err("listen", e.into()))
}

/// Takes over a listening socket from systemd. systemd hands it over in
/// blocking mode, and the loop drains `accept` until `EAGAIN`.
pub fn adopt_listener(fd: OwnedFd) -> io::Result<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    let kind = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::SockType)?;
    if kind != SockType::SeqPacket {
        return Err(io::Error::other(format!(
            "the socket systemd passed is {kind:?}, not SOCK_SEQPACKET; use ListenSequentialPacket= in intxd.socket"
        )));
    }
    Ok(fd)
}

fn clear_stale(path: &Path) -> Result<(), ListenError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_path_buf()));
    }
    let probe = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    );
    if let (Ok(s), Ok(addr)) = (probe, UnixAddr::new(path)) {
        if connect(s.as_raw_fd(), &addr).is_ok() {
            return Err(ListenError::InUse(path.to_path_buf()));
        }
    }
    std::fs::remove_file(path).map_err(|source| ListenError::Io {
        path: path.to_path_buf(),
        what: "remove the stale socket",
        source,
    })
}
