//! The soak guests: a few dozen bytes of 16-bit real-mode code each.
//!
//! There are two variants. [`CODE`] drives the emulated device: its ISR acks
//! through an I/O port. [`EXERCISER_CODE`] drives a real function through a
//! page of its BAR that the VMM maps into guest memory at
//! [`DEVICE_PAGE_ADDR`]: its ISR acks and re-raises the device itself, so an
//! interrupt costs no vCPU exit at all. Both share the set-up code and the
//! places of the counter, the ack switch and the ready byte.
//!
//! ## The emulated-device guest
//!
//! It programs both PICs (master vectors 0x08.., slave 0x70.., only IRQ2,
//! IRQ10 and IRQ11 unmasked), makes IRQ10 and IRQ11 level-triggered in the
//! ELCR (port 0x4d1), points vectors 0x72 (IRQ10) and 0x73 (IRQ11) at the
//! same ISR, says it is ready, and halts. The ISR acks the device with a
//! write to [`ACK_PORT`] (a `KVM_IOEVENTFD`, so no vCPU exit), counts the
//! interrupt in guest RAM and EOIs both PICs (both lines are on the slave).
//! The VMM wires the device to [`GSI`]; IRQ11 ([`GSI_ALT`]) is where a VMM
//! moves it when the guest re-routes its line (tests/lifecycle.rs).
//!
//! ```text
//! 1000: fa                 cli
//! 1001: 31 c0              xor  ax, ax
//! 1003: 8e d8              mov  ds, ax
//! 1005: 8e d0              mov  ss, ax
//! 1007: bc 00 80           mov  sp, 0x8000
//! 100a: c7 06 c8 01 55 10  mov  word [0x01c8], 0x1055   ; IVT[0x72].offset = isr
//! 1010: c7 06 ca 01 00 00  mov  word [0x01ca], 0x0000   ; IVT[0x72].segment
//! 1016: c7 06 cc 01 55 10  mov  word [0x01cc], 0x1055   ; IVT[0x73].offset = isr
//! 101c: c7 06 ce 01 00 00  mov  word [0x01ce], 0x0000   ; IVT[0x73].segment
//! 1022: b0 11              mov  al, 0x11                ; ICW1: cascade, ICW4 follows
//! 1024: e6 20              out  0x20, al
//! 1026: e6 a0              out  0xa0, al
//! 1028: b0 08              mov  al, 0x08                ; ICW2 master: vectors 0x08..0x0f
//! 102a: e6 21              out  0x21, al
//! 102c: b0 70              mov  al, 0x70                ; ICW2 slave: vectors 0x70..0x77
//! 102e: e6 a1              out  0xa1, al
//! 1030: b0 04              mov  al, 0x04                ; ICW3 master: slave on IRQ2
//! 1032: e6 21              out  0x21, al
//! 1034: b0 02              mov  al, 0x02                ; ICW3 slave: cascade id 2
//! 1036: e6 a1              out  0xa1, al
//! 1038: b0 01              mov  al, 0x01                ; ICW4: 8086 mode, normal EOI
//! 103a: e6 21              out  0x21, al
//! 103c: e6 a1              out  0xa1, al
//! 103e: b0 fb              mov  al, 0xfb                ; OCW1 master: only IRQ2 unmasked
//! 1040: e6 21              out  0x21, al
//! 1042: b0 f3              mov  al, 0xf3                ; OCW1 slave: only IRQ10, IRQ11 unmasked
//! 1044: e6 a1              out  0xa1, al
//! 1046: b0 0c              mov  al, 0x0c                ; ELCR2 bits 2, 3: IRQ10, IRQ11 level
//! 1048: ba d1 04           mov  dx, 0x04d1
//! 104b: ee                 out  dx, al
//! 104c: c6 06 08 05 01     mov  byte [0x0508], 1         ; READY
//! 1051: fb                 sti                           ; idle:
//! 1052: f4                 hlt
//! 1053: eb fc              jmp  0x1051
//! 1055: 50                 push ax                       ; isr:
//! 1056: 80 3e 04 05 00     cmp  byte [0x0504], 0         ; ack enabled?
//! 105b: 74 02              je   0x105f
//! 105d: e6 e0              out  0xe0, al                 ; ack the device (ioeventfd)
//! 105f: 66 ff 06 00 05     inc  dword [0x0500]           ; count
//! 1064: b0 20              mov  al, 0x20                 ; non-specific EOI
//! 1066: e6 a0              out  0xa0, al                 ; slave
//! 1068: e6 20              out  0x20, al                 ; master
//! 106a: 58                 pop  ax
//! 106b: cf                 iret
//! ```

