//! The aarch64 soak guests: bare-metal EL1 code with the MMU off, 79
//! instructions and a vector table, loaded at [`LOAD_ADDR`]; the exerciser
//! variant (`super::exerciser`, for a real function) adds 17 more.
//!
//! The VMM starts the vCPU at [`LOAD_ADDR`] in EL1h with every exception
//! masked, `x0` saying which interrupt controller the VM has:
//!
//! - `x0 = 0`, the vGICv3 (`--irqchip kernel`): the guest turns on the
//!   distributor (affinity routing, group 1), makes [`DEVICE_INTID`] (SPI 32,
//!   the irqfd's GSI 0) a level-triggered group-1 interrupt routed to itself,
//!   wakes its redistributor and turns on the system-register CPU interface.
//!   Its ISR acknowledges with `ICC_IAR1_EL1`, acks the device with a store to
//!   [`ACK_ADDR`] (a `KVM_IOEVENTFD`: no exit), counts it at [`COUNT_ADDR`],
//!   and EOIs with `ICC_EOIR1_EL1`, where KVM lowers the line and signals the
//!   irqfd's resample eventfd. The whole loop runs in KVM: no exit at all.
//! - `x0 = 1`, the soak's userspace controller (`--irqchip user`, no vGIC):
//!   the guest arms its virtual timer for every `CNTFRQ / divisor` ticks,
//!   the divisor at [`TIMER_DIV_ADDR`] (the soak writes [`TIMER_DIV`]: every
//!   50 ms; 0: no timer). Its ISR reads which
//!   source fired from the acknowledge register of the soak's minimal GIC
//!   CPU interface ([`CPU_IF_ADDR`] + [`IAR_OFFSET`], an MMIO read that exits
//!   to the VMM): the device ([`DEVICE_INTID`]) is acked and counted as
//!   above; the timer ([`TIMER_INTID`]) is re-armed, which drops its level,
//!   and counted at [`TIMER_COUNT_ADDR`]; either is EOIed with a write of its
//!   INTID to [`CPU_IF_ADDR`] + [`EOIR_OFFSET`] (an exit). 1023 means
//!   nothing was pending: no EOI.
//!
//! Then it says it is ready and waits for interrupts in `wfi`. Any other
//! exception stops it in a loop after it wrote which vector (1..16) to
//! [`FAULT_ADDR`] and `ESR_EL1` to the word after.
//!
//! The guest's data stores go straight to memory (with the MMU off they are
//! Device-nGnRnE), which the host reads through its cacheable mapping: under
//! TCG and on hosts with stage-2 forced write-back (`FEAT_S2FWB`, which KVM
//! uses when present) both agree.
//!
//! Addresses in the listings are offsets from [`RAM_BASE`]; branch targets
//! are written as the address they land on.
//!
//! ```text
//! 1000: d2a80014  mov x20, #0x40000000           ; x20: guest RAM (the data at +0x500)
//! 1004: d2a14017  mov x23, #0xa000000            ; x23: the device's ack register (ioeventfd)
//! 1008: 10003fc1  adr x1, 1800                   ; the vector table, 0x800 on
//! 100c: d518c001  msr vbar_el1, x1
//! 1010: d5033fdf  isb
//! 1014: b50003a0  cbnz x0, 1088                  ; x0 = 1: the soak's userspace controller
//! 1018: d2a10002  mov x2, #0x8000000             ; vGICv3: GICD at 0x08000000
//! 101c: 52800243  mov w3, #0x12                  ; GICD_CTLR = ARE | EnableGrp1
//! 1020: b9000043  str w3, [x2]
//! 1024: b9400043  ldr w3, [x2]                   ; wait while RWP
//! 1028: 37ffffe3  tbnz w3, #31, 1024
//! 102c: 52800023  mov w3, #0x1
//! 1030: b9008443  str w3, [x2, #132]             ; GICD_IGROUPR1: INTID 32 in group 1
//! 1034: 52801403  mov w3, #0xa0
//! 1038: b9042043  str w3, [x2, #1056]            ; GICD_IPRIORITYR8: INTID 32 at 0xa0
//! 103c: b90c085f  str wzr, [x2, #3080]           ; GICD_ICFGR2: INTIDs 32.. level-sensitive
//! 1040: 91401844  add x4, x2, #0x6, lsl #12
//! 1044: f900809f  str xzr, [x4, #256]            ; GICD_IROUTER32: to affinity 0.0.0.0
//! 1048: 52800023  mov w3, #0x1
//! 104c: b9010443  str w3, [x2, #260]             ; GICD_ISENABLER1: enable INTID 32
//! 1050: d2a10144  mov x4, #0x80a0000             ; GICR (RD_base) at 0x080a0000
//! 1054: b900149f  str wzr, [x4, #20]             ; GICR_WAKER: ProcessorSleep = 0
//! 1058: b9401483  ldr w3, [x4, #20]              ; wait while ChildrenAsleep
//! 105c: 3717ffe3  tbnz w3, #2, 1058
//! 1060: d28000e3  mov x3, #0x7
//! 1064: d518cca3  msr icc_sre_el1, x3            ; ICC_SRE_EL1 = SRE | DFB | DIB
//! 1068: d5033fdf  isb
//! 106c: d2801fe3  mov x3, #0xff
//! 1070: d5184603  msr icc_pmr_el1, x3            ; ICC_PMR_EL1: every priority
//! 1074: d518cc7f  msr icc_bpr1_el1, xzr
//! 1078: d2800023  mov x3, #0x1
//! 107c: d518cce3  msr icc_igrpen1_el1, x3        ; ICC_IGRPEN1_EL1: group 1 on
//! 1080: d5033fdf  isb
//! 1084: 1400000a  b 10ac
//! 1088: d2a10036  mov x22, #0x8010000            ; user: x22: the soak's GIC CPU interface
//! 108c: b9453283  ldr w3, [x20, #1328]           ; the timer's divisor (0: no timer)
//! 1090: 340000e3  cbz w3, 10ac
//! 1094: d53be015  mrs x21, cntfrq_el0
//! 1098: 9ac30ab5  udiv x21, x21, x3              ; x21 = CNTFRQ / divisor
//! 109c: d51be315  msr cntv_tval_el0, x21         ; the virtual timer fires in x21 ticks
//! 10a0: d2800023  mov x3, #0x1
//! 10a4: d51be323  msr cntv_ctl_el0, x3           ; CNTV_CTL: enabled, not masked
//! 10a8: d5033fdf  isb
//! 10ac: 52800023  mov w3, #0x1                   ; ready:
//! 10b0: 39142283  strb w3, [x20, #1288]          ; READY
//! 10b4: d50342ff  msr daifclr, #0x2              ; unmask IRQs
//! 10b8: d503207f  wfi                            ; idle:
//! 10bc: 17ffffff  b 10b8
//! 10c0: 39541284  ldrb w4, [x20, #1284]          ; device: ack enabled?
//! 10c4: 34000044  cbz w4, 10cc
//! 10c8: b90002ff  str wzr, [x23]                 ; ack the device (ioeventfd: no exit)
//! 10cc: b9450284  ldr w4, [x20, #1280]
//! 10d0: 11000484  add w4, w4, #0x1
//! 10d4: b9050284  str w4, [x20, #1280]           ; count
//! 10d8: d65f03c0  ret                            ; (x30 is free: the idle loop never calls)
//! 10dc: b5000120  cbnz x0, 1100                  ; isr: from vector 0x280
//! 10e0: d538cc03  mrs x3, icc_iar1_el1           ; vGIC: ICC_IAR1_EL1 = the INTID
//! 10e4: 7100807f  cmp w3, #0x20                  ; the device?
//! 10e8: 54000041  b.ne 10f0
//! 10ec: 97fffff5  bl 10c0
//! 10f0: 710ff07f  cmp w3, #0x3fc                 ; 1020..1023: spurious, no EOI
//! 10f4: 54000042  b.cs 10fc
//! 10f8: d518cc23  msr icc_eoir1_el1, x3          ; ICC_EOIR1_EL1: KVM resamples the irqfd
//! 10fc: d69f03e0  eret
//! 1100: b9400ec3  ldr w3, [x22, #12]             ; user_isr: IAR (exits): which source
//! 1104: 71006c7f  cmp w3, #0x1b                  ; the virtual timer (PPI 27)?
//! 1108: 540000c0  b.eq 1120
//! 110c: 7100807f  cmp w3, #0x20                  ; the device (SPI 32)?
//! 1110: 54000061  b.ne 111c
//! 1114: 97ffffeb  bl 10c0
//! 1118: b90012c3  str w3, [x22, #16]             ; EOIR (exits): the soak resamples
//! 111c: d69f03e0  eret                           ; 1023: nothing pending
//! 1120: d51be315  msr cntv_tval_el0, x21         ; timer: re-arm; its level drops
//! 1124: d5033fdf  isb
//! 1128: b9452284  ldr w4, [x20, #1312]
//! 112c: 11000484  add w4, w4, #0x1
//! 1130: b9052284  str w4, [x20, #1312]           ; count the timer
//! 1134: b90012c3  str w3, [x22, #16]             ; EOIR (exits)
//! 1138: d69f03e0  eret
//! 113c..17ff: zero
//! 1800..1fff: the vector table, 16 slots of 0x80 bytes:
//!   slot 5 (0x1a80, current EL with SPx, IRQ): 17fffd96  b 10dc (isr)
//!   slot n, every other one:
//!     d5385203  mrs x3, esr_el1
//!     b9052e83  str w3, [x20, #0x52c]           ; ESR_EL1
//!     528000?3  mov w3, #(n + 1)
//!     b9052a83  str w3, [x20, #0x528]           ; which vector
//!     14000000  b .                             ; stop
//! ```
use std::time::Duration;

