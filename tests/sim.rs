//! The emulated INTx function keeps vfio-pci's semantics, each one checked
//! with real eventfds.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use intxd::sim::{AckPolicy, LineState, SimDevice, SimHost};
use intxd::util::fd::new_eventfd;
use intxd::vfio::{DeviceFds, DeviceProbe, IntxActions, IntxError, IntxOp, VmmFd};
use vmm_sys_util::eventfd::EventFd;

fn device(policy: AckPolicy) -> (SimHost, SimDevice) {
    let host = SimHost::start().expect("sim host");
    let dev = host.add_device("sim0", 0, policy).expect("sim device");
    (host, dev)
}

/// Reads an eventfd's count without blocking (0 when not signalled).
fn count(ev: &EventFd) -> u64 {
    ev.read().unwrap_or(0)
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn line_rising_while_unmasked_masks_and_signals_the_trigger_once() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let trigger = new_eventfd().unwrap();
    dev.set_trigger(&trigger).unwrap();

    dev.set_level(true);
    dev.set_level(true);

    assert_eq!(count(&trigger), 1, "one signal for one rising line");
    let s = dev.line_state();
    assert!(s.masked && s.level && s.enabled);
}

#[test]
fn unmask_while_the_line_is_high_stays_masked_and_signals_again() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let trigger = new_eventfd().unwrap();
    dev.set_trigger(&trigger).unwrap();
    dev.set_level(true);
    assert_eq!(count(&trigger), 1);

    dev.unmask().unwrap();

    assert_eq!(count(&trigger), 1, "re-fired");
    assert!(dev.line_state().masked, "still masked");
    assert_eq!(dev.sim_counters().unwrap().refires, 1);
}

#[test]
fn unmask_with_the_line_low_unmasks_and_a_new_edge_fires() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let trigger = new_eventfd().unwrap();
    dev.set_trigger(&trigger).unwrap();
    dev.set_level(true);
    count(&trigger);
    dev.set_level(false);

    dev.unmask().unwrap();

    assert_eq!(count(&trigger), 0, "nothing to signal");
    assert!(!dev.line_state().masked);
    dev.set_level(true);
    assert_eq!(count(&trigger), 1, "the next rise fires again");
}

#[test]
fn a_write_to_the_unmask_eventfd_acts_like_the_unmask_call() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let trigger = new_eventfd().unwrap();
    let unmask = new_eventfd().unwrap();
    dev.set_trigger(&trigger).unwrap();
    dev.set_unmask(Some(&unmask)).unwrap();
    dev.set_level(true);
    count(&trigger);

    unmask.write(1).unwrap();

    assert!(wait_for(Duration::from_secs(2), || dev
        .sim_counters()
        .unwrap()
        .refires
        == 1));
    assert_eq!(
        count(&trigger),
        1,
        "high line re-fired through the eventfd path"
    );
    dev.set_level(false);
    unmask.write(1).unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || !dev.line_state().masked),
        "low line unmasked"
    );
}

#[test]
fn loopback_signals_the_trigger_without_masking() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let trigger = new_eventfd().unwrap();
    dev.set_trigger(&trigger).unwrap();

    dev.loopback().unwrap();

    assert_eq!(count(&trigger), 1);
    assert!(!dev.line_state().masked, "loopback does not mask");
    assert_eq!(dev.sim_counters().unwrap().loopbacks, 1);
}

#[test]
fn disable_stops_signalling_and_drops_both_eventfds() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let trigger = new_eventfd().unwrap();
    let unmask = new_eventfd().unwrap();
    dev.set_trigger(&trigger).unwrap();
    dev.set_unmask(Some(&unmask)).unwrap();
    assert_eq!(
        (refs(&trigger), refs(&unmask)),
        (2, 2),
        "the device holds a duplicate of each"
    );

    dev.disable().unwrap();
    dev.set_level(true);
    unmask.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(20));

    assert_eq!(count(&trigger), 0, "no signal after disable");
    assert_eq!(
        dev.line_state(),
        LineState {
            enabled: false,
            masked: false,
            level: true,
            has_unmask_fd: false
        }
    );
    assert_eq!(
        (refs(&trigger), refs(&unmask)),
        (1, 1),
        "the device dropped its duplicates"
    );
}

/// How many fds of this process refer to the same eventfd as `ev`
/// (by the `eventfd-id` in fdinfo).
fn refs(ev: &EventFd) -> usize {
    use std::os::fd::AsRawFd;
    let id = |fd: &str| -> Option<String> {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
        info.lines()
            .find(|l| l.starts_with("eventfd-id:"))
            .map(str::to_string)
    };
    let mine = id(&ev.as_raw_fd().to_string()).expect("eventfd-id in fdinfo");
    std::fs::read_dir("/proc/self/fdinfo")
        .unwrap()
        .flatten()
        .filter(|e| id(&e.file_name().to_string_lossy()).as_deref() == Some(mine.as_str()))
        .count()
}

