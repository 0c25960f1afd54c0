//! A peer can neither block the daemon nor reach the next owner's device:
//! blocking or doubled eventfds are refused at attach, a VMM fd that cannot
//! take a signal ends that device only, every owner gets fresh emulated
//! fds, and no attach is granted while another process holds the device's
//! fds. Real daemon, real eventfds, real fd passing, real processes.

#![allow(clippy::unwrap_used)]

mod common;
#[allow(dead_code)] // each test binary uses its own part of it
#[path = "common/simhost.rs"]
mod simhost;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{wait_until, DaemonProc};
use intxd::control::client::{attach_user_irqchip, Attachment};
use intxd::control::proto::{ErrorCode, Event, ModeRequest, Reply};
use intxd::route::Irqchip;
use intxd::util::fd::{borrow_eventfd, eventfd_count, new_eventfd, owned_into_eventfd};
use simhost::SimHostProc;
use vmm_sys_util::eventfd::EventFd;

const LONG: Duration = Duration::from_secs(10);

fn relay_device(name: &str, n: u32) -> String {
    format!("[[device]]\nname = \"{name}\"\npci = \"sim:{n}\"\nmode = \"relay\"\n")
}

fn attach_pair(
    d: &DaemonProc,
    irq: &EventFd,
    resample: &EventFd,
) -> Result<(Reply, Vec<OwnedFd>), intxd::control::client::ClientError> {
    d.client()
        .attach("sim0", Irqchip::User, ModeRequest::Auto, irq, resample)
}

fn set_nonblocking(fd: &EventFd, on: bool) {
    let fd = borrow_eventfd(fd);
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).unwrap();
    let mut f = nix::fcntl::OFlag::from_bits_truncate(flags);
    f.set(nix::fcntl::OFlag::O_NONBLOCK, on);
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(f)).unwrap();
}

/// Fills an eventfd's counter to its maximum (0xfffffffffffffffe): one
/// more write would block (or, non-blocking, fail with EAGAIN).
fn fill(ev: &EventFd) {
    ev.write(0xffff_ffff_ffff_fffe).unwrap();
}

fn next_event(att: &mut Attachment) -> Option<Event> {
    att.client.next_event(LONG).unwrap()
}

/// `att`'s device (sim0) was detached with a `device_gone` naming its irq
/// eventfd and `why`, and the daemon still answers.
fn gone_and_the_daemon_answers(d: &DaemonProc, att: &mut Attachment, why: &str) {
    match next_event(att) {
        Some(Event::DeviceGone { device, reason }) => {
            assert_eq!(device, "sim0");
            assert!(
                reason.contains("irq eventfd") && reason.contains(why),
                "{reason}"
            );
        }
        other => panic!("expected device_gone, got {other:?}"),
    }
    let mut c = d.client();
    c.set_timeout(LONG);
    assert!(matches!(c.status().unwrap(), Reply::Status { .. }));
    assert!(d.device("sim0").owner.is_none());
}

#[test]
fn a_blocking_eventfd_or_one_eventfd_as_both_is_refused_at_attach() {
    let d = DaemonProc::start(&relay_device("sim0", 0));
    let blocking = EventFd::new(libc::EFD_CLOEXEC).unwrap();
    let (a, b) = (new_eventfd().unwrap(), new_eventfd().unwrap());

    let irq_err = attach_pair(&d, &blocking, &b).err().unwrap();
    let res_err = attach_pair(&d, &a, &blocking).err().unwrap();
    let same_err = attach_pair(&d, &a, &a.try_clone().unwrap()).err().unwrap();

    assert_eq!(irq_err.code(), Some(ErrorCode::BlockingEventfd));
    let m = irq_err.to_string();
    assert!(
        m.contains("irq eventfd") && m.contains("EFD_NONBLOCK"),
        "{m}"
    );
    assert_eq!(res_err.code(), Some(ErrorCode::BlockingEventfd));
    assert!(
        res_err.to_string().contains("resample eventfd"),
        "{res_err}"
    );
    assert_eq!(same_err.code(), Some(ErrorCode::SameEventfd));
    assert!(same_err.to_string().contains("same eventfd"), "{same_err}");
    assert_eq!(d.device("sim0").state, "opened", "nothing was attached");
    let ok = attach_pair(&d, &a, &b).unwrap();
    assert!(matches!(ok.0, Reply::Attached { .. }), "{:?}", ok.0);
}

