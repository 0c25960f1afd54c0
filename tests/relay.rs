//! The relay against a real daemon process: the storm limiter tells a fast
//! serviced device from a stuck line, a healthy soak sends no safety
//! unmask, and each route counts its own loop wakeups.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{require_kvm, wait_until, DaemonProc};
use intxd::control::client::attach_user_irqchip;
use intxd::control::proto::ModeRequest;
use intxd::route::{Irqchip, Mode};
use intxd::soak::{run_one, DaemonWiring, RunSpec, Session};
use intxd::util::fd::owned_into_eventfd;

const LIMIT: u64 = 100;

#[test]
fn a_fast_serviced_device_is_not_limited_and_a_stuck_line_is_served_at_the_limit() {
    let d = DaemonProc::start(&format!(
        "[[device]]\nname = \"fast\"\npci = \"sim:0\"\nmode = \"relay\"\n[device.relay]\nstorm_rate = {LIMIT}\n\
         [[device]]\nname = \"stuck\"\npci = \"sim:1\"\nmode = \"relay\"\n[device.relay]\nstorm_rate = {LIMIT}\n[device.sim]\nafter_ack = \"ignore\"\n"
    ));

    // A guest that acks the device and EOIs: 3000 cycles. Held to LIMIT/s
    // they would take 30 s.
    let mut fast = attach_user_irqchip(&d.socket, "fast", ModeRequest::Relay).unwrap();
    let ack = owned_into_eventfd(fast.device_fds.remove(0));
    let doorbell = owned_into_eventfd(fast.device_fds.remove(0));
    doorbell.write(3000).unwrap();
    let t0 = Instant::now();
    let mut served = 0u64;
    while served < 3000 && t0.elapsed() < Duration::from_secs(60) {
        if fast.irq.read().is_ok() {
            ack.write(1).unwrap();
            fast.resample.write(1).unwrap();
            served += 1;
        }
    }
    let fast_rate = served as f64 / t0.elapsed().as_secs_f64();
    let st = d.device("fast").counters.relay.unwrap();
    assert_eq!(served, 3000, "every cycle delivered");
    assert_eq!(
        st.storms, 0,
        "a serviced line is not a storm ({fast_rate:.0}/s)"
    );
    assert!(
        fast_rate > LIMIT as f64 * 1.5,
        "not held to the limit: {fast_rate:.0}/s"
    );

    // A guest that EOIs a stuck line without acking it.
    let mut stuck = attach_user_irqchip(&d.socket, "stuck", ModeRequest::Relay).unwrap();
    let doorbell = owned_into_eventfd(stuck.device_fds.remove(1));
    doorbell.write(1).unwrap();
    let eoi_all = |until: &mut dyn FnMut(u64) -> bool| {
        let mut n = 0u64;
        let t = Instant::now();
        while !until(n) && t.elapsed() < Duration::from_secs(30) {
            if stuck.irq.read().is_ok() {
                stuck.resample.write(1).unwrap();
                n += 1;
            } else {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        (n, t.elapsed())
    };
    // Into the storm: the limiter engages within the first window.
    eoi_all(&mut |_| d.device("stuck").counters.relay.unwrap().storms >= 1);
    let storms0 = d.device("stuck").counters.relay.unwrap().storms;
    let (n, wall) = eoi_all(&mut |n| n >= 3 * LIMIT / 2);
    let rate = n as f64 / wall.as_secs_f64();
    let storms = d.device("stuck").counters.relay.unwrap().storms - storms0;
    assert!(
        rate > LIMIT as f64 * 0.6 && rate < LIMIT as f64 * 1.3,
        "a stuck line is served near its limit of {LIMIT}/s: {rate:.0}/s"
    );
    assert!(storms >= 10, "held once per window: {storms} in {wall:?}");
}

fn spec(mode: Mode, irqchip: Irqchip, duration: Duration) -> RunSpec {
    RunSpec {
        mode,
        irqchip,
        cycles: None,
        duration: Some(duration),
        stall: Duration::from_secs(3),
    }
}

#[test]
fn a_healthy_direct_soak_beside_a_relay_soak_has_no_safety_unmask_and_no_wakeups() {
    require_kvm();
    let d = DaemonProc::start(
        "[[device]]\nname = \"d\"\npci = \"sim:0\"\n[[device]]\nname = \"r\"\npci = \"sim:1\"\n",
    );
    let socket = d.socket.clone();
    // The relay soak runs the whole time the direct ones do.
    let relay = std::thread::spawn(move || {
        let mut w = DaemonWiring::connect(&socket, "r").unwrap();
        let s = spec(Mode::Relay, Irqchip::Kernel, Duration::from_millis(7500));
        run_one(&mut w, &s, &mut |_, _| {}).unwrap()
    });
    assert!(wait_until(Duration::from_secs(10), || d.device("r").state
        == "attached"));
    // Three health scans or more in each irqchip, for a direct route
    // whose interrupts never stop until the soak ends.
    for irqchip in [Irqchip::User, Irqchip::Kernel] {
        let mut w = DaemonWiring::connect(&d.socket, "d").unwrap();
        let r = run_one(
            &mut w,
            &spec(Mode::Direct, irqchip, Duration::from_millis(3200)),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(r.is_clean() && r.delivered > 0, "{irqchip}: {r:?}");
        assert_eq!(
            r.loop_wakeups, 0,
            "{irqchip}: the direct route's own wakeups"
        );
    }
    let rr = relay.join().unwrap();
    assert!(rr.is_clean());
    assert!(
        (0.5..=1.05).contains(&rr.loop_wakeups_per_irq),
        "the relay route's wakeups: {}",
        rr.loop_wakeups_per_irq
    );
    assert_eq!(d.device("d").counters.safety_unmasks, 0, "a healthy soak");

    // A healthy device that goes quiet while attached (its interrupts
    // stopped after they moved): nothing was lost, so no unmask. Two health
    // scans must pass; nothing shows that they did but the time.
    let mut w = DaemonWiring::connect(&d.socket, "d").unwrap();
    let s = Session::start(&mut w, Irqchip::User, Mode::Direct).unwrap();
    s.ring(1000).unwrap();
    assert_eq!(s.wait_count(1000, Duration::from_secs(10)), 1000);
    std::thread::sleep(Duration::from_millis(2500));
    let quiet = d.device("d").counters.safety_unmasks;
    s.finish().unwrap();
    assert_eq!(quiet, 0, "a device that went quiet");
}
