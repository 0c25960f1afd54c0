//! Fuzz target `protocol`: one received packet through
//! `intxd::control::validate::validate`, the pure function the daemon runs
//! on every request packet.
//!
//! Input format (chosen so seeds are plain ASCII text; see fuzz/README.md):
//!
//! | byte      | meaning                                                     |
//! |-----------|-------------------------------------------------------------|
//! | 0         | flags: bit 0 `truncated`, bit 1 `ctrl_truncated`, bit 2 `hello_done` (`'0'`..`'7'`) |
//! | 1         | fd count: `(b & 0x0f) % 9`, so 0..=8 (`'0'`..`'8'`)         |
//! | 2..2+n    | one byte per fd kind, `b & 3`: 0 eventfd, 1 KVM VM, 2 KVM vCPU, 3 other (`'0'`..`'3'`); for "other", `(b >> 2) & 3` picks the link text |
//! | rest      | the packet's bytes (normally JSON)                          |
//!
//! Inputs shorter than their header are skipped.
//!
//! Invariants, beyond "never panics":
//! - `truncated` ⇒ `Err(TooLarge)`; else `ctrl_truncated` ⇒ `Err(Truncated)`;
//! - `Ok(Attach)` ⇒ exactly two fds, both eventfds, declared `["irq", "resample"]`;
//! - a packet with a KVM VM fd never yields `Ok(Attach)`;
//! - any other `Ok` request came with no fds, and before hello only `Ok(Hello)`;
//! - every error has a non-empty message;
//! - every `Ok` request re-encodes with serde_json and decodes (through
//!   `decode_request`, the daemon's decoder) to the same value.
#![no_main]

use intxd::control::proto::{decode_request, ErrorCode, FdRole, Request};
use intxd::control::validate::{validate, PacketMeta};
use intxd::control::wire::MAX_FDS;
use intxd::util::fd::FdKind;
use libfuzzer_sys::fuzz_target;

const OTHER_LINKS: [&str; 4] = [
    "pipe:[4026]",
    "socket:[4027]",
    "/dev/null",
    "anon_inode:[timerfd]",
];

fn kind(b: u8) -> FdKind {
    match b & 3 {
        0 => FdKind::EventFd,
        1 => FdKind::KvmVm,
        2 => FdKind::KvmVcpu,
        _ => FdKind::Other(OTHER_LINKS[usize::from((b >> 2) & 3)].to_string()),
    }
}

fuzz_target!(|input: &[u8]| {
    let [flags, count, rest @ ..] = input else {
        return;
    };
    let n = usize::from((count & 0x0f) % 9);
    if rest.len() < n {
        return;
    }
    let (kind_bytes, data) = rest.split_at(n);
    let kinds: Vec<FdKind> = kind_bytes.iter().copied().map(kind).collect();
    let truncated = flags & 1 != 0;
    let ctrl_truncated = flags & 2 != 0;
    let hello_done = flags & 4 != 0;
    let meta = PacketMeta {
        data,
        truncated,
        ctrl_truncated,
        fd_kinds: &kinds,
        hello_done,
    };

    let res = validate(&meta);

    if truncated {
        assert!(
            matches!(&res, Err(e) if e.code == ErrorCode::TooLarge),
            "truncated packet gave {res:?}"
        );
    } else if ctrl_truncated {
        assert!(
            matches!(&res, Err(e) if e.code == ErrorCode::Truncated),
            "ctrl-truncated packet gave {res:?}"
        );
    }
    if kinds.contains(&FdKind::KvmVm) {
        assert!(
            !matches!(res, Ok(Request::Attach { .. })),
            "a KVM VM fd was accepted: {kinds:?} {res:?}"
        );
    }

    match &res {
        Ok(req) => {
            assert!(!truncated && !ctrl_truncated && kinds.len() <= MAX_FDS);
            if !hello_done {
                assert!(matches!(req, Request::Hello { .. }), "{req:?} before hello");
            }
            match req {
                Request::Attach { fds, .. } => {
                    assert_eq!(
                        kinds,
                        [FdKind::EventFd, FdKind::EventFd],
                        "attach accepted with fds {kinds:?}"
                    );
                    assert_eq!(fds.as_slice(), [FdRole::Irq, FdRole::Resample]);
                }
                other => assert!(kinds.is_empty(), "{other:?} accepted with fds {kinds:?}"),
            }
            let bytes = match serde_json::to_vec(req) {
                Ok(b) => b,
                Err(e) => panic!("{req:?} does not re-encode: {e}"),
            };
            match decode_request(&bytes) {
                Ok(back) => assert_eq!(
                    &back,
                    req,
                    "round trip changed the request (re-encoded as {})",
                    String::from_utf8_lossy(&bytes)
                ),
                Err(e) => panic!(
                    "{req:?} re-encoded as {} does not decode: {e:?}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
        Err(e) => assert!(!e.message.is_empty(), "empty message for {:?}", e.code),
    }
});
