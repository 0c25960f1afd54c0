//! A device's exerciser: how `intxd soak` makes a real function raise its
//! INTx line and how the soak guest's ISR acknowledges it, all through one
//! page of one memory BAR: the `[device.exerciser]` table, either a named
//! profile (`profile = "e1000"`) or the registers themselves. A device with
//! no exerciser is soaked by vfio-pci's loopback trigger instead.
//!
//! Adding a profile is one entry in [`PROFILES`] (and its paragraph in
//! `docs/configuration.md`).

use serde::{Deserialize, Serialize};

/// The resolved registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Exerciser {
    /// The profile these registers came from (`None`: given as registers).
    pub profile: Option<&'static str>,
    /// The BAR that holds the registers (a memory BAR).
    pub bar: u32,
    /// Offset of the register whose write raises the interrupt.
    pub raise_offset: u64,
    /// The 32-bit value written to raise it.
    pub raise_value: u32,
    /// Offset of the register whose write acknowledges it.
    pub ack_offset: u64,
    /// The 32-bit value written to acknowledge it.
    pub ack_value: u32,
    /// A register written once before the run, to let the raise through
    /// (an interrupt mask set register), and its value.
    pub enable: Option<(u64, u32)>,
}

/// The named profiles.
///
/// - `edu`: QEMU's teaching device (1234:11e8). BAR 0; 0x60 (interrupt
///   raise) ORs the value into the interrupt status and asserts INTx while
///   it is non-zero; 0x64 (interrupt acknowledge) clears the written bits.
/// - `e1000`: the Intel 8254x family (8086:100e and kin, QEMU's `-device
///   e1000`). BAR 0 (the 128 KiB register space); IMS (0x00D0, Interrupt
///   Mask Set/Read) is written once with TXQE (bit 1, Transmit Queue Empty)
///   to enable that cause; ICS (0x00C8, Interrupt Cause Set) with TXQE
///   raises it, and the NIC asserts INTx while ICR & IMS is non-zero; ICR
///   (0x00C0, Interrupt Cause Read) clears a cause when it is read or when
///   a 1 is written to its bit: the ISR writes TXQE there. TXQE fires by itself only when the NIC transmits, which
///   it does not with no driver (TCTL.EN is 0 after reset).
pub const PROFILES: &[(&str, Exerciser)] = &[
    (
        "edu",
        Exerciser {
            profile: Some("edu"),
            bar: 0,
            raise_offset: 0x60,
            raise_value: 1,
            ack_offset: 0x64,
            ack_value: 1,
            enable: None,
        },
    ),
    (
        "e1000",
        Exerciser {
            profile: Some("e1000"),
            bar: 0,
            raise_offset: 0x00C8,
            raise_value: 1 << 1,
            ack_offset: 0x00C0,
            ack_value: 1 << 1,
            enable: Some((0x00D0, 1 << 1)),
        },
    ),
];

/// The `[device.exerciser]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExerciser {
    profile: Option<String>,
    bar: Option<u32>,
    raise_offset: Option<u64>,
    raise_value: Option<u32>,
    ack_offset: Option<u64>,
    ack_value: Option<u32>,
    enable_offset: Option<u64>,
    enable_value: Option<u32>,
}

/// Why a table does not resolve: the message and the fix.
pub(super) type Refusal = (String, &'static str);

impl RawExerciser {
    /// The registers: the profile's, or the table's own.
    pub(super) fn resolve(&self) -> Result<Exerciser, Refusal> {
        if let Some(name) = &self.profile {
            let given = [
                self.bar.is_some(),
                self.raise_offset.is_some(),
                self.raise_value.is_some(),
                self.ack_offset.is_some(),
                self.ack_value.is_some(),
                self.enable_offset.is_some(),
                self.enable_value.is_some(),
            ];
            if given.contains(&true) {
                return Err((
                    format!(
                        "profile {name:?} comes with its registers, and the table gives some too"
                    ),
                    "give either `profile` alone or the registers without a profile",
                ));
            }
            return PROFILES
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, e)| *e)
                .ok_or_else(|| {
                    (
                        format!("no exerciser profile is named {name:?}"),
                        "use one of the profiles: edu, e1000 (or give the registers)",
                    )
                });
        }
        let need = "give `profile`, or bar, raise_offset, raise_value, ack_offset and ack_value";
        let missing = || (String::from("the exerciser table is incomplete"), need);
        let x = Exerciser {
            profile: None,
            bar: self.bar.ok_or_else(missing)?,
            raise_offset: self.raise_offset.ok_or_else(missing)?,
            raise_value: self.raise_value.ok_or_else(missing)?,
            ack_offset: self.ack_offset.ok_or_else(missing)?,
            ack_value: self.ack_value.ok_or_else(missing)?,
            enable: match (self.enable_offset, self.enable_value) {
                (Some(o), Some(v)) => Some((o, v)),
                (None, None) => None,
                _ => {
                    return Err((
                        "enable_offset and enable_value go together".into(),
                        "give both, or neither",
                    ))
                }
            },
        };
        let offsets = [
            Some(x.raise_offset),
            Some(x.ack_offset),
            x.enable.map(|e| e.0),
        ];
        if x.bar > 5
            || offsets
                .iter()
                .flatten()
                .any(|o| !crate::vfio::is_bar_register(*o))
        {
            return Err((
                format!(
                    "bar {} with offsets {:#x}/{:#x} cannot be used",
                    x.bar, x.raise_offset, x.ack_offset
                ),
                "use a BAR from 0 to 5 and 4-byte aligned offsets within its first 4 KiB page",
            ));
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> RawExerciser {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn profiles_resolve_and_match_the_raw_tables() {
        let e = table("profile = \"e1000\"").resolve().unwrap();
        assert_eq!((e.raise_offset, e.ack_offset, e.ack_value), (0xC8, 0xC0, 2));
        assert_eq!(e.enable, Some((0xD0, 2)));
        let edu = table("profile = \"edu\"").resolve().unwrap();
        let raw = table(
            "bar = 0\nraise_offset = 0x60\nraise_value = 1\nack_offset = 0x64\nack_value = 1",
        )
        .resolve()
        .unwrap();
        assert_eq!(
            Exerciser {
                profile: Some("edu"),
                ..raw
            },
            edu
        );
    }

    #[test]
    fn bad_tables_are_refused_with_a_fix() {
        for (t, says) in [
            ("profile = \"rtl8139\"", "no exerciser profile is named \"rtl8139\""),
            ("profile = \"edu\"\nbar = 1", "comes with its registers"),
            ("bar = 0\nraise_offset = 0x60", "incomplete"),
            ("bar = 0\nraise_offset = 0x60\nraise_value = 1\nack_offset = 0x64\nack_value = 1\nenable_offset = 8", "go together"),
            ("bar = 0\nraise_offset = 0x62\nraise_value = 1\nack_offset = 0x64\nack_value = 1", "cannot be used"),
        ] {
            let (msg, _fix) = table(t).resolve().unwrap_err();
            assert!(msg.contains(says), "{t}: {msg}");
        }
    }
}
