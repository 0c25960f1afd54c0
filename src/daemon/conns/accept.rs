//! Accepting clients: every waiting connection, the connection limit, and
//! what happens when the process runs out of fds.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;

use super::{encode, Conn};
use crate::control::auth::Peer;
use crate::control::proto::{ErrorCode, Reply};
use crate::control::wire;
use crate::daemon::Daemon;
use crate::util::sock;

/// The control socket and the fd kept in reserve for refusing clients.
pub struct Acceptor {
    listener: OwnedFd,
    /// The path the daemon bound (removed at exit); `None` under socket
    /// activation.
    socket_path: Option<PathBuf>,
    reserve_fd: Option<std::fs::File>,
}

impl Acceptor {
    /// Serves `listener`, bound at `socket_path` by this daemon (or by
    /// systemd, `None`).
    pub fn new(listener: OwnedFd, socket_path: Option<PathBuf>) -> Acceptor {
        Acceptor {
            listener,
            socket_path,
            reserve_fd: std::fs::File::open("/dev/null").ok(),
        }
    }

    /// The listening socket.
    pub fn listener(&self) -> &OwnedFd {
        &self.listener
    }

    /// Where it is, for the log.
    pub fn describe(&self) -> String {
        match &self.socket_path {
            Some(p) => p.display().to_string(),
            None => "from systemd (socket activation)".to_string(),
        }
    }

    fn accept(&self) -> nix::Result<OwnedFd> {
        sock::accept(self.listener.as_fd())
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Daemon {
    pub(in crate::daemon) fn accept_all(&mut self) {
        loop {
            match self.accept.accept() {
                Ok(sock) => self.add_conn(sock),
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => continue,
                Err(Errno::EMFILE) | Err(Errno::ENFILE) => {
                    self.refuse_for_fds();
                    return;
                }
                Err(e) => {
                    log::error!("control socket: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Out of fds: free the reserve, accept the waiting client, tell it why,
    /// close it, and take the reserve back. Existing routes are untouched.
    fn refuse_for_fds(&mut self) {
        self.accept.reserve_fd = None;
        if let Ok(sock) = self.accept.accept() {
            let reply = Reply::error(
                ErrorCode::ResourceExhausted,
                "intxd is out of file descriptors (RLIMIT_NOFILE); existing devices keep working; raise LimitNOFILE= or try later",
            );
            let _ = wire::send(sock.as_fd(), &encode(&reply), &[]);
            log::error!("control socket: out of file descriptors; refused a new client");
        }
        self.accept.reserve_fd = std::fs::File::open("/dev/null").ok();
    }

    fn add_conn(&mut self, sock: OwnedFd) {
        // A status reply grows with the device count; room for a large one.
        // The kernel caps this at net.core.wmem_max, which suffices for a
        // few hundred devices.
        let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBuf, &(1 << 20));
        let peer = match Peer::of(&sock) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("control socket: cannot read the peer's credentials: {e}");
                return;
            }
        };
        let open = self.conns.open();
        if open >= self.config.daemon.max_connections {
            let reply = Reply::error(
                ErrorCode::TooManyConnections,
                format!(
                    "intxd already serves {open} connections (daemon.max_connections); close one and retry"
                ),
            );
            let _ = wire::send(sock.as_fd(), &encode(&reply), &[]);
            log::warn!(
                "control socket: refused pid {} uid {}: too many connections",
                peer.pid,
                peer.uid
            );
            return;
        }
        let conn = Conn {
            id: self.conns.new_id(),
            sock,
            peer,
            hello: false,
            version: 0,
            outbox: Default::default(),
            want_write: false,
            parked: false,
        };
        let (id, pid, uid) = (conn.id, conn.peer.pid, conn.peer.uid);
        match self.add_to_table(conn) {
            Ok(()) => log::debug!("connection {id} from pid {pid} uid {uid}"),
            Err(e) => log::error!("control socket: cannot watch a new connection: {e}"),
        }
    }
}
