//! PCI addresses: `DDDD:BB:DD.F` (or `BB:DD.F`) for a real function,
//! `sim:N` for an emulated one.

use std::fmt;
use std::str::FromStr;

/// Where a configured device lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PciAddr {
    /// A real PCI function.
    Bdf {
        /// PCI domain (segment).
        domain: u16,
        /// Bus, 0..=255.
        bus: u8,
        /// Device, 0..=31.
        device: u8,
        /// Function, 0..=7.
        function: u8,
    },
    /// An emulated function, `sim:N`.
    Sim(u32),
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PciAddr::Bdf {
                domain,
                bus,
                device,
                function,
            } => write!(f, "{domain:04x}:{bus:02x}:{device:02x}.{function:x}"),
            PciAddr::Sim(n) => write!(f, "sim:{n}"),
        }
    }
}

impl FromStr for PciAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The text as messages quote it: escaped and cut.
        let q = super::error::shown(s);
        if let Some(n) = s.strip_prefix("sim:") {
            return n.parse::<u32>().map(PciAddr::Sim).map_err(|_| {
                format!("`{q}`: the emulated device number must be a decimal number")
            });
        }
        let bad =
            || format!("`{q}` is not a PCI address (DDDD:BB:DD.F, e.g. 0000:03:00.0) or `sim:N`");
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, v] => (*d, *b, *v),
            [b, v] => ("0000", *b, *v),
            _ => return Err(bad()),
        };
        let hex = |t: &str, max: u32, what: &str| -> Result<u32, String> {
            let v = u32::from_str_radix(t, 16).map_err(|_| bad())?;
            if t.is_empty() || v > max {
                Err(format!(
                    "`{q}`: {what} {} is out of range (0..={max:x})",
                    super::error::shown(t)
                ))
            } else {
                Ok(v)
            }
        };
        Ok(PciAddr::Bdf {
            domain: hex(domain, 0xffff, "domain")? as u16,
            bus: hex(bus, 0xff, "bus")? as u8,
            device: hex(device, 0x1f, "device")? as u8,
            function: hex(function, 7, "function")? as u8,
        })
    }
}