use kvm_ioctls::IoEventAddress;

/// Guest-physical address where RAM starts (QEMU `virt`'s layout).
pub const RAM_BASE: u64 = 0x4000_0000;
/// Guest RAM: 1 MiB from [`RAM_BASE`].
pub const RAM_SIZE: u64 = 0x10_0000;
/// Guest-physical load address (and the first PC).
pub const LOAD_ADDR: u64 = RAM_BASE + 0x1000;
/// Guest-physical address of the 32-bit count of device interrupts.
pub const COUNT_ADDR: u64 = RAM_BASE + 0x500;
/// Guest-physical address of the ack-enable byte (0: EOI without acking).
pub const ACK_ENABLE_ADDR: u64 = RAM_BASE + 0x504;
/// Guest-physical address of the ready byte.
pub const READY_ADDR: u64 = RAM_BASE + 0x508;
/// Guest-physical address of the 32-bit count the exerciser guest stops
/// re-raising at.
pub const TARGET_ADDR: u64 = RAM_BASE + 0x50C;
/// Guest-physical address of the 32-bit offset, in the device page, of the
/// register the exerciser's ISR acks with.
pub const ACK_OFFSET_ADDR: u64 = RAM_BASE + 0x510;
/// Guest-physical address of the 32-bit value it acks with.
pub const ACK_VALUE_ADDR: u64 = RAM_BASE + 0x514;
/// Guest-physical address of the 32-bit offset of the raise register.
pub const RAISE_OFFSET_ADDR: u64 = RAM_BASE + 0x518;
/// Guest-physical address of the 32-bit value it raises with.
pub const RAISE_VALUE_ADDR: u64 = RAM_BASE + 0x51C;
/// Guest-physical address of the timer's divisor: the guest arms its
/// virtual timer for every `CNTFRQ / divisor` ticks (0: no timer).
pub const TIMER_DIV_ADDR: u64 = RAM_BASE + 0x530;
/// The divisor the soak uses: a timer interrupt every 50 ms.
pub const TIMER_DIV: u32 = 20;
/// Guest-physical address of the 32-bit count of timer interrupts.
pub const TIMER_COUNT_ADDR: Option<u64> = Some(RAM_BASE + 0x520);
/// Where the unexpected-exception handler writes its vector (1..16; the
/// word after holds `ESR_EL1`).
pub const FAULT_ADDR: Option<u64> = Some(RAM_BASE + 0x528);
/// Where the VMM maps the first page of the exerciser's BAR (above RAM,
/// below nothing else of the VM's).
pub const DEVICE_PAGE_ADDR: u64 = 0x5000_0000;