use kvm_ioctls::IoEventAddress;

/// Guest-physical address where RAM starts.
pub const RAM_BASE: u64 = 0;
/// Guest RAM: `[0, RAM_SIZE)`. The space above it, up to 1 MiB, is free
/// for the device page (where a PC keeps its option ROMs).
pub const RAM_SIZE: u64 = 0xE0000;

/// Guest-physical load address (and initial IP).
pub const LOAD_ADDR: u64 = 0x1000;
/// Guest-physical address of the 32-bit interrupt counter.
pub const COUNT_ADDR: u64 = 0x500;
/// Guest-physical address of the ack-enable byte (0: EOI without acking).
pub const ACK_ENABLE_ADDR: u64 = 0x504;
/// Guest-physical address of the ready byte.
pub const READY_ADDR: u64 = 0x508;
/// I/O port the ISR writes to ack the device.
pub const ACK_PORT: u16 = 0xe0;
/// Where the device's ack eventfd is bound (`KVM_IOEVENTFD`).
pub const ACK: IoEventAddress = IoEventAddress::Pio(ACK_PORT as u64);
/// The x86 guest arms no timer.
pub const TIMER_COUNT_ADDR: Option<u64> = None;
/// The x86 guest has no exception handler that reports.
pub const FAULT_ADDR: Option<u64> = None;
/// How long the guest may take to come up.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a run may go without a delivered interrupt before it counts as
/// a stall. With the in-kernel irqchip KVM asserts a resampling irqfd's GSI
/// from a kworker (`irqfd_inject` on the system workqueue); a loaded 2-core
/// host was measured running it up to 6.4 s after the irqfd write
/// (docs/testing.md, "Stalls under load"), so the bound sits well above that.
pub const STALL_BOUND: std::time::Duration = std::time::Duration::from_secs(10);
/// The master PIC's command port, where the ISR's last EOI goes.
pub const EOI_PORT: u16 = 0x20;
/// The GSI (IRQ10 on the slave PIC).
pub const GSI: u32 = 10;
/// The vector IRQ10 arrives at.
pub const VECTOR: u32 = 0x72;
/// The second line the guest takes (IRQ11 on the slave PIC, the same ISR):
/// where a VMM moves the device when the guest re-routes its INTx.
pub const GSI_ALT: u32 = 11;
/// The vector IRQ11 arrives at.
pub const VECTOR_ALT: u32 = 0x73;

/// The set-up both guests share, 0x1000..0x1055 as listed above: the IVT
/// entries for vectors 0x72 and 0x73 (both 0x1055, where each ISR starts),
/// PICs, ELCR, READY, then the `sti; hlt` idle loop.
const SETUP: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xd0, 0xbc, 0x00, 0x80, // 1000
    0xc7, 0x06, 0xc8, 0x01, 0x55, 0x10, // 100a
    0xc7, 0x06, 0xca, 0x01, 0x00, 0x00, // 1010
    0xc7, 0x06, 0xcc, 0x01, 0x55, 0x10, // 1016
    0xc7, 0x06, 0xce, 0x01, 0x00, 0x00, // 101c
    0xb0, 0x11, 0xe6, 0x20, 0xe6, 0xa0, // 1022
    0xb0, 0x08, 0xe6, 0x21, 0xb0, 0x70, 0xe6, 0xa1, // 1028
    0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x02, 0xe6, 0xa1, // 1030
    0xb0, 0x01, 0xe6, 0x21, 0xe6, 0xa1, // 1038
    0xb0, 0xfb, 0xe6, 0x21, 0xb0, 0xf3, 0xe6, 0xa1, // 103e
    0xb0, 0x0c, 0xba, 0xd1, 0x04, 0xee, // 1046
    0xc6, 0x06, 0x08, 0x05, 0x01, // 104c
    0xfb, 0xf4, 0xeb, 0xfc, // 1051
];

