//! One request/reply channel over a connected SEQPACKET socket, with
//! request ids: the control client, the sim host's client and the bench's
//! device all talk through it.
//!
//! Every request gets the next id. A reply answers the request whose id it
//! carries; a peer whose replies carry no id (the control socket, which
//! answers in order) has its replies numbered by position. A request whose
//! caller stopped waiting (a timeout) is *abandoned*: its reply, when it
//! comes, is dropped, never read as the answer to a later call. A reply
//! that arrives for another request still awaited is kept for it.
//!
//! Peers that echo ids carry them in the packet's JSON object as `"id"`
//! ([`encode_with_id`], [`decode_with_id`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::wire::{self, Packet};

/// Why a call on a [`Channel`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The request could not be sent.
    #[error("could not send the request")]
    Send(#[source] io::Error),
    /// The reply could not be received.
    #[error("could not receive the reply")]
    Recv(#[source] io::Error),
    /// No reply came before the deadline; the request is abandoned.
    #[error("no reply in time")]
    Timeout,
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// A reply came with no request waiting for it.
    #[error("a reply (id {0}) came for no request")]
    Unexpected(u64),
}

/// A received packet, decoded by the caller: a reply (with the id it
/// carries, `None` for a peer that answers in order), or something else the
/// caller has dealt with (an event).
pub enum Frame<R> {
    /// A reply.
    Reply(Option<u64>, R),
    /// Not a reply; already handled.
    Other,
}

/// What [`Channel::sort`] made of a packet.
enum Sorted<R> {
    /// Not a reply.
    Other,
    /// The late reply to an abandoned request.
    Dropped,
    /// The reply to pending request `.0`.
    Reply(u64, R),
}

/// A request/reply channel. `R` is a decoded reply. Its calls take `&self`
/// (a backend answers facts through `&self`); it is not `Sync`.
pub struct Channel<R> {
    sock: OwnedFd,
    book: RefCell<Book<R>>,
}

/// The channel's record of ids.
struct Book<R> {
    next_id: u64,
    /// Replies without an id seen so far (their positional id).
    positional: u64,
    /// Ids sent and not yet answered, oldest first.
    pending: VecDeque<u64>,
    /// Pending ids whose callers stopped waiting.
    abandoned: BTreeSet<u64>,
    /// Replies that came while another request was awaited.
    early: BTreeMap<u64, (R, Vec<OwnedFd>)>,
}

impl<R> Channel<R> {
    /// A channel over a connected socket.
    pub fn new(sock: OwnedFd) -> Self {
        Channel {
            sock,
            book: RefCell::new(Book {
                next_id: 1,
                positional: 0,
                pending: VecDeque::new(),
                abandoned: BTreeSet::new(),
                early: BTreeMap::new(),
            }),
        }
    }

    /// The socket, for callers that poll it.
    pub fn socket(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Sends `encode(id)` with `fds` as the request with the next id, and
    /// returns that id. Waits (to `deadline`) while the peer's queue is full.
    pub fn send(
        &self,
        encode: impl FnOnce(u64) -> Vec<u8>,
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
    ) -> Result<u64, ChannelError> {
        let id = {
            let mut b = self.book.borrow_mut();
            b.next_id += 1;
            b.next_id - 1
        };
        let data = encode(id);
        loop {
            match wire::send(self.sock.as_fd(), &data, fds) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait(PollFlags::POLLOUT, deadline)?;
                }
                Err(e) => return Err(ChannelError::Send(e)),
            }
        }
        self.book.borrow_mut().pending.push_back(id);
        Ok(id)
    }

    /// Waits for the reply to request `id`; on timeout, `id` is abandoned.
    pub fn reply(
        &self,
        id: u64,
        deadline: Instant,
        decode: &mut dyn FnMut(&Packet) -> Frame<R>,
    ) -> Result<(R, Vec<OwnedFd>), ChannelError> {
        loop {
            if let Some(r) = self.book.borrow_mut().early.remove(&id) {
                return Ok(r);
            }
            let pkt = match self.recv(deadline) {
                Ok(p) => p,
                Err(ChannelError::Timeout) => {
                    self.book.borrow_mut().abandoned.insert(id);
                    return Err(ChannelError::Timeout);
                }
                Err(e) => return Err(e),
            };
            if let Sorted::Reply(rid, r) = self.sort(&pkt, decode)? {
                if rid == id {
                    return Ok((r, pkt.fds));
                }
                self.book.borrow_mut().early.insert(rid, (r, pkt.fds));
            }
        }
    }

    /// Waits for the reply to the oldest request still pending.
    pub fn next_reply(
        &self,
        deadline: Instant,
        decode: &mut dyn FnMut(&Packet) -> Frame<R>,
    ) -> Result<(R, Vec<OwnedFd>), ChannelError> {
        let id = {
            let b = self.book.borrow();
            b.pending
                .iter()
                .copied()
                .find(|i| !b.abandoned.contains(i))
                .or_else(|| b.early.keys().next().copied())
                .unwrap_or(b.next_id)
        };
        self.reply(id, deadline, decode)
    }

    /// Sends a request and waits for its reply.
    pub fn call(
        &self,
        encode: impl FnOnce(u64) -> Vec<u8>,
        fds: &[BorrowedFd<'_>],
        deadline: Instant,
        decode: &mut dyn FnMut(&Packet) -> Frame<R>,
    ) -> Result<(R, Vec<OwnedFd>), ChannelError> {
        let id = self.send(encode, fds, deadline)?;
        self.reply(id, deadline, decode)
    }

    /// Waits for one packet and lets `decode` sort it, as [`Channel::reply`]
    /// does, but returns as soon as it is not a reply (an event). A reply met
    /// here is kept for its request (or dropped, if abandoned).
    pub fn next_other(
        &self,
        deadline: Instant,
        decode: &mut dyn FnMut(&Packet) -> Frame<R>,
    ) -> Result<(), ChannelError> {
        loop {
            let pkt = self.recv(deadline)?;
            match self.sort(&pkt, decode)? {
                Sorted::Other => return Ok(()),
                Sorted::Dropped => {}
                Sorted::Reply(rid, r) => {
                    self.book.borrow_mut().early.insert(rid, (r, pkt.fds));
                }
            }
        }
    }

    /// Decodes `pkt` and does the bookkeeping of a reply.
    fn sort(
        &self,
        pkt: &Packet,
        decode: &mut dyn FnMut(&Packet) -> Frame<R>,
    ) -> Result<Sorted<R>, ChannelError> {
        let (rid, r) = match decode(pkt) {
            Frame::Other => return Ok(Sorted::Other),
            Frame::Reply(Some(id), r) => (id, r),
            Frame::Reply(None, r) => {
                let mut b = self.book.borrow_mut();
                b.positional += 1;
                (b.positional, r)
            }
        };
        let mut b = self.book.borrow_mut();
        let Some(at) = b.pending.iter().position(|&p| p == rid) else {
            return Err(ChannelError::Unexpected(rid));
        };
        b.pending.remove(at);
        if b.abandoned.remove(&rid) {
            return Ok(Sorted::Dropped);
        }
        Ok(Sorted::Reply(rid, r))
    }

    /// Receives one packet (of up to [`wire::MAX_REPLY`] bytes).
    pub fn recv(&self, deadline: Instant) -> Result<Packet, ChannelError> {
        let mut reset_seen = false;
        loop {
            self.wait(PollFlags::POLLIN, deadline)?;
            match wire::recv_limited(self.sock.as_fd(), wire::MAX_REPLY) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => return Err(ChannelError::Closed),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // A peer that closed with our packet unread reports
                // ECONNRESET once, ahead of what it sent before closing
                // (a refusal with its reason): read on once.
                Err(e) if e.raw_os_error() == Some(libc::ECONNRESET) && !reset_seen => {
                    reset_seen = true;
                }
                Err(e) => return Err(ChannelError::Recv(e)),
            }
        }
    }

    /// Waits for `flags` until `deadline`. A deadline already passed (a
    /// zero timeout) still looks once, so that what is already queued is
    /// read.
    fn wait(&self, flags: PollFlags, deadline: Instant) -> Result<(), ChannelError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = match left.as_millis() {
                0 if left.is_zero() => 0,
                n => u16::try_from(n.max(1)).unwrap_or(u16::MAX),
            };
            let mut p = [PollFd::new(self.sock.as_fd(), flags)];
            match poll(&mut p, PollTimeout::from(ms)) {
                Ok(0) if ms == 0 => return Err(ChannelError::Timeout),
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => return Ok(()),
                Err(e) => return Err(ChannelError::Recv(e.into())),
            }
        }
    }
}

