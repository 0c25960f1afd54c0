//! A sim host process (`intxd sim-host`) for a test daemon's emulated
//! devices, and its surprise removal request.

use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::common::{intxd_bin, wait_until, GUARD};

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
        // Bound is not yet listening: wait until a connect succeeds.
        assert!(wait_until(GUARD, || intxd::util::sock::connect(&socket).is_ok()));
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
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(
            s.as_raw_fd(),
            &UnixAddr::new(self.socket.as_path()).unwrap(),
        )
        .unwrap();
        // Like every sim-host request, it needs an open of that device on
        // this connection; each reply is waited for.
        for req in [
            format!(
                r#"{{"op":"open","index":{index},"name":"fault","policy":{{"after_ack":"raise"}}}}"#
            ),
            format!(r#"{{"op":"surprise_remove","index":{index}}}"#),
        ] {
            intxd::control::wire::send(s.as_fd(), req.as_bytes(), &[]).unwrap();
            let mut reply = None;
            assert!(wait_until(GUARD, || {
                match intxd::control::wire::recv(s.as_fd()) {
                    Ok(Some(p)) => reply = Some(p.data),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    other => panic!("{other:?}"),
                }
                reply.is_some()
            }));
            assert_eq!(reply.unwrap(), br#"{"reply":"ok"}"#, "{req}");
        }
    }
}

impl Drop for SimHostProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