#[test]
fn an_irq_eventfd_that_cannot_take_a_signal_detaches_its_device_only() {
    let d = DaemonProc::start(&format!(
        "{}{}",
        relay_device("sim0", 0),
        relay_device("sim1", 1)
    ));
    let mut full = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay).unwrap();
    let other = attach_user_irqchip(&d.socket, "sim1", ModeRequest::Relay).unwrap();
    fill(&full.irq);

    full.client.trigger("sim0").unwrap();

    match next_event(&mut full) {
        Some(Event::DeviceGone { device, reason }) => {
            assert_eq!(device, "sim0");
            assert!(reason.contains("irq eventfd"), "{reason}");
        }
        other => panic!("expected device_gone, got {other:?}"),
    }
    assert!(d.device("sim0").owner.is_none());
    assert_eq!(
        eventfd_count(full.irq.as_raw_fd()),
        Some(0xffff_ffff_ffff_fffe)
    );
    // The other VMM's device still delivers.
    let mut c = d.client();
    c.trigger("sim1").unwrap();
    assert!(wait_until(LONG, || eventfd_count(other.irq.as_raw_fd()) == Some(1)));
    assert_eq!(d.device("sim1").owner.unwrap().pid, std::process::id());
}

#[test]
fn a_vmm_that_makes_its_irq_eventfd_blocking_hangs_nothing_and_is_detached() {
    let d = DaemonProc::start(&format!(
        "{}{}",
        common::sim_device("sim0", 0),
        common::sim_device("sim1", 1)
    ));
    let mut att = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Direct).unwrap();
    let doorbell = owned_into_eventfd(att.device_fds.remove(1));
    // Direct mode: the emulated device writes this very eventfd, as the
    // kernel would. Full and blocking, a plain write would never return.
    fill(&att.irq);
    set_nonblocking(&att.irq, false);
    doorbell.write(1).unwrap();

    gone_and_the_daemon_answers(&d, &mut att, "blocking");
    // The emulated devices' thread still serves the other device.
    let mut ok = attach_user_irqchip(&d.socket, "sim1", ModeRequest::Direct).unwrap();
    owned_into_eventfd(ok.device_fds.remove(1))
        .write(1)
        .unwrap();
    assert!(wait_until(LONG, || eventfd_count(ok.irq.as_raw_fd()) == Some(1)));
}

#[test]
fn a_relay_vmm_that_makes_its_full_irq_eventfd_blocking_hangs_nothing_and_is_detached() {
    let d = DaemonProc::start(&format!(
        "{}{}",
        relay_device("sim0", 0),
        relay_device("sim1", 1)
    ));
    let mut att = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay).unwrap();
    let other = attach_user_irqchip(&d.socket, "sim1", ModeRequest::Relay).unwrap();
    // After the attach checked it: full and blocking, so the relay's next
    // write to it would sleep until this VMM reads, with the loop inside.
    fill(&att.irq);
    set_nonblocking(&att.irq, false);

    match att.client.trigger("sim0") {
        // The relay's write met the full blocking counter and was cut off
        // (`unblock`).
        Ok(_) => gone_and_the_daemon_answers(&d, &mut att, "blocked"),
        // On a slow host the health scan (once a second) can see the
        // cleared O_NONBLOCK between the two calls above and detach first:
        // the trigger then finds INTx torn down. Nothing hangs either way.
        Err(e) => {
            eprintln!("the health scan detached sim0 before the trigger came ({e})");
            gone_and_the_daemon_answers(&d, &mut att, "O_NONBLOCK cleared");
        }
    }
    assert_eq!(
        eventfd_count(att.irq.as_raw_fd()),
        Some(0xffff_ffff_ffff_fffe),
        "the broken write added nothing"
    );
    // The other VMM's relay route still delivers.
    d.client().trigger("sim1").unwrap();
    assert!(wait_until(LONG, || eventfd_count(other.irq.as_raw_fd()) == Some(1)));
}