#[test]
fn mask_and_unmask_before_enable_are_refused_like_vfio_pci() {
    let (_h, mut dev) = device(AckPolicy::Raise);

    let err = dev.mask().unwrap_err();

    match err {
        IntxError::Action { op, source, .. } => {
            assert_eq!(op, IntxOp::Mask);
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        dev.set_unmask(None),
        Err(IntxError::Action {
            op: IntxOp::SetUnmask,
            ..
        })
    ));
}

#[test]
fn enabling_with_the_line_already_high_fires_at_once() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    dev.set_level(true);
    let trigger = new_eventfd().unwrap();

    dev.set_trigger(&trigger).unwrap();

    assert_eq!(count(&trigger), 1);
    assert!(dev.line_state().masked);
}

/// Enables INTx with a trigger and an unmask eventfd and returns (ack, doorbell).
fn armed(dev: &mut SimDevice, trigger: &EventFd, unmask: &EventFd) -> (EventFd, EventFd) {
    dev.set_trigger(trigger).unwrap();
    dev.set_unmask(Some(unmask)).unwrap();
    let mut fds = dev.vmm_fds().unwrap().into_iter();
    let (ack_role, ack) = fds.next().unwrap();
    let (doorbell_role, doorbell) = fds.next().unwrap();
    assert_eq!((ack_role, doorbell_role), (VmmFd::Ack, VmmFd::Doorbell));
    let ack = intxd::util::fd::owned_into_eventfd(ack);
    let doorbell = intxd::util::fd::owned_into_eventfd(doorbell);
    (ack, doorbell)
}

/// Plays a guest: for every trigger, ack (if `ack`) then EOI via the unmask fd.
fn serve(trigger: &EventFd, ack: &EventFd, unmask: &EventFd, ack_it: bool, n: usize) -> usize {
    let mut served = 0;
    for _ in 0..n {
        if !wait_for(Duration::from_millis(500), || count(trigger) > 0) {
            break;
        }
        if ack_it {
            ack.write(1).unwrap();
        }
        unmask.write(1).unwrap();
        served += 1;
    }
    served
}

#[test]
fn after_ack_raise_cycles_exactly_as_many_times_as_the_doorbell_asked() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let (trigger, unmask) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    let (ack, doorbell) = armed(&mut dev, &trigger, &unmask);

    doorbell.write(50).unwrap();
    let served = serve(&trigger, &ack, &unmask, true, 60);

    assert_eq!(served, 50);
    assert!(wait_for(Duration::from_secs(2), || dev
        .sim_counters()
        .unwrap()
        .acked
        == 50));
    let c = dev.sim_counters().unwrap();
    assert_eq!((c.raised, c.acked, c.spurious_acks), (50, 50, 0));
    assert!(c.latency_max_us > 0.0);
}

#[test]
fn after_ack_raise_after_waits_the_interval() {
    let (_h, mut dev) = device(AckPolicy::RaiseAfter {
        interval_us: 20_000,
    });
    let (trigger, unmask) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    let (ack, doorbell) = armed(&mut dev, &trigger, &unmask);
    doorbell.write(3).unwrap();

    let t0 = Instant::now();
    let served = serve(&trigger, &ack, &unmask, true, 3);

    assert_eq!(served, 3);
    assert!(
        t0.elapsed() >= Duration::from_millis(40),
        "two intervals between three raises"
    );
    assert!(wait_for(Duration::from_secs(2), || dev
        .sim_counters()
        .unwrap()
        .acked
        == 3));
}

#[test]
fn after_ack_stay_low_raises_once_per_doorbell() {
    let (_h, mut dev) = device(AckPolicy::StayLow);
    let (trigger, unmask) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    let (ack, doorbell) = armed(&mut dev, &trigger, &unmask);
    doorbell.write(5).unwrap();

    let served = serve(&trigger, &ack, &unmask, true, 5);

    assert_eq!(
        served, 1,
        "one-shot: the line stays low after the first ack"
    );
    assert_eq!(dev.budget(), 4);
    doorbell.write(1).unwrap();
    assert_eq!(
        serve(&trigger, &ack, &unmask, true, 1),
        1,
        "the next doorbell raises again"
    );
}

#[test]
fn after_ack_ignore_leaves_the_line_stuck_high() {
    let (_h, mut dev) = device(AckPolicy::Ignore);
    let (trigger, unmask) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    let (ack, doorbell) = armed(&mut dev, &trigger, &unmask);
    doorbell.write(1).unwrap();

    let served = serve(&trigger, &ack, &unmask, true, 20);

    assert_eq!(served, 20, "every EOI re-fires a stuck line");
    let c = dev.sim_counters().unwrap();
    assert_eq!((c.raised, c.acked), (1, 0));
    assert!(c.refires >= 19);
    assert!(dev.line_state().level);
}

