//! What a bind changed, in a form the daemon can persist (JSON in its state
//! directory) so that a later run can still give the function back.

use serde::{Deserialize, Serialize};

use crate::config::PciAddr;

use super::VFIO_PCI;

/// What [`bind`](super::bind) changed on one function, for
/// [`release`](super::release).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindRecord {
    /// The device's name in the config.
    pub device: String,
    /// Its address (`DDDD:BB:DD.F`).
    #[serde(with = "addr_text")]
    pub addr: PciAddr,
    /// The driver bound before the bind (on disk: its name, or `null`).
    #[serde(default)]
    pub original_driver: OriginalDriver,
    /// `driver_override` before, if it was set.
    #[serde(default)]
    pub original_override: Option<String>,
}

impl BindRecord {
    /// Whether the bind changed anything (release has something to undo).
    pub fn changed(&self) -> bool {
        self.original_driver != OriginalDriver::AlreadyVfio
    }
}

/// The driver a function had before [`bind`](super::bind). Stored as the
/// driver's name (or `null`), as records written by earlier versions are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Option<String>", into = "Option<String>")]
pub enum OriginalDriver {
    /// No driver was bound: release leaves the function driverless.
    #[default]
    None,
    /// This host driver was bound: release gives the function back to it.
    Driver(String),
    /// vfio-pci was already bound: the bind changed nothing.
    AlreadyVfio,
}

impl OriginalDriver {
    /// The driver's name as sysfs shows it (`vfio-pci` for [`Self::AlreadyVfio`]).
    pub fn driver(&self) -> Option<&str> {
        match self {
            OriginalDriver::None => None,
            OriginalDriver::Driver(d) => Some(d),
            OriginalDriver::AlreadyVfio => Some(VFIO_PCI),
        }
    }
}

impl From<Option<String>> for OriginalDriver {
    fn from(d: Option<String>) -> Self {
        match d {
            None => OriginalDriver::None,
            Some(d) if d == VFIO_PCI => OriginalDriver::AlreadyVfio,
            Some(d) => OriginalDriver::Driver(d),
        }
    }
}

impl From<OriginalDriver> for Option<String> {
    fn from(d: OriginalDriver) -> Self {
        d.driver().map(str::to_string)
    }
}

/// A [`PciAddr`] as its text, as in the config.
mod addr_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::config::PciAddr;

    pub fn serialize<S: Serializer>(a: &PciAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PciAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
