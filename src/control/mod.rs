//! The control socket: protocol v1 ([`proto`]), its framing over a unix
//! `SOCK_SEQPACKET` socket with fds as `SCM_RIGHTS` ([`wire`]), peer
//! authorization ([`auth`]) and the Rust client ([`client`]).
//!
//! Framing: one JSON object per packet, at most [`wire::MAX_MESSAGE`] bytes and
//! [`wire::MAX_FDS`] fds. A request is answered by exactly one reply, in order;
//! events (objects with an `event` key) may arrive between replies. The full
//! description is `docs/protocol.md`.

pub mod auth;
pub mod channel;
pub mod client;
pub mod proto;
pub mod validate;
pub mod wire;
