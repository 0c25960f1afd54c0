//! Client connections: the table (`ConnTable`, private fields), one
//! connection and its outbox (`conn.rs`), accepting them (`accept.rs`: the
//! connection limit and running out of fds), and sending replies and events.

mod accept;
mod conn;

pub use accept::Acceptor;
pub use conn::{Conn, Outgoing, SendState};

use std::os::fd::OwnedFd;

use mio::Interest;

use super::event_loop::Tok;
use super::Daemon;
use crate::control::proto::{Event, Reply};

/// The open connections, by slot (the slot is in the loop's token).
#[derive(Default)]
pub struct ConnTable {
    slots: Vec<Option<Conn>>,
    next_id: u64,
}

impl ConnTable {
    /// An empty table; ids start at 1.
    pub fn new() -> ConnTable {
        ConnTable {
            slots: Vec::new(),
            next_id: 1,
        }
    }

    /// A new connection id.
    pub fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The id the next connection gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Never hands out an id below `id` (ids survive a restart).
    pub fn skip_ids_below(&mut self, id: u64) {
        self.next_id = self.next_id.max(id);
    }

    /// The slot a new connection goes in.
    pub fn free_slot(&self) -> usize {
        self.slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len())
    }

    /// Puts `conn` in `slot` (from [`ConnTable::free_slot`]).
    pub fn insert(&mut self, slot: usize, conn: Conn) {
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot] = Some(conn);
    }

    /// The connection in `slot`.
    pub fn get(&self, slot: usize) -> Option<&Conn> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    /// The connection in `slot`.
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    /// Takes the connection out of `slot`.
    pub fn take(&mut self, slot: usize) -> Option<Conn> {
        self.slots.get_mut(slot).and_then(Option::take)
    }

    /// The slot of connection `id`.
    pub fn slot_of(&self, id: u64) -> Option<usize> {
        self.slots
            .iter()
            .position(|c| c.as_ref().is_some_and(|c| c.id == id))
    }

    /// Every open connection.
    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.slots.iter().flatten()
    }

    /// How many are open.
    pub fn open(&self) -> usize {
        self.iter().count()
    }

    /// The number of slots (open or not).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }
}

impl Daemon {
    /// Watches `conn`'s socket and puts it in the table.
    pub(super) fn add_to_table(&mut self, conn: Conn) -> std::io::Result<()> {
        let slot = self.conns.free_slot();
        self.lp
            .watch(&conn.sock, Tok::Conn(slot), Interest::READABLE)?;
        self.conns.insert(slot, conn);
        Ok(())
    }

    pub(super) fn reply(&mut self, ci: usize, reply: &Reply, fds: Vec<OwnedFd>) {
        self.push(
            ci,
            Outgoing {
                data: encode(reply),
                fds,
            },
        );
    }

    /// Tells device `di`'s owner about `ev`, if it has one.
    pub(super) fn send_event(&mut self, di: usize, ev: &Event) {
        let Some(h) = self.devices[di].holder() else {
            return;
        };
        let Some(ci) = self.conns.slot_of(h.conn_id) else {
            return;
        };
        let data = serde_json::to_vec(ev).unwrap_or_default();
        self.push(
            ci,
            Outgoing {
                data,
                fds: Vec::new(),
            },
        );
    }

    fn push(&mut self, ci: usize, out: Outgoing) {
        let Some(conn) = self.conns.get_mut(ci) else {
            return;
        };
        match conn.push(out) {
            Ok(SendState::Drained) => {}
            Ok(SendState::Pending) => self.want_write(ci, true),
            Err(e) => {
                if matches!(e.raw_os_error(), Some(libc::EPIPE) | Some(libc::ECONNRESET)) {
                    log::debug!("connection {} (pid {}): peer gone", conn.id, conn.peer.pid);
                } else {
                    log::warn!(
                        "connection {} (pid {}): {e}; closing it",
                        conn.id,
                        conn.peer.pid
                    );
                }
                self.close_conn(ci);
            }
        }
    }

    pub(super) fn flush_conn(&mut self, ci: usize) {
        let Some(conn) = self.conns.get_mut(ci) else {
            return;
        };
        match conn.flush() {
            Ok(SendState::Drained) => self.want_write(ci, false),
            Ok(SendState::Pending) => {}
            Err(_) => self.close_conn(ci),
        }
    }

    fn want_write(&mut self, ci: usize, on: bool) {
        let Some(conn) = self.conns.get_mut(ci) else {
            return;
        };
        if conn.want_write == on {
            return;
        }
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if self.lp.rewatch(&conn.sock, Tok::Conn(ci), interest).is_ok() {
            conn.want_write = on;
        }
    }

    /// Closes a connection and detaches every device it held.
    pub(super) fn close_conn(&mut self, ci: usize) {
        let Some(conn) = self.conns.take(ci) else {
            return;
        };
        self.lp.unwatch(&conn.sock);
        let held: Vec<usize> = self
            .devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.holder().is_some_and(|h| h.conn_id == conn.id))
            .map(|(i, _)| i)
            .collect();
        for di in held {
            self.detach_device(di, &format!("its VMM (pid {}) disconnected", conn.peer.pid));
        }
        if conn.parked {
            self.sd
                .fdstore
                .remove(&super::restart::conn_fd_name(conn.id));
            self.save_state();
        }
        log::debug!("connection {} closed", conn.id);
    }
}

/// A reply as it goes on the wire.
pub fn encode(r: &Reply) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_else(|_| b"{\"reply\":\"error\"}".to_vec())
}
