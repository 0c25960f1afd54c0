//! PCI functions through sysfs (being written).
