//! Protocol v1 messages: requests (tagged by `op`), replies (tagged by
//! `reply`), events (tagged by `event`) and error codes.

use serde::{Deserialize, Serialize};

pub use crate::status::{Capabilities, DaemonStatus, DeviceCounters, DeviceStatus, Owner};
pub use crate::types::{
    DeviceFacts, DeviceState, IntxInfo, IntxState, Irqchip, Mode, RelayStats, SimCounters,
};

/// The role of each fd an `attach` carries, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FdRole {
    /// The VMM's irq eventfd (its KVM irqfd, or its userspace chip's input).
    Irq,
    /// The VMM's resample eventfd.
    Resample,
    /// A KVM VM fd: always refused.
    Vm,
}

/// The mode a VMM asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModeRequest {
    /// Direct unless something rules it out.
    #[default]
    Auto,
    /// Direct or fail.
    Direct,
    /// Relay.
    Relay,
}

/// A request from a VMM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Version negotiation; must come first.
    Hello {
        /// The highest protocol version the client speaks.
        version: u32,
        /// Free-form client name, for logs.
        #[serde(default)]
        client: Option<String>,
    },
    /// Take a device and wire its INTx to the two fds that come with this
    /// message, in the order `fds` names them.
    Attach {
        /// Device name.
        device: String,
        /// Where the VMM's interrupt controller lives.
        irqchip: Irqchip,
        /// Mode wanted.
        #[serde(default)]
        mode: ModeRequest,
        /// Roles of the attached fds, in order: `["irq", "resample"]`.
        fds: Vec<FdRole>,
    },
    /// Give a device back.
    Detach {
        /// Device name.
        device: String,
    },
    /// Every device with its state, owner, mode and counters.
    Status {},
    /// Loopback self-test: fire the device's trigger once.
    Trigger {
        /// Device name.
        device: String,
    },
    /// Lifecycle (capability `lifecycle`): disable the device's INTx in
    /// VFIO and park its route, so that the VMM may enable MSI or MSI-X on
    /// its device fd. The owner only.
    SuspendIntx {
        /// Device name.
        device: String,
    },
    /// Lifecycle: re-enable a suspended INTx on the same eventfds and re-arm
    /// it with one unmask (a line still high fires again). The owner only.
    ResumeIntx {
        /// Device name.
        device: String,
    },
    /// Lifecycle: quiesce INTx, reset the function (`VFIO_DEVICE_RESET`, or
    /// the emulator's reset), and bring INTx back as the guest left it
    /// (enabled, or still suspended). The owner only.
    Reset {
        /// Device name.
        device: String,
    },
    /// Every device's counters and the relay's EOI latency histograms in
    /// the Prometheus text exposition format (`docs/operations.md`).
    Metrics {},
    /// Re-read the config, as SIGHUP does; the reply (`reloaded`, or the
    /// error `reload_refused` with the reason) comes once the reload has
    /// finished. Root only.
    Reload {},
    /// Planned restart: park every route and connection in systemd's fd
    /// store and exit with [`RESTART_EXIT_STATUS`], so that systemd starts
    /// the (possibly upgraded) binary, which takes them all back. Root only.
    Restart {},
}

/// The exit status of a planned restart (`EX_TEMPFAIL`); the unit restarts
/// on it (`RestartForceExitStatus=75`).
pub const RESTART_EXIT_STATUS: u8 = 75;

/// A reply to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// To `hello`.
    Hello {
        /// The version both sides will speak.
        version: u32,
        /// intxd's version.
        daemon_version: String,
        /// Host capabilities.
        capabilities: Capabilities,
    },
    /// To `attach`; the device's fds travel with this message.
    Attached {
        /// Device name.
        device: String,
        /// Mode chosen.
        mode: Mode,
        /// Why that mode.
        reason: String,
        /// The device's facts.
        facts: DeviceFacts,
        /// Roles of the fds carried, in order (`ack`, `doorbell` for an
        /// emulated device; `vfio_device`, `vfio_container` for a real one).
        fds: Vec<String>,
    },
    /// To `detach`.
    Detached {
        /// Device name.
        device: String,
    },
    /// To `status`.
    Status {
        /// The daemon.
        daemon: DaemonStatus,
        /// Every device.
        devices: Vec<DeviceStatus>,
    },
    /// To `trigger`.
    Triggered {
        /// Device name.
        device: String,
    },
    /// To `suspend_intx`.
    IntxSuspended {
        /// Device name.
        device: String,
        /// Whether an interrupt was pending at the suspend (INTx masked,
        /// waiting for the guest's EOI, or the line high): it fires again
        /// at `resume_intx` if the device still asserts.
        pending: bool,
    },
    /// To `resume_intx`.
    IntxResumed {
        /// Device name.
        device: String,
    },
    /// To `reset`.
    Reset {
        /// Device name.
        device: String,
        /// The INTx state after the reset: as the guest left it.
        intx: IntxState,
    },
    /// To `metrics`.
    Metrics {
        /// The exposition's media type:
        /// `text/plain; version=0.0.4; charset=utf-8`.
        content_type: String,
        /// The exposition itself.
        text: String,
    },
    /// The reload finished and every change in the config was applied.
    Reloaded {
        /// Devices added.
        added: usize,
        /// Devices removed.
        removed: usize,
        /// Devices replaced with a changed config.
        changed: usize,
    },
    /// Everything is parked; the daemon exits with [`RESTART_EXIT_STATUS`]
    /// right after this reply.
    Restarting {
        /// Routes left in the fd store.
        routes: usize,
        /// Connections left in the fd store.
        connections: usize,
    },
    /// Any request that failed.
    Error {
        /// What failed.
        error: ErrorBody,
    },
}

