//! Log output: `<N>` priority prefixes under systemd (so `journalctl -p`
//! works), plain `LEVEL` prefixes on a terminal. `RUST_LOG` overrides the
//! level.

use std::io::Write;

/// Installs the logger with `default` as the level.
pub fn init(default: &str) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    if journal {
        b.format(|f, r| {
            let prio = match r.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            writeln!(f, "<{prio}>{}", r.args())
        });
    } else {
        b.format(|f, r| writeln!(f, "intxd {:<5} {}", r.level(), r.args()));
    }
    let _ = b.try_init();
}
