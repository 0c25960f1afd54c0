//! Ownership conversions between `vmm_sys_util::eventfd::EventFd` and
//! `std::os::fd::OwnedFd`, the one raw-fd adoption (`adopt`), and the
//! fd-kind check used on every received fd.
//!
//! `EventFd` predates the I/O-safety types and only offers raw fds, so the
//! conversions need `unsafe`; they are kept here, in one place.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Takes ownership of a fd the kernel just installed in this process's fd
/// table (by `accept4`, as `SCM_RIGHTS`, or from systemd's `LISTEN_FDS`):
/// the one place intxd adopts a raw fd.
///
/// # Safety
///
/// `raw` must be open, and nothing else in the process may own or close it.
pub(crate) unsafe fn adopt(raw: RawFd) -> OwnedFd {
    // SAFETY: the caller guarantees `raw` is open and unowned.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// Moves an `EventFd` into an `OwnedFd`.
pub fn eventfd_into_owned(ev: EventFd) -> OwnedFd {
    // SAFETY: `into_raw_fd` gives up ownership of an open fd, which the
    // `OwnedFd` takes over; nothing else refers to it.
    unsafe { OwnedFd::from_raw_fd(ev.into_raw_fd()) }
}

/// Moves an `OwnedFd` (already checked to be an eventfd) into an `EventFd`.
pub fn owned_into_eventfd(fd: OwnedFd) -> EventFd {
    // SAFETY: `into_raw_fd` gives up ownership of an open fd, which the
    // `EventFd` takes over; nothing else refers to it.
    unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }
}

/// Borrows an `EventFd` as a `BorrowedFd` for APIs that take `AsFd`.
pub fn borrow_eventfd(ev: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the fd stays open for as long as `ev` is borrowed.
    unsafe { BorrowedFd::borrow_raw(ev.as_raw_fd()) }
}

/// A fresh duplicate of an eventfd, as an `OwnedFd`.
pub fn dup_eventfd(ev: &EventFd) -> io::Result<OwnedFd> {
    Ok(eventfd_into_owned(ev.try_clone()?))
}

/// A new non-blocking, close-on-exec eventfd.
pub fn new_eventfd() -> io::Result<EventFd> {
    // vmm-sys-util passes the flags as given: ask for close-on-exec. (Its
    // `try_clone` duplicates with F_DUPFD_CLOEXEC, so copies keep it.)
    EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)
}

/// What kind of file an fd is, from its `/proc/self/fd` link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    /// `anon_inode:[eventfd]`.
    EventFd,
    /// `anon_inode:kvm-vm`: a KVM VM fd.
    KvmVm,
    /// `anon_inode:kvm-vcpu:N`.
    KvmVcpu,
    /// Anything else, with its link text (`pipe:[..]`, `socket:[..]`, a path).
    Other(String),
}

impl FdKind {
    /// Reads the kind of `fd` from `/proc/self/fd`.
    pub fn of(fd: RawFd) -> io::Result<FdKind> {
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
        let text = link.to_string_lossy().into_owned();
        Ok(match text.as_str() {
            "anon_inode:[eventfd]" => FdKind::EventFd,
            "anon_inode:kvm-vm" => FdKind::KvmVm,
            t if t.starts_with("anon_inode:kvm-vcpu") => FdKind::KvmVcpu,
            _ => FdKind::Other(text),
        })
    }

    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            FdKind::EventFd => "an eventfd".into(),
            FdKind::KvmVm => "a KVM VM fd".into(),
            FdKind::KvmVcpu => "a KVM vCPU fd".into(),
            FdKind::Other(t) => format!("`{t}`"),
        }
    }
}

/// The unread count of an eventfd (`eventfd-count` in its fdinfo).
pub fn eventfd_count(fd: RawFd) -> Option<u64> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let v = info
        .lines()
        .find_map(|l| l.strip_prefix("eventfd-count:"))?;
    u64::from_str_radix(v.trim(), 16).ok()
}

