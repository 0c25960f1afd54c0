//! Route set-up runs as ordered steps; a failure at any step undoes every
//! step before it; teardown is ordered and idempotent.

#![allow(clippy::unwrap_used)]

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use intxd::relay::RelayConfig;
use intxd::route::{attach, Mode, Registration, RelayRegistrar, RouteError, Step, VmmLine};
use intxd::sim::{AckPolicy, LineState, SimDevice, SimHost};
use intxd::util::fd::new_eventfd;
use intxd::vfio::{IntxError, IntxOp};
use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};
use vmm_sys_util::eventfd::EventFd;

/// A real mio registry, with a switch that makes registration fail.
struct TestLoop {
    poll: Poll,
    registry: Arc<mio::Registry>,
    fail_register: bool,
    /// Once registered, leave the process no free fd (the limit to restore).
    exhaust_after_register: bool,
    exhausted: Option<libc::rlimit>,
    live: Arc<AtomicUsize>,
}

impl TestLoop {
    fn new() -> TestLoop {
        let poll = Poll::new().unwrap();
        let registry = Arc::new(poll.registry().try_clone().unwrap());
        TestLoop {
            poll,
            registry,
            fail_register: false,
            exhaust_after_register: false,
            exhausted: None,
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Relay registrations not yet removed.
    fn registered(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
}

impl RelayRegistrar for TestLoop {
    fn register(&mut self, trigger: &EventFd, resample: &EventFd) -> io::Result<Registration> {
        if self.fail_register {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let (t, r) = (trigger.as_raw_fd(), resample.as_raw_fd());
        let reg = &self.registry;
        reg.register(&mut SourceFd(&t), Token(1), Interest::READABLE)?;
        reg.register(&mut SourceFd(&r), Token(2), Interest::READABLE)?;
        self.live.fetch_add(1, Ordering::SeqCst);
        if self.exhaust_after_register {
            self.exhausted = Some(exhaust_fds());
        }
        let (reg, live) = (Arc::clone(&self.registry), Arc::clone(&self.live));
        Ok(Registration::new(move || {
            reg.deregister(&mut SourceFd(&t)).unwrap();
            reg.deregister(&mut SourceFd(&r)).unwrap();
            live.fetch_sub(1, Ordering::SeqCst);
        }))
    }
}

fn vmm_line() -> VmmLine {
    VmmLine {
        irq: new_eventfd().unwrap(),
        resample: new_eventfd().unwrap(),
    }
}

/// A relay route wired on `dev`, with fresh VMM eventfds.
fn wired_relay(dev: &mut SimDevice, lp: &mut TestLoop) -> intxd::route::Route {
    attach(dev, Mode::Relay, vmm_line(), &RelayConfig::default(), lp).unwrap()
}

fn setup() -> (SimHost, SimDevice, TestLoop) {
    let host = SimHost::start().unwrap();
    let dev = host.add_device("nic0", 0, AckPolicy::Raise).unwrap();
    (host, dev, TestLoop::new())
}

const QUIET: LineState = LineState {
    enabled: false,
    masked: false,
    level: false,
    has_unmask_fd: false,
};

fn assert_rolled_back(err: RouteError, step: Step, op: IntxOp, dev: &SimDevice, lp: &TestLoop) {
    match &err {
        RouteError::Intx {
            device,
            step: s,
            source: IntxError::Action { op: o, source, .. },
        } => {
            assert_eq!(device, "nic0");
            assert_eq!(*s, step);
            assert_eq!(*o, op);
            assert_eq!(source.raw_os_error(), Some(libc::EIO));
        }
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("nic0") && msg.contains(step.describe()) && msg.contains("rolled back"),
        "{msg}"
    );
    assert_eq!(dev.line_state(), QUIET, "INTx disabled, no eventfd left");
    assert_eq!(lp.registered(), 0, "nothing left in the event loop");
}

#[test]
fn a_failure_at_each_step_rolls_back_everything_before_it_in_both_modes() {
    for mode in [Mode::Direct, Mode::Relay] {
        for (step, op) in [
            (Step::EnableTrigger, IntxOp::SetTrigger),
            (Step::Mask, IntxOp::Mask),
            (Step::SetUnmask, IntxOp::SetUnmask),
            (Step::Unmask, IntxOp::Unmask),
        ] {
            let (_h, mut dev, mut lp) = setup();
            dev.inject_fault(op, libc::EIO);
            let err =
                attach(&mut dev, mode, vmm_line(), &RelayConfig::default(), &mut lp).unwrap_err();

            assert_rolled_back(err, step, op, &dev, &lp);
        }
    }
}

#[test]
fn a_relay_whose_event_loop_registration_fails_touches_no_intx_state() {
    let (_h, mut dev, mut lp) = setup();
    lp.fail_register = true;

    let err = attach(
        &mut dev,
        Mode::Relay,
        vmm_line(),
        &RelayConfig::default(),
        &mut lp,
    )
    .unwrap_err();

    match err {
        RouteError::Io { step, source, .. } => {
            assert_eq!(step, Step::RegisterRelay);
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(dev.line_state(), QUIET);
}

#[test]
fn a_wired_route_has_run_every_step_in_order() {
    let (_h, mut dev, mut lp) = setup();

    let mut route = attach(
        &mut dev,
        Mode::Relay,
        vmm_line(),
        &RelayConfig::default(),
        &mut lp,
    )
    .unwrap();

    assert_eq!(
        route.steps_done(),
        &[
            Step::CreateEventfds,
            Step::RegisterRelay,
            Step::EnableTrigger,
            Step::Mask,
            Step::SetUnmask,
            Step::Unmask
        ]
    );
    assert!(route.is_attached() && route.is_registered());
    let s = dev.line_state();
    assert!(s.enabled && !s.masked && s.has_unmask_fd);
    assert!(route.teardown(&mut dev).is_empty());
}

#[test]
fn teardown_is_ordered_and_idempotent() {
    let (_h, mut dev, mut lp) = setup();
    let mut route = wired_relay(&mut dev, &mut lp);

    let first = route.teardown(&mut dev);
    let second = route.teardown(&mut dev);

    assert!(first.is_empty() && second.is_empty());
    assert_eq!(dev.line_state(), QUIET);
    assert_eq!(lp.registered(), 0);
    assert!(!route.is_registered());
    assert!(route.steps_done().is_empty());
}

#[test]
fn teardown_keeps_going_when_an_undo_fails_and_reports_it() {
    let (_h, mut dev, mut lp) = setup();
    let mut route = wired_relay(&mut dev, &mut lp);
    dev.inject_fault(IntxOp::SetUnmask, libc::EIO);

    let errors = route.teardown(&mut dev);

    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].step(), Step::SetUnmask);
    assert!(
        !dev.line_state().enabled,
        "INTx still disabled by the next undo"
    );
    assert_eq!(lp.registered(), 0, "and the loop still cleaned");
}

#[test]
fn a_direct_route_wires_the_vmm_fds_straight_to_the_device() {
    let (_h, mut dev, mut lp) = setup();
    let vmm = vmm_line();
    let (irq2, resample2) = (
        vmm.irq.try_clone().unwrap(),
        vmm.resample.try_clone().unwrap(),
    );
    let mut route = attach(
        &mut dev,
        Mode::Direct,
        vmm,
        &RelayConfig::default(),
        &mut lp,
    )
    .unwrap();

    dev.set_level(true);
    assert_eq!(
        irq2.read().unwrap(),
        1,
        "the device fired the VMM's irq eventfd itself"
    );
    resample2.write(1).unwrap();

    let refired = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(2));
        irq2.read().is_ok()
    });
    assert!(
        refired,
        "the VMM's resample unmasked the device, which re-fired its high line"
    );
    assert_eq!(lp.registered(), 0, "no userspace on the hot path");
    assert!(route.teardown(&mut dev).is_empty());
}

/// Runs `body` in a child process of this test binary (it changes a
/// process-wide limit that would starve the other tests' threads).
fn in_child(test: &str, body: impl FnOnce()) {
    const CHILD: &str = "INTXD_ROUTE_TEST_CHILD";
    if std::env::var_os(CHILD).is_some() {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
}

/// Sets the soft fd limit to the lowest free fd number, so the next fd the
/// process asks for fails with EMFILE; returns the old limit.
fn exhaust_fds() -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct given.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let probe = libc::dup(0);
        assert!(probe >= 0);
        libc::close(probe);
        let low = libc::rlimit {
            rlim_cur: probe as libc::rlim_t,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0);
    }
    old
}

