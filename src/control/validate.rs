//! Every check a request packet passes before the daemon acts on it, as one
//! pure function: size, control data, fd count, JSON, hello-first, and the
//! kind of every fd. The daemon closes a refused packet's fds; this module
//! only decides. (It is also what the protocol fuzz target drives.)

use super::proto::{decode_request, ErrorBody, ErrorCode, FdRole, Request};
use super::wire::{MAX_FDS, MAX_MESSAGE};
use crate::util::fd::FdKind;

/// A received packet as the checks see it: its bytes, its flags and the
/// kinds of the fds that came with it.
#[derive(Debug, Clone)]
pub struct PacketMeta<'a> {
    /// The bytes.
    pub data: &'a [u8],
    /// Larger than [`MAX_MESSAGE`].
    pub truncated: bool,
    /// Control data cut.
    pub ctrl_truncated: bool,
    /// Kind of each received fd, in order.
    pub fd_kinds: &'a [FdKind],
    /// Whether this connection has said hello.
    pub hello_done: bool,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
    ErrorBody {
        code,
        message: message.into(),
    }
}

/// Checks a packet; returns the request it carries or the error to reply.
pub fn validate(p: &PacketMeta<'_>) -> Result<Request, ErrorBody> {
    if p.truncated {
        return Err(refuse(
            ErrorCode::TooLarge,
            format!("the packet is larger than {MAX_MESSAGE} bytes and was dropped"),
        ));
    }
    if p.ctrl_truncated {
        return Err(refuse(
            ErrorCode::Truncated,
            "the packet's control data was cut; its fds were closed",
        ));
    }
    let n = p.fd_kinds.len();
    if n > MAX_FDS {
        return Err(refuse(
            ErrorCode::BadFdCount,
            format!("{n} fds in one packet; at most {MAX_FDS}; all were closed"),
        ));
    }
    let req = decode_request(p.data)?;
    if !p.hello_done && !matches!(req, Request::Hello { .. }) {
        return Err(refuse(
            ErrorCode::HelloRequired,
            "say hello first: {\"op\":\"hello\",\"version\":1}",
        ));
    }
    match &req {
        Request::Attach { fds: roles, .. } => check_attach_fds(roles, p.fd_kinds)?,
        _ if n > 0 => {
            return Err(refuse(
                ErrorCode::BadFdCount,
                format!("this request takes no fds, and {n} came with it; they were closed"),
            ))
        }
        _ => {}
    }
    Ok(req)
}

/// An attach carries exactly the VMM's irq and resample eventfds, in that
/// order, and never a VM fd.
pub fn check_attach_fds(roles: &[FdRole], kinds: &[FdKind]) -> Result<(), ErrorBody> {
    if roles.contains(&FdRole::Vm) || kinds.contains(&FdKind::KvmVm) {
        return Err(refuse(
            ErrorCode::VmFdRefused,
            "a KVM VM fd was sent; KVM refuses VM ioctls (KVM_IRQFD included) from any process but the VM's creator, so intxd never takes one: register KVM_IRQFD with KVM_IRQFD_FLAG_RESAMPLE yourself and send its two eventfds",
        ));
    }
    if roles != [FdRole::Irq, FdRole::Resample] || kinds.len() != 2 {
        return Err(refuse(
            ErrorCode::BadFdCount,
            format!(
                "attach takes exactly two fds, declared as \"fds\": [\"irq\", \"resample\"]; got {} fds declared as {:?}; all were closed",
                kinds.len(),
                roles
            ),
        ));
    }
    for (role, kind) in ["irq", "resample"].iter().zip(kinds) {
        if *kind != FdKind::EventFd {
            return Err(refuse(
                ErrorCode::BadFdKind,
                format!(
                    "the {role} fd must be an eventfd, and it is {}; all fds were closed",
                    kind.describe()
                ),
            ));
        }
    }
    Ok(())
}
