//! MSI in the x86 soak guest (the lifecycle soak, `intxd soak --lifecycle`):
//! the guest's local APIC, a KVM MSI route to one of its vectors, and the
//! exerciser ISR for that vector, which EOIs the local APIC instead of the
//! PICs.
//!
//! The guest stays in real mode. Its local APIC is in KVM (in-kernel
//! irqchip), enabled in `IA32_APIC_BASE` from reset; the VMM software-enables
//! it (SVR bit 8, `KVM_SET_LAPIC`) before the vCPU runs. LVT0 keeps its reset
//! value (ExtINT, unmasked: KVM's `LINT0_REENABLED` quirk), so the PICs still
//! deliver the INTx line through it. The VMM gives FS the base of the APIC's
//! page ([`LAPIC_BASE`]; the guest never reloads FS), so the ISR reaches the
//! EOI register at `fs:0xb0` with a 32-bit store (KVM ignores APIC accesses
//! of other sizes).
//!
//! The MSI ISR is the exerciser's ([`super::guest::EXERCISER_CODE`]: ack the
//! device through its BAR page, count, re-raise while below the target)
//! with the PICs' EOI replaced by the local APIC's; the VMM loads it at
//! [`MSI_ISR_ADDR`] and points IVT entry [`MSI_VECTOR`] at it while the
//! guest idles (no MSI can arrive before the route exists):
//!
//! ```text
//! 1100: 66 50 53 06 ...              the exerciser ISR, 1055..108e
//! 1139: 66 64 c7 06 b0 00 00 00 00 00  mov dword fs:[0x00b0], 0  ; LAPIC EOI
//! 1143: 07 5b 66 58 cf               pop es; pop bx; pop eax; iret
//! ```

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_lapic_state, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VcpuFd;

use super::guest::EXERCISER_ISR;
use crate::soak::vm::{kvm_err, VmError};

/// The guest-physical base of the local APIC's page (its reset value).
pub const LAPIC_BASE: u64 = 0xFEE0_0000;
/// The vector the device's MSI arrives at: outside both PICs' ranges
/// (0x08..0x10, 0x70..0x78).
pub const MSI_VECTOR: u32 = 0x50;
/// Where the VMM loads the MSI ISR (after the exerciser guest's code).
pub const MSI_ISR_ADDR: u64 = 0x1100;
/// The GSI of the KVM MSI route (past the IOAPIC's 24 pins).
pub const MSI_GSI: u32 = 24;
/// The spurious-interrupt vector register: bit 8 enables the APIC.
const APIC_SVR: usize = 0xF0;

/// Where the exerciser ISR EOIs the PICs (`b0 20 e6 a0 e6 20`), from its
/// start: the MSI ISR replaces those six bytes.
const PIC_EOI_AT: usize = 0x108e - 0x1055;
const LAPIC_EOI: &[u8] = &[0x66, 0x64, 0xc7, 0x06, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x00];
/// The PICs' EOI that the MSI ISR replaces.
const PIC_EOI_LEN: usize = 6;
const MSI_ISR_LEN: usize = EXERCISER_ISR.len() - PIC_EOI_LEN + LAPIC_EOI.len();

/// The exerciser ISR with its PIC EOI swapped for [`LAPIC_EOI`].
const fn splice() -> [u8; MSI_ISR_LEN] {
    let mut out = [0u8; MSI_ISR_LEN];
    let mut i = 0;
    while i < PIC_EOI_AT {
        out[i] = EXERCISER_ISR[i];
        i += 1;
    }
    let mut j = 0;
    while j < LAPIC_EOI.len() {
        out[PIC_EOI_AT + j] = LAPIC_EOI[j];
        j += 1;
    }
    let mut k = PIC_EOI_AT + PIC_EOI_LEN;
    while k < EXERCISER_ISR.len() {
        out[k - PIC_EOI_LEN + LAPIC_EOI.len()] = EXERCISER_ISR[k];
        k += 1;
    }
    out
}

const MSI_ISR_BYTES: [u8; MSI_ISR_LEN] = splice();

/// The MSI ISR, as listed above.
pub const MSI_ISR: &[u8] = &MSI_ISR_BYTES;

