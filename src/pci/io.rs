//! The narrow file interface the PCI code uses to reach sysfs and procfs, so
//! that tests can put a fake tree and a fake kernel behind it, and so that
//! every sysfs write is bounded in time.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How long a sysfs write may block before it is reported as timed out.
///
/// An unbind blocks for as long as someone holds the device open (vfio-pci
/// waits for its users to let go), so writes cannot be left unbounded.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a directory entry is, without following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A regular file (or anything else that is neither of the above).
    File,
}

/// One entry of a listed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name.
    pub name: String,
    /// Its kind, not following symlinks.
    pub kind: EntryKind,
}

/// Reads, writes, link reads and listings under one root (`/sys`, `/proc`
/// or a fake tree). Every path is relative to that root.
pub trait SysfsIo: Send + Sync {
    /// The whole content of a file.
    fn read(&self, rel: &Path) -> io::Result<Vec<u8>>;
    /// Writes `data` to an existing file in one `write`, as sysfs wants.
    fn write(&self, rel: &Path, data: &[u8]) -> io::Result<()>;
    /// The target of a symlink.
    fn read_link(&self, rel: &Path) -> io::Result<PathBuf>;
    /// A directory's entries (following `rel` itself if it is a symlink),
    /// sorted by name.
    fn list(&self, rel: &Path) -> io::Result<Vec<Entry>>;

    /// A file's content as text without surrounding whitespace.
    fn read_string(&self, rel: &Path) -> io::Result<String> {
        let bytes = self.read(rel)?;
        Ok(String::from_utf8_lossy(&bytes).trim().to_string())
    }

