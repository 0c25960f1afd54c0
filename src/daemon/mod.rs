//! The daemon: one `mio` event loop that serves the control socket, carries
//! relay routes, runs the storm and watchdog timers and pings systemd.
//!
//! Everything happens on this one thread, so no state is shared and no lock
//! is taken on the hot path. The emulated devices' host thread stands in for
//! the kernel and the hardware, not for the daemon; the binder's worker
//! thread does a reload's sysfs writes, so no relay route waits on them.
//!
//! | file / folder | what |
//! |---|---|
//! | `startup.rs` | bring the devices up, start listening, shut down |
//! | `event_loop/` | the poll, typed tokens, timers, signals, relay registration |
//! | `relay_hot.rs` | the relay's hot path in the loop and its timers |
//! | `events.rs` | the one rate limit on owner events |
//! | `conns/` | the connection table, accept, replies and events out |
//! | `dispatch/` | requests: hello, attach, detach, trigger, status |
//! | `device/` | a device slot, its lifecycle state machine, opening, mode choice |
//! | `health.rs` | the once-a-second scan and the request interrupt |
//! | `ownership.rs` | a peer's fds never block; a device passes to a new owner clean |
//! | `binder/` | binding to vfio-pci and back, and the worker thread for reloads |
//! | `reload.rs` | SIGHUP and the `reload` request |
//! | `admin.rs` | the operator's `reload` reply and planned `restart` |
//! | `restart/` | the state record and the fd store across a restart |
//! | `listener.rs`, `caps.rs`, `seccomp.rs` | the socket, the host probe, the filter |

mod admin;
mod binder;
mod caps;
mod conns;
mod device;
mod dispatch;
mod event_loop;
mod events;
mod health;
mod health_overdue;
mod health_stuck;
mod intx_watch;
mod listener;
mod ownership;
mod relay_hot;
mod reload;
mod restart;
pub mod seccomp;
mod startup;

pub use crate::control::proto::DeviceState;
pub use crate::util::error::chain as error_chain;
pub use binder::{Binder, BinderError};
pub use device::choose_mode;
pub use event_loop::Tok;
pub use listener::ListenError;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use mio::Waker;

use crate::config::Config;
use crate::control::proto::Capabilities;
use crate::sim::{SimError, SimHost};
use crate::systemd::{FdStore, Inherited, NoFdStore, NoNotifier, Notifier};
use binder::BindWorker;
use conns::{Acceptor, ConnTable};
use device::DeviceSlot;
use event_loop::{EventLoop, Signals};
use restart::StateFile;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The control socket could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The emulated-device host could not start.
    #[error(transparent)]
    Sim(#[from] SimError),
    /// SIGTERM or SIGINT came while the devices were being brought up;
    /// everything bound so far was given back.
    #[error("stopped during start-up")]
    Interrupted,
    /// The event loop failed.
    #[error("event loop: could not {what}")]
    Loop {
        /// The step.
        what: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Whether this build has the test hooks (cargo feature `test-hooks`: the
/// tests' build, never `cargo build --release`).
pub const TEST_HOOKS_BUILT: bool = cfg!(feature = "test-hooks");

fn loop_err(what: &'static str) -> impl FnOnce(io::Error) -> DaemonError {
    move |source| DaemonError::Loop { what, source }
}

/// How to start the daemon.
pub struct DaemonOptions {
    /// The fds systemd passed: the control socket (`control`, socket
    /// activation) and what a previous daemon parked in the fd store. Without
    /// a `control` fd the daemon binds the configured path itself.
    pub inherited: Inherited,
    /// Handle SIGTERM/SIGINT/SIGHUP through a signalfd. The caller must have
    /// blocked them (before starting any thread).
    pub handle_signals: bool,
    /// The service manager.
    pub notifier: Box<dyn Notifier>,
    /// systemd's fd store.
    pub fdstore: Box<dyn FdStore>,
    /// The config file, re-read on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// Test-only hooks (SIGUSR2 stalls the loop, to test the watchdog); only
    /// a build with [`TEST_HOOKS_BUILT`] has them, others ignore this.
    pub test_hooks: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            inherited: Inherited::default(),
            handle_signals: false,
            notifier: Box::new(NoNotifier),
            fdstore: Box::new(NoFdStore),
            config_path: None,
            test_hooks: false,
        }
    }
}

/// Stops a daemon running on another thread.
#[derive(Clone)]
pub struct StopHandle {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    /// Asks the loop to stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Loop figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopStats {
    /// Returns from `epoll_wait`.
    pub wakeups: u64,
}

/// What the daemon tells systemd and keeps in its fd store.
struct Systemd {
    notifier: Box<dyn Notifier>,
    fdstore: Box<dyn FdStore>,
    state_file: Option<StateFile>,
    last_status: String,
}

/// The daemon.
pub struct Daemon {
    lp: EventLoop,
    signals: Option<Signals>,
    accept: Acceptor,
    conns: ConnTable,
    devices: Vec<DeviceSlot>,
    config: Config,
    caps: Capabilities,
    sd: Systemd,
    config_path: Option<PathBuf>,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    test_hooks: bool,
    /// The operator's reload waiters and planned restart.
    admin: admin::Admin,
    started: Instant,
    binder: BindWorker,
    /// A reload whose sysfs work is still on the worker.
    reload: Option<reload::ReloadCounts>,
    // Dropped last: the devices' backends deregister from it.
    sim: SimHost,
}
