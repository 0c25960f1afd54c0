//! Config errors: file, line, column, key, and the fix. Whatever came from
//! the config (values, keys, file names) is shown escaped and cut, so a
//! config can never send raw control bytes to the terminal that prints it.

use std::path::{Path, PathBuf};

/// The largest config file intxd reads, bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file (or the drop-in directory) could not be read.
    #[error("{}: cannot read the config", path(.file))]
    Read {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is a FIFO, a device, a socket or a directory: reading it
    /// could block forever or never end, so it is not opened for reading.
    #[error("{}: not a regular file ({kind}); a config file or drop-in must be a regular file: remove it or move it out of the directory", path(.file))]
    NotRegular {
        /// The file.
        file: PathBuf,
        /// What it is (`a FIFO`, `a character device`, ...).
        kind: &'static str,
    },
    /// The file is larger than [`MAX_FILE_BYTES`].
    #[error("{}: {size} bytes, larger than the {limit} bytes a config file may have; split it into drop-ins or remove what is not config", path(.file))]
    TooLarge {
        /// The file.
        file: PathBuf,
        /// Its size (or how much was read before the limit).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file could be written by someone other than root.
    #[error("{}: owned by uid {uid} with mode {mode:04o}: anyone but root who can write it could make intxd bind any device; fix: chown root:root and chmod go-w it", path(.file))]
    Unsafe {
        /// The file.
        file: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its mode.
        mode: u32,
    },
    /// A value, a key or the TOML itself is wrong.
    #[error("{}:{line}:{column}: {}: {}\n  fix: {}", path(.file), escape(.key), cut_message(.message), escape(.fix))]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The key, as a dotted path (`device[2].pci`).
        key: String,
        /// What is wrong.
        message: String,
        /// How to fix it.
        fix: String,
    },
}

impl ConfigError {
    /// The key an `Invalid` error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The line an `Invalid` error is about.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// `s` with every control character (C0, DEL, C1, and the bidirectional
/// overrides that reorder what a terminal shows) written as `\u{..}`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// A value from the config as a message quotes it: escaped, and cut to 64
/// characters.
pub(super) fn shown(v: &str) -> String {
    match v.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", escape(&v[..at])),
        None => escape(v),
    }
}

fn path(p: &Path) -> String {
    escape(&p.display().to_string())
}

/// A whole message, escaped; a long one keeps its start and its end (where
/// TOML's messages say what was expected).
fn cut_message(m: &str) -> String {
    let n = m.chars().count();
    if n <= 300 {
        return escape(m);
    }
    let head: String = m.chars().take(160).collect();
    let tail: String = m.chars().skip(n - 100).collect();
    format!("{} … {}", escape(&head), escape(&tail))
}

/// 1-based line and column of a byte offset.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}