/// The device's ack register, an MMIO address outside every memslot.
pub const ACK_ADDR: u64 = 0x0a00_0000;
/// Where the device's ack eventfd is bound (`KVM_IOEVENTFD`).
pub const ACK: IoEventAddress = IoEventAddress::Mmio(ACK_ADDR);
/// The vGICv3 distributor (QEMU `virt`'s address).
pub const GICD_ADDR: u64 = 0x0800_0000;
/// The vGICv3 redistributor region.
pub const GICR_ADDR: u64 = 0x080a_0000;
/// The soak's GIC CPU interface (userspace irqchip; where `virt` puts a
/// GICv2 CPU interface).
pub const CPU_IF_ADDR: u64 = 0x0801_0000;
/// Its acknowledge register (read: the INTID, or 1023), as GICC_IAR.
pub const IAR_OFFSET: u64 = 0x0c;
/// Its end-of-interrupt register (write the INTID), as GICC_EOIR.
pub const EOIR_OFFSET: u64 = 0x10;
/// The INTID of the device: SPI 32.
pub const DEVICE_INTID: u32 = 32;
/// The INTID of the EL1 virtual timer: PPI 27.
pub const TIMER_INTID: u32 = 27;
/// What the acknowledge register reads with nothing pending.
pub const SPURIOUS_INTID: u32 = 1023;
/// The irqfd's GSI: with a vGIC and no routing table, GSI n is SPI n
/// (INTID 32 + n).
pub const GSI: u32 = DEVICE_INTID - 32;
/// How long the guest may take to come up (an emulated arm64 host runs it
/// under TCG).
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a run may go without a delivered interrupt before it counts as
/// a stall (emulated arm64 hosts take up to seconds per cycle under load).
pub const STALL_BOUND: Duration = Duration::from_secs(10);