/// Concatenates two byte strings at compile time.
const fn concat<const N: usize>(a: &[u8], b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < a.len() {
        out[i] = a[i];
        i += 1;
    }
    let mut j = 0;
    while j < b.len() {
        out[a.len() + j] = b[j];
        j += 1;
    }
    out
}

/// The emulated-device guest's ISR (0x1055.. as listed above).
const SIM_ISR: &[u8] = &[
    0x50, // 1055 isr
    0x80, 0x3e, 0x04, 0x05, 0x00, 0x74, 0x02, // 1056
    0xe6, 0xe0, // 105d
    0x66, 0xff, 0x06, 0x00, 0x05, // 105f
    0xb0, 0x20, 0xe6, 0xa0, 0xe6, 0x20, // 1064
    0x58, 0xcf, // 106a
];

const CODE_BYTES: [u8; SETUP.len() + SIM_ISR.len()] = concat(SETUP, SIM_ISR);

/// The guest's code, as listed above.
pub const CODE: &[u8] = &CODE_BYTES;

/// Offset of the ISR within [`CODE`] (must match the IVT entry above).
pub const ISR_OFFSET: usize = 0x55;

/// Guest-physical address where the VMM maps the first page of the
/// exerciser's BAR (real-mode segment `0xE000`).
pub const DEVICE_PAGE_ADDR: u64 = 0xE0000;
/// Guest-physical address of the 32-bit count the exerciser guest stops
/// re-raising at.
pub const TARGET_ADDR: u64 = 0x50C;
/// Guest-physical address of the 16-bit offset, in the device page, of the
/// register the ISR acks with.
pub const ACK_OFFSET_ADDR: u64 = 0x510;
/// Guest-physical address of the 32-bit value the ISR acks with.
pub const ACK_VALUE_ADDR: u64 = 0x514;
/// Guest-physical address of the 16-bit offset of the raise register.
pub const RAISE_OFFSET_ADDR: u64 = 0x518;
/// Guest-physical address of the 32-bit value the ISR raises with.
pub const RAISE_VALUE_ADDR: u64 = 0x51C;