/// Whether `fd` has close-on-exec set.
pub fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).map_err(io::Error::from)?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// Whether `fd`'s open file description has `O_NONBLOCK`. A peer that holds
/// the same description (every copy passed over a socket does) can change
/// it at any time, so this answers for now only.
pub fn is_nonblocking(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// One `write(2)` of `value` to an eventfd. Unlike `EventFd::write` (a
/// `write_all`, which retries on `EINTR`), an interrupted write returns
/// `Interrupted`, so [`super::unblock`] can break off one that sleeps.
pub fn write_eventfd(ev: &EventFd, value: u64) -> io::Result<()> {
    match nix::unistd::write(borrow_eventfd(ev), &value.to_ne_bytes()) {
        Ok(8) => Ok(()),
        Ok(n) => Err(io::Error::other(format!(
            "eventfd write took {n} of 8 bytes"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// One `read(2)` of an eventfd's counter; `Interrupted` is returned, not
/// retried (see [`write_eventfd`]).
pub fn read_eventfd(ev: &EventFd) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    match nix::unistd::read(borrow_eventfd(ev), &mut buf) {
        Ok(8) => Ok(u64::from_ne_bytes(buf)),
        Ok(n) => Err(io::Error::other(format!(
            "eventfd read gave {n} of 8 bytes"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// What [`signal_eventfd`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// The counter went up by one.
    Added,
    /// The counter is at its maximum: it already says "signalled"; the
    /// write coalesced into it (the kernel's `eventfd_signal` saturates).
    Saturated,
    /// The fd is not `O_NONBLOCK` (its holder cleared the flag): nothing was
    /// written, since a write could block this thread.
    Blocking,
}

/// Adds one to an eventfd the way the kernel's `eventfd_signal` does: never
/// blocking. A full counter coalesces the signal; an fd whose holder made
/// it blocking is not written at all, and one whose holder clears the flag
/// between that check and the write is broken off ([`super::unblock`]).
/// Any other failure is returned.
pub fn signal_eventfd(ev: &EventFd) -> io::Result<Signalled> {
    if !is_nonblocking(borrow_eventfd(ev))? {
        return Ok(Signalled::Blocking);
    }
    match super::unblock::guarded(|| write_eventfd(ev, 1)) {
        Ok(()) => Ok(Signalled::Added),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Signalled::Saturated),
        Err(e) => Err(e),
    }
}

/// Reads and clears an eventfd's counter without ever blocking: 0 when it
/// was not signalled, when it failed, or when its holder made it blocking
/// (a read of a counter another holder just consumed would wait).
pub fn drain_eventfd(ev: &EventFd) -> u64 {
    if !is_nonblocking(borrow_eventfd(ev)).unwrap_or(false) {
        return 0;
    }
    super::unblock::guarded(|| read_eventfd(ev)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_signal_never_blocks_it_coalesces_into_a_full_counter_or_skips_a_blocking_fd() {
        let ev = new_eventfd().unwrap();
        assert_eq!(signal_eventfd(&ev).unwrap(), Signalled::Added);
        ev.write(0xffff_ffff_ffff_fffd).unwrap();
        assert_eq!(signal_eventfd(&ev).unwrap(), Signalled::Saturated);
        assert_eq!(drain_eventfd(&ev), 0xffff_ffff_ffff_fffe);
        assert_eq!(drain_eventfd(&ev), 0, "empty: no wait");

        let blocking = EventFd::new(libc::EFD_CLOEXEC).unwrap();
        assert!(!is_nonblocking(borrow_eventfd(&blocking)).unwrap());
        blocking.write(0xffff_ffff_ffff_fffe).unwrap();
        // A plain write here would block this thread for good.
        assert_eq!(signal_eventfd(&blocking).unwrap(), Signalled::Blocking);
        assert_eq!(drain_eventfd(&blocking), 0, "a blocking fd is not read");
        assert_eq!(
            eventfd_count(blocking.as_raw_fd()),
            Some(0xffff_ffff_ffff_fffe)
        );
    }
}
