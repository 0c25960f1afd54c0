//! `intxd bench --json` runs end to end and reports every figure. (Timing
//! is never asserted: benchmarks print figures; tests check behaviour.)

#![allow(clippy::unwrap_used)]

mod common;

#[test]
fn bench_json_is_complete_and_every_run_exact() {
    common::require_kvm();
    let v = bench(&["--scale", "1,4", "--scale-secs", "0.3"], &[]);
    let names: Vec<&str> = v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["baseline", "direct", "relay-kernel", "relay-user"]);
    for x in v["variants"].as_array().unwrap() {
        for k in [
            "rate_per_s",
            "p50_us",
            "p99_us",
            "max_us",
            "loop_wakeups_per_irq",
            "vol_ctxt_switches_per_irq",
            "cpu_us_per_irq",
            "syscalls_per_irq",
        ] {
            assert!(x[k].is_number(), "{k} in {x}");
        }
        assert_eq!(x["clean"], true, "{x}");
        assert!(x["rate_per_s"].as_f64().unwrap() > 0.0);
    }
    // The baseline has no daemon, so its wakeup figure is not measured (it
    // is 0 by construction and proves nothing). What is measured and can
    // fail: the direct route's daemon slept through its interrupts.
    assert_eq!(v["variants"][0]["name"], "baseline");
    let direct = v["variants"][1]["loop_wakeups_per_irq"].as_f64().unwrap();
    assert!(
        direct <= 0.01,
        "the direct route woke the daemon's loop {direct} times per interrupt"
    );
    assert!(
        v["variants"][2]["loop_wakeups_per_irq"].as_f64().unwrap() > 0.0,
        "the relay wakes its loop"
    );
    // Four syscalls per relayed interrupt by default (the wakeup, the
    // unmask, the trigger read, the irq write); three with the opt-in ring
    // below.
    relay_syscalls(&v, "interrupts carried by read + write", 4.0);
    for k in [
        "direct_over_baseline",
        "relay_kernel_over_direct",
        "relay_user_over_direct",
    ] {
        assert!(v["ratios"][k].as_f64().unwrap() > 0.0, "{k}");
    }
    let scale = v["scale"].as_array().unwrap();
    assert_eq!(scale.len(), 2);
    assert_eq!(scale[1]["devices"], 4);
    assert_eq!(scale[1]["fds_back_to_baseline"], true, "{}", scale[1]);
    assert!(scale[1]["irqs_per_s"].as_f64().unwrap() > 0.0);
    assert!(scale[1]["rss_mib"].as_f64().unwrap() > 0.0);
    assert!(scale[1]["attach_ms_p99"].as_f64().unwrap() > 0.0);
    // The cost breakdown: every part measured, and the ceiling it implies
    // follows from them and from direct's measured rate.
    let b = &v["breakdown"];
    for k in [
        "wakeup_same_cpu_us",
        "wakeup_other_cpu_us",
        "epoll_wait_ready_us",
        "eventfd_write_us",
        "emulated_unmask_us",
        "relay_parts_us",
    ] {
        let x = b[k].as_f64().unwrap_or(-1.0);
        assert!(x > 0.0, "{k} = {x} in {b}");
    }
    let period = 1e6 / v["variants"][1]["rate_per_s"].as_f64().unwrap();
    assert!(
        (b["direct_period_us"].as_f64().unwrap() - period).abs() < 1e-6 * period,
        "{b}"
    );
    let added = b["wakeup_same_cpu_us"].as_f64().unwrap()
        + b["eventfd_read_us"].as_f64().unwrap()
        + b["eventfd_write_us"].as_f64().unwrap();
    let ceiling = b["ceiling_same_cpu"].as_f64().unwrap();
    assert!((ceiling - period / (period + added)).abs() < 1e-9, "{b}");
    assert_eq!(
        b["relay_loop_cpu_us"], v["variants"][2]["cpu_us_per_irq"],
        "{b}"
    );
    let caveats = v["caveats"].to_string();
    assert!(
        caveats.contains("by construction") && caveats.contains("real vfio-pci"),
        "the baseline's and the emulator's limits are said: {caveats}"
    );
}

/// Each relay variant's syscalls per interrupt is `n` (counted, so exact up
/// to the odd timer turn), and the bench says how it carried them.
fn relay_syscalls(v: &serde_json::Value, carry: &str, n: f64) {
    let said = v["relay_carry"].as_str().unwrap();
    assert!(said.starts_with(carry), "{said}");
    for x in &v["variants"].as_array().unwrap()[2..] {
        let got = x["syscalls_per_irq"].as_f64().unwrap();
        assert!(
            (n - 0.01..=n + 0.01).contains(&got),
            "{}: {got} syscalls per interrupt, not {n} ({said})",
            x["name"]
        );
    }
}

/// Issue 13: `INTXD_IO_URING=on` carries each relayed interrupt's trigger
/// read and irq write in one `io_uring_enter`: three syscalls, exact counts.
/// CI's hosts allow io_uring; elsewhere a refusal is said and read + write
/// is measured instead.
#[test]
fn the_opt_in_ring_relays_with_three_syscalls_per_interrupt() {
    common::require_kvm();
    let v = bench(&["--scale", ""], &[("INTXD_IO_URING", "on")]);
    for x in v["variants"].as_array().unwrap() {
        assert_eq!(x["clean"], true, "{x}");
    }
    let said = v["relay_carry"].as_str().unwrap();
    if said.starts_with("interrupts carried by io_uring") {
        relay_syscalls(&v, "interrupts carried by io_uring", 3.0);
    } else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "io_uring was refused on a CI host: {said}"
        );
        relay_syscalls(&v, "interrupts carried by read + write", 4.0);
    }
}

/// `intxd bench --json --cycles 3000 --rounds 1` with `args` and `env`, which
/// must succeed; its JSON.
fn bench(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = std::process::Command::new(common::intxd_bin())
        .args(["bench", "--json", "--cycles", "3000", "--rounds", "1"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