/// ## The exerciser guest
///
/// The same set-up as [`CODE`] (byte for byte up to 0x1055, where the ISR
/// starts again). The ISR:
///
/// 1. If the ack-enable byte at 0x504 is non-zero, acks the device: it
///    writes the 32-bit value at 0x514 to the register at the offset (16
///    bits) at 0x510 in the device page. The page is the device's own BAR
///    page in a KVM memslot, so the write goes straight to the device, with
///    no exit, and lowers its line.
/// 2. Counts the interrupt at 0x500 with a `lock inc`: a full barrier, so
///    the load of the target that follows cannot be reordered before the
///    count (the VMM raises the target and then reads the count; see
///    `Session::ring`).
/// 3. While the count is below the target at 0x50C, raises the device again:
///    the value at 0x51C to the offset at 0x518. INTx is still masked on the
///    host (vfio-pci's automask), so this new interrupt waits for the EOI.
/// 4. EOIs the slave and the master PIC. The EOI resamples the level line,
///    vfio-pci unmasks INTx, finds the line high again, and the next
///    interrupt goes out: the whole loop runs inside KVM and vfio-pci.
///
/// Registers are written with 32-bit stores, the only size some devices
/// (QEMU's edu) accept below offset 0x80.
///
/// ```text
/// 1000..1054: as in CODE (the IVT entries point at 0x1055 here too)
/// 1055: 66 50              push eax                      ; isr:
/// 1057: 53                 push bx
/// 1058: 06                 push es
/// 1059: b8 00 e0           mov  ax, 0xe000               ; the device page
/// 105c: 8e c0              mov  es, ax
/// 105e: 80 3e 04 05 00     cmp  byte [0x0504], 0         ; ack enabled?
/// 1063: 74 0c              je   0x1071
/// 1065: 8b 1e 10 05        mov  bx, [0x0510]             ; ack offset
/// 1069: 66 a1 14 05        mov  eax, [0x0514]            ; ack value
/// 106d: 26 66 89 07        mov  es:[bx], eax             ; ack the device (MMIO)
/// 1071: 66 f0 ff 06 00 05  lock inc dword [0x0500]       ; count (full barrier)
/// 1077: 66 a1 00 05        mov  eax, [0x0500]
/// 107b: 66 3b 06 0c 05     cmp  eax, [0x050c]            ; below the target?
/// 1080: 73 0c              jae  0x108e
/// 1082: 8b 1e 18 05        mov  bx, [0x0518]             ; raise offset
/// 1086: 66 a1 1c 05        mov  eax, [0x051c]            ; raise value
/// 108a: 26 66 89 07        mov  es:[bx], eax             ; raise the next one (MMIO)
/// 108e: b0 20              mov  al, 0x20                 ; non-specific EOI
/// 1090: e6 a0              out  0xa0, al                 ; slave
/// 1092: e6 20              out  0x20, al                 ; master
/// 1094: 07                 pop  es
/// 1095: 5b                 pop  bx
/// 1096: 66 58              pop  eax
/// 1098: cf                 iret
/// ```
pub(super) const EXERCISER_ISR: &[u8] = &[
    0x66, 0x50, 0x53, 0x06, // 1055 isr
    0xb8, 0x00, 0xe0, 0x8e, 0xc0, // 1059
    0x80, 0x3e, 0x04, 0x05, 0x00, 0x74, 0x0c, // 105e
    0x8b, 0x1e, 0x10, 0x05, // 1065
    0x66, 0xa1, 0x14, 0x05, // 1069
    0x26, 0x66, 0x89, 0x07, // 106d
    0x66, 0xf0, 0xff, 0x06, 0x00, 0x05, // 1071
    0x66, 0xa1, 0x00, 0x05, // 1077
    0x66, 0x3b, 0x06, 0x0c, 0x05, 0x73, 0x0c, // 107b
    0x8b, 0x1e, 0x18, 0x05, // 1082
    0x66, 0xa1, 0x1c, 0x05, // 1086
    0x26, 0x66, 0x89, 0x07, // 108a
    0xb0, 0x20, 0xe6, 0xa0, 0xe6, 0x20, // 108e
    0x07, 0x5b, 0x66, 0x58, 0xcf, // 1094
];

const EXERCISER_BYTES: [u8; SETUP.len() + EXERCISER_ISR.len()] = concat(SETUP, EXERCISER_ISR);

/// The exerciser guest's code, as listed above.
pub const EXERCISER_CODE: &[u8] = &EXERCISER_BYTES;

#[cfg(test)]
mod tests {
    use super::*;

    /// The 16-bit operand at guest address `addr` of `code`.
    fn word(code: &[u8], addr: usize) -> u16 {
        u16::from_le_bytes([code[addr - 0x1000], code[addr - 0x1000 + 1]])
    }

    #[test]
    fn isr_is_where_the_ivt_points() {
        assert_eq!(CODE[ISR_OFFSET], 0x50, "push ax opens the ISR");
        let isr = LOAD_ADDR + ISR_OFFSET as u64;
        // Both vectors' IVT entries (4 bytes each at vector * 4) point at
        // the one ISR, in segment 0.
        for (at, vector) in [(0x100a, VECTOR), (0x1016, VECTOR_ALT)] {
            assert_eq!(CODE[at - 0x1000..at - 0x1000 + 2], [0xc7, 0x06]);
            assert_eq!(u32::from(word(CODE, at + 2)), vector * 4);
            assert_eq!(u64::from(word(CODE, at + 4)), isr);
            assert_eq!(u32::from(word(CODE, at + 8)), vector * 4 + 2);
            assert_eq!(word(CODE, at + 10), 0);
        }
        assert_eq!(*CODE.last().unwrap(), 0xcf, "the ISR ends in iret");
        assert_eq!(CODE.len(), 0x6c);
    }

