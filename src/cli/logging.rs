//! Log output: `<N>` priority prefixes under systemd (so `journalctl -p`
//! works), plain `LEVEL` prefixes on a terminal. `RUST_LOG` overrides the
//! level.

use std::io::Write;

/// Installs the logger with `default` as the level.
pub fn init(default: &str) {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default));
    // vfio-ioctls warns about IRQ indexes a plain PCI function lacks and
    // logs EBUSY when a parked copy of the group is still open at drop; both
    // are expected, and intxd's own errors carry the errno.
    b.filter_module("vfio_ioctls", log::LevelFilter::Off);
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
