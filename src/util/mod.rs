//! Small helpers shared by several modules: fd ownership and process figures.

pub mod error;
pub mod fd;
pub mod proc;
