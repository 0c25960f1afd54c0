//! Route set-up runs as ordered steps; a failure at any step undoes every
//! step before it; teardown is ordered and idempotent.

#![allow(clippy::unwrap_used)]

use std::io;
use std::os::fd::AsRawFd;

use intxd::relay::{RelayConfig, RelayPath};
use intxd::route::{attach, Mode, RelayRegistrar, RouteError, Step};
use intxd::sim::{AckPolicy, LineState, SimDevice, SimHost};
use intxd::util::fd::new_eventfd;
use intxd::vfio::{IntxError, IntxOp};
use mio::unix::SourceFd;
use mio::{Interest, Poll, Token};

/// A real mio registry, with a switch that makes registration fail.
struct TestLoop {
    poll: Poll,
    fail_register: bool,
    registered: usize,
}

impl TestLoop {
    fn new() -> TestLoop {
        TestLoop {
            poll: Poll::new().unwrap(),
            fail_register: false,
            registered: 0,
        }
    }
}

impl RelayRegistrar for TestLoop {
    fn register(&mut self, path: &RelayPath) -> io::Result<()> {
        if self.fail_register {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let r = self.poll.registry();
        r.register(
            &mut SourceFd(&path.trigger.as_raw_fd()),
            Token(1),
            Interest::READABLE,
        )?;
        r.register(
            &mut SourceFd(&path.resample.as_raw_fd()),
            Token(2),
            Interest::READABLE,
        )?;
        self.registered += 1;
        Ok(())
    }
    fn deregister(&mut self, path: &RelayPath) {
        let r = self.poll.registry();
        r.deregister(&mut SourceFd(&path.trigger.as_raw_fd()))
            .unwrap();
        r.deregister(&mut SourceFd(&path.resample.as_raw_fd()))
            .unwrap();
        self.registered -= 1;
    }
}

/// A relay route wired on `dev`, with fresh VMM eventfds.
fn wired_relay(dev: &mut SimDevice, lp: &mut TestLoop) -> intxd::route::Route {
    let (irq, resample) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    attach(dev, Mode::Relay, irq, resample, &RelayConfig::default(), lp).unwrap()
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
    assert_eq!(lp.registered, 0, "nothing left in the event loop");
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
            let (irq, resample) = (new_eventfd().unwrap(), new_eventfd().unwrap());

            let err = attach(
                &mut dev,
                mode,
                irq,
                resample,
                &RelayConfig::default(),
                &mut lp,
            )
            .unwrap_err();

            assert_rolled_back(err, step, op, &dev, &lp);
        }
    }
}

#[test]
fn a_relay_whose_event_loop_registration_fails_touches_no_intx_state() {
    let (_h, mut dev, mut lp) = setup();
    lp.fail_register = true;
    let (irq, resample) = (new_eventfd().unwrap(), new_eventfd().unwrap());

    let err = attach(
        &mut dev,
        Mode::Relay,
        irq,
        resample,
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
    let (irq, resample) = (new_eventfd().unwrap(), new_eventfd().unwrap());

    let route = attach(
        &mut dev,
        Mode::Relay,
        irq,
        resample,
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
    assert!(route.is_attached());
    let s = dev.line_state();
    assert!(s.enabled && !s.masked && s.has_unmask_fd);
}

#[test]
fn teardown_is_ordered_and_idempotent() {
    let (_h, mut dev, mut lp) = setup();
    let mut route = wired_relay(&mut dev, &mut lp);

    let first = route.teardown(&mut dev, &mut lp);
    let second = route.teardown(&mut dev, &mut lp);

    assert!(first.is_empty() && second.is_empty());
    assert_eq!(dev.line_state(), QUIET);
    assert_eq!(lp.registered, 0);
    assert!(route.steps_done().is_empty());
}

#[test]
fn teardown_keeps_going_when_an_undo_fails_and_reports_it() {
    let (_h, mut dev, mut lp) = setup();
    let mut route = wired_relay(&mut dev, &mut lp);
    dev.inject_fault(IntxOp::SetUnmask, libc::EIO);

    let errors = route.teardown(&mut dev, &mut lp);

    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].step(), Step::SetUnmask);
    assert!(
        !dev.line_state().enabled,
        "INTx still disabled by the next undo"
    );
    assert_eq!(lp.registered, 0, "and the loop still cleaned");
}

#[test]
fn a_direct_route_wires_the_vmm_fds_straight_to_the_device() {
    let (_h, mut dev, mut lp) = setup();
    let (irq, resample) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    let (irq2, resample2) = (irq.try_clone().unwrap(), resample.try_clone().unwrap());
    let _route = attach(
        &mut dev,
        Mode::Direct,
        irq,
        resample,
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
    assert_eq!(lp.registered, 0, "no userspace on the hot path");
}
