//! Fuzz target `config`: arbitrary bytes as a main config file.
//!
//! Input: any bytes, decoded as UTF-8 lossily (invalid sequences become
//! U+FFFD, so every input reaches the TOML parser), then
//! `intxd::config::load_str("fuzz.toml", text)`.
//!
//! `load_str` reads no drop-ins, so it does no I/O; `load(path)` adds only the
//! directory listing and file reads of `devices.d/` on top of the same
//! parse/validate code, and is deliberately not driven here (a fuzzed
//! `daemon.devices_dir` would make it read arbitrary host directories).
//!
//! Invariants, beyond "never panics":
//! - an error's Display is non-empty;
//! - the error is `Invalid` (a `Read` or `Unsafe` error, both about files,
//!   from a function that touches no file would be a bug), with 1-based line
//!   and column, and the line lies within the text;
//! - an accepted config serializes (as `intxd check-config` prints it).
#![no_main]

use std::path::Path;

use intxd::config::{load_str, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match load_str(Path::new("fuzz.toml"), &text) {
        Ok(cfg) => {
            if let Err(e) = serde_json::to_string(&cfg) {
                panic!("an accepted config does not serialize: {e}\n{cfg:?}");
            }
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(!shown.is_empty(), "empty Display for {e:?}");
            match &e {
                ConfigError::Invalid { line, column, .. } => {
                    assert!(*line >= 1, "line {line} < 1: {e:?}");
                    assert!(*column >= 1, "column {column} < 1: {e:?}");
                    let lines = text.matches('\n').count() + 1;
                    assert!(
                        *line <= lines,
                        "line {line} past the text's {lines} lines: {e:?}"
                    );
                    assert_eq!(e.line(), Some(*line));
                }
                // `Read` and `Unsafe` are about files, and load_str touches
                // none. (A wildcard, so a new variant compiles; if it is a
                // legitimate outcome of pure validation, list it above.)
                other => panic!("load_str touches no file, yet it returned {other:?}"),
            }
        }
    }
});
