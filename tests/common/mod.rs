//! Helpers shared by the integration tests: a real daemon process on a
//! temporary socket, and the KVM check that fails loudly.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use intxd::control::client::Client;
use intxd::control::proto::{DeviceStatus, Reply};

/// Fails the test when `/dev/kvm` is missing: these tests need a real KVM,
/// and a missing one must never pass as a skip.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "/dev/kvm is missing: this test runs real KVM guests and cannot be skipped (CI={})",
        std::env::var("CI").unwrap_or_default()
    );
}

/// The `intxd` binary built for these tests.
pub fn intxd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_intxd"))
}

/// A daemon process with its own config and socket.
pub struct DaemonProc {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
}

impl DaemonProc {
    /// Starts `intxd run` with `devices` (TOML `[[device]]` tables) and
    /// waits until its socket answers.
    pub fn start(devices: &str) -> DaemonProc {
        Self::start_with(devices, "", &[])
    }

    /// Like [`start`], with extra `[daemon]` keys and environment.
    pub fn start_with(devices: &str, daemon_extra: &str, env: &[(&str, &str)]) -> DaemonProc {
        Self::start_wrapped(devices, daemon_extra, env, &[])
    }

    /// Like [`start_with`], run under a wrapper command (`prlimit ...`).
    pub fn start_wrapped(
        devices: &str,
        daemon_extra: &str,
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> DaemonProc {
        let dir = tempfile::Builder::new()
            .prefix("intxd-test-")
            .tempdir()
            .expect("tempdir");
        // Other uids (the authorization tests) must reach the socket.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let socket = dir.path().join("control.sock");
        let config = dir.path().join("intxd.toml");
        let text = format!(
            "[daemon]\nsocket = \"{}\"\nsocket_mode = \"0666\"\n{daemon_extra}\n{devices}",
            socket.display()
        );
        std::fs::write(&config, text).expect("write config");
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(intxd_bin());
                c
            }
            None => Command::new(intxd_bin()),
        };
        cmd.arg("run").arg("--config").arg(&config);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn intxd run");
        let mut d = DaemonProc {
            child,
            dir,
            socket,
            config,
        };
        d.wait_ready();
        d
    }

    /// Waits for the first `hello` answered. The bound is generous: under
    /// emulation (the arm64 lane's TCG guest) a daemon start takes seconds.
    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child_exit() {
                panic!(
                    "the daemon exited ({status}) before it came up on {}",
                    self.socket.display()
                );
            }
            if let Ok(mut c) = Client::connect(&self.socket) {
                if c.hello("test").is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the daemon did not come up on {}", self.socket.display());
    }

    /// The exit status if the daemon has exited.
    pub fn child_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A connected client that has said hello.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.socket).expect("connect");
        c.hello("test").expect("hello");
        c
    }

    /// The daemon's open fds.
    pub fn fd_count(&self) -> usize {
        intxd::util::proc::fd_count(Some(self.pid())).expect("count fds")
    }

    /// The daemon's open fds once connections that just closed are gone
    /// (the same count over 100 ms).
    pub fn settled_fd_count(&self) -> usize {
        let mut last = self.fd_count();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.fd_count();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// One device's status.
    pub fn device(&self, name: &str) -> DeviceStatus {
        let mut c = self.client();
        match c.status().expect("status") {
            Reply::Status { devices, .. } => devices
                .into_iter()
                .find(|d| d.name == name)
                .expect("device in status"),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Stops the daemon with SIGTERM and returns its stderr.
    pub fn stop(mut self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let out = std::mem::replace(&mut self.child, Command::new("true").spawn().expect("true"));
        let o = out.wait_with_output().expect("wait");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The failure guard of a wait on state: generous, because the suite must
/// pass with two busy loops beside it on 2 cores; a test that holds never
/// waits this long.
pub const GUARD: Duration = Duration::from_secs(30);

/// A soak run's stall bound in the tests: a failure guard too (on a loaded
/// host KVM's irqfd injection was seen 6.4 s late, and longer).
pub const STALL_GUARD: Duration = Duration::from_secs(60);

/// Waits until `f` holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// One emulated device (empty allow lists: root only; the tests run as root).
pub fn sim_device(name: &str, n: u32) -> String {
    format!("[[device]]\nname = \"{name}\"\npci = \"sim:{n}\"\n")
}
