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
    /// The driver bound before; `None` when there was none. `vfio-pci`
    /// means the function was already bound and nothing was changed.
    pub original_driver: Option<String>,
    /// `driver_override` before, if it was set.
    #[serde(default)]
    pub original_override: Option<String>,
}

impl BindRecord {
    /// Whether the bind changed anything (release has something to undo).
    pub fn changed(&self) -> bool {
        self.original_driver.as_deref() != Some(VFIO_PCI)
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
