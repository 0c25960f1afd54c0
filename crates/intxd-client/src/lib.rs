//! intxd-client: the control protocol of intxd and its Rust client, for a
//! VMM that passes a level-triggered PCI INTx line to its guest through
//! intxd. It holds no KVM, VFIO or daemon code: a VMM registers its own
//! irqfd (or wires its own irqchip) and hands the two eventfds over.
//!
//! - [`proto`]: the messages (requests, replies, events, error codes);
//! - [`status`]: what `hello` and `status` report;
//! - [`types`]: the values they carry (mode, irqchip, facts, counters);
//! - [`wire`]: the framing, one JSON object per `SOCK_SEQPACKET` packet,
//!   fds as `SCM_RIGHTS`;
//! - [`channel`]: one request/reply channel with ids over such a socket;
//! - [`client`]: the client ([`client::Client`]).
//!
//! The protocol itself is described in `docs/protocol.md` of the intxd
//! repository, for clients in any language; `examples/vmm.rs` is a worked
//! example of a VMM's side.

pub mod channel;
pub mod client;
pub mod proto;
pub mod status;
pub mod types;
pub mod wire;

/// The control protocol version this build speaks. Version 2 adds the
/// `delivery_overdue` event, which the daemon sends only to clients that
/// said `hello` with version 2 or later (a version-1 client, which takes an
/// unknown event for a broken reply, never sees it).
pub const PROTOCOL_VERSION: u32 = 2;
