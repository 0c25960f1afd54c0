//! The version line (`intxd --version`, the daemon's first log line): the
//! crate version, the build tag, and the cargo features that change what
//! the daemon does (`test-hooks`).
//!
//! The build tag is a fixed-size field in the binary file, after a marker,
//! so that a packager (or the upgrade test) can stamp a build without
//! recompiling: a different tag is a different binary file.

use std::sync::OnceLock;

/// Marker, then the tag padded with NULs (patch the bytes after the marker).
static BUILD_TAG: [u8; 48] =
    *b"INTXD-BUILD-TAG=\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

/// The marker before the tag field.
const MARKER: &[u8] = b"INTXD-BUILD-TAG=";

/// The build tag stamped in this binary file ("" when none).
pub fn build_tag() -> String {
    // Read through an optimisation barrier: the bytes are the file's, which
    // may have been patched after linking.
    let field = &std::hint::black_box(&BUILD_TAG)[MARKER.len()..];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end])
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .collect()
}

/// `0.1.0`, `0.1.0 build 2026-12-01.1`, `0.1.0 (features: test-hooks)`.
pub fn line() -> &'static str {
    static LINE: OnceLock<String> = OnceLock::new();
    LINE.get_or_init(|| {
        let mut s = env!("CARGO_PKG_VERSION").to_string();
        let tag = build_tag();
        if !tag.is_empty() {
            s += &format!(" build {tag}");
        }
        if intxd::daemon::TEST_HOOKS_BUILT {
            s += " (features: test-hooks)";
        }
        s
    })
}
