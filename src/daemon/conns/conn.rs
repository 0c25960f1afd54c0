//! One client connection: its peer, whether it said hello, and the replies
//! and events waiting for its socket to drain.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::control::auth::Peer;
use crate::control::wire;

/// Most packets queued for a client that does not read; past that it is
/// disconnected, so a stuck client cannot grow the daemon.
pub const OUTBOX_LIMIT: usize = 256;

/// A queued packet with the fds it carries.
pub struct Outgoing {
    /// JSON bytes.
    pub data: Vec<u8>,
    /// fds to send (closed once sent).
    pub fds: Vec<OwnedFd>,
}

/// A client connection.
pub struct Conn {
    /// Unique id for the daemon's life.
    pub id: u64,
    /// The socket.
    pub sock: OwnedFd,
    /// Who is on the other end.
    pub peer: Peer,
    /// `hello` done.
    pub hello: bool,
    /// The protocol version its last `hello` agreed (0 before one): 2 and
    /// later get the `delivery_overdue` event.
    pub version: u32,
    /// Packets the socket would not take yet.
    pub outbox: VecDeque<Outgoing>,
    /// Whether WRITABLE interest is registered.
    pub want_write: bool,
    /// Whether the connection is parked in systemd's fd store.
    pub parked: bool,
}

/// What a send attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum SendState {
    /// Everything is out.
    Drained,
    /// Some is still queued.
    Pending,
}

impl Conn {
    /// Queues `out` and sends what the socket takes.
    pub fn push(&mut self, out: Outgoing) -> io::Result<SendState> {
        if self.outbox.len() >= OUTBOX_LIMIT {
            return Err(io::Error::other("the client does not read its replies"));
        }
        self.outbox.push_back(out);
        self.flush()
    }

    /// Sends queued packets until the socket is full.
    pub fn flush(&mut self) -> io::Result<SendState> {
        while let Some(out) = self.outbox.front() {
            let fds: Vec<_> = out.fds.iter().map(|f| f.as_fd()).collect();
            match wire::send(self.sock.as_fd(), &out.data, &fds) {
                Ok(()) => {
                    self.outbox.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(SendState::Pending),
                Err(e) => return Err(e),
            }
        }
        Ok(SendState::Drained)
    }
}
