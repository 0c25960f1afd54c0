//! The built-in soak on real KVM, through a real daemon process and its
//! socket: exact counts in every mode and irqchip, a stuck line, and a
//! teardown with interrupts in flight.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{require_kvm, sim_device, DaemonProc};
use intxd::route::{Irqchip, Mode};
use intxd::soak::{run_one, DaemonWiring, RunSpec, Session};
use intxd::util::proc::cpu_time;

fn spec(mode: Mode, irqchip: Irqchip, cycles: u64) -> RunSpec {
    RunSpec {
        mode,
        irqchip,
        cycles: Some(cycles),
        duration: None,
        stall: common::STALL_GUARD,
    }
}

#[test]
fn every_mode_and_irqchip_cycles_every_interrupt_exactly_once() {
    require_kvm();
    let d = DaemonProc::start(&sim_device("sim0", 0));
    for mode in [Mode::Direct, Mode::Relay] {
        for irqchip in [Irqchip::Kernel, Irqchip::User] {
            let mut w = DaemonWiring::connect(&d.socket, "sim0").unwrap();

            let rearms = || {
                let c = d.device("sim0").counters;
                (c.safety_unmasks, c.relay.map_or(0, |r| r.watchdog_fires))
            };
            let (safety0, watchdog0) = rearms();
            let r = run_one(&mut w, &spec(mode, irqchip, 20_000), &mut |_, _| {}).unwrap();
            // On a loaded host KVM delivers late (docs/testing.md, "Stalls
            // under load"); each safety unmask or watchdog re-arm meanwhile
            // may re-fire the still-high line once more: it is counted, and
            // bounds the extra triggers (and, direct/kernel, the extra
            // unmasks counted as EOIs).
            let (safety1, watchdog1) = rearms();
            let extra = (safety1 - safety0) + (watchdog1 - watchdog0);
            let extra_eois = if (mode, irqchip) == (Mode::Direct, Irqchip::Kernel) {
                safety1 - safety0
            } else {
                0
            };

            let what = format!("{mode}/{irqchip}");
            assert_eq!(r.mode, mode, "{what}");
            assert_eq!(r.delivered, 20_000, "{what}: guest count");
            assert_eq!((r.lost, r.spurious), (0, 0), "{what}");
            assert!(
                (20_000..=20_000 + extra).contains(&r.triggered),
                "{what}: one trigger per cycle, at most one more per re-arm ({extra}): {}",
                r.triggered
            );
            assert!(
                (20_000..=20_000 + extra_eois).contains(&r.eois),
                "{what}: one EOI per cycle ({extra_eois} safety unmasks): {}",
                r.eois
            );
            if mode == Mode::Direct {
                assert!(
                    r.loop_wakeups_per_irq <= 0.001,
                    "{what}: {} wakeups/irq",
                    r.loop_wakeups_per_irq
                );
            } else {
                assert!(r.loop_wakeups >= 1, "{what}: the relay loop carried them");
            }
        }
    }
}

#[test]
fn a_stuck_line_in_relay_mode_is_limited_and_recovers_when_fixed() {
    require_kvm();
    let d = DaemonProc::start(
        "[[device]]\nname = \"stuck\"\npci = \"sim:0\"\n[device.relay]\nstorm_rate = 2000\nstorm_backoff_ms = 20\n",
    );
    let stat = format!("/proc/{}/stat", d.pid());
    let mut w = DaemonWiring::connect(&d.socket, "stuck").unwrap();
    let mut s = Session::start(&mut w, Irqchip::Kernel, Mode::Relay).unwrap();

    // The guest EOIs without acking: the device's line never drops.
    s.ram().set_ack_enabled(false);
    s.ring(1).unwrap();
    // Measure from the moment the limiter holds the line, not after a guess.
    assert!(
        common::wait_until(common::GUARD, || s.snapshot().unwrap().storms > 0),
        "the limiter engaged"
    );
    let (cpu0, n0, t0) = (cpu_time(&stat).unwrap(), s.ram().count(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (cpu1, n1, wall) = (cpu_time(&stat).unwrap(), s.ram().count(), t0.elapsed());

    let storm_rate = f64::from(n1 - n0) / wall.as_secs_f64();
    let cpu_share = (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64();
    let snap = s.snapshot().unwrap();
    assert!(snap.storms > 0, "the limiter engaged");
    assert!(
        storm_rate <= 2000.0 * 1.25,
        "the line was held to the limit: {storm_rate:.0}/s"
    );
    assert!(
        cpu_share < 0.25,
        "the daemon's CPU stayed bounded: {:.1}% of a core",
        cpu_share * 100.0
    );

    // Fix the line: the next ISR acks, and normal cycles flow again.
    s.ram().set_ack_enabled(true);
    let acked0 = snap.sim.acked;
    assert!(common::wait_until(common::GUARD, || s
        .snapshot()
        .unwrap()
        .sim
        .acked
        == acked0 + 1));
    let before = s.ram().count();
    s.ring(1000).unwrap();
    let reached = s.wait_count(u64::from(before) + 1000, common::STALL_GUARD);
    let after = s.snapshot().unwrap();
    s.finish().unwrap();

    assert_eq!(
        reached,
        u64::from(before) + 1000,
        "every new cycle delivered"
    );
    assert_eq!(after.sim.acked, acked0 + 1001);
    assert_eq!(after.sim.spurious_acks, 0);
}

#[test]
fn teardown_with_interrupts_in_flight_stops_them_and_frees_everything() {
    require_kvm();
    let d = DaemonProc::start(&sim_device("sim0", 0));
    for mode in [Mode::Direct, Mode::Relay] {
        let mut w = DaemonWiring::connect(&d.socket, "sim0").unwrap();
        let fds_before = d.settled_fd_count();
        let mut s = Session::start(&mut w, Irqchip::Kernel, mode).unwrap();
        s.ring(u64::from(u32::MAX)).unwrap();
        assert!(
            common::wait_until(common::GUARD, || s.ram().count() > 1000),
            "{mode}: cycling"
        );

        s.detach_in_flight().unwrap();
        let frozen = s.ram().count();
        std::thread::sleep(Duration::from_millis(100));

        assert!(
            s.ram().count() <= frozen + 1,
            "{mode}: interrupts stopped at detach"
        );
        let st = d.device("sim0");
        assert_eq!(st.state, "detached", "{mode}");
        assert!(st.owner.is_none());
        s.finish().unwrap();
        assert_eq!(
            d.fd_count(),
            fds_before,
            "{mode}: the daemon kept no fd of the route"
        );
    }
}

#[test]
fn the_soak_command_reports_json_with_every_field_and_exits_zero() {
    require_kvm();
    let out = std::process::Command::new(common::intxd_bin())
        .args(["soak", "--json", "--cycles", "5000"])
        .output()
        .unwrap();

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for r in runs {
        for key in [
            "mode",
            "irqchip",
            "device",
            "cycles",
            "delivered",
            "triggered",
            "eois",
            "lost",
            "spurious",
            "rate_per_s",
            "latency_us",
            "loop_wakeups_per_irq",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        assert_eq!(r["delivered"], 5000);
        assert_eq!(r["lost"], 0);
        assert!(r["latency_us"]["p99"].as_f64().unwrap() > 0.0);
    }
}
