//! Unix `SOCK_SEQPACKET` sockets: the one place intxd creates, connects,
//! binds, listens on and accepts them (the control socket, the sim host and
//! the bench's device process all use these).
//!
//! Every socket is close-on-exec. A listener never deletes what it finds at
//! its path unless that is a socket nobody listens on: a regular file, or a
//! live daemon's socket, is refused.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};

/// Why a socket could not be listened on.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another process answers on the path.
    #[error("{}: another process (an intxd, or a sim host) is already listening there; stop it first (systemctl stop intxd), or choose another path", .0.display())]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("{}: exists and is not a socket; remove it or choose another path", .0.display())]
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

fn seqpacket(flags: SockFlag) -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        flags | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// Connects a new (blocking, close-on-exec) SEQPACKET socket to `path`.
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let sock = seqpacket(SockFlag::empty())?;
    socket::connect(sock.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(sock)
}

/// Whether a process accepts connections on the socket at `path`.
pub fn answers(path: &Path) -> bool {
    connect(path).is_ok()
}

/// Binds a non-blocking SEQPACKET listener at `path` and listens with
/// `backlog`. A stale socket at the path (nobody listens) is replaced;
/// anything else there is refused. `prepare` runs between bind and listen
/// (to set the socket file's mode and group); when it or the listen fails,
/// the socket file is removed again, so nothing is left for the next start
/// to trip over.
pub fn listen(
    path: &Path,
    backlog: i32,
    prepare: impl FnOnce(&Path) -> Result<(), ListenError>,
) -> Result<OwnedFd, ListenError> {
    let err = |what, source: io::Error| ListenError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    clear_stale(path)?;
    let sock = seqpacket(SockFlag::SOCK_NONBLOCK).map_err(|e| err("create the socket", e))?;
    let addr = UnixAddr::new(path).map_err(|e| err("use the path", e.into()))?;
    socket::bind(sock.as_raw_fd(), &addr).map_err(|e| err("bind", e.into()))?;
    let backlog = Backlog::new(backlog).unwrap_or(Backlog::MAXCONN);
    prepare(path)
        .and_then(|()| socket::listen(&sock, backlog).map_err(|e| err("listen", e.into())))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })?;
    Ok(sock)
}

/// Accepts one connection as a non-blocking, close-on-exec socket.
/// `EAGAIN` when none is waiting; `EMFILE` when this process is out of fds.
#[allow(unsafe_code)]
pub fn accept(listener: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let raw = socket::accept4(
        listener.as_raw_fd(),
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )?;
    // SAFETY: accept4 just installed `raw` in our fd table; nothing else
    // refers to it.
    Ok(unsafe { super::fd::adopt(raw) })
}

fn clear_stale(path: &Path) -> Result<(), ListenError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket(path.to_path_buf()));
    }
    if answers(path) {
        return Err(ListenError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| ListenError::Io {
        path: path.to_path_buf(),
        what: "remove the stale socket",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn nothing(_: &Path) -> Result<(), ListenError> {
        Ok(())
    }

    #[test]
    fn a_regular_file_at_the_path_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, b"data").unwrap();
        let e = listen(&path, 1, nothing).unwrap_err();
        assert!(matches!(e, ListenError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }

    #[test]
    fn a_live_socket_is_refused_and_keeps_answering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let _live = listen(&path, 1, nothing).unwrap();
        let e = listen(&path, 1, nothing).unwrap_err();
        assert!(matches!(e, ListenError::InUse(_)), "{e}");
        assert!(answers(&path));
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(listen(&path, 1, nothing).unwrap());
        assert!(!answers(&path));
        let _new = listen(&path, 1, nothing).unwrap();
        assert!(answers(&path));
    }

    #[test]
    fn a_failed_prepare_leaves_no_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let e = listen(&path, 1, |_| Err(ListenError::NoGroup("nogroup".into()))).unwrap_err();
        assert!(matches!(e, ListenError::NoGroup(_)), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn accept_hands_over_a_nonblocking_cloexec_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let l = listen(&path, 1, nothing).unwrap();
        assert_eq!(accept(l.as_fd()).unwrap_err(), Errno::EAGAIN);
        let _c = connect(&path).unwrap();
        let s = accept(l.as_fd()).unwrap();
        assert!(super::super::fd::is_cloexec(s.as_fd()).unwrap());
        let kind = socket::getsockopt(&s, socket::sockopt::SockType).unwrap();
        assert_eq!(kind, SockType::SeqPacket);
    }
}
