//! The soak guest: a few dozen bytes of 16-bit real-mode code.
//!
//! It programs both PICs (master vectors 0x08.., slave 0x70.., only IRQ2 and
//! IRQ10 unmasked), makes IRQ10 level-triggered in the ELCR (port 0x4d1),
//! points vector 0x72 (IRQ10) at its ISR, says it is ready, and halts. The ISR
//! acks the device with a write to [`ACK_PORT`] (a `KVM_IOEVENTFD`, so no
//! vCPU exit), counts the interrupt in guest RAM and EOIs both PICs.
//!
//! ```text
//! 1000: fa                 cli
//! 1001: 31 c0              xor  ax, ax
//! 1003: 8e d8              mov  ds, ax
//! 1005: 8e d0              mov  ss, ax
//! 1007: bc 00 80           mov  sp, 0x8000
//! 100a: c7 06 c8 01 47 10  mov  word [0x01c8], 0x1047   ; IVT[0x72].offset = isr
//! 1010: c7 06 ca 01 00 00  mov  word [0x01ca], 0x0000   ; IVT[0x72].segment
//! 1016: b0 11              mov  al, 0x11                ; ICW1: cascade, ICW4 follows
//! 1018: e6 20              out  0x20, al
//! 101a: e6 a0              out  0xa0, al
//! 101c: b0 08              mov  al, 0x08                ; ICW2 master: vectors 0x08..0x0f
//! 101e: e6 21              out  0x21, al
//! 1020: b0 70              mov  al, 0x70                ; ICW2 slave: vectors 0x70..0x77
//! 1022: e6 a1              out  0xa1, al
//! 1024: b0 04              mov  al, 0x04                ; ICW3 master: slave on IRQ2
//! 1026: e6 21              out  0x21, al
//! 1028: b0 02              mov  al, 0x02                ; ICW3 slave: cascade id 2
//! 102a: e6 a1              out  0xa1, al
//! 102c: b0 01              mov  al, 0x01                ; ICW4: 8086 mode, normal EOI
//! 102e: e6 21              out  0x21, al
//! 1030: e6 a1              out  0xa1, al
//! 1032: b0 fb              mov  al, 0xfb                ; OCW1: only IRQ2 / IRQ10 unmasked
//! 1034: e6 21              out  0x21, al
//! 1036: e6 a1              out  0xa1, al
//! 1038: b0 04              mov  al, 0x04                ; ELCR2 bit 2: IRQ10 level-triggered
//! 103a: ba d1 04           mov  dx, 0x04d1
//! 103d: ee                 out  dx, al
//! 103e: c6 06 08 05 01     mov  byte [0x0508], 1         ; READY
//! 1043: fb                 sti                           ; idle:
//! 1044: f4                 hlt
//! 1045: eb fc              jmp  0x1043
//! 1047: 50                 push ax                       ; isr:
//! 1048: 80 3e 04 05 00     cmp  byte [0x0504], 0         ; ack enabled?
//! 104d: 74 02              je   0x1051
//! 104f: e6 e0              out  0xe0, al                 ; ack the device (ioeventfd)
//! 1051: 66 ff 06 00 05     inc  dword [0x0500]           ; count
//! 1056: b0 20              mov  al, 0x20                 ; non-specific EOI
//! 1058: e6 a0              out  0xa0, al                 ; slave
//! 105a: e6 20              out  0x20, al                 ; master
//! 105c: 58                 pop  ax
//! 105d: cf                 iret
//! ```

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
/// The master PIC's command port, where the ISR's last EOI goes.
pub const EOI_PORT: u16 = 0x20;
/// The GSI (IRQ10 on the slave PIC).
pub const GSI: u32 = 10;
/// The vector IRQ10 arrives at.
pub const VECTOR: u32 = 0x72;

/// The guest's code, as listed above.
pub const CODE: &[u8] = &[
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xd0, 0xbc, 0x00, 0x80, // 1000
    0xc7, 0x06, 0xc8, 0x01, 0x47, 0x10, // 100a
    0xc7, 0x06, 0xca, 0x01, 0x00, 0x00, // 1010
    0xb0, 0x11, 0xe6, 0x20, 0xe6, 0xa0, // 1016
    0xb0, 0x08, 0xe6, 0x21, 0xb0, 0x70, 0xe6, 0xa1, // 101c
    0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x02, 0xe6, 0xa1, // 1024
    0xb0, 0x01, 0xe6, 0x21, 0xe6, 0xa1, // 102c
    0xb0, 0xfb, 0xe6, 0x21, 0xe6, 0xa1, // 1032
    0xb0, 0x04, 0xba, 0xd1, 0x04, 0xee, // 1038
    0xc6, 0x06, 0x08, 0x05, 0x01, // 103e
    0xfb, 0xf4, 0xeb, 0xfc, // 1043
    0x50, // 1047 isr
    0x80, 0x3e, 0x04, 0x05, 0x00, 0x74, 0x02, // 1048
    0xe6, 0xe0, // 104f
    0x66, 0xff, 0x06, 0x00, 0x05, // 1051
    0xb0, 0x20, 0xe6, 0xa0, 0xe6, 0x20, // 1056
    0x58, 0xcf, // 105c
];

/// Offset of the ISR within [`CODE`] (must match the IVT entry above).
pub const ISR_OFFSET: usize = 0x47;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isr_is_where_the_ivt_points() {
        assert_eq!(CODE[ISR_OFFSET], 0x50, "push ax opens the ISR");
        let ivt_off = u16::from_le_bytes([CODE[14], CODE[15]]);
        assert_eq!(u64::from(ivt_off), LOAD_ADDR + ISR_OFFSET as u64);
        assert_eq!(*CODE.last().unwrap(), 0xcf, "the ISR ends in iret");
        assert_eq!(CODE.len(), 0x5e);
    }
}