    /// The last component of a symlink's target (a driver name, a group
    /// number), or `None` when the link does not exist.
    fn link_name(&self, rel: &Path) -> io::Result<Option<String>> {
        match self.read_link(rel) {
            Ok(target) => Ok(target.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Plain file access under a root directory, synchronous. Reading `/proc`
/// with it is fine; for `/sys` use [`RealSysfs`], whose writes time out.
#[derive(Debug, Clone)]
pub struct DirIo {
    root: PathBuf,
}

impl DirIo {
    /// Access under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirIo { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/rel`, refusing absolute paths and `..` so that names read from
    /// sysfs can never lead outside the root.
    fn resolve(&self, rel: &Path) -> io::Result<PathBuf> {
        if rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            Ok(self.root.join(rel))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{}` is not a plain relative path", rel.display()),
            ))
        }
    }
}

impl SysfsIo for DirIo {
    fn read(&self, rel: &Path) -> io::Result<Vec<u8>> {
        fs::read(self.resolve(rel)?)
    }

    fn write(&self, rel: &Path, data: &[u8]) -> io::Result<()> {
        // O_TRUNC as `echo value > file` does: sysfs ignores it, and a tree
        // of plain files (a test's fake sysfs) then holds what was written.
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.resolve(rel)?)?;
        f.write_all(data)
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        fs::read_link(self.resolve(rel)?)
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.resolve(rel)?)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            let kind = if ft.is_symlink() {
                EntryKind::Symlink
            } else if ft.is_dir() {
                EntryKind::Dir
            } else {
                EntryKind::File
            };
            out.push(Entry {
                name: entry.file_name().to_string_lossy().into_owned(),
                kind,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// The cause of a write that did not finish in time. The write itself is
/// still pending in the kernel and may complete later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteTimedOut {
    /// The bound that was exceeded.
    pub after: Duration,
}

impl fmt::Display for WriteTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.after;
        if d.subsec_nanos() == 0 {
            write!(f, "write timed out after {} s", d.as_secs())
        } else {
            write!(f, "write timed out after {} ms", d.as_millis())
        }
    }
}

impl std::error::Error for WriteTimedOut {}

/// Wraps another [`SysfsIo`] so that every write runs in a worker thread
/// and is abandoned after a timeout (an [`io::ErrorKind::TimedOut`] error
/// whose inner error is [`WriteTimedOut`]). Reads, link reads and listings
/// go straight through.
///
/// An abandoned write keeps its thread blocked in the kernel until the
/// kernel lets go; the thread then ends by itself.
#[derive(Debug)]
pub struct TimedIo<T> {
    inner: Arc<T>,
    timeout: Duration,
}

impl<T> Clone for TimedIo<T> {
    fn clone(&self) -> Self {
        TimedIo {
            inner: Arc::clone(&self.inner),
            timeout: self.timeout,
        }
    }
}

impl<T: SysfsIo + 'static> TimedIo<T> {
    /// Bounds `inner`'s writes by `timeout`.
    pub fn new(inner: Arc<T>, timeout: Duration) -> Self {
        TimedIo { inner, timeout }
    }

    /// The wrapped implementation.
    pub fn inner(&self) -> &Arc<T> {
        &self.inner
    }

    /// The write timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl<T: SysfsIo + 'static> SysfsIo for TimedIo<T> {
    fn read(&self, rel: &Path) -> io::Result<Vec<u8>> {
        self.inner.read(rel)
    }

    fn write(&self, rel: &Path, data: &[u8]) -> io::Result<()> {
        let (tx, rx) = mpsc::channel();
        let inner = Arc::clone(&self.inner);
        let rel = rel.to_path_buf();
        let data = data.to_vec();
        // Detached on purpose: a write stuck in the kernel cannot be
        // cancelled, only abandoned.
        thread::Builder::new()
            .name("intxd-sysfs-write".to_string())
            .spawn(move || {
                // The receiver is gone if we timed out; nothing to tell.
                let _ = tx.send(inner.write(&rel, &data));
            })?;
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteTimedOut {
                    after: self.timeout,
                },
            )),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::other(
                "the sysfs write thread ended without a result",
            )),
        }
    }

    fn read_link(&self, rel: &Path) -> io::Result<PathBuf> {
        self.inner.read_link(rel)
    }

    fn list(&self, rel: &Path) -> io::Result<Vec<Entry>> {
        self.inner.list(rel)
    }
}

/// The real sysfs: files under a root (normally `/sys`) whose writes time out.
pub type RealSysfs = TimedIo<DirIo>;

impl RealSysfs {
    /// sysfs at `root` (normally `/sys`) with [`DEFAULT_WRITE_TIMEOUT`].
    pub fn real(root: impl Into<PathBuf>) -> Self {
        Self::real_with_timeout(root, DEFAULT_WRITE_TIMEOUT)
    }

    /// sysfs at `root` with writes bounded by `timeout`.
    pub fn real_with_timeout(root: impl Into<PathBuf>, timeout: Duration) -> Self {
        TimedIo::new(Arc::new(DirIo::new(root)), timeout)
    }
}

/// The two trees intxd reads the host through: sysfs and procfs. Every
/// `/sys` and `/proc` read of the VFIO backend goes through one of these,
/// so a test can put a fake tree behind both.
#[derive(Clone)]
pub struct HostFs {
    /// sysfs (normally `/sys`).
    pub sys: Arc<dyn SysfsIo>,
    /// procfs (normally `/proc`).
    pub proc: Arc<dyn SysfsIo>,
}

impl HostFs {
    /// The real `/sys` and `/proc` (reads only, so plain [`DirIo`]).
    pub fn real() -> Self {
        HostFs {
            sys: Arc::new(DirIo::new("/sys")),
            proc: Arc::new(DirIo::new("/proc")),
        }
    }

    /// Both trees under one root (`root/sys`, `root/proc`), for tests.
    pub fn under(root: &Path) -> Self {
        HostFs {
            sys: Arc::new(DirIo::new(root.join("sys"))),
            proc: Arc::new(DirIo::new(root.join("proc"))),
        }
    }
}

impl fmt::Debug for HostFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostFs")
    }
}
