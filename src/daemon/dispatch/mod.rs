//! Requests: read each packet a connection sent, check it (`control::validate`),
//! act on it and queue the reply. `attach.rs` holds attach, detach and
//! trigger; `status.rs` the status reply and line; `metrics.rs` the
//! Prometheus exposition and its textfile.

mod attach;
mod lifecycle;
mod metrics;
mod status;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::event_loop::Ready;
use super::Daemon;
use crate::control::proto::{ErrorCode, Reply, Request};
use crate::control::validate::{validate, PacketMeta};
use crate::control::wire::{self, Packet};
use crate::util::fd::FdKind;
use crate::PROTOCOL_VERSION;

impl Daemon {
    pub(super) fn on_conn(&mut self, i: usize, ready: Ready) {
        if ready.write() {
            self.flush_conn(i);
        }
        if !ready.read() {
            return;
        }
        // Edge-triggered: read until the socket is empty.
        loop {
            let Some(conn) = self.conns.get(i) else {
                return;
            };
            match wire::recv(conn.sock.as_fd()) {
                Ok(Some(p)) => {
                    // `None`: the reply comes later (a reload's, at its end).
                    if let Some((reply, fds)) = self.handle_packet(i, p) {
                        self.reply(i, &reply, fds);
                    }
                }
                Ok(None) => {
                    self.close_conn(i);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("connection {}: receive failed: {e}; closing it", conn.id);
                    self.close_conn(i);
                    return;
                }
            }
        }
    }

    fn handle_packet(&mut self, i: usize, p: Packet) -> Option<(Reply, Vec<OwnedFd>)> {
        // Every refusal drops `p.fds`, which closes every fd the packet
        // carried; only a route that is wired adopts them.
        let kinds: Vec<FdKind> = p
            .fds
            .iter()
            .map(|f| FdKind::of(f.as_raw_fd()).unwrap_or(FdKind::Other("unreadable".into())))
            .collect();
        let meta = PacketMeta {
            data: &p.data,
            truncated: p.truncated,
            ctrl_truncated: p.ctrl_truncated,
            fd_kinds: &kinds,
            hello_done: self.conns.get(i).is_some_and(|c| c.hello),
        };
        let req = match validate(&meta) {
            Ok(r) => r,
            Err(error) => return Some((Reply::Error { error }, Vec::new())),
        };
        Some(match req {
            Request::Hello { version, client } => (self.hello(i, version, client), Vec::new()),
            Request::Attach {
                device,
                irqchip,
                mode,
                ..
            } => self.attach(i, &device, irqchip, mode, p.fds),
            Request::Detach { device } => (self.detach_request(i, &device), Vec::new()),
            Request::Status {} => (self.status_reply(), Vec::new()),
            Request::Trigger { device } => (self.trigger(i, &device), Vec::new()),
            req @ (Request::SuspendIntx { .. }
            | Request::ResumeIntx { .. }
            | Request::Reset { .. }) => (self.lifecycle(i, req), Vec::new()),
            Request::Metrics {} => (self.metrics_reply(), Vec::new()),
            Request::Reload {} => (self.reload_request(i)?, Vec::new()),
            Request::Restart {} => (self.restart_request(i), Vec::new()),
        })
    }

    fn hello(&mut self, i: usize, version: u32, client: Option<String>) -> Reply {
        if version < 1 {
            return Reply::error(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {version} is not supported; this daemon speaks 1 to {PROTOCOL_VERSION}"),
            );
        }
        self.park_conn(i);
        if let Some(c) = self.conns.get_mut(i) {
            c.hello = true;
            c.version = version.min(PROTOCOL_VERSION);
            log::debug!(
                "connection {}: hello from {}",
                c.id,
                client.as_deref().unwrap_or("a client")
            );
        }
        Reply::Hello {
            version: version.min(PROTOCOL_VERSION),
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: self.caps,
        }
    }

    /// The live device named `name`.
    fn find(&self, name: &str) -> Result<usize, Reply> {
        self.devices
            .iter()
            .position(|d| d.cfg.name == name && !d.is_removed())
            .ok_or_else(|| {
                let known: Vec<&str> = self
                    .devices
                    .iter()
                    .filter(|d| !d.is_removed())
                    .map(|d| d.cfg.name.as_str())
                    .collect();
                Reply::error(
                    ErrorCode::UnknownDevice,
                    format!("no device named `{name}`; configured: {}", known.join(", ")),
                )
            })
    }
}
