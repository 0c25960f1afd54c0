//! Small helpers shared by several modules: fd ownership ([`fd`]), which
//! files are the same and who else holds them ([`kcmp`]), SEQPACKET
//! sockets ([`sock`]), calls on peers' fds that may not sleep ([`unblock`]),
//! error chains and process figures.

pub mod error;
pub mod fd;
pub mod kcmp;
pub mod latency;
pub mod proc;
pub mod sock;
pub mod unblock;
