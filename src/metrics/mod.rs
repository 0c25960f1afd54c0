//! Prometheus metrics: the daemon's and every device's counters and the
//! relay's EOI latency histograms in the text exposition format 0.0.4
//! ([`mod@render`]), served by the `metrics` request and written for
//! node_exporter's textfile collector ([`textfile`]). The metric list is
//! in `docs/operations.md`.

pub mod render;
pub mod textfile;

pub use render::{render, DeviceSample, LatencySample, Snapshot, CONTENT_TYPE};
pub use textfile::{write_atomic, TextfileError};
