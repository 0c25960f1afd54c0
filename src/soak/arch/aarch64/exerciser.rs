//! The aarch64 exerciser guest, for a real function: the soak guest of
//! [`super::guest`] with a device routine of its own.
//!
//! [`EXERCISER_CODE`] drives a real function through the first page of its
//! BAR, which the VMM maps into the guest at [`DEVICE_PAGE_ADDR`] (a memslot:
//! the guest's stores go to the device with no exit). It is [`CODE`] with
//! the device routine at 0x10c0 replaced by a branch to a longer one at
//! 0x1400, so both interrupt controllers, the ISR's acknowledge and its EOI
//! stay as listed there. The routine, as the x86 exerciser guest's ISR:
//!
//! 1. if the ack-enable byte is set, acks the device: the 32-bit value at
//!    [`ACK_VALUE_ADDR`] to the register at the offset at
//!    [`ACK_OFFSET_ADDR`] in the device page (its line drops);
//! 2. counts the interrupt, then `dmb sy`: the count is stored before the
//!    target is loaded (the VMM raises the target and then reads the count;
//!    see `Session::ring`);
//! 3. while the count is below the target at [`TARGET_ADDR`], raises the
//!    device again: the value at [`RAISE_VALUE_ADDR`] to the offset at
//!    [`RAISE_OFFSET_ADDR`]. INTx is still masked on the host (vfio-pci's
//!    automask), so the new interrupt waits for the EOI, which resamples the
//!    line: vfio-pci unmasks, finds it high again, and the next interrupt
//!    goes out.
//!
//! Registers are written with 32-bit stores, the only size some devices
//! (QEMU's edu) accept below offset 0x80.
//!
//! ```text
//! 10c0: 140000d0  b 1400                         ; the device routine, as below
//! 1400: d2aa0018  mov x24, #0x50000000           ; x24: the device page
//! 1404: 39541284  ldrb w4, [x20, #1284]          ; ack enabled?
//! 1408: 34000084  cbz w4, 1418
//! 140c: b9451285  ldr w5, [x20, #1296]           ; ack offset
//! 1410: b9451686  ldr w6, [x20, #1300]           ; ack value
//! 1414: b8256b06  str w6, [x24, x5]              ; ack the device (BAR page: no exit)
//! 1418: b9450284  ldr w4, [x20, #1280]
//! 141c: 11000484  add w4, w4, #0x1
//! 1420: b9050284  str w4, [x20, #1280]           ; count
//! 1424: d5033fbf  dmb sy                         ; the count before the target's load
//! 1428: b9450e85  ldr w5, [x20, #1292]           ; the target
//! 142c: 6b05009f  cmp w4, w5
//! 1430: 54000082  b.hs 1440                      ; reached: raise nothing
//! 1434: b9451a85  ldr w5, [x20, #1304]           ; raise offset
//! 1438: b9451e86  ldr w6, [x20, #1308]           ; raise value
//! 143c: b8256b06  str w6, [x24, x5]              ; raise the next one (BAR page)
//! 1440: d65f03c0  ret                            ; to the ISR, which EOIs
//! ```

use super::guest::{branch, put, IMAGE, IMAGE_SIZE};
#[cfg(doc)]
use super::guest::{
    ACK_OFFSET_ADDR, ACK_VALUE_ADDR, CODE, DEVICE_PAGE_ADDR, RAISE_OFFSET_ADDR, RAISE_VALUE_ADDR,
    TARGET_ADDR,
};

/// Offset of the emulated-device guest's device routine (0x10c0).
const DEVICE_ROUTINE_OFFSET: usize = 0xc0;
/// Offset of the exerciser's device routine (0x1400).
const EXERCISER_ROUTINE_OFFSET: usize = 0x400;

/// The exerciser's device routine, 0x1400..0x1444 as listed above.
const EXERCISER_ROUTINE: [u32; 17] = [
    0xd2aa0018, 0x39541284, 0x34000084, 0xb9451285, 0xb9451686, 0xb8256b06, // 1400
    0xb9450284, 0x11000484, 0xb9050284, 0xd5033fbf, 0xb9450e85, 0x6b05009f, // 1418
    0x54000082, 0xb9451a85, 0xb9451e86, 0xb8256b06, 0xd65f03c0, // 1430
];

/// The guest's image with the device routine replaced by the exerciser's.
const fn exerciser_image() -> [u8; IMAGE_SIZE] {
    let mut image = IMAGE;
    put(
        &mut image,
        DEVICE_ROUTINE_OFFSET,
        branch(DEVICE_ROUTINE_OFFSET, EXERCISER_ROUTINE_OFFSET),
    );
    let mut i = 0;
    while i < EXERCISER_ROUTINE.len() {
        put(
            &mut image,
            EXERCISER_ROUTINE_OFFSET + i * 4,
            EXERCISER_ROUTINE[i],
        );
        i += 1;
    }
    image
}

const EXERCISER_IMAGE: [u8; IMAGE_SIZE] = exerciser_image();

/// The exerciser guest's image, as listed above.
pub const EXERCISER_CODE: &[u8] = &EXERCISER_IMAGE;

#[cfg(test)]
mod tests {
    use super::super::guest::tests::{ldst_w_offset, word_of};
    use super::super::guest::*;
    use super::*;

    fn word(at: usize) -> u32 {
        word_of(CODE, at)
    }

    #[test]
    fn the_exerciser_guest_is_the_guest_with_its_own_device_routine() {
        let ex = |at: usize| word_of(EXERCISER_CODE, at);
        assert_eq!(EXERCISER_CODE.len(), CODE.len());
        for at in (0..CODE.len()).step_by(4) {
            let routine = (0x400..0x444).contains(&at);
            if at != DEVICE_ROUTINE_OFFSET && !routine {
                assert_eq!(ex(at), word(at), "at {at:#x}");
            }
        }
        assert_eq!(
            ex(DEVICE_ROUTINE_OFFSET),
            0x1400_00d0,
            "b 1400, as gas encodes it"
        );
        assert_eq!(ex(0x440), 0xd65f_03c0, "the routine returns to the ISR");
        // movz x24: the device page; then the ack, target and raise operands.
        assert_eq!(u64::from((ex(0x400) >> 5) & 0xffff) << 16, DEVICE_PAGE_ADDR);
        assert_eq!(
            RAM_BASE + u64::from((ex(0x404) >> 10) & 0xfff),
            ACK_ENABLE_ADDR
        );
        for (at, addr) in [
            (0x40c, ACK_OFFSET_ADDR),
            (0x410, ACK_VALUE_ADDR),
            (0x418, COUNT_ADDR),
            (0x420, COUNT_ADDR),
            (0x428, TARGET_ADDR),
            (0x434, RAISE_OFFSET_ADDR),
            (0x438, RAISE_VALUE_ADDR),
        ] {
            assert_eq!(RAM_BASE + ldst_w_offset(ex(at)), addr, "at {at:#x}");
        }
        const { assert!(DEVICE_PAGE_ADDR >= RAM_BASE + RAM_SIZE && DEVICE_PAGE_ADDR % 0x1_0000 == 0) };
    }
}
