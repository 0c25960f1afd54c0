//! Strict request input, against a real daemon over its real socket: a
//! request is one JSON object with each key once and every enum value a
//! string; anything else is refused with `bad_request`, says what is wrong,
//! and changes nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::fd::BorrowedFd;

use common::{require_kvm, sim_device, DaemonProc};
use intxd::control::client::Client;
use intxd::control::proto::{ErrorBody, ErrorCode, Reply};
use intxd::util::fd::{borrow_eventfd, new_eventfd};

/// Sends `data` with `fds` and returns the error reply (panics on success).
fn refused(c: &mut Client, data: &[u8], fds: &[BorrowedFd<'_>]) -> ErrorBody {
    c.send_raw(data, fds).unwrap();
    match c.recv_reply().unwrap().0 {
        Reply::Error { error } => error,
        other => panic!("{} was accepted: {other:?}", String::from_utf8_lossy(data)),
    }
}

/// Starts a daemon with one emulated device, sends it each packet (with a
/// fresh eventfd pair) and checks it is refused with `bad_request`, a
/// message containing `want`, and no attach.
fn check_refused(cases: &[(&str, &str)]) {
    require_kvm();
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let mut c = d.client();
    for (data, want) in cases {
        let (irq, resample) = (new_eventfd().unwrap(), new_eventfd().unwrap());
        let fds = [borrow_eventfd(&irq), borrow_eventfd(&resample)];
        let err = refused(&mut c, data.as_bytes(), &fds);
        assert_eq!(err.code, ErrorCode::BadRequest, "{data}: {err:?}");
        assert!(
            err.message.contains(want),
            "{data}: the message says what is wrong ({want:?}): {}",
            err.message
        );
        assert_ne!(d.device("sim0").state, "attached", "{data} attached sim0");
    }
    assert!(
        matches!(c.status().unwrap(), Reply::Status { .. }),
        "the connection is still usable"
    );
}

#[test]
fn a_request_that_is_a_json_array_is_refused_and_attaches_nothing() {
    check_refused(&[
        (
            r#"["attach","sim0","user","relay",["irq","resample"]]"#,
            "a request is one JSON object, and this is an array",
        ),
        (r#"["status"]"#, "a request is one JSON object"),
        (r#""status""#, "and this is a string"),
        ("3", "and this is a number"),
        ("null", "and this is null"),
    ]);
}

#[test]
fn an_enum_value_in_object_form_is_refused() {
    check_refused(&[
        (
            r#"{"op":"attach","device":"sim0","irqchip":"user","mode":{"relay":null},"fds":["irq","resample"]}"#,
            "`mode`",
        ),
        (
            r#"{"op":"attach","device":"sim0","irqchip":{"user":null},"fds":["irq","resample"]}"#,
            "`irqchip` must be a string",
        ),
        (
            r#"{"op":"attach","device":"sim0","irqchip":"user","fds":[{"irq":null},"resample"]}"#,
            "`fds`",
        ),
        (
            r#"{"op":"attach","device":"sim0","irqchip":"user","fds":[["irq"],"resample"]}"#,
            "`fds`",
        ),
    ]);
}

#[test]
fn a_key_repeated_in_a_request_is_refused() {
    check_refused(&[
        (
            r#"{"op":"status","op":"detach","device":"x"}"#,
            "key `op` appears more than once",
        ),
        (
            r#"{"op":"attach","device":"nope","irqchip":"user","device":"sim0","fds":["irq","resample"]}"#,
            "key `device` appears more than once",
        ),
        (
            r#"{"op":"attach","device":"sim0","irqchip":"user","mode":"direct","mode":"relay","fds":["irq","resample"]}"#,
            "key `mode` appears more than once",
        ),
    ]);
}

#[test]
fn strict_requests_are_still_refused_before_hello_with_their_own_code() {
    require_kvm();
    let d = DaemonProc::start(&sim_device("sim0", 0));
    let mut c = Client::connect(&d.socket).unwrap();

    let err = refused(&mut c, br#"["hello",1]"#, &[]);
    assert_eq!(err.code, ErrorCode::BadRequest, "{err:?}");
    let err = refused(&mut c, br#"{"op":"hello","version":1,"version":1}"#, &[]);
    assert_eq!(err.code, ErrorCode::BadRequest, "{err:?}");

    c.hello("after").unwrap();
    assert!(matches!(c.status().unwrap(), Reply::Status { .. }));
}
