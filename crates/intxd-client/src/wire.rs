//! Framing: one JSON object per `SOCK_SEQPACKET` packet, fds as
//! `SCM_RIGHTS`, received with `MSG_CMSG_CLOEXEC`.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};

/// Largest packet, bytes. Larger ones are refused with `too_large`.
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Largest reply a client accepts. Replies are not bounded by
/// [`MAX_MESSAGE`]: `status` grows with the number of devices.
pub const MAX_REPLY: usize = 1 << 20;
/// Most fds one packet may carry.
pub const MAX_FDS: usize = 4;
/// The receive buffer holds room for the kernel's own limit (`SCM_MAX_FD`),
/// so control data is never cut and every fd that arrives is ours to close.
const SCM_MAX_FD: usize = 253;

/// One received packet.
#[derive(Debug)]
pub struct Packet {
    /// The bytes (cut at `MAX_MESSAGE` when `truncated`).
    pub data: Vec<u8>,
    /// The fds that came with it, owned (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// The packet was larger than `MAX_MESSAGE`.
    pub truncated: bool,
    /// The control data was cut.
    pub ctrl_truncated: bool,
}

/// Receives one request-sized packet. `Ok(None)` means the peer closed the
/// connection.
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Option<Packet>> {
    recv_limited(sock, MAX_MESSAGE)
}

/// Receives one packet of at most `limit` bytes (longer ones are cut and
/// flagged `truncated`).
#[allow(unsafe_code)]
pub fn recv_limited(sock: BorrowedFd<'_>, limit: usize) -> io::Result<Option<Packet>> {
    let mut buf = vec![0u8; limit + 1];
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let (bytes, flags, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        // With MSG_CTRUNC nix refuses to iterate; the buffer is sized so that
        // SCM_RIGHTS never truncates, so that only happens for other cmsgs.
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    for r in raw {
                        // SAFETY: SCM_RIGHTS just installed this fd in our
                        // table; nothing else refers to it, so we own it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                    }
                }
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if bytes == 0 && fds.is_empty() && peer_closed(sock) {
        return Ok(None);
    }
    let truncated = flags.contains(MsgFlags::MSG_TRUNC) || bytes > limit;
    buf.truncate(bytes.min(limit));
    Ok(Some(Packet {
        data: buf,
        fds,
        truncated,
        ctrl_truncated: flags.contains(MsgFlags::MSG_CTRUNC),
    }))
}

/// Sends one packet with `fds`. Never raises SIGPIPE; `WouldBlock` when the
/// peer's queue is full.
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [IoSlice::new(data)];
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let n = sendmsg::<UnixAddr>(
        sock.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    if n != data.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short packet write",
        ));
    }
    Ok(())
}

/// A zero-byte read is both "empty packet" and "end of stream" on
/// SEQPACKET; the socket's hang-up state tells them apart.
fn peer_closed(sock: BorrowedFd<'_>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // The peer's close shuts both directions of a connected SEQPACKET
    // socket, which poll reports as POLLHUP.
    let mut p = [PollFd::new(sock, PollFlags::POLLIN)];
    match poll(&mut p, PollTimeout::ZERO) {
        Ok(_) => p[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => true,
    }
}
