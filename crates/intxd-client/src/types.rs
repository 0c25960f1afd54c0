//! The values the protocol's messages carry, shared with the daemon: how a
//! route runs ([`Mode`]) and where the VMM's interrupt controller lives
//! ([`Irqchip`]), a device's facts ([`DeviceFacts`], [`IntxInfo`]) and the
//! counters and states `status` reports ([`RelayStats`], [`SimCounters`],
//! [`DeviceState`], [`IntxState`]). The daemon
//! re-exports each from the module that produces it (`intxd::route`,
//! `intxd::vfio`, `intxd::relay`).

use serde::{Deserialize, Serialize};

/// How a route carries interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Kernel only: VFIO trigger = irqfd, VFIO unmask = resamplefd.
    Direct,
    /// intxd's loop carries each interrupt across.
    Relay,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Direct => "direct",
            Mode::Relay => "relay",
        })
    }
}

/// Where the VMM's interrupt controller lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Irqchip {
    /// In-kernel irqchip (`KVM_CREATE_IRQCHIP`): the VMM's fds are a KVM
    /// irqfd with `KVM_IRQFD_FLAG_RESAMPLE`.
    Kernel,
    /// x86 split irqchip (LAPIC in KVM, IOAPIC in the VMM).
    Split,
    /// The whole interrupt controller is in the VMM, which asserts on the
    /// irq fd and signals the resample fd at the guest's EOI.
    User,
}

impl std::fmt::Display for Irqchip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Irqchip::Kernel => "kernel",
            Irqchip::Split => "split",
            Irqchip::User => "user",
        })
    }
}

/// What `VFIO_DEVICE_GET_IRQ_INFO` says about the INTx index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntxInfo {
    /// Number of INTx vectors (0 when the function has no INTx pin).
    pub count: u32,
    /// `VFIO_IRQ_INFO_EVENTFD`.
    pub eventfd: bool,
    /// `VFIO_IRQ_INFO_MASKABLE`.
    pub maskable: bool,
    /// `VFIO_IRQ_INFO_AUTOMASKED`: the kernel masks INTx when it fires.
    pub automasked: bool,
}

/// Identity facts the attach reply hands a VMM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// PCI address, or `sim:N`.
    pub pci: String,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// INTx pin (1 = INTA# .. 4 = INTD#).
    pub pin: u8,
    /// INTx info from VFIO.
    pub intx: IntxInfo,
    /// Whether the host line is shared with another device.
    pub shared_line: bool,
    /// Whether the function masks INTx itself (PCI 2.3 DisINTx).
    pub pci_2_3: bool,
}

/// Counters that only the emulated device can give (the hardware side).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimCounters {
    /// Times the device raised its line.
    pub raised: u64,
    /// Acks that lowered a high line.
    pub acked: u64,
    /// Acks that found the line already low (the guest took an interrupt the
    /// device did not raise).
    pub spurious_acks: u64,
    /// Trigger signals (what `/proc/interrupts` would count on a real host).
    pub triggers: u64,
    /// Unmask requests (eventfd or call).
    pub unmasks: u64,
    /// Unmasks that found the line still high and re-fired the trigger.
    pub refires: u64,
    /// Loopback triggers.
    pub loopbacks: u64,
    /// Raise-to-ack latency, 50th percentile, microseconds.
    pub latency_p50_us: f64,
    /// Raise-to-ack latency, 99th percentile, microseconds.
    pub latency_p99_us: f64,
    /// Raise-to-ack latency, maximum, microseconds.
    pub latency_max_us: f64,
    /// Raise-to-ack latency counted into fixed quarter-octave buckets
    /// (`util::latency::latency_buckets`), for histograms of an interval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_hist: Vec<u64>,
    /// Whether INTx is enabled on the emulated function now (what the
    /// health scan checks a route against; absent from older emulators).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intx_enabled: Option<bool>,
    /// The line's own state when the counters were read (not inferred from
    /// the counts, which unmasks that found INTx unmasked also move).
    #[serde(default)]
    pub state: SimLineState,
}

/// The emulated line's state at one moment, for stall reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimLineState {
    /// INTx enabled (a trigger eventfd is set).
    pub enabled: bool,
    /// INTx masked (automasked by the last trigger, waiting for an unmask).
    pub masked: bool,
    /// The device drives its line high.
    pub high: bool,
    /// A raise-after timer is pending (the device raises again later).
    pub timer_pending: bool,
    /// Cycles asked for by the doorbell and not raised yet.
    pub budget: u64,
}

/// Figures of one relay route.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayStats {
    /// Interrupts carried to the VMM (trigger wakeups that found a count).
    pub relayed: u64,
    /// EOIs carried back (resample events with an interrupt outstanding).
    pub eois: u64,
    /// Times the storm limiter held the line masked.
    pub storms: u64,
    /// Times the EOI watchdog fired.
    pub watchdog_fires: u64,
    /// read/write/unmask syscalls made on the hot path (the loop's
    /// `epoll_wait` returns are counted by the loop, per route).
    pub syscalls: u64,
    /// Resample wakeups with no interrupt outstanding (a stale count at
    /// registration, another source's EOI on a shared guest line, a VMM
    /// that signals twice): ignored, no unmask.
    #[serde(default)]
    pub stale_resamples: u64,
    /// Event-loop wakeups (`epoll_wait` returns) that carried an event of
    /// this route: the route's own share of the daemon's wakeups.
    #[serde(default)]
    pub wakeups: u64,
    /// Interrupt-to-EOI latency p50, microseconds.
    pub latency_p50_us: f64,
    /// Interrupt-to-EOI latency p99, microseconds.
    pub latency_p99_us: f64,
    /// Interrupt-to-EOI latency max, microseconds.
    pub latency_max_us: f64,
}

/// A device's lifecycle state as `status` shows it: the daemon's state
/// machine (`intxd::daemon::device::Lifecycle`) without what each state owns.
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

/// An attached device's INTx, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntxState {
    /// Wired and armed: the route carries interrupts.
    Enabled,
    /// Disabled in VFIO by `suspend_intx`; the route is parked.
    Suspended,
    /// Disabled or rewired behind intxd's back (another `SET_IRQS` on the
    /// device fd): the route is stale and carries nothing until
    /// `resume_intx` (after `suspend_intx`) rewires it.
    Lost,
}
