//! The daemon's steady-state seccomp filter (seccompiler), installed on
//! every thread once the daemon is ready.
//!
//! It allows what the event loop, the emulated-device thread, reloads and
//! the fd store need, and nothing that starts programs or changes the
//! system: no `execve`, no `fork`/`vfork` (thread creation stays allowed:
//! `clone` only with `CLONE_THREAD`), no `ptrace`, `mount`, `kexec`,
//! `init_module`, `setuid`... A refused call fails with `EPERM`; the daemon
//! logs the failure and keeps serving.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// The allowed syscalls that both x86_64 and aarch64 have (their numbers
/// come from libc); [`arch::ONLY`] adds the ones of one architecture.
const ALLOWED: &[i64] = &[
    // event loop, sockets, eventfds
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_close,
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_ioctl,
    libc::SYS_ppoll,
    // the relay's trigger watch (relay::TriggerWatch): arming and removing
    // polls; its ring is made before the filter, and io_uring_setup is not
    // allowed after it
    libc::SYS_io_uring_enter,
    // files: config reload, /proc (peer groups, fd kinds, counts), sysfs
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_ftruncate,
    libc::SYS_getdents64,
    libc::SYS_readlinkat,
    // which files are the same (attach: the irq/resample pair, the device
    // fds other processes still hold)
    libc::SYS_kcmp,
    libc::SYS_faccessat,
    libc::SYS_unlinkat,
    libc::SYS_mkdirat,
    libc::SYS_renameat2,
    // the metrics textfile is made readable by node_exporter (0644)
    libc::SYS_fchmod,
    libc::SYS_memfd_create,
    // memory, threads, time, signals
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_getrandom,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_prctl,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_tgkill,
];

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules.
    #[error("could not build the seccomp filter")]
    Build(#[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("could not install the seccomp filter")]
    Install(#[source] seccompiler::Error),
}

/// The per-architecture part of the filter: the one place that knows
/// which architecture it is built for.
#[cfg(target_arch = "x86_64")]
mod arch {
    use seccompiler::TargetArch;

    /// seccompiler's name for it.
    pub const TARGET: TargetArch = TargetArch::x86_64;

    /// The legacy calls x86_64 keeps beside their `*at` / `p*` forms, which
    /// its C library and Rust's std still use.
    pub const ONLY: &[i64] = &[
        libc::SYS_epoll_wait,
        libc::SYS_poll,
        libc::SYS_readlink,
        libc::SYS_access,
        libc::SYS_unlink,
        libc::SYS_mkdir,
        libc::SYS_rename,
        libc::SYS_renameat,
    ];
}

/// The per-architecture part of the filter: the one place that knows
/// which architecture it is built for.
#[cfg(target_arch = "aarch64")]
mod arch {
    use seccompiler::TargetArch;

    /// seccompiler's name for it.
    pub const TARGET: TargetArch = TargetArch::aarch64;

    /// None: aarch64 has only the `*at` / `p*` forms (`epoll_pwait`,
    /// `ppoll`, `readlinkat`, `faccessat`, `unlinkat`, `mkdirat`,
    /// `renameat2`), all in the common list.
    pub const ONLY: &[i64] = &[];
}

fn program(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    SeccompFilter::new(rules, mismatch, matched, arch::TARGET)
        .and_then(BpfProgram::try_from)
        .map_err(SeccompError::Build)
}

/// Installs the filter on every thread of the process.
pub fn install() -> Result<(), SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .chain(arch::ONLY)
        .map(|&s| (s, Vec::new()))
        .collect();
    // New threads (a timed sysfs write at reload) but no new processes.
    let thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )
    .and_then(|c| SeccompRule::new(vec![c]))
    .map_err(SeccompError::Build)?;
    rules.insert(libc::SYS_clone, vec![thread]);
    // Allowed here, answered ENOSYS by the filter below (the stricter wins).
    rules.insert(libc::SYS_clone3, Vec::new());
    let allow = program(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
    )?;
    // clone3 passes its flags in memory, out of a filter's reach: answer
    // ENOSYS, and the C library falls back to clone, checked above. This
    // filter goes in first: once the allowlist is in, `seccomp` itself is
    // refused.
    let clone3 = program(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    seccompiler::apply_filter_all_threads(&clone3).map_err(SeccompError::Install)?;
    seccompiler::apply_filter_all_threads(&allow).map_err(SeccompError::Install)?;
    Ok(())
}
