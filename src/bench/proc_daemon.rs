//! A daemon in a child process, with `/proc` figures of its event-loop
//! thread (the main thread; the emulated-device thread plays hardware and
//! kernel, and is not counted).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::BenchError;
use crate::control::client::Client;

/// A running daemon process.
pub struct DaemonProcess {
    child: Child,
    /// Its socket.
    pub socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Figures of the daemon's event-loop thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopThread {
    /// CPU time (user + system).
    pub cpu: Duration,
    /// Voluntary context switches.
    pub voluntary_ctxt_switches: u64,
}

impl DaemonProcess {
    /// Starts `exe run` with `devices` as its `[[device]]` tables.
    pub fn start(exe: &Path, devices: &str) -> Result<DaemonProcess, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("intxd-bench-")
            .tempdir()
            .map_err(|e| BenchError::Daemon(e.to_string()))?;
        let socket = dir.path().join("control.sock");
        let config = dir.path().join("intxd.toml");
        let text = format!(
            "[daemon]\nsocket = \"{}\"\nsocket_mode = \"0600\"\nmax_connections = 1024\n{devices}",
            socket.display()
        );
        std::fs::write(&config, text).map_err(|e| BenchError::Daemon(e.to_string()))?;
        let child = Command::new(exe)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| BenchError::Daemon(format!("cannot start {}: {e}", exe.display())))?;
        let d = DaemonProcess {
            child,
            socket,
            _dir: dir,
        };
        let t0 = Instant::now();
        loop {
            if let Ok(mut c) = Client::connect(&d.socket) {
                if c.hello("intxd-bench").is_ok() {
                    return Ok(d);
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(BenchError::Daemon(
                    "the daemon did not come up within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Figures of the event-loop thread now.
    pub fn loop_thread(&self) -> LoopThread {
        let pid = self.pid();
        let base = format!("/proc/{pid}/task/{pid}");
        // schedstat's first field is the time on a CPU in ns; stat's ticks
        // are 10 ms, far too coarse per interrupt.
        let cpu = std::fs::read_to_string(format!("{base}/schedstat"))
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map(Duration::from_nanos)
            .unwrap_or_default();
        let vol = std::fs::read_to_string(format!("{base}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        LoopThread {
            cpu,
            voluntary_ctxt_switches: vol,
        }
    }

    /// The daemon's RSS in bytes and its open fds.
    pub fn rss_and_fds(&self) -> (u64, usize) {
        let rss = crate::util::proc::figures(Some(self.pid()))
            .map(|f| f.rss_bytes)
            .unwrap_or(0);
        let fds = crate::util::proc::fd_count(Some(self.pid())).unwrap_or(0);
        (rss, fds)
    }

    /// The fd count once it holds still for 100 ms.
    pub fn settled_fds(&self) -> usize {
        let mut last = self.rss_and_fds().1;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.rss_and_fds().1;
            if now == last {
                break;
            }
            last = now;
        }
        last
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}
