//! A sim host process (`intxd sim-host`) for a test daemon's emulated
//! devices, and its surprise removal request.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{intxd_bin, wait_until};

/// A sim host process for the daemon's devices.
pub struct SimHostProc {
    child: std::process::Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl SimHostProc {
    pub fn start() -> SimHostProc {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sim.sock");
        let child = Command::new(intxd_bin())
            .arg("sim-host")
            .arg("--socket")
            .arg(&socket)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(wait_until(Duration::from_secs(5), || socket.exists()));
        SimHostProc {
            child,
            socket,
            _dir: dir,
        }
    }

    pub fn surprise_remove(&self, index: u32) {
        use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
        let s = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        connect(
            s.as_raw_fd(),
            &UnixAddr::new(self.socket.as_path()).unwrap(),
        )
        .unwrap();
        let req = format!(r#"{{"op":"surprise_remove","index":{index}}}"#);
        intxd::control::wire::send(s.as_fd(), req.as_bytes(), &[]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for SimHostProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