#[test]
fn an_ack_with_the_line_low_counts_as_spurious() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let (trigger, unmask) = (new_eventfd().unwrap(), new_eventfd().unwrap());
    let (ack, _doorbell) = armed(&mut dev, &trigger, &unmask);

    ack.write(1).unwrap();

    assert!(wait_for(Duration::from_secs(2), || dev
        .sim_counters()
        .unwrap()
        .spurious_acks
        == 1));
}

#[test]
fn surprise_removal_stops_the_line_and_fails_every_later_call() {
    let (_h, mut dev) = device(AckPolicy::Raise);
    let trigger = new_eventfd().unwrap();
    dev.set_trigger(&trigger).unwrap();

    dev.surprise_remove();
    dev.set_level(true);

    assert_eq!(count(&trigger), 0);
    assert!(dev.is_gone());
    assert!(matches!(dev.unmask(), Err(IntxError::Gone { .. })));
}

/// A fake sim host on `path` that answers one request late: it holds the
/// first request after `open` until the next one arrives (the client has
/// given up on it by then), then answers both, in order. A reply echoes the
/// request's `id` when the request has one.
fn late_answering_host(path: &std::path::Path) -> std::thread::JoinHandle<()> {
    use nix::sys::socket::{
        accept4, bind, listen, recv, send, socket, AddressFamily, Backlog, MsgFlags, SockFlag,
        SockType, UnixAddr,
    };
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let l = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(l.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    listen(&l, Backlog::new(1).unwrap()).unwrap();
    std::thread::spawn(move || {
        // SAFETY: accept just returned this fd; nothing else owns it.
        #[allow(unsafe_code)]
        let s = unsafe {
            OwnedFd::from_raw_fd(accept4(l.as_raw_fd(), SockFlag::SOCK_CLOEXEC).unwrap())
        };
        let next = || {
            let mut buf = vec![0u8; 4096];
            let n = recv(s.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
            serde_json::from_slice::<serde_json::Value>(&buf[..n]).unwrap()
        };
        let answer = |req: &serde_json::Value, mut reply: serde_json::Value| {
            if let Some(id) = req.get("id") {
                reply["id"] = id.clone();
            }
            let bytes = serde_json::to_vec(&reply).unwrap();
            send(s.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL).unwrap();
        };
        let open = next();
        answer(&open, serde_json::json!({"reply": "ok"}));
        let slow = next();
        let then = next();
        answer(
            &slow,
            serde_json::json!({"reply": "failed", "errno": 5, "gone": false, "message": "late"}),
        );
        let mut counters = serde_json::to_value(intxd::vfio::SimCounters {
            raised: 7,
            ..Default::default()
        })
        .unwrap();
        counters["reply"] = "counters".into();
        answer(&then, counters);
        // Hold the connection until the client is done.
        let mut buf = [0u8; 16];
        let _ = recv(s.as_raw_fd(), &mut buf, MsgFlags::empty());
    })
}

#[test]
fn a_sim_host_reply_after_the_timeout_is_not_taken_for_the_next_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.sock");
    let host = late_answering_host(&path);
    let mut dev = intxd::sim::remote::RemoteSim::open(&path, "sim0", 0, AckPolicy::Raise).unwrap();

    let e = dev.mask().unwrap_err();
    let counters = dev.sim_counters();

    match e {
        IntxError::Action { op, source, .. } => {
            assert_eq!(op, IntxOp::Mask);
            assert_eq!(source.kind(), std::io::ErrorKind::TimedOut, "{source}");
        }
        other => panic!("{other}"),
    }
    assert_eq!(counters.map(|c| c.raised), Some(7));
    drop(dev);
    host.join().unwrap();
}

/// Runs `intxd sim-host --socket path` and waits (bounded) for it to exit.
fn sim_host_exit(path: &std::path::Path) -> (bool, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_intxd"))
        .args(["sim-host", "--socket"])
        .arg(path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "sim-host kept running at {}", path.display());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn sim_host_refuses_a_path_that_is_a_regular_file_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"precious").unwrap();

    let (ok, stderr) = sim_host_exit(&path);

    assert!(!ok);
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn sim_host_refuses_a_socket_someone_listens_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.sock");
    let live = intxd::util::sock::listen(&path, 4, |_| Ok(())).unwrap();

    let (ok, stderr) = sim_host_exit(&path);

    assert!(!ok);
    assert!(stderr.contains("already listening there"), "{stderr}");
    assert!(intxd::util::sock::answers(&path));
    drop(live);
}

#[test]
fn the_host_thread_starts_with_the_first_device_only() {
    let host = SimHost::start().unwrap();
    assert!(!host.is_running());

    let _dev = host.add_device("sim0", 0, AckPolicy::Raise).unwrap();

    assert!(host.is_running());
}
