//! Which open files are the same: `kcmp(2)` with `KCMP_FILE`, and the scan
//! of `/proc/*/fd` that finds every other process holding one of our files.
//!
//! Every eventfd shares one anonymous inode, so `fstat` cannot tell two of
//! them apart, and fd numbers mean nothing across processes; `kcmp` compares
//! the open file descriptions themselves. It needs ptrace-read access to the
//! other process (the daemon is root). The link text of `/proc/PID/fd/N`
//! (`anon_inode:[eventfd]`, `/dev/vfio/vfio`, `anon_inode:[vfio-device]`) is
//! a cheap pre-filter before the `kcmp` that decides.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;

/// `KCMP_FILE` from `<linux/kcmp.h>`.
const KCMP_FILE: libc::c_int = 0;

/// Whether `fd1` of process `pid1` and `fd2` of process `pid2` are the same
/// open file description.
pub fn same_file(pid1: u32, fd1: RawFd, pid2: u32, fd2: RawFd) -> io::Result<bool> {
    // SAFETY: kcmp only reads the two processes' fd tables; every argument is
    // a plain integer and no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::pid_t,
            pid2 as libc::pid_t,
            KCMP_FILE,
            fd1 as libc::c_ulong,
            fd2 as libc::c_ulong,
        )
    };
    match r {
        0 => Ok(true),
        r if r > 0 => Ok(false),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Whether two fds of this process are the same open file description (the
/// same eventfd passed twice, as two fd numbers).
pub fn same_file_here(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<bool> {
    let me = std::process::id();
    same_file(me, a.as_raw_fd(), me, b.as_raw_fd())
}

/// Another process holding one of our files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdHolder {
    /// Its pid.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), empty if it could not be read.
    pub comm: String,
    /// The fd number in that process.
    pub fd: RawFd,
    /// Which of the files asked about (an index into the slice given).
    pub which: usize,
}

fn link(path: String) -> Option<PathBuf> {
    std::fs::read_link(path).ok()
}

/// Every process but this one and those in `exclude` that holds one of
/// `ours` (this process's fds), each holder once with the first file found.
/// Processes that exit during the scan, or whose fd table cannot be read,
/// are skipped.
pub fn other_holders(ours: &[BorrowedFd<'_>], exclude: &[u32]) -> io::Result<Vec<FdHolder>> {
    let me = std::process::id();
    let targets: Vec<(RawFd, Option<PathBuf>)> = ours
        .iter()
        .map(|f| {
            (
                f.as_raw_fd(),
                link(format!("/proc/self/fd/{}", f.as_raw_fd())),
            )
        })
        .collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || exclude.contains(&pid) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        'fds: for fd in fds.flatten() {
            let Some(theirs) = fd
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<RawFd>().ok())
            else {
                continue;
            };
            let Some(text) = link(format!("/proc/{pid}/fd/{theirs}")) else {
                continue;
            };
            for (which, (ours, target)) in targets.iter().enumerate() {
                if target.as_ref() != Some(&text) {
                    continue;
                }
                if same_file(me, *ours, pid, theirs).unwrap_or(false) {
                    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|c| c.trim_end().to_string())
                        .unwrap_or_default();
                    found.push(FdHolder {
                        pid,
                        comm,
                        fd: theirs,
                        which,
                    });
                    break 'fds;
                }
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::util::fd::{borrow_eventfd, new_eventfd};

    #[test]
    fn kcmp_tells_a_dup_from_another_eventfd() {
        let a = new_eventfd().unwrap();
        let b = new_eventfd().unwrap();
        let a2 = a.try_clone().unwrap();
        assert!(same_file_here(borrow_eventfd(&a), borrow_eventfd(&a2)).unwrap());
        assert!(!same_file_here(borrow_eventfd(&a), borrow_eventfd(&b)).unwrap());
    }

    #[test]
    fn a_child_holding_our_eventfd_is_found_by_pid_and_comm_and_others_are_not() {
        let held = new_eventfd().unwrap();
        let free = new_eventfd().unwrap();
        // The child holds it as its stdin.
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("1000").stdin(std::process::Stdio::from(
            crate::util::fd::dup_eventfd(&held).unwrap(),
        ));
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        let seen = |fd: BorrowedFd<'_>| {
            // The child holds the fd once it has exec'd (or before: a fork
            // copies the table); wait on its fd table, not on time.
            let t0 = std::time::Instant::now();
            loop {
                let h = other_holders(&[fd], &[]).unwrap();
                if h.iter().any(|h| h.pid == pid && h.comm == "sleep")
                    || t0.elapsed() > std::time::Duration::from_secs(5)
                {
                    return h;
                }
                std::thread::yield_now();
            }
        };
        let h = seen(borrow_eventfd(&held));
        assert!(
            h.iter()
                .any(|h| h.pid == pid && h.comm == "sleep" && h.fd == 0 && h.which == 0),
            "{h:?}"
        );
        let none = other_holders(&[borrow_eventfd(&free)], &[]).unwrap();
        assert!(none.iter().all(|h| h.pid != pid), "{none:?}");
        let excluded = other_holders(&[borrow_eventfd(&held)], &[pid]).unwrap();
        assert!(excluded.iter().all(|h| h.pid != pid), "{excluded:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        let gone = other_holders(&[borrow_eventfd(&held)], &[]).unwrap();
        assert!(gone.iter().all(|h| h.pid != pid), "{gone:?}");
    }
}
