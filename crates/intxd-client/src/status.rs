//! What `hello` and `status` report: the host's capabilities, each
//! device's state, owner and counters, and the daemon's own figures.

use serde::{Deserialize, Serialize};

use crate::types::{DeviceFacts, DeviceState, IntxState, Mode, RelayStats, SimCounters};

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
    /// The daemon serves the lifecycle requests (`suspend_intx`,
    /// `resume_intx`, `reset`), the `intx_changed` event and `status`'s
    /// `intx` field. Absent (false) from daemons before them.
    #[serde(default)]
    pub lifecycle: bool,
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
    /// Stuck lines the health scan found on direct routes (episodes; each
    /// also sent as a `stuck_line` event).
    #[serde(default)]
    pub stuck_lines: u64,
    /// While a direct route's line is stuck: for how many seconds it has
    /// been seen asserted without progress (0 when it is not stuck).
    #[serde(default)]
    pub stuck_line_secs: u64,
    /// Detaches since the daemon started (by request, by a VMM that went
    /// away, or by the daemon).
    #[serde(default)]
    pub detaches: u64,
    /// Times the device could not be brought up or went away.
    #[serde(default)]
    pub failures: u64,
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
    /// What may stop its attach although it opened: the shared-line
    /// diagnosis (the function's host INTx line is held by another driver
    /// and vfio-pci may not be able to mask the function itself, so the
    /// INTx set-up fails with `EBUSY`), naming the other devices and
    /// drivers on the line and the fixes. Absent when there is nothing to
    /// say, and from daemons before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    /// Counters.
    pub counters: DeviceCounters,
    /// The route's INTx while attached: `enabled`, `suspended` (by
    /// `suspend_intx`) or `lost` (changed behind intxd's back). Absent from
    /// daemons before the `lifecycle` capability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intx: Option<IntxState>,
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
