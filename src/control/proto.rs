//! Protocol v1 messages: requests (tagged by `op`), replies (tagged by
//! `reply`), events (tagged by `event`) and error codes.

use serde::{Deserialize, Serialize};

use crate::relay::RelayStats;
use crate::route::{Irqchip, Mode};
use crate::vfio::{DeviceFacts, SimCounters};

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
}

/// Host capabilities, as `hello` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Capabilities {
    /// `/dev/kvm` opens.
    pub kvm: bool,
    /// `KVM_CAP_IRQFD` on `/dev/kvm`: the VMM can register irqfds.
    #[serde(default)]
    pub irqfd: bool,
    /// `KVM_CAP_IRQFD_RESAMPLE` on `/dev/kvm` (a system ioctl).
    pub irqfd_resample: bool,
    /// `KVM_CAP_ARM_USER_IRQ` on `/dev/kvm`: an arm64 VM may run without an
    /// in-kernel vGIC, its VMM driving the vCPU's IRQ line (`KVM_IRQ_LINE`)
    /// and reading the in-kernel timers' levels from `device_irq_level`.
    /// Always false on x86.
    #[serde(default)]
    pub arm_user_irq: bool,
    /// `/dev/vfio/vfio` exists.
    pub vfio: bool,
    /// `/dev/iommu` exists.
    pub iommufd: bool,
}

/// A device's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Peer pid (`SO_PEERCRED`).
    pub pid: u32,
    /// Peer uid.
    pub uid: u32,
    /// Peer gid.
    pub gid: u32,
}

/// A device's counters in `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceCounters {
    /// Host-side interrupts (`/proc/interrupts`, or the emulated count).
    pub host_interrupts: u64,
    /// Attaches since the daemon started.
    pub attaches: u64,
    /// Relay figures (relay routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayStats>,
    /// Hardware-side figures (emulated devices only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimCounters>,
    /// Seconds in which the host interrupt rate was above the device's
    /// `storm_rate` (direct routes, seen in the host counts).
    #[serde(default)]
    pub storm_seconds: u64,
    /// Safety unmasks of direct routes whose interrupts stopped.
    #[serde(default)]
    pub safety_unmasks: u64,
}

/// A device's lifecycle state as `status` shows it: the daemon's state
/// machine (`daemon::device::Lifecycle`) without what each state owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    /// Bound to vfio-pci, but VFIO could not open it (see `failure`).
    Bound,
    /// Open (VFIO, or the emulated device), never attached since.
    Opened,
    /// A VMM holds it.
    Attached,
    /// Released by its last VMM; ready for the next.
    Detached,
    /// A reload is binding it to vfio-pci, off the event loop (never listed
    /// in `status`: a device shows up there once it is up).
    Binding,
    /// Could not be brought up, or went away (see `failure`).
    Failed,
    /// Dropped from the config by a reload (never listed in `status`).
    Removed,
}

impl DeviceState {
    /// The lower-case word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Bound => "bound",
            DeviceState::Opened => "opened",
            DeviceState::Attached => "attached",
            DeviceState::Detached => "detached",
            DeviceState::Binding => "binding",
            DeviceState::Failed => "failed",
            DeviceState::Removed => "removed",
        }
    }
}

impl std::fmt::Display for DeviceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for DeviceState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for DeviceState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// One device in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Name.
    pub name: String,
    /// PCI address or `sim:N`.
    pub pci: String,
    /// Its lifecycle state.
    pub state: DeviceState,
    /// Route mode while attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Owner while attached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// The function's facts (ids, pin, INTx flags, line sharing, PCI 2.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<DeviceFacts>,
    /// Why the device is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Counters.
    pub counters: DeviceCounters,
}

/// The daemon in `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// intxd version.
    pub version: String,
    /// Daemon pid.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: f64,
    /// Event-loop wakeups (returns from `epoll_wait`).
    pub loop_wakeups: u64,
    /// Open client connections.
    pub connections: usize,
    /// Open fds of the daemon.
    pub fds: usize,
    /// Host capabilities, as `hello` reports them.
    #[serde(default)]
    pub capabilities: Capabilities,
}

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

/// Decodes a request packet, mapping failures to their error codes (the
/// strict decoder lives with the other packet checks, in
/// [`super::validate`]).
pub use super::validate::decode_request;

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