/// The body of an error reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What happened and what to do, for people.
    pub message: String,
}

/// Error codes a program can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or not UTF-8.
    BadJson,
    /// JSON, but not a valid request (unknown op, unknown or missing field).
    BadRequest,
    /// An empty packet.
    EmptyMessage,
    /// Larger than the limit; the packet was dropped.
    TooLarge,
    /// The control data was cut (too many fds for the buffer).
    Truncated,
    /// The first request must be `hello`.
    HelloRequired,
    /// No common protocol version.
    UnsupportedVersion,
    /// No such device.
    UnknownDevice,
    /// The peer's uid/gid is not on the device's allow list.
    NotAuthorized,
    /// Someone else holds the device.
    Busy,
    /// The device is not attached by this connection.
    NotAttached,
    /// Wrong number of fds for the request.
    BadFdCount,
    /// An fd of the wrong kind.
    BadFdKind,
    /// A KVM VM fd was sent; intxd never takes one.
    VmFdRefused,
    /// The mode asked for is not possible here.
    ModeUnavailable,
    /// The daemon is out of a resource (fds, memory).
    ResourceExhausted,
    /// Too many connections; the connection is closed after this reply.
    TooManyConnections,
    /// The device refused an action; the message names it.
    DeviceError,
    /// A lifecycle request that the device's state does not allow (resume
    /// of a device that is not suspended, suspend of one that is); the
    /// message says the state.
    WrongState,
    /// A reload left the running config (or part of it) in place: the
    /// message says why.
    ReloadRefused,
    /// A planned restart cannot keep the routes here (no fd store: not run
    /// by systemd).
    RestartUnavailable,
    /// An `attach` eventfd without `O_NONBLOCK`; the message names which.
    BlockingEventfd,
    /// The same eventfd was passed as both `irq` and `resample`.
    SameEventfd,
    /// Another process still holds the device's fds from an earlier
    /// attach; the message names its pid.
    DeviceHeld,
}

/// An asynchronous event to a device's owner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The device is going away; it has been detached.
    DeviceGone {
        /// Device name.
        device: String,
        /// Why.
        reason: String,
    },
    /// The relay's storm limiter held the line masked.
    StormLimited {
        /// Device name.
        device: String,
        /// Configured limit, interrupts per second.
        rate_limit: u64,
        /// How long the line is held masked, milliseconds.
        backoff_ms: u64,
        /// Storms limited so far on this route.
        storms: u64,
    },
    /// A direct route's host interrupt rate went above the device's
    /// `storm_rate` (the kernel carries direct interrupts, so intxd only
    /// reports it).
    StormDetected {
        /// Device name.
        device: String,
        /// Interrupts per second in the last second.
        rate: u64,
        /// Configured limit.
        rate_limit: u64,
    },
    /// No EOI within the bound.
    EoiWatchdog {
        /// Device name.
        device: String,
        /// How long the EOI had been outstanding, milliseconds.
        waited_ms: u64,
        /// Whether the line was re-armed with an unmask.
        rearmed: bool,
    },
    /// The device's INTx was disabled or rewired behind intxd's back
    /// (another `VFIO_DEVICE_SET_IRQS` on the device fd): the route is
    /// stale, `status` shows `intx: lost`. Seen by the health scan.
    IntxChanged {
        /// Device name.
        device: String,
        /// What was seen.
        reason: String,
    },
    /// A direct route's line is stuck: the function's PCI status showed
    /// its interrupt asserted (bit 3, "Interrupt Status") in every health
    /// scan for `seconds` while the device made no progress (no hard
    /// interrupt on its host line; the emulated device: no ack). vfio-pci
    /// re-fires such a line at every unmask with no hard interrupt, so
    /// nothing else shows it. Sent once per episode; `status` shows
    /// `stuck_line_secs` while it lasts.
    StuckLine {
        /// Device name.
        device: String,
        /// How long the line had been seen asserted without progress.
        seconds: u64,
    },
    /// Protocol version 2: an interrupt that went to the VMM's irq eventfd
    /// has not come back as a resample within the bound (relay: the EOI
    /// watchdog's `eoi_timeout_ms`; direct, emulated device: the line high
    /// and INTx masked with no ack and no unmask for two health scans).
    /// The usual cause with the in-kernel irqchip is KVM's late
    /// `irqfd_inject` kworker: the VMM should assert the guest's line itself
    /// once, if the guest's interrupt controller shows nothing pending or in
    /// service for it (docs/interrupts.md, "Overdue deliveries"). Sent only
    /// to connections that said `hello` with version 2 or later, at most
    /// once per device per bound.
    DeliveryOverdue {
        /// Device name.
        device: String,
        /// The route's mode.
        mode: Mode,
        /// How long the interrupt has waited, milliseconds.
        waited_ms: u64,
    },
}

/// Anything the daemon sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A reply.
    Reply(Reply),
    /// An event.
    Event(Event),
}

impl Incoming {
    /// Decodes a packet from the daemon.
    pub fn decode(bytes: &[u8]) -> Result<Incoming, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_slice(bytes)?;
        if v.get("event").is_some() {
            Ok(Incoming::Event(serde_json::from_value(v)?))
        } else {
            Ok(Incoming::Reply(serde_json::from_value(v)?))
        }
    }
}

impl Incoming {
    /// Whether `bytes` is an event (an object with an `event` key), known to
    /// this client or not.
    pub fn is_event(bytes: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| v.get("event").is_some())
    }
}

impl Reply {
    /// An error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}