fn restore_fds(old: libc::rlimit) {
    // SAFETY: as in `exhaust_fds`.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &old), 0);
    }
}

#[test]
fn a_relay_that_fails_after_loop_registration_leaves_nothing_registered() {
    in_child(
        "a_relay_that_fails_after_loop_registration_leaves_nothing_registered",
        || {
            let (_h, mut dev, mut lp) = setup();
            let vmm = vmm_line();
            let vmm_resample = vmm.resample.try_clone().unwrap();
            lp.exhaust_after_register = true;

            let result = attach(&mut dev, Mode::Relay, vmm, &RelayConfig::default(), &mut lp);
            restore_fds(lp.exhausted.take().expect("registration ran"));

            let err = result.expect_err("no fd left for the steps after registration");
            assert_eq!(errno_in_chain(&err), Some(libc::EMFILE), "{err:?}");
            assert_eq!(lp.registered(), 0, "the failed route left the event loop");
            assert_eq!(dev.line_state(), QUIET);
            // The VMM's EOI on its (still open) resample eventfd must not
            // reach the loop under the dead route's token.
            vmm_resample.write(1).unwrap();
            let mut events = mio::Events::with_capacity(8);
            lp.poll
                .poll(&mut events, Some(std::time::Duration::ZERO))
                .unwrap();
            let stale: Vec<_> = events.iter().map(|e| e.token()).collect();
            assert!(stale.is_empty(), "events for a dead route: {stale:?}");
        },
    );
}

/// The first errno in an error's chain of causes.
fn errno_in_chain(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(code) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        cur = e.source();
    }
    None
}
