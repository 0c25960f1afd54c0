//! The node_exporter textfile: the exposition written to a temporary file
//! in the target's directory, then renamed over it, so that a scrape reads
//! either the whole previous file or the whole new one.
//!
//! Nothing here can wait for a peer: the temporary file is created new
//! (`O_CREAT | O_EXCL`, so never a FIFO or a symlink someone left there),
//! and the collector only ever reads the renamed result.
//!
//! The file is not fsynced: the rename is what makes a scrape see whole
//! files, the file is rewritten every period, and an `fsync` on a slow or
//! stalled disk would hold up the daemon's loop. After a power loss the
//! collector may find the last file empty until the next period.

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Writing the textfile failed.
#[derive(Debug, thiserror::Error)]
pub enum TextfileError {
    /// The temporary file could not be created or written.
    #[error("metrics textfile: cannot write {}; check that its directory exists and that intxd may write there (under systemd: ReadWritePaths= for that directory)", .temp.display())]
    Write {
        /// The temporary file.
        temp: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The rename over the target failed.
    #[error("metrics textfile: cannot rename {} over {}; check that the target is not a directory and that intxd may write its directory", .temp.display(), .path.display())]
    Rename {
        /// The temporary file.
        temp: PathBuf,
        /// The target.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The temporary file beside `path`: hidden, and not ending in `.prom`, so
/// the collector never reads it.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "intxd.prom".into());
    path.with_file_name(format!(".{name}.intxd-tmp"))
}

/// Replaces `path` with `text` atomically; the file is made readable by
/// all (0644, whatever the daemon's umask), as the collector runs as its
/// own user.
pub fn write_atomic(path: &Path, text: &str) -> Result<(), TextfileError> {
    let temp = temp_path(path);
    let write_err = |source| TextfileError::Write {
        temp: temp.clone(),
        source,
    };
    // A temporary file a crash left behind would make O_EXCL fail.
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_err(e)),
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&temp)
        .and_then(|mut f| {
            f.set_permissions(Permissions::from_mode(0o644))?;
            f.write_all(text.as_bytes())
        });
    let renamed = written.map_err(write_err).and_then(|()| {
        std::fs::rename(&temp, path).map_err(|source| TextfileError::Rename {
            temp: temp.clone(),
            path: path.to_path_buf(),
            source,
        })
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    renamed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn the_file_is_replaced_whole_readable_by_all_and_no_temporary_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("intxd.prom");
        // A stale temporary file (a crash mid-write) does not stop the next.
        std::fs::write(temp_path(&path), "stale").unwrap();
        write_atomic(&path, "a 1\n").unwrap();
        let ino = std::fs::metadata(&path).unwrap().ino();
        write_atomic(&path, "a 2\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        assert_ne!(meta.ino(), ino, "a new file was renamed over the old one");
        assert_eq!(meta.mode() & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("intxd.prom")]);
    }

    #[test]
    fn a_missing_directory_is_an_error_that_names_the_file_and_the_fix() {
        let e = write_atomic(Path::new("/nonexistent-intxd/x.prom"), "").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, TextfileError::Write { .. }), "{e:?}");
        assert!(
            msg.contains("/nonexistent-intxd/.x.prom.intxd-tmp") && msg.contains("ReadWritePaths="),
            "{msg}"
        );
    }
}