/// `msg` (which serializes to a JSON object) with `"id": id` added.
pub fn encode_with_id<T: Serialize>(id: u64, msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_value(msg).unwrap_or(serde_json::Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), id.into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Splits a packet made by [`encode_with_id`] into its id (if it has one)
/// and its message. The id is returned even when the message does not
/// decode, so that a refusal can still name the request it answers.
pub fn decode_with_id<T: DeserializeOwned>(
    data: &[u8],
) -> (Option<u64>, Result<T, serde_json::Error>) {
    let mut v: serde_json::Value = match serde_json::from_slice(data) {
        Ok(v) => v,
        Err(e) => return (None, Err(e)),
    };
    let id = v
        .as_object_mut()
        .and_then(|o| o.remove("id"))
        .and_then(|i| i.as_u64());
    (id, serde_json::from_value(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::time::Duration;

    fn pair() -> (Channel<String>, OwnedFd) {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        (Channel::new(a), b)
    }

    fn text(p: &Packet) -> Frame<String> {
        let (id, r) = decode_with_id::<String>(&p.data);
        match r {
            Ok(s) => Frame::Reply(id, s),
            Err(_) => Frame::Reply(id, String::from_utf8_lossy(&p.data).into_owned()),
        }
    }

    fn answer(peer: &OwnedFd, data: &[u8]) {
        wire::send(peer.as_fd(), data, &[]).unwrap();
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn an_in_order_reply_to_an_abandoned_request_is_dropped() {
        let (chan, peer) = pair();
        let first = chan.send(|_| b"1".to_vec(), &[], later()).unwrap();
        let e = chan.reply(first, soon(), &mut text).unwrap_err();
        assert!(matches!(e, ChannelError::Timeout), "{e}");
        let second = chan.send(|_| b"2".to_vec(), &[], later()).unwrap();
        answer(&peer, b"for 1");
        answer(&peer, b"for 2");
        let (r, _) = chan.reply(second, later(), &mut text).unwrap();
        assert_eq!(r, "for 2");
    }

    #[test]
    fn a_reply_for_another_pending_request_is_kept_for_it() {
        let (chan, peer) = pair();
        let one = chan
            .send(|id| encode_with_id(id, &()), &[], later())
            .unwrap();
        let two = chan
            .send(|id| encode_with_id(id, &()), &[], later())
            .unwrap();
        answer(&peer, &encode_with_id(two, &serde_json::json!({"r": 2})));
        answer(&peer, &encode_with_id(one, &serde_json::json!({"r": 1})));
        let mut json = |p: &Packet| {
            let (id, r) = decode_with_id::<serde_json::Value>(&p.data);
            Frame::Reply(id, r.unwrap().to_string())
        };
        assert_eq!(chan.reply(one, later(), &mut json).unwrap().0, r#"{"r":1}"#);
        assert_eq!(chan.reply(two, later(), &mut json).unwrap().0, r#"{"r":2}"#);
    }

    #[test]
    fn a_reply_for_no_request_is_refused() {
        let (chan, peer) = pair();
        answer(&peer, b"nobody asked");
        let e = chan.next_other(later(), &mut text).unwrap_err();
        assert!(matches!(e, ChannelError::Unexpected(1)), "{e}");
    }

    #[test]
    fn a_deadline_already_passed_still_reads_what_is_queued() {
        let (chan, peer) = pair();
        answer(&peer, b"queued");
        let mut other = |_: &Packet| Frame::Other;
        chan.next_other(Instant::now(), &mut other).unwrap();
        let e = chan.next_other(Instant::now(), &mut other).unwrap_err();
        assert!(matches!(e, ChannelError::Timeout), "{e}");
    }

    #[test]
    fn a_closed_peer_ends_the_wait() {
        let (chan, peer) = pair();
        let id = chan.send(|_| b"x".to_vec(), &[], later()).unwrap();
        drop(peer);
        let e = chan.reply(id, later(), &mut text).unwrap_err();
        assert!(matches!(e, ChannelError::Closed), "{e}");
    }

    #[test]
    fn ids_travel_in_the_object_and_come_back_out() {
        let data = encode_with_id(9, &serde_json::json!({"op": "counters"}));
        let (id, v) = decode_with_id::<serde_json::Value>(&data);
        assert_eq!(id, Some(9));
        assert_eq!(v.unwrap(), serde_json::json!({"op": "counters"}));
    }
}
