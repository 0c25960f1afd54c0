//! The INTx device trait: what vfio-pci lets userspace do with a level line.

use std::os::fd::{BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

pub use intxd_client::types::{DeviceFacts, IntxInfo, SimCounters, SimLineState};
use vmm_sys_util::eventfd::EventFd;

/// One INTx action, named after the `VFIO_DEVICE_SET_IRQS` call it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntxOp {
    /// `ACTION_TRIGGER|DATA_EVENTFD`: enable INTx with a trigger eventfd.
    SetTrigger,
    /// `ACTION_UNMASK|DATA_EVENTFD`: the eventfd whose write unmasks INTx.
    SetUnmask,
    /// `ACTION_MASK|DATA_NONE`.
    Mask,
    /// `ACTION_UNMASK|DATA_NONE`.
    Unmask,
    /// `ACTION_TRIGGER|DATA_NONE`: loopback, fire the trigger without masking.
    Loopback,
    /// `count = 0`: disable INTx and drop both eventfds.
    Disable,
    /// `VFIO_DEVICE_RESET`: the function's own reset.
    Reset,
    /// `VFIO_PCI_REQ_IRQ_INDEX` `ACTION_TRIGGER|DATA_EVENTFD`: the eventfd
    /// signalled when the device is going away.
    SetRequest,
}

impl IntxOp {
    /// The action as the VFIO ioctl spells it, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            IntxOp::SetTrigger => "set the INTx trigger eventfd (VFIO_IRQ_SET_ACTION_TRIGGER)",
            IntxOp::SetUnmask => "set the INTx unmask eventfd (VFIO_IRQ_SET_ACTION_UNMASK)",
            IntxOp::Mask => "mask INTx (VFIO_IRQ_SET_ACTION_MASK)",
            IntxOp::Unmask => "unmask INTx (VFIO_IRQ_SET_ACTION_UNMASK)",
            IntxOp::Loopback => "fire the INTx trigger (VFIO_IRQ_SET_DATA_NONE|ACTION_TRIGGER)",
            IntxOp::Disable => "disable INTx (VFIO_DEVICE_SET_IRQS count=0)",
            IntxOp::Reset => "reset the device (VFIO_DEVICE_RESET)",
            IntxOp::SetRequest => "set the device request eventfd (VFIO_PCI_REQ_IRQ_INDEX)",
        }
    }
}

/// A failed INTx action. The device and the action are always named, because
/// `vfio-ioctls` drops the errno of its IRQ calls and a bare errno says nothing.
#[derive(Debug, thiserror::Error)]
pub enum IntxError {
    /// The kernel (or the emulated device) refused an action.
    #[error("{device}: could not {}", .op.describe())]
    Action {
        /// Device name from the config.
        device: String,
        /// What was attempted.
        op: IntxOp,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The device has gone away (surprise removal).
    #[error("{device}: the device is gone")]
    Gone {
        /// Device name from the config.
        device: String,
    },
}

/// A fd the VMM receives with the attach reply, by role. The reply's `fds`
/// names them in the order they travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmmFd {
    /// The emulated device's ack eventfd (bound to a guest port).
    Ack,
    /// The emulated device's doorbell eventfd (asks for cycles).
    Doorbell,
    /// The VFIO device fd of a real function.
    VfioDevice,
    /// The VFIO container fd (type1v2), for the VMM's DMA mappings.
    VfioContainer,
}

impl VmmFd {
    /// The role as the attach reply's `fds` spells it.
    pub fn name(self) -> &'static str {
        match self {
            VmmFd::Ack => "ack",
            VmmFd::Doorbell => "doorbell",
            VmmFd::VfioDevice => "vfio_device",
            VmmFd::VfioContainer => "vfio_container",
        }
    }
}

/// A fd parked in systemd's fd store for a live route, by role: the route's
/// eventfds and what keeps its device open. Parked as `<device>-<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParkedFd {
    /// The VMM's irq eventfd.
    Irq,
    /// The VMM's resample eventfd.
    Resample,
    /// A relay route's own trigger eventfd (VFIO signals it).
    Trigger,
    /// A relay route's own unmask eventfd (VFIO waits on it).
    Unmask,
    /// What keeps the device open: the VFIO device fd (which also holds its
    /// group), or the sim host connection.
    Device,
    /// The VFIO container fd.
    Container,
}

impl ParkedFd {
    /// Every role, for code that clears a device's parked fds.
    pub const ALL: [ParkedFd; 6] = [
        ParkedFd::Irq,
        ParkedFd::Resample,
        ParkedFd::Trigger,
        ParkedFd::Unmask,
        ParkedFd::Device,
        ParkedFd::Container,
    ];

    /// The suffix of the fd-store name (stable across versions: a new
    /// daemon takes back what an old one parked).
    pub fn name(self) -> &'static str {
        match self {
            ParkedFd::Irq => "irq",
            ParkedFd::Resample => "resample",
            ParkedFd::Trigger => "trigger",
            ParkedFd::Unmask => "unmask",
            ParkedFd::Device => "dev",
            ParkedFd::Container => "container",
        }
    }
}

