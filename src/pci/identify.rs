//! What sysfs says about one PCI function (ids, class, driver, IOMMU group,
//! INTx pin), and the list of every function.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::PciAddr;

use super::error::PciError;
use super::io::SysfsIo;

/// Where sysfs lists PCI functions, relative to its root.
pub const DEVICES_DIR: &str = "bus/pci/devices";

/// One function as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Its address.
    pub addr: PciAddr,
    /// Vendor id (`vendor`).
    pub vendor_id: u16,
    /// Device id (`device`).
    pub device_id: u16,
    /// Class code, 24 bits: class, subclass, programming interface (`class`).
    pub class: u32,
    /// The bound driver: the last component of the `driver` link.
    pub driver: Option<String>,
    /// `driver_override`, unless it reads `(null)` or is empty.
    pub driver_override: Option<String>,
    /// The IOMMU group: the last component of the `iommu_group` link.
    pub iommu_group: Option<u32>,
    /// The INTx pin (config space byte 0x3d); `None` when the function has
    /// none or config space is unreadable.
    pub intx_pin: Option<IntxPin>,
    /// The legacy IRQ (`irq`); `None` when absent or 0 (none assigned).
    pub irq: Option<u32>,
    /// `boot_vga` exists and reads `1`: the firmware's display.
    pub boot_vga: bool,
}

impl FunctionInfo {
    /// Whether the class code says bridge (base class 0x06: host, ISA,
    /// PCI-to-PCI and other bridges).
    pub fn is_bridge(&self) -> bool {
        is_bridge_class(self.class)
    }
}

/// Whether a 24-bit class code is a bridge's (base class 0x06).
pub fn is_bridge_class(class: u32) -> bool {
    class >> 16 == 0x06
}

/// An INTx pin, from the Interrupt Pin register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntxPin {
    /// INTA# (register value 1).
    A,
    /// INTB# (2).
    B,
    /// INTC# (3).
    C,
    /// INTD# (4).
    D,
}

impl IntxPin {
    /// The pin for an Interrupt Pin register value; `None` for 0 (no pin)
    /// and for values the specification does not define.
    pub fn from_register(v: u8) -> Option<IntxPin> {
        match v {
            1 => Some(IntxPin::A),
            2 => Some(IntxPin::B),
            3 => Some(IntxPin::C),
            4 => Some(IntxPin::D),
            _ => None,
        }
    }
}

impl fmt::Display for IntxPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self {
            IntxPin::A => 'A',
            IntxPin::B => 'B',
            IntxPin::C => 'C',
            IntxPin::D => 'D',
        };
        write!(f, "INT{c}")
    }
}

/// A configured function: its name, its address and its sysfs name,
/// with the helpers that build its errors.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub name: String,
    pub addr: PciAddr,
    pub bdf: String,
}

impl Target {
    /// Refuses `sim:N` addresses.
    pub fn new(name: &str, addr: PciAddr) -> Result<Target, PciError> {
        match addr {
            PciAddr::Bdf { .. } => Ok(Target {
                name: name.to_string(),
                addr,
                bdf: addr.to_string(),
            }),
            PciAddr::Sim(_) => Err(PciError::NotPci {
                device: name.to_string(),
                addr,
            }),
        }
    }

    /// `bus/pci/devices/<bdf>/<file>`.
    pub fn path(&self, file: &str) -> PathBuf {
        Path::new(DEVICES_DIR).join(&self.bdf).join(file)
    }

    /// `bus/pci/devices/<bdf>`.
    pub fn dir(&self) -> PathBuf {
        Path::new(DEVICES_DIR).join(&self.bdf)
    }

    pub fn read_err(&self, what: &str, source: io::Error) -> PciError {
        PciError::Read {
            device: self.name.clone(),
            addr: self.addr,
            what: what.to_string(),
            source,
        }
    }

    fn parse_err(&self, what: &str, value: &str, expected: &'static str) -> PciError {
        PciError::Parse {
            device: self.name.clone(),
            addr: self.addr,
            what: what.to_string(),
            value: value.to_string(),
            expected,
        }
    }