/// The IVT entry for [`MSI_VECTOR`] (offset, segment 0) and its address.
pub fn ivt_entry() -> (u64, u32) {
    (u64::from(MSI_VECTOR) * 4, MSI_ISR_ADDR as u32)
}

/// Software-enables the vCPU's local APIC (SVR = 0x1ff: enabled, spurious
/// vector 0xff), leaving every other register as KVM reset it.
pub fn enable_lapic(vcpu: &VcpuFd) -> Result<(), VmError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(kvm_err("read the local APIC (KVM_GET_LAPIC)"))?;
    set_reg(&mut lapic, APIC_SVR, 0x1ff);
    vcpu.set_lapic(&lapic)
        .map_err(kvm_err("enable the local APIC (KVM_SET_LAPIC)"))
}

fn set_reg(lapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().into_iter().enumerate() {
        lapic.regs[off + i] = byte as std::os::raw::c_char;
    }
}

/// KVM's default x86 routing (GSIs 0..16 to the IOAPIC and the PICs, 16..24
/// to the IOAPIC; `KVM_SET_GSI_ROUTING` replaces the whole table) plus
/// [`MSI_GSI`] as an MSI to [`MSI_VECTOR`] of APIC 0 (fixed delivery,
/// physical destination, edge).
pub fn routing() -> Result<KvmIrqRouting, VmError> {
    let chip = |gsi: u32, irqchip: u32, pin: u32| kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            irqchip: kvm_irq_routing_irqchip { irqchip, pin },
        },
        ..Default::default()
    };
    let mut entries = Vec::new();
    for gsi in 0..24 {
        entries.push(chip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(chip(gsi, pic, gsi % 8));
        }
    }
    entries.push(kvm_irq_routing_entry {
        gsi: MSI_GSI,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: LAPIC_BASE as u32,
                data: MSI_VECTOR,
                ..Default::default()
            },
        },
        ..Default::default()
    });
    KvmIrqRouting::from_entries(&entries).map_err(|_| VmError::Kvm {
        what: "build the GSI routing table",
        source: kvm_ioctls::Error::new(libc::E2BIG),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_msi_isr_is_the_exerciser_isr_with_the_local_apic_eoi() {
        assert_eq!(MSI_ISR[..PIC_EOI_AT], EXERCISER_ISR[..PIC_EOI_AT]);
        assert_eq!(
            EXERCISER_ISR[PIC_EOI_AT..PIC_EOI_AT + 6],
            [0xb0, 0x20, 0xe6, 0xa0, 0xe6, 0x20]
        );
        assert_eq!(MSI_ISR[PIC_EOI_AT..PIC_EOI_AT + 10], *LAPIC_EOI);
        assert_eq!(
            MSI_ISR[PIC_EOI_AT + 10..],
            EXERCISER_ISR[EXERCISER_ISR.len() - 5..]
        );
        assert_eq!(MSI_ISR_ADDR as usize + MSI_ISR.len(), 0x1148);
        use super::super::guest::{EXERCISER_CODE, LOAD_ADDR};
        // Past the exerciser guest's code.
        const { assert!(MSI_ISR_ADDR >= LOAD_ADDR + EXERCISER_CODE.len() as u64) };
    }

    #[test]
    fn the_routing_keeps_the_default_lines_and_adds_the_msi() {
        let r = routing().expect("routing");
        let e = r.as_slice();
        assert_eq!(e.len(), 24 + 16 + 1);
        // GSI 10 and 11 reach the slave PIC's pins 2 and 3.
        for (gsi, pin) in [(10, 2), (11, 3)] {
            assert!(e.iter().any(|x| {
                x.gsi == gsi && x.type_ == KVM_IRQ_ROUTING_IRQCHIP && {
                    #[allow(unsafe_code)]
                    // SAFETY: the entry was built with its irqchip member.
                    let c = unsafe { x.u.irqchip };
                    c.irqchip == KVM_IRQCHIP_PIC_SLAVE && c.pin == pin
                }
            }));
        }
        let msi = e.last().expect("msi");
        assert_eq!((msi.gsi, msi.type_), (MSI_GSI, KVM_IRQ_ROUTING_MSI));
    }
}
