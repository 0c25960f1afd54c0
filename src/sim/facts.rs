//! What an emulated function says it is: its PCI ids, its INTx info, and
//! the facts an attach reply carries.

use crate::vfio::{DeviceFacts, IntxInfo};

/// PCI ids the emulated function reports (QEMU's edu device, which it models).
pub const SIM_VENDOR: u16 = 0x1234;
/// See [`SIM_VENDOR`].
pub const SIM_DEVICE: u16 = 0x11e8;

/// What `VFIO_DEVICE_GET_IRQ_INFO` reports for an emulated function.
pub const SIM_INTX_INFO: IntxInfo = IntxInfo {
    count: 1,
    eventfd: true,
    maskable: true,
    automasked: true,
};

/// The facts of emulated function `sim:index`.
pub fn sim_facts(index: u32) -> DeviceFacts {
    DeviceFacts {
        pci: format!("sim:{index}"),
        vendor: SIM_VENDOR,
        device: SIM_DEVICE,
        pin: 1,
        intx: SIM_INTX_INFO,
        shared_line: false,
        pci_2_3: true,
    }
}
