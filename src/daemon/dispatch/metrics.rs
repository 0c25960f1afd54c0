//! The `metrics` reply and the node_exporter textfile: the same exposition
//! (`crate::metrics`), built from what `status` shows plus each relay
//! route's latency histogram.

use crate::control::proto::{ErrorCode, Reply};
use crate::daemon::Daemon;
use crate::metrics::{render, write_atomic, DeviceSample, LatencySample, Snapshot, CONTENT_TYPE};
use crate::util::error::chain;

impl Daemon {
    pub(super) fn metrics_reply(&self) -> Reply {
        match self.exposition() {
            Some(text) => Reply::Metrics {
                content_type: CONTENT_TYPE.to_string(),
                text,
            },
            None => Reply::error(
                ErrorCode::ResourceExhausted,
                "the daemon could not build its status for the metrics; retry",
            ),
        }
    }

    /// The exposition: the daemon and every device `status` lists.
    fn exposition(&self) -> Option<String> {
        let Reply::Status { daemon, .. } = self.status_reply() else {
            return None;
        };
        let devices = self
            .devices
            .iter()
            .filter(|d| d.listed())
            .map(|d| DeviceSample {
                status: d.status(),
                latency: d.route().and_then(|r| r.relay()).map(|p| LatencySample {
                    buckets: p.latency().buckets(),
                    sum_secs: p.latency().sum_secs(),
                }),
            })
            .collect();
        Some(render(&Snapshot { daemon, devices }))
    }

    /// Rewrites the `[metrics] textfile` (the loop's metrics timer). A
    /// failure is logged when it starts and when it ends, not every time.
    pub(in crate::daemon) fn write_textfile(&mut self) {
        let Some(path) = self.config.metrics.as_ref().map(|m| m.textfile.clone()) else {
            return;
        };
        let Some(text) = self.exposition() else {
            return;
        };
        let result = write_atomic(&path, &text);
        let failing = result.is_err();
        if self.lp.timers.textfile_failing(failing) {
            match result {
                Err(e) => log::warn!("{}; retrying every interval", chain(&e)),
                Ok(()) => log::info!("metrics textfile {}: written again", path.display()),
            }
        }
    }
}
