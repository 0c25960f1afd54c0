//! The soak's errors.

use std::time::Duration;

use super::vcpu::VcpuError;
use super::vm::VmError;
use crate::control::client::ClientError;
use crate::vfio::RegionError;

/// Errors of the soak.
#[derive(Debug, thiserror::Error)]
pub enum SoakError {
    /// The VM could not be built.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The daemon refused or the socket failed.
    #[error("the daemon's control socket")]
    Client(#[source] ClientError),
    /// The daemon answered a request with the wrong kind of reply.
    #[error("{device}: the daemon answered {request} with {reply}; is it the same intxd version as this soak?")]
    UnexpectedReply {
        /// The device.
        device: String,
        /// The request.
        request: &'static str,
        /// The reply, as debug text.
        reply: String,
    },
    /// The attach reply carried fewer fds than its kind of device has.
    #[error("{device}: the attach reply carried fewer than two device fds; is the daemon the same intxd version as this soak?")]
    MissingFds {
        /// The device.
        device: String,
    },
    /// The device is not in the daemon's status.
    #[error("{device}: not in the daemon's status; was it removed by a reload?")]
    NotInStatus {
        /// The device.
        device: String,
    },
    /// [`Wiring::attach`](super::wiring::Wiring::attach) was used for a real PCI function.
    #[error("{device}: a real PCI function; attach it with attach_device")]
    NotEmulated {
        /// The device.
        device: String,
    },
    /// A lifecycle request where no daemon serves it.
    #[error("{device}: suspend_intx, resume_intx and reset go through a daemon; soak it with --connect or the in-process daemon")]
    NoLifecycle {
        /// The device.
        device: String,
    },
    /// The lifecycle soak needs what the device or the run does not have.
    #[error("{device}: the lifecycle soak {why}")]
    Lifecycle {
        /// The device.
        device: String,
        /// What is missing.
        why: String,
    },
    /// A real function came without the registers to drive it.
    #[error("{device} is a real PCI function: the soak raises and acks it through the [device.exerciser] table of its config; pass that config with --config")]
    NoExerciser {
        /// The device.
        device: String,
    },
    /// An exerciser register is not one the guest can reach.
    #[error("{device}: the exerciser's {what} register at {offset:#x} is not a 4-byte register within the first {page} bytes of BAR {bar}; fix [device.exerciser]")]
    BadExerciser {
        /// The device.
        device: String,
        /// `raise` or `ack`.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// The page the guest sees.
        page: usize,
        /// The BAR.
        bar: u32,
    },
    /// More cycles than the guest's 32-bit counter holds.
    #[error("{more} more cycles on top of {current}: the guest counts in 32 bits; run fewer cycles per run")]
    TooManyCycles {
        /// Asked for.
        more: u64,
        /// The guest's target so far.
        current: u32,
    },
    /// An eventfd of the soak VM failed.
    #[error("could not {what}")]
    Eventfd {
        /// The action.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The in-process daemon could not be set up.
    #[error("the in-process daemon could not {what}")]
    InProcess {
        /// The action.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The in-process daemon refused its config.
    #[error("the in-process daemon could not start")]
    Daemon(#[source] crate::daemon::DaemonError),
    /// The benchmark's baseline device process failed.
    #[error("the benchmark's baseline device")]
    Baseline(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The vCPU thread or the soak's interrupt controller failed.
    #[error("vCPU")]
    Vcpu(#[from] VcpuError),
    /// The guest never finished its set-up.
    #[error("the soak guest did not come up within {0:?}")]
    GuestNotReady(Duration),
    /// A real function's registers could not be reached.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// The daemon went away or took the device back in the middle of a run:
    /// `cause` is the daemon's `device_gone` reason, or that the connection
    /// closed.
    #[error("{device}: {cause}")]
    Gone {
        /// The device.
        device: String,
        /// Why, in the daemon's words or the connection's.
        cause: String,
    },
}

/// The cause given when the daemon's connection closes under a run.
pub const DAEMON_WENT_AWAY: &str = "the daemon went away (connection closed)";

/// Whether `e` says the daemon's end of the connection is gone.
pub fn connection_closed(e: &ClientError) -> bool {
    match e {
        ClientError::Closed => true,
        ClientError::Io(io) => matches!(
            io.raw_os_error(),
            Some(libc::EPIPE) | Some(libc::ECONNRESET)
        ),
        _ => false,
    }
}
