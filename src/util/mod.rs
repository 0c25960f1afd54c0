//! Small helpers shared by several modules: fd ownership ([`fd`]), SEQPACKET
//! sockets ([`sock`]), error chains and process figures.

pub mod error;
pub mod fd;
pub mod latency;
pub mod proc;
pub mod sock;