    #[test]
    fn both_lines_are_unmasked_level_triggered_and_on_the_slave_pic() {
        // The vectors are the slave's base (ICW2 at 0x102c) plus the IRQ's
        // pin on the slave (IRQ - 8).
        assert_eq!(CODE[0x102c - 0x1000..0x102c - 0x1000 + 2], [0xb0, 0x70]);
        for (gsi, vector) in [(GSI, VECTOR), (GSI_ALT, VECTOR_ALT)] {
            let pin = gsi - 8;
            assert_eq!(vector, 0x70 + pin);
            // OCW1 of the slave (mov al at 0x1042) leaves the pin unmasked,
            // ELCR2 (mov al at 0x1046) makes it level-triggered.
            assert_eq!(CODE[0x1042 - 0x1000], 0xb0);
            assert_eq!(CODE[0x1043 - 0x1000] & (1 << pin), 0, "IRQ{gsi} masked");
            assert_eq!(CODE[0x1046 - 0x1000], 0xb0);
            assert_ne!(CODE[0x1047 - 0x1000] & (1 << pin), 0, "IRQ{gsi} edge");
        }
        // The master's OCW1 (0x103e) unmasks only the cascade, IRQ2.
        assert_eq!(CODE[0x103e - 0x1000..0x103e - 0x1000 + 2], [0xb0, 0xfb]);
        // The ELCR2 port.
        assert_eq!(word(CODE, 0x1049), 0x04d1);
    }

    #[test]
    fn the_sim_guest_matches_its_listing() {
        assert_eq!(u64::from(word(CODE, 0x104e)), READY_ADDR);
        assert_eq!(u64::from(word(CODE, 0x1058)), ACK_ENABLE_ADDR);
        assert_eq!(u16::from(CODE[0x105e - 0x1000]), ACK_PORT);
        assert_eq!(u64::from(word(CODE, 0x1062)), COUNT_ADDR);
        assert_eq!(u16::from(CODE[0x1069 - 0x1000]), EOI_PORT);
    }

    #[test]
    fn the_exerciser_guest_shares_the_set_up_and_the_isr_address() {
        assert_eq!(EXERCISER_CODE[..ISR_OFFSET], CODE[..ISR_OFFSET]);
        assert_eq!(EXERCISER_CODE[ISR_OFFSET..ISR_OFFSET + 2], [0x66, 0x50]);
        assert_eq!(
            *EXERCISER_CODE.last().unwrap(),
            0xcf,
            "the ISR ends in iret"
        );
        assert_eq!(EXERCISER_CODE.len(), 0x99);
        // The device page is the real-mode segment the ISR loads.
        assert_eq!(
            u64::from(word(EXERCISER_CODE, 0x105a)) << 4,
            DEVICE_PAGE_ADDR
        );
    }

    #[test]
    fn the_exerciser_guest_matches_its_listing() {
        // Byte offsets of the operands the listing names.
        let at = |addr: usize| word(EXERCISER_CODE, addr);
        assert_eq!(u64::from(at(0x1060)), ACK_ENABLE_ADDR);
        assert_eq!(u64::from(at(0x1067)), ACK_OFFSET_ADDR);
        assert_eq!(u64::from(at(0x106b)), ACK_VALUE_ADDR);
        assert_eq!(u64::from(at(0x1075)), COUNT_ADDR);
        assert_eq!(u64::from(at(0x1079)), COUNT_ADDR);
        assert_eq!(u64::from(at(0x107e)), TARGET_ADDR);
        assert_eq!(u64::from(at(0x1084)), RAISE_OFFSET_ADDR);
        assert_eq!(u64::from(at(0x1088)), RAISE_VALUE_ADDR);
        const { assert!(DEVICE_PAGE_ADDR >= RAM_SIZE && DEVICE_PAGE_ADDR + 4096 <= 0x10_0000) };
    }
}