/// `x0` for the vGICv3 guest.
pub const MODE_VGIC: u64 = 0;
/// `x0` for the userspace-controller guest.
pub const MODE_USER: u64 = 1;

/// The code, 0x1000..0x113c as listed above.
const MAIN: [u32; 79] = [
    0xd2a80014, 0xd2a14017, 0x10003fc1, 0xd518c001, 0xd5033fdf, 0xb50003a0, // 1000
    0xd2a10002, 0x52800243, 0xb9000043, 0xb9400043, 0x37ffffe3, 0x52800023, // 1018
    0xb9008443, 0x52801403, 0xb9042043, 0xb90c085f, 0x91401844, 0xf900809f, // 1030
    0x52800023, 0xb9010443, 0xd2a10144, 0xb900149f, 0xb9401483, 0x3717ffe3, // 1048
    0xd28000e3, 0xd518cca3, 0xd5033fdf, 0xd2801fe3, 0xd5184603, 0xd518cc7f, // 1060
    0xd2800023, 0xd518cce3, 0xd5033fdf, 0x1400000a, 0xd2a10036, 0xb9453283, // 1078
    0x340000e3, 0xd53be015, 0x9ac30ab5, 0xd51be315, 0xd2800023, 0xd51be323, // 1090
    0xd5033fdf, 0x52800023, 0x39142283, 0xd50342ff, 0xd503207f, 0x17ffffff, // 10a8
    0x39541284, 0x34000044, 0xb90002ff, 0xb9450284, 0x11000484, 0xb9050284, // 10c0
    0xd65f03c0, 0xb5000120, 0xd538cc03, 0x7100807f, 0x54000041, 0x97fffff5, // 10d8
    0x710ff07f, 0x54000042, 0xd518cc23, 0xd69f03e0, 0xb9400ec3, 0x71006c7f, // 10f0
    0x540000c0, 0x7100807f, 0x54000061, 0x97ffffeb, 0xb90012c3, 0xd69f03e0, // 1108
    0xd51be315, 0xd5033fdf, 0xb9452284, 0x11000484, 0xb9052284, 0xb90012c3, // 1120
    0xd69f03e0, // 1138
];

/// Offset of the ISR in the image (0x10dc in the listing).
const ISR_OFFSET: usize = 0xdc;
/// Offset of the vector table (`VBAR_EL1`; 2 KiB aligned).
const VECTORS_OFFSET: usize = 0x800;
/// The vector slot for an IRQ taken at the current EL on SP_ELx.
const IRQ_SLOT: usize = 5;
/// Size of the image: the code, then the vector table.
pub(super) const IMAGE_SIZE: usize = VECTORS_OFFSET + 16 * 0x80;

/// `b` from `from` to `to` (byte offsets in the image).
pub(super) const fn branch(from: usize, to: usize) -> u32 {
    let delta = (to as i64 - from as i64) / 4;
    0x1400_0000 | (delta as u32 & 0x03ff_ffff)
}

/// Writes `w` little-endian at `at`.
pub(super) const fn put(image: &mut [u8; IMAGE_SIZE], at: usize, w: u32) {
    let b = w.to_le_bytes();
    let mut i = 0;
    while i < 4 {
        image[at + i] = b[i];
        i += 1;
    }
}

