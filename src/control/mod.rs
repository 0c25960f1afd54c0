//! The control socket: protocol v1 ([`proto`]), its framing over a unix
//! `SOCK_SEQPACKET` socket with fds as `SCM_RIGHTS` ([`wire`]), peer
//! authorization ([`auth`]), the daemon's packet checks ([`validate`]) and
//! the Rust client ([`client`]).
//!
//! The protocol types, the framing, the request channel and the client live
//! in the workspace crate `intxd-client` (`crates/intxd-client/`), which a
//! VMM can take without the daemon; they are re-exported here under their
//! old paths (`intxd::control::proto::Request`, ...). What needs the daemon
//! (the allow lists, the fd-kind checks) or KVM (the one-call attach with
//! the VMM's irqfd, [`vmm`]) stays in this crate.
//!
//! Framing: one JSON object per packet, at most [`wire::MAX_MESSAGE`] bytes and
//! [`wire::MAX_FDS`] fds. A request is answered by exactly one reply, in order;
//! events (objects with an `event` key) may arrive between replies. The full
//! description is `docs/protocol.md`.

pub mod auth;
pub mod validate;
pub mod vmm;

pub use intxd_client::{channel, wire};

/// The messages of protocol v1 (`intxd_client::proto`), with the daemon's
/// strict request decoder.
pub mod proto {
    pub use intxd_client::proto::*;

    /// Decodes a request packet, mapping failures to their error codes (the
    /// strict decoder lives with the other packet checks, in
    /// [`super::validate`]).
    pub use super::validate::decode_request;
}

/// The Rust client (`intxd_client::client`), with the KVM one-call attach
/// helpers of [`crate::control::vmm`].
pub mod client {
    pub use super::vmm::{attach_kernel_irqchip, attach_user_irqchip, Attachment};
    pub use intxd_client::client::*;
}