#[test]
fn each_owner_gets_fresh_emulated_fds_and_the_last_owners_reach_nothing() {
    let d = DaemonProc::start(&relay_device("sim0", 0));
    let mut first = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay).unwrap();
    let old_doorbell = owned_into_eventfd(first.device_fds.remove(1));
    first.client.detach("sim0").unwrap();
    // The former owner rings its old doorbell after the detach.
    old_doorbell.write(2).unwrap();

    let mut next = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay).unwrap();
    let ack = owned_into_eventfd(next.device_fds.remove(0));
    let doorbell = owned_into_eventfd(next.device_fds.remove(0));
    doorbell.write(1).unwrap();
    // Play the guest for one interrupt: read irq, ack the device, EOI.
    assert!(wait_until(LONG, || next.irq.read().is_ok()));
    ack.write(1).unwrap();
    next.resample.write(1).unwrap();
    assert!(wait_until(LONG, || d
        .device("sim0")
        .counters
        .sim
        .is_some_and(|s| s.acked == 1)));

    let sim = d.device("sim0").counters.sim.unwrap();
    assert_eq!((sim.raised, sim.triggers), (1, 1), "{sim:?}");
    assert_eq!(
        eventfd_count(old_doorbell.as_raw_fd()),
        Some(2),
        "nobody reads the old doorbell any more"
    );
    assert!(next.irq.read().is_err(), "nothing else was pending");
    drop(next);
}

/// A process holding `fd` (as its stdin: `sleep`), as a former owner that
/// passed a device fd to a helper would.
fn holder_of(fd: &OwnedFd) -> Child {
    Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::from(fd.try_clone().unwrap()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn no_new_owner_while_another_process_holds_the_device_fds_and_one_after_it_exits() {
    let d = DaemonProc::start(&relay_device("sim0", 0));
    let mut first = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay).unwrap();
    let mut child = holder_of(&first.device_fds[1]);
    let pid = child.id();
    // Wait until the child runs `sleep` with the fd (it has exec'd).
    assert!(wait_until(LONG, || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    }));
    first.client.detach("sim0").unwrap();
    drop(first);

    let refused = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay)
        .err()
        .unwrap();
    assert_eq!(refused.code(), Some(ErrorCode::DeviceHeld));
    let m = refused.to_string();
    assert!(
        m.contains(&format!("pid {pid} (sleep)")) && m.contains("doorbell"),
        "{m}"
    );
    assert!(d.device("sim0").owner.is_none());

    child.kill().unwrap();
    child.wait().unwrap();
    let again = attach_user_irqchip(&d.socket, "sim0", ModeRequest::Relay).unwrap();
    assert!(matches!(again.reply, Reply::Attached { .. }));
}

#[test]
fn sim_host_surprise_remove_needs_an_open_of_that_device_like_every_request() {
    let host = SimHostProc::start();
    let socket = host.socket.clone();
    let call = |s: &OwnedFd, req: &str| {
        intxd::control::wire::send(s.as_fd(), req.as_bytes(), &[]).unwrap();
        String::from_utf8(reply(s)).unwrap()
    };
    let connect = || intxd::util::sock::connect(&socket).unwrap();
    let owner = connect();
    let open = r#"{"op":"open","index":0,"name":"s","policy":{"after_ack":"raise"}}"#;
    assert_eq!(call(&owner, open), r#"{"reply":"ok"}"#);

    let stranger = connect();
    let refused = call(&stranger, r#"{"op":"surprise_remove","index":0}"#);
    let counters = call(&owner, r#"{"op":"counters"}"#);
    let by_owner = call(&owner, r#"{"op":"surprise_remove","index":0}"#);

    assert!(
        refused.contains("failed") && refused.contains("open sim:0 on this connection first"),
        "{refused}"
    );
    assert!(counters.contains("\"counters\""), "still there: {counters}");
    assert_eq!(by_owner, r#"{"reply":"ok"}"#);
}

/// The next packet on a non-blocking socket, waited for.
fn reply(s: &OwnedFd) -> Vec<u8> {
    let mut got = None;
    let arrived = wait_until(LONG, || match intxd::control::wire::recv(s.as_fd()) {
        Ok(Some(p)) => {
            got = Some(p.data);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        other => panic!("{other:?}"),
    });
    assert!(arrived, "no reply");
    got.unwrap()
}