/// Lays out the code and the vector table.
const fn image() -> [u8; IMAGE_SIZE] {
    let mut image = [0u8; IMAGE_SIZE];
    let mut i = 0;
    while i < MAIN.len() {
        put(&mut image, i * 4, MAIN[i]);
        i += 1;
    }
    let mut slot = 0;
    while slot < 16 {
        let at = VECTORS_OFFSET + slot * 0x80;
        if slot == IRQ_SLOT {
            put(&mut image, at, branch(at, ISR_OFFSET));
        } else {
            put(&mut image, at, 0xd538_5203); // mrs x3, esr_el1
            put(&mut image, at + 4, 0xb905_2e83); // str w3, [x20, #0x52c]
            put(&mut image, at + 8, 0x5280_0003 | (((slot as u32) + 1) << 5)); // mov w3, #n+1
            put(&mut image, at + 12, 0xb905_2a83); // str w3, [x20, #0x528]
            put(&mut image, at + 16, 0x1400_0000); // b .
        }
        slot += 1;
    }
    image
}

pub(super) const IMAGE: [u8; IMAGE_SIZE] = image();

/// The guest's image, as listed above.
pub const CODE: &[u8] = &IMAGE;

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn word_of(code: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([code[at], code[at + 1], code[at + 2], code[at + 3]])
    }

    fn word(at: usize) -> u32 {
        word_of(CODE, at)
    }

    /// The 12-bit scaled immediate of a 32-bit `ldr`/`str` (unsigned
    /// offset form), in bytes.
    pub(crate) fn ldst_w_offset(w: u32) -> u64 {
        u64::from((w >> 10) & 0xfff) * 4
    }

    #[test]
    fn the_irq_vector_branches_to_the_isr_and_the_adr_finds_the_table() {
        assert_eq!(
            word(VECTORS_OFFSET + IRQ_SLOT * 0x80),
            0x17ff_fd97,
            "as gas encodes it"
        );
        assert_eq!(
            word(ISR_OFFSET),
            0xb500_0120,
            "cbnz x0, user_isr opens the ISR"
        );
        // adr x1, vectors: immlo in bits 29..30, immhi in 5..23.
        let adr = word(0x08);
        let imm = (((adr >> 5) & 0x7ffff) << 2) | ((adr >> 29) & 3);
        assert_eq!(imm as usize + 0x08, VECTORS_OFFSET);
        assert_eq!(CODE.len(), 0x1000);
        assert_eq!(
            word(VECTORS_OFFSET + 0x80 * 7 + 8),
            0x5280_0103,
            "mov w3, #8 in slot 7"
        );
    }

    #[test]
    fn the_isr_uses_the_addresses_the_host_reads() {
        // ldrb w4, [x20, #ACK_ENABLE] (byte-scaled), str w4, [x20, #COUNT].
        assert_eq!(
            RAM_BASE + u64::from((word(0xc0) >> 10) & 0xfff),
            ACK_ENABLE_ADDR
        );
        assert_eq!(RAM_BASE + ldst_w_offset(word(0xd4)), COUNT_ADDR);
        assert_eq!(
            Some(RAM_BASE + ldst_w_offset(word(0x130))),
            TIMER_COUNT_ADDR
        );
        assert_eq!(RAM_BASE + u64::from((word(0xb0) >> 10) & 0xfff), READY_ADDR);
        // ldr w3, [x22, #IAR] and str w3, [x22, #EOIR].
        assert_eq!(ldst_w_offset(word(0x100)), IAR_OFFSET);
        assert_eq!(ldst_w_offset(word(0x118)), EOIR_OFFSET);
        // movz x20 / x23 / x22: imm16 << 16.
        let movz = |w: u32| u64::from((w >> 5) & 0xffff) << 16;
        assert_eq!(movz(word(0x00)), RAM_BASE);
        assert_eq!(movz(word(0x04)), ACK_ADDR);
        assert_eq!(movz(word(0x18)), GICD_ADDR);
        assert_eq!(movz(word(0x50)), GICR_ADDR);
        assert_eq!(movz(word(0x88)), CPU_IF_ADDR);
        // cmp w3, #INTID.
        assert_eq!((word(0x104) >> 10) & 0xfff, TIMER_INTID);
        assert_eq!((word(0x10c) >> 10) & 0xfff, DEVICE_INTID);
        assert_eq!(RAM_BASE + ldst_w_offset(word(0x8c)), TIMER_DIV_ADDR);
        assert_eq!(FAULT_ADDR, Some(RAM_BASE + ldst_w_offset(0xb905_2a83)));
        const { assert!(LOAD_ADDR % 4096 == 0 && ACK_ADDR < RAM_BASE && CPU_IF_ADDR < RAM_BASE) };
    }
}
