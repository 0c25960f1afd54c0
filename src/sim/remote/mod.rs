//! The emulated functions in a process of their own (`intxd sim-host`).
//!
//! Real VFIO INTx lives in the kernel and outlives the daemon: while intxd
//! restarts, a direct route keeps cycling and a relay route waits, masked.
//! An emulated device inside the daemon would die with it, so for restart
//! tests (and for anyone who wants the emulated hardware as a service of its
//! own) the devices can live in a sim host instead. Each device's connection
//! to the host plays the VFIO device fd: the daemon parks it in systemd's fd
//! store across a restart, and when its last copy closes the host disables
//! the device, as vfio-pci does on release.
//!
//! Framing is the control socket's (one JSON object per SEQPACKET packet,
//! fds as `SCM_RIGHTS`). The first request on a connection is `open`.

mod client;
mod server;

pub use client::{RemoteError, RemoteSim};
pub use server::{serve, serve_connection, ServeError};

use serde::{Deserialize, Serialize};

use super::AckPolicy;
use crate::vfio::{IntxOp, SimCounters};

/// A request to the sim host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum SimRequest {
    /// Bind this connection to device `sim:index`.
    Open {
        /// The `N` of `sim:N`.
        index: u32,
        /// Name for the host's log.
        name: String,
        /// What the device does after an ack.
        policy: AckPolicy,
    },
    /// One INTx action; an eventfd travels with `set_trigger` and (when
    /// `present`) `set_unmask`.
    Intx {
        /// The action.
        action: IntxOp,
        /// For `set_unmask`: whether an eventfd comes with it.
        #[serde(default)]
        present: bool,
    },
    /// The device's counters.
    Counters,
    /// The ack and doorbell eventfds, for the VMM.
    VmmFds,
    /// Fresh ack and doorbell eventfds for a new owner.
    HandOff,
    /// The device disappears (fault injection). Like every other request it
    /// needs an `open` of that device on this connection first.
    SurpriseRemove {
        /// The `N` of `sim:N`.
        index: u32,
    },
}

/// A reply from the sim host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum SimReply {
    /// Done.
    Ok,
    /// The counters.
    Counters(SimCounters),
    /// The action failed with `errno`, or the device is gone.
    Failed {
        /// errno, when there is one.
        errno: Option<i32>,
        /// The device was removed.
        gone: bool,
        /// Text, for anything else.
        message: String,
    },
}