/// A PCI function's INTx actions as VFIO exposes them: each method is one
/// `VFIO_DEVICE_SET_IRQS` call on `VFIO_PCI_INTX_IRQ_INDEX` (or the request
/// index, or `VFIO_DEVICE_RESET`). This is all a route and the relay hot
/// path use.
///
/// vfio-pci's contract, which every implementation keeps:
/// - when the line rises while unmasked, INTx is masked and the trigger
///   eventfd is signalled once (`AUTOMASKED`);
/// - an unmask (by the unmask eventfd or by call) while the line is still high
///   leaves INTx masked and signals the trigger again; with the line low it
///   unmasks;
/// - a loopback trigger signals the trigger eventfd without masking;
/// - disable stops all signalling and drops both eventfds.
pub trait IntxActions: Send {
    /// Device name from the config, for messages.
    fn name(&self) -> &str;
    /// Enable INTx with `fd` as its trigger. Must come before the others.
    fn set_trigger(&mut self, fd: &EventFd) -> Result<(), IntxError>;
    /// Set (`Some`) or remove (`None`) the unmask eventfd.
    fn set_unmask(&mut self, fd: Option<&EventFd>) -> Result<(), IntxError>;
    /// Mask INTx.
    fn mask(&mut self) -> Result<(), IntxError>;
    /// Unmask INTx (re-fires if the line is still high).
    fn unmask(&mut self) -> Result<(), IntxError>;
    /// Loopback trigger.
    fn loopback(&mut self) -> Result<(), IntxError>;
    /// Disable INTx, dropping both eventfds. Idempotent.
    fn disable(&mut self) -> Result<(), IntxError>;
    /// `VFIO_DEVICE_RESET`: the device forgets what its last owner asked of
    /// it (the daemon resets on detach, so the next VMM starts clean).
    fn reset(&mut self) -> Result<(), IntxError>;
    /// Sets (`Some`) or removes the request eventfd (`VFIO_PCI_REQ_IRQ_INDEX`):
    /// signalled when the host wants the device back or it disappears.
    fn set_request(&mut self, fd: Option<&EventFd>) -> Result<(), IntxError>;
}

/// What a device is and what it counted: read for `attach` replies,
/// `status` and the health scan, never on the relay hot path.
pub trait DeviceProbe {
    /// `VFIO_DEVICE_GET_IRQ_INFO` for the INTx index.
    fn info(&self) -> IntxInfo;
    /// The function's identity.
    fn facts(&self) -> DeviceFacts;
    /// Host-side interrupt count (`/proc/interrupts` for a real device).
    ///
    /// For a real device these are hard interrupts on its host line. A
    /// re-fire at unmask (the line still high when the EOI comes back) is
    /// signalled by vfio-pci without one, so under a device that re-asserts
    /// before the guest's EOI this counts fewer interrupts than were
    /// delivered.
    fn host_count(&self) -> u64;
    /// Hardware-side counters, where the backend has them.
    fn sim_counters(&self) -> Option<SimCounters>;
    /// The function's PCI status bit 3 ("Interrupt Status"): whether it
    /// asserts INTx now, whatever its INTx Disable bit or vfio-pci's mask
    /// says. `None` when it cannot be read. Read by the health scan (one
    /// config-space read, never on the hot path). The default serves an
    /// emulated device's counters (its line's level).
    fn intx_status(&self) -> Option<bool> {
        self.sim_counters().map(|c| c.state.high)
    }
    /// Whether the device has been removed underneath us.
    fn is_gone(&self) -> bool;
    /// Whether INTx is enabled as far as the host shows it, `None` when the
    /// backend cannot tell. The health scan compares it with the route
    /// (`daemon/intx_watch.rs`): a route that is wired while INTx is off was
    /// changed behind intxd's back (another `SET_IRQS` on the device fd).
    fn intx_enabled(&self) -> Option<bool>;
}

/// The device's fds that leave the backend: to the VMM, and to systemd's fd
/// store.
pub trait DeviceFds {
    /// The fds a VMM needs to drive the device, by role: the VFIO device fd
    /// and the container fd for a real device; the ack and doorbell eventfds
    /// for the emulated one. Each is a fresh duplicate.
    fn vmm_fds(&self) -> std::io::Result<Vec<(VmmFd, OwnedFd)>>;
    /// The fds that keep the device open (the VFIO device and container fds;
    /// the sim host connection), by role, for systemd's fd store: parked
    /// there, they keep a live route alive across a daemon restart. Empty
    /// when the device cannot outlive the daemon (an in-process emulation).
    fn store_fds(&self) -> Vec<(ParkedFd, BorrowedFd<'_>)>;
    /// Readies the device for a new owner, before its route is wired: the
    /// emulated device makes fresh ack and doorbell eventfds (the last
    /// owner's copies go dead), a real one unmaps every DMA mapping of its
    /// container (a fresh IOMMU context). The default does nothing.
    fn hand_off(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// The last owner detached: the emulated device stops listening to the
    /// ack and doorbell eventfds it handed out (they go deaf at once; the
    /// next [`hand_off`](Self::hand_off) replaces them). The default does
    /// nothing.
    fn release_fds(&mut self) {}
    /// Processes besides the daemon that hold the device's fds by design
    /// (the sim host serving a remote emulated device): the hand-off check
    /// does not count them as a former owner.
    fn serving_pids(&self) -> Vec<u32> {
        Vec::new()
    }
}

/// A whole backend, as the daemon holds it (`Box<dyn IntxDevice>`): its
/// INTx actions, its facts and counters, and its fds. Implemented for every
/// type that has all three.
pub trait IntxDevice: IntxActions + DeviceProbe + DeviceFds {}

impl<T: IntxActions + DeviceProbe + DeviceFds + ?Sized> IntxDevice for T {}
