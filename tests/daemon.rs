//! The daemon and its control socket, tested with a real daemon process and
//! real clients: lifecycle, authorization, bad input, concurrency, events.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{intxd_bin, require_kvm, sim_device, wait_until, DaemonProc, GUARD};
use intxd::control::client::{attach_kernel_irqchip, attach_user_irqchip, Client, ClientError};
use intxd::control::proto::{ErrorCode, Event, ModeRequest, Reply};
use intxd::route::{Irqchip, Mode};
use intxd::soak::{run_one, DaemonWiring, RunSpec};
use intxd::util::fd::{borrow_eventfd, new_eventfd, owned_into_eventfd};

fn spec(mode: Mode, cycles: u64) -> RunSpec {
    RunSpec {
        mode,
        irqchip: Irqchip::Kernel,
        cycles: Some(cycles),
        duration: None,
        // A failure guard only: on a loaded host KVM's irqfd injection
        // runs late (docs/testing.md, "Stalls under load").
        stall: common::STALL_GUARD,
    }
}

/// Sends raw bytes and fds; returns the error code of the reply (None if ok).
fn raw_code(c: &mut Client, data: &[u8], fds: &[BorrowedFd<'_>]) -> Option<ErrorCode> {
    c.send_raw(data, fds).unwrap();
    match c.recv_reply().unwrap().0 {
        Reply::Error { error } => Some(error.code),
        _ => None,
    }
}

const ATTACH: &[u8] =
    br#"{"op":"attach","device":"sim0","irqchip":"user","mode":"auto","fds":["irq","resample"]}"#;

#[test]
fn a_client_killed_mid_soak_frees_the_device_at_its_hangup_and_leaks_no_fd() {
    require_kvm();
    let d = DaemonProc::start(&sim_device("sim0", 0));
    for mode in ["direct", "relay"] {
        let fds_before = d.settled_fd_count();
        let mut soak = Command::new(intxd_bin())
            .args(["soak", "--connect"])
            .arg(&d.socket)
            .args(["--mode", mode, "--irqchip", "kernel", "--duration", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            wait_until(GUARD, || d.device("sim0").state == "attached"),
            "{mode}: soak attached"
        );
        assert!(
            wait_until(GUARD, || d
                .device("sim0")
                .counters
                .sim
                .is_some_and(|s| s.acked > 100)),
            "{mode}: interrupts flowing"
        );

        soak.kill().unwrap();
        let killed = Instant::now();
        soak.wait().unwrap();
        // The hangup frees it: no timeout is involved, so the bound is only
        // a failure guard (the time is printed).
        let freed = wait_until(GUARD, || d.device("sim0").owner.is_none());
        let took = killed.elapsed();
        eprintln!("{mode}: device freed {took:?} after SIGKILL");

        assert!(freed, "{mode}: device still held {took:?} after SIGKILL");
        let mut w = DaemonWiring::connect(&d.socket, "sim0").unwrap();
        let r = run_one(
            &mut w,
            &spec(
                if mode == "direct" {
                    Mode::Direct
                } else {
                    Mode::Relay
                },
                5_000,
            ),
            &mut |_, _| {},
        )
        .unwrap();
        assert!(r.is_clean(), "{mode}: second client: {r:?}");
        drop(w);
        assert!(
            wait_until(GUARD, || d.fd_count() == fds_before),
            "{mode}: daemon fds {} != {fds_before} before the first attach",
            d.fd_count()
        );
    }
}

#[test]
fn a_uid_not_on_the_allow_lists_is_refused_and_one_on_them_is_let_in() {
    let d = DaemonProc::start(
        "[[device]]\nname = \"closed\"\npci = \"sim:0\"\n[[device]]\nname = \"open\"\npci = \"sim:1\"\nallow_uids = [65534]\n",
    );
    let attach_as_nobody = |device: &str| {
        Command::new(intxd_bin())
            .args(["attach", device, "--socket"])
            .arg(&d.socket)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    use std::os::unix::process::CommandExt;

    let refused = attach_as_nobody("closed");
    let allowed = attach_as_nobody("open");

    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        err.contains("NotAuthorized") && err.contains("uid 65534"),
        "{err}"
    );
    assert!(
        err.contains("allow_uids"),
        "the message says how to fix it: {err}"
    );
    assert_eq!(d.device("closed").state, "opened", "nothing changed");
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    assert!(String::from_utf8_lossy(&allowed.stdout).contains("\"reply\":\"attached\""));
    assert_eq!(d.device("open").counters.attaches, 1);
}

#[test]
fn bad_input_is_refused_with_its_code_leaks_nothing_and_disturbs_no_other_client() {
    require_kvm();
    let d = DaemonProc::start(&format!(
        "{}{}",
        sim_device("sim0", 0),
        sim_device("busy", 1)
    ));
    // Another client's soak runs through all of this.
    let sock = d.socket.clone();
    let soak = std::thread::spawn(move || {
        let mut w = DaemonWiring::connect(&sock, "busy").unwrap();
        run_one(&mut w, &spec(Mode::Relay, 60_000), &mut |_, _| {}).unwrap()
    });
    assert!(wait_until(GUARD, || d.device("busy").state == "attached"));
    let mut c = d.client();
    // The baseline once the daemon has reaped every connection but the soak's and this one
    // (the status checks above each opened and closed one): a closing connection's fd would
    // otherwise be in "before" and not in "after".
    let live = |c: &mut Client| match c.status().unwrap() {
        Reply::Status { daemon, .. } => daemon.connections,
        other => panic!("unexpected reply {other:?}"),
    };
    assert!(
        wait_until(GUARD, || live(&mut c) == 2),
        "connections: {}",
        live(&mut c)
    );
    let fds_before = d.fd_count();
    let (irq, resample) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    let (pipe_r, _pipe_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let file = tempfile::tempfile().unwrap();
    let memfd = nix::sys::memfd::memfd_create("intxd-test", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
        .unwrap();
    let (sock_a, _sock_b) = std::os::unix::net::UnixStream::pair().unwrap();
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let vm_owned: OwnedFd = nix::unistd::dup(unsafe_borrow_raw(vm.as_raw_fd())).unwrap();
    let vm_fd = vm_owned.as_fd();
    let ev = borrow_eventfd(&irq);
    let ev2 = borrow_eventfd(&resample);
    let mut tried = 0;
    let mut check = |c: &mut Client, data: &[u8], fds: &[BorrowedFd<'_>], want: ErrorCode| {
        assert_eq!(
            raw_code(c, data, fds),
            Some(want),
            "{}",
            String::from_utf8_lossy(&data[..data.len().min(80)])
        );
        tried += 1;
    };

    for wrong in [pipe_r.as_fd(), file.as_fd(), memfd.as_fd(), sock_a.as_fd()] {
        check(&mut c, ATTACH, &[wrong, ev2], ErrorCode::BadFdKind);
        check(&mut c, ATTACH, &[ev, wrong], ErrorCode::BadFdKind);
    }
    check(&mut c, ATTACH, &[vm_fd, ev2], ErrorCode::VmFdRefused);
    check(
        &mut c,
        br#"{"op":"attach","device":"sim0","irqchip":"kernel","fds":["vm"]}"#,
        &[vm_fd],
        ErrorCode::VmFdRefused,
    );
    check(&mut c, ATTACH, &[], ErrorCode::BadFdCount);
    check(&mut c, ATTACH, &[ev], ErrorCode::BadFdCount);
    check(&mut c, ATTACH, &[ev, ev2, ev], ErrorCode::BadFdCount);
    check(
        &mut c,
        ATTACH,
        &[ev, ev2, ev, ev2, ev],
        ErrorCode::BadFdCount,
    );
    check(&mut c, br#"{"op":"status"}"#, &[ev], ErrorCode::BadFdCount);
    check(&mut c, &vec![b' '; 20_000], &[ev, ev2], ErrorCode::TooLarge);
    check(&mut c, b"", &[], ErrorCode::EmptyMessage);
    check(&mut c, b"{\"op\":\"stat", &[], ErrorCode::BadJson);
    check(&mut c, b"\xff\xfe", &[], ErrorCode::BadJson);
    check(&mut c, b"[1,2,3]", &[], ErrorCode::BadRequest);
    check(
        &mut c,
        br#"{"op":"status","verbose":true}"#,
        &[],
        ErrorCode::BadRequest,
    );
    check(&mut c, br#"{"op":"reboot"}"#, &[], ErrorCode::BadRequest);
    check(
        &mut c,
        br#"{"op":"attach","device":"sim0","irqchip":"kernel","fds":["irq","resample"],"vm_fd":3}"#,
        &[ev, ev2],
        ErrorCode::BadRequest,
    );
    check(
        &mut c,
        br#"{"op":"attach","device":"nope","irqchip":"user","fds":["irq","resample"]}"#,
        &[ev, ev2],
        ErrorCode::UnknownDevice,
    );
    check(
        &mut c,
        br#"{"op":"detach","device":"sim0"}"#,
        &[],
        ErrorCode::NotAttached,
    );
    check(
        &mut c,
        br#"{"op":"hello","version":0}"#,
        &[],
        ErrorCode::UnsupportedVersion,
    );
    let busy = c
        .attach("busy", Irqchip::User, ModeRequest::Auto, &irq, &resample)
        .unwrap_err();
    tried += 1;
    assert_eq!(busy.code(), Some(ErrorCode::Busy));
    assert!(
        busy.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "busy names the owner: {busy}"
    );
    // Double attach on one connection: the second is busy too.
    c.attach("sim0", Irqchip::User, ModeRequest::Auto, &irq, &resample)
        .unwrap();
    let again = c
        .attach("sim0", Irqchip::User, ModeRequest::Auto, &irq, &resample)
        .unwrap_err();
    tried += 1;
    assert_eq!(again.code(), Some(ErrorCode::Busy));
    c.detach("sim0").unwrap();

    assert!(
        matches!(c.status().unwrap(), Reply::Status { .. }),
        "the connection is still usable"
    );
    assert!(
        wait_until(GUARD, || d.fd_count() == fds_before),
        "every received fd was closed: {} fds, {fds_before} before",
        d.fd_count()
    );
    let r = soak.join().unwrap();
    assert!(
        r.is_clean(),
        "the other client's soak was undisturbed: {r:?}"
    );
    eprintln!("bad inputs tried: {tried}");
    assert!(tried >= 28);
}

#[allow(unsafe_code)]
fn unsafe_borrow_raw<'a>(fd: std::os::fd::RawFd) -> BorrowedFd<'a> {
    // SAFETY: the VmFd outlives this borrow, which ends within the dup call.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

#[test]
fn requests_before_hello_are_refused() {
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let mut c = Client::connect(&d.socket).unwrap();

    let err = c.status().unwrap_err();

    assert_eq!(err.code(), Some(ErrorCode::HelloRequired));
    c.hello("late").unwrap();
    assert!(matches!(c.status().unwrap(), Reply::Status { .. }));
}

#[test]
fn hello_reports_the_version_and_the_hosts_capabilities() {
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let mut c = Client::connect(&d.socket).unwrap();

    let Reply::Hello {
        version,
        daemon_version,
        capabilities,
    } = c.hello("t").unwrap()
    else {
        panic!()
    };

    assert_eq!(version, 2, "min(the client's version, the daemon's)");
    assert_eq!(daemon_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(capabilities.kvm, std::path::Path::new("/dev/kvm").exists());
    assert_eq!(
        capabilities.vfio,
        std::path::Path::new("/dev/vfio/vfio").exists()
    );
    if capabilities.kvm {
        assert!(
            capabilities.irqfd_resample,
            "the CI kernel has KVM_CAP_IRQFD_RESAMPLE"
        );
    }
}

#[test]
fn a_hundred_concurrent_clients_get_status_answered_throughout() {
    require_kvm();
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let sock = d.socket.clone();
    let soak = std::thread::spawn(move || {
        let mut w = DaemonWiring::connect(&sock, "sim0").unwrap();
        run_one(&mut w, &spec(Mode::Relay, 40_000), &mut |_, _| {}).unwrap()
    });
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let sock = d.socket.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&sock).unwrap();
                // 101 clients on a loaded host: the reply bound is a guard.
                c.set_timeout(GUARD);
                c.hello("many").unwrap();
                let mut answered = 0;
                for _ in 0..10 {
                    if let Reply::Status { devices, .. } = c.status().unwrap() {
                        assert_eq!(devices.len(), 1);
                        answered += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                answered
            })
        })
        .collect();

    let answered: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();

    assert_eq!(answered, 1000);
    assert!(soak.join().unwrap().is_clean());
}

#[test]
fn connections_past_the_limit_are_refused_with_a_reason() {
    let d = DaemonProc::start_with(&sim_device("sim0", 0), "max_connections = 2", &[]);
    d.settled_fd_count();
    let _a = d.client();
    let _b = d.client();

    let mut c = Client::connect(&d.socket).unwrap();
    let err = c.hello("third").unwrap_err();

    assert_eq!(err.code(), Some(ErrorCode::TooManyConnections), "{err:?}");
    assert!(err.to_string().contains("max_connections"));
}

#[test]
fn the_kernel_irqchip_client_call_registers_the_irqfd_and_attaches_direct() {
    require_kvm();
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irq_chip().unwrap();

    let att = attach_kernel_irqchip(&vm, 10, &d.socket, "sim0", ModeRequest::Auto).unwrap();

    let Reply::Attached {
        mode,
        reason,
        facts,
        fds,
        ..
    } = &att.reply
    else {
        panic!("{:?}", att.reply)
    };
    assert_eq!(*mode, Mode::Direct);
    assert!(reason.contains("resampling irqfds"), "{reason}");
    assert_eq!(facts.pci, "sim:0");
    assert!(facts.intx.maskable && facts.intx.automasked);
    assert_eq!(fds, &["ack", "doorbell"]);
    assert_eq!(att.device_fds.len(), 2);
    assert!(
        att.device_fds
            .iter()
            .all(|f| intxd::util::fd::is_cloexec(f.as_fd()).unwrap()),
        "received close-on-exec"
    );
    assert_eq!(d.device("sim0").owner.unwrap().pid, std::process::id());
}

#[test]
fn the_relay_tells_its_owner_about_storms_and_missing_eois() {
    let d = DaemonProc::start(
        "[[device]]\nname = \"s\"\npci = \"sim:0\"\nmode = \"relay\"\n[device.relay]\nstorm_rate = 1000\neoi_timeout_ms = 100\n[device.sim]\nafter_ack = \"ignore\"\n",
    );
    let mut att = attach_user_irqchip(&d.socket, "s", ModeRequest::Auto).unwrap();
    let doorbell = owned_into_eventfd(att.device_fds.remove(1));
    doorbell.write(1).unwrap();

    // Play a guest that EOIs every interrupt of a stuck line.
    let t0 = Instant::now();
    let mut served = 0;
    while t0.elapsed() < Duration::from_millis(500) {
        if att.irq.read().is_ok() {
            att.resample.write(1).unwrap();
            served += 1;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    let storm = att.client.next_event(GUARD).unwrap();
    // Now stop EOIing: the watchdog re-arms.
    let mut watchdog = None;
    let t1 = Instant::now();
    while watchdog.is_none() && t1.elapsed() < GUARD {
        let _ = att.irq.read();
        if let Some(Event::EoiWatchdog {
            waited_ms, rearmed, ..
        }) = att.client.next_event(Duration::from_millis(200)).unwrap()
        {
            watchdog = Some((waited_ms, rearmed));
        }
    }

    assert!(served > 10);
    assert!(served < 1000, "limited to about 1000/s: {served} in 0.5 s");
    match storm {
        Some(Event::StormLimited {
            device, rate_limit, ..
        }) => assert_eq!((device.as_str(), rate_limit), ("s", 1000)),
        other => panic!("expected a storm event, got {other:?}"),
    }
    let (waited, rearmed) = watchdog.expect("a watchdog event");
    assert!(waited >= 100 && rearmed);
    let st = d.device("s").counters.relay.unwrap();
    assert!(st.storms >= 1 && st.watchdog_fires >= 1);
}

#[test]
fn trigger_fires_the_owners_irq_eventfd_once() {
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let mut att = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Auto).unwrap();

    att.client.trigger("sim0").unwrap();

    assert_eq!(att.irq.read().unwrap(), 1);
    assert_eq!(d.device("sim0").counters.sim.unwrap().loopbacks, 1);
    let mut other = d.client();
    // Root may fire any device's trigger; this test runs as root in CI.
    if nix::unistd::geteuid().is_root() {
        other.trigger("sim0").unwrap();
    } else {
        assert_eq!(
            other.trigger("sim0").unwrap_err().code(),
            Some(ErrorCode::NotAttached)
        );
    }
}

#[test]
fn stopping_the_daemon_detaches_every_device_and_removes_the_socket() {
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let mut att = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay).unwrap();
    let socket = d.socket.clone();

    let log = d.stop();

    assert!(
        log.contains("sim0 sim:0: detached (the daemon is stopping)"),
        "{log}"
    );
    assert!(!socket.exists());
    match att.client.next_event(GUARD).unwrap() {
        Some(Event::DeviceGone { device, reason }) => {
            assert_eq!(device, "sim0");
            assert!(reason.contains("stopping"));
        }
        other => panic!("expected device_gone, got {other:?}"),
    }
}

#[test]
fn a_client_error_for_an_unreachable_socket_says_what_to_check() {
    let err = match Client::connect(std::path::Path::new("/nonexistent/intxd.sock")) {
        Err(e) => e,
        Ok(_) => panic!("connected to nothing"),
    };
    assert!(matches!(err, ClientError::Connect { .. }));
    assert!(err.to_string().contains("is the daemon running"));
}
