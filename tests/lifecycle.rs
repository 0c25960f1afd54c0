//! The guest lifecycle against a real daemon process: the worked example of
//! the client crate (`crates/intxd-client/examples/vmm.rs`) attaches an
//! emulated device, soaks it, suspends INTx (cycles asked meanwhile wait,
//! none is lost), resumes, soaks, resets and soaks again, with exact counts;
//! the refusals of each request; and the emulator's one-interrupt-type rule
//! (MSI refused while INTx is enabled, as vfio-pci answers EINVAL).

mod common;
#[path = "../crates/intxd-client/examples/vmm.rs"]
mod vmm;

use common::{sim_device, DaemonProc};
use intxd::control::client::ClientError;
use intxd::control::proto::{DeviceState, ErrorCode, IntxState};
use intxd::sim::{AckPolicy, SimHost};
use intxd::util::fd::new_eventfd;
use intxd::vfio::{DeviceProbe, IntxActions, IntxError};
use vmm::{Phase, Vmm};

const CYCLES: u64 = 2000;

#[test]
fn the_example_vmm_goes_through_suspend_resume_and_reset_with_exact_counts() {
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let phases = vmm::run(&d.socket, "sim0", CYCLES).expect("the example's scenario");
    let exact = Phase {
        asked: CYCLES,
        delivered: CYCLES,
    };
    // soak; raised while suspended and delivered after resume; soak; soak
    // after the reset.
    assert_eq!(phases, vec![exact; 4]);
    eprintln!("lifecycle phases (asked/delivered): {phases:?}");
    assert_eq!(d.device("sim0").state, DeviceState::Detached);
}

#[test]
fn a_relay_route_goes_through_the_same_lifecycle_with_exact_counts() {
    let d = DaemonProc::start("[[device]]\nname = \"rel0\"\npci = \"sim:0\"\nmode = \"relay\"\n");
    let phases = vmm::run(&d.socket, "rel0", CYCLES).expect("the example's scenario, relay");
    let exact = Phase {
        asked: CYCLES,
        delivered: CYCLES,
    };
    assert_eq!(phases, vec![exact; 4]);
    eprintln!("lifecycle phases, relay (asked/delivered): {phases:?}");
}

#[test]
fn suspend_resume_and_reset_leave_nothing_pending() {
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let mut v = Vmm::attach(&d.socket, "sim0").expect("attach");
    assert_eq!(v.soak(CYCLES).expect("soak").delivered, CYCLES);
    assert_eq!(v.status().expect("status").intx, Some(IntxState::Enabled));

    assert!(!v.suspend().expect("suspend"), "nothing was in flight");
    let st = v.status().expect("status");
    assert_eq!(st.intx, Some(IntxState::Suspended));
    let sim = st.counters.sim.expect("sim counters");
    assert_eq!(sim.intx_enabled, Some(false));
    assert_eq!((sim.raised, sim.acked), (CYCLES, CYCLES));

    // The device raises while INTx is off: the level waits for the resume.
    v.ring(1).expect("ring");
    v.resume().expect("resume");
    assert_eq!(
        v.serve(1)
            .expect("the held level fires at resume")
            .delivered,
        1
    );
    assert_eq!(v.soak(CYCLES).expect("soak").delivered, CYCLES);

    assert_eq!(v.reset().expect("reset"), IntxState::Enabled);
    assert_eq!(v.soak(CYCLES).expect("soak after reset").delivered, CYCLES);
    let st = v.status().expect("status");
    let sim = st.counters.sim.expect("sim counters");
    // Counters restart at each INTx enable: the reset's re-enable here.
    assert_eq!(
        (sim.raised, sim.acked, sim.spurious_acks),
        (CYCLES, CYCLES, 0)
    );
    assert_eq!(st.intx, Some(IntxState::Enabled));
    assert!(v.events.is_empty(), "no events: {:?}", v.events);
}

/// The daemon's error code of a refused request.
fn code<T>(r: Result<T, ClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

#[test]
fn lifecycle_requests_in_the_wrong_state_or_from_another_connection_are_refused() {
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let mut v = Vmm::attach(&d.socket, "sim0").expect("attach");
    assert_eq!(
        code(v.client.resume_intx("sim0")),
        Some(ErrorCode::WrongState)
    );
    let mut other = d.client();
    other.hello("other").expect("hello");
    assert_eq!(
        code(other.suspend_intx("sim0")),
        Some(ErrorCode::NotAttached)
    );
    assert_eq!(code(other.reset("sim0")), Some(ErrorCode::NotAttached));
    assert_eq!(
        code(other.suspend_intx("nope")),
        Some(ErrorCode::UnknownDevice)
    );
    v.suspend().expect("suspend");
    assert_eq!(
        code(v.client.suspend_intx("sim0")),
        Some(ErrorCode::WrongState)
    );
    // A reset of a suspended device leaves it suspended, as the guest left it.
    assert_eq!(v.reset().expect("reset"), IntxState::Suspended);
    v.resume().expect("resume");
    assert_eq!(v.soak(10).expect("soak").delivered, 10);
}

#[test]
fn the_emulator_keeps_one_interrupt_type_at_a_time_like_vfio_pci() {
    let host = SimHost::start().expect("sim host");
    let mut dev = host
        .add_device("sim0", 0, AckPolicy::default())
        .expect("sim device");
    let trigger = new_eventfd().expect("eventfd");
    dev.set_trigger(&trigger).expect("enable INTx");
    let einval = dev.enable_msi().expect_err("MSI while INTx is enabled");
    assert_eq!(einval.raw_os_error(), Some(libc::EINVAL));
    dev.disable().expect("disable INTx");
    assert_eq!(dev.intx_enabled(), Some(false));
    dev.enable_msi().expect("MSI once INTx is off");
    match dev.set_trigger(&trigger) {
        Err(IntxError::Action { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
        }
        other => panic!("INTx enabled while MSI is: {other:?}"),
    }
    dev.reset().expect("reset");
    assert!(!dev.msi_enabled(), "a function reset turns MSI off");
    dev.set_trigger(&trigger).expect("INTx after the reset");
    assert_eq!(dev.intx_enabled(), Some(true));
}