    fn hex(&self, sys: &dyn SysfsIo, what: &str) -> Result<u32, PciError> {
        let s = sys
            .read_string(&self.path(what))
            .map_err(|e| self.read_err(what, e))?;
        parse_hex(&s).ok_or_else(|| self.parse_err(what, &s, "a hex number"))
    }
}

/// `0x8086` or `8086` as a number.
pub(crate) fn parse_hex(s: &str) -> Option<u32> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u32::from_str_radix(t, 16).ok()
}

/// The driver bound to `bdf`'s function, from its `driver` link.
pub(crate) fn current_driver(sys: &dyn SysfsIo, bdf: &str) -> io::Result<Option<String>> {
    sys.link_name(&Path::new(DEVICES_DIR).join(bdf).join("driver"))
}

/// `driver_override`, `None` for `(null)` or empty.
pub(crate) fn read_override(sys: &dyn SysfsIo, t: &Target) -> Result<Option<String>, PciError> {
    match sys.read_string(&t.path("driver_override")) {
        Ok(s) if s.is_empty() || s == "(null)" => Ok(None),
        Ok(s) => Ok(Some(s)),
        // Kernels before 3.16 have no driver_override.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(t.read_err("driver_override", e)),
    }
}

/// Reads everything [`FunctionInfo`] holds about the function at `addr`;
/// `name` is the device's name for errors. Reads only.
pub fn identify(sys: &dyn SysfsIo, name: &str, addr: PciAddr) -> Result<FunctionInfo, PciError> {
    let t = Target::new(name, addr)?;
    let vendor_id = match t.hex(sys, "vendor") {
        Err(PciError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return Err(PciError::NoSuchFunction {
                device: t.name,
                addr,
                source,
            })
        }
        r => r?,
    };
    let device_id = t.hex(sys, "device")?;
    let class = t.hex(sys, "class")?;
    let driver = current_driver(sys, &t.bdf).map_err(|e| t.read_err("driver", e))?;
    let driver_override = read_override(sys, &t)?;
    let iommu_group = match sys
        .link_name(&t.path("iommu_group"))
        .map_err(|e| t.read_err("iommu_group", e))?
    {
        None => None,
        Some(g) => Some(
            g.parse::<u32>()
                .map_err(|_| t.parse_err("iommu_group", &g, "a group number"))?,
        ),
    };
    // Unprivileged readers see the first 64 bytes of config space, which
    // hold the pin; an unreadable config space only loses the pin.
    let intx_pin = match sys.read(&t.path("config")) {
        Ok(cfg) => cfg.get(0x3d).copied().and_then(IntxPin::from_register),
        Err(e) => {
            log::debug!("{name} {addr}: cannot read config space: {e}");
            None
        }
    };
    let irq = match sys.read_string(&t.path("irq")) {
        Ok(s) => match s.parse::<u32>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => return Err(t.parse_err("irq", &s, "a decimal number")),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(t.read_err("irq", e)),
    };
    let boot_vga = match sys.read_string(&t.path("boot_vga")) {
        Ok(s) => s == "1",
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(t.read_err("boot_vga", e)),
    };
    Ok(FunctionInfo {
        addr,
        vendor_id: vendor_id as u16,
        device_id: device_id as u16,
        class,
        driver,
        driver_override,
        iommu_group,
        intx_pin,
        irq,
        boot_vga,
    })
}

/// Every function listed in `bus/pci/devices`, sorted. Names that are not
/// PCI addresses are skipped (and logged).
pub fn enumerate(sys: &dyn SysfsIo) -> Result<Vec<PciAddr>, PciError> {
    let entries = sys
        .list(Path::new(DEVICES_DIR))
        .map_err(|source| PciError::Enumerate {
            path: DEVICES_DIR.to_string(),
            source,
        })?;
    let mut out = Vec::new();
    for e in entries {
        match e.name.parse::<PciAddr>() {
            Ok(a @ PciAddr::Bdf { .. }) => out.push(a),
            _ => log::debug!("{DEVICES_DIR}/{}: not a PCI address, skipped", e.name),
        }
    }
    out.sort();
    Ok(out)
}
