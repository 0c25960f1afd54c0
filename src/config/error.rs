//! Config errors: file, line, column, key, and the fix.

use std::path::PathBuf;

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file (or the drop-in directory) could not be read.
    #[error("{}: cannot read the config", .file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file could be written by someone other than root.
    #[error("{}: owned by uid {uid} with mode {mode:04o}: anyone but root who can write it could make intxd bind any device; fix: chown root:root and chmod go-w it", .file.display())]
    Unsafe {
        /// The file.
        file: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its mode.
        mode: u32,
    },
    /// A value, a key or the TOML itself is wrong.
    #[error("{}:{line}:{column}: {key}: {message}\n  fix: {fix}", .file.display())]
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
            ConfigError::Read { .. } | ConfigError::Unsafe { .. } => None,
        }
    }

    /// The line an `Invalid` error is about.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Read { .. } | ConfigError::Unsafe { .. } => None,
        }
    }
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
