//! The VMM side of an attach, with KVM and `vmm-sys-util` (which the client
//! crate, `intxd-client`, leaves out): make the eventfd pair, register it as
//! the caller's own resampling irqfd, connect, say hello and attach, in one
//! call.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use intxd::control::client::attach_kernel_irqchip;
//! use intxd::control::proto::ModeRequest;
//! let kvm = kvm_ioctls::Kvm::new()?;
//! let vm = kvm.create_vm()?;
//! vm.create_irq_chip()?;
//! let att = attach_kernel_irqchip(&vm, 10, "/run/intxd/control.sock".as_ref(), "nic0", ModeRequest::Auto)?;
//! // att.device_fds: the VFIO device fd and container fd (or, for an
//! // emulated device, its ack and doorbell eventfds). Keep `att.client`
//! // open for as long as the VM uses the device: closing it detaches.
//! # Ok(()) }
//! ```
//!
//! For a VMM whose interrupt controller is its own, [`attach_user_irqchip`]
//! returns the pair to wire into it: assert the line when `irq` is readable,
//! write `resample` at the guest's EOI.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::client::{Client, ClientError};
use super::proto::{Irqchip, ModeRequest, Reply};
use crate::util::fd::new_eventfd;

/// A device attached for a VMM.
pub struct Attachment {
    /// The connection; closing it detaches the device.
    pub client: Client,
    /// The irq eventfd.
    pub irq: EventFd,
    /// The resample eventfd.
    pub resample: EventFd,
    /// The attach reply (mode, reason, facts).
    pub reply: Reply,
    /// The device's fds, in the order the reply's `fds` names them.
    pub device_fds: Vec<OwnedFd>,
}

/// For a VMM with KVM's in-kernel irqchip: registers `KVM_IRQFD` with
/// resample on `gsi` of the caller's VM, then attaches `device`.
pub fn attach_kernel_irqchip(
    vm: &VmFd,
    gsi: u32,
    socket: &Path,
    device: &str,
    mode: ModeRequest,
) -> Result<Attachment, ClientError> {
    let (irq, resample) = eventfd_pair()?;
    vm.register_irqfd_with_resample(&irq, &resample, gsi)
        .map_err(|e| ClientError::Irqfd {
            gsi,
            source: io::Error::from_raw_os_error(e.errno()),
        })?;
    // Keep copies so a failed attach can take the irqfd off the VM again.
    let (irq2, gsi2) = (irq.try_clone().map_err(ClientError::Io)?, gsi);
    let attached = attach_pair(socket, device, Irqchip::Kernel, mode, irq, resample);
    if attached.is_err() {
        let _ = vm.unregister_irqfd(&irq2, gsi2);
    }
    attached
}

/// For a VMM whose interrupt controller lives in userspace: attaches
/// `device` and returns the pair to wire into that controller.
pub fn attach_user_irqchip(
    socket: &Path,
    device: &str,
    mode: ModeRequest,
) -> Result<Attachment, ClientError> {
    let (irq, resample) = eventfd_pair()?;
    attach_pair(socket, device, Irqchip::User, mode, irq, resample)
}

/// A new (irq, resample) pair.
fn eventfd_pair() -> Result<(EventFd, EventFd), ClientError> {
    Ok((
        new_eventfd().map_err(ClientError::Io)?,
        new_eventfd().map_err(ClientError::Io)?,
    ))
}

fn attach_pair(
    socket: &Path,
    device: &str,
    irqchip: Irqchip,
    mode: ModeRequest,
    irq: EventFd,
    resample: EventFd,
) -> Result<Attachment, ClientError> {
    let mut client = Client::connect(socket)?;
    client.hello("intxd-client")?;
    let (reply, device_fds) = client.attach(device, irqchip, mode, &irq, &resample)?;
    Ok(Attachment {
        client,
        irq,
        resample,
        reply,
        device_fds,
    })
}
