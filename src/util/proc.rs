//! Figures about a process read from `/proc`: open fds, RSS, context
//! switches and CPU time. Used by status, the soak and the benchmarks.

use std::io;
use std::time::Duration;

/// Number of open fds of a process (`/proc/PID/fd`), or of this process.
pub fn fd_count(pid: Option<u32>) -> io::Result<usize> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}/fd"),
        None => "/proc/self/fd".to_string(),
    };
    // The directory handle itself is one of our fds while we list it.
    let n = std::fs::read_dir(&dir)?.count();
    Ok(if pid.is_none() {
        n.saturating_sub(1)
    } else {
        n
    })
}

/// Figures from `/proc/PID/status` and `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcFigures {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Voluntary context switches (all threads).
    pub voluntary_ctxt_switches: u64,
    /// User + system CPU time (all threads).
    pub cpu: Duration,
}

/// Reads [`ProcFigures`] for a process (or this one).
pub fn figures(pid: Option<u32>) -> io::Result<ProcFigures> {
    let base = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let status = std::fs::read_to_string(format!("{base}/status"))?;
    let mut f = ProcFigures::default();
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            f.rss_bytes = parse_kb(v) * 1024;
        }
    }
    // Context switches per thread live in each task's status; the process
    // line only counts the main thread.
    let mut vol = 0;
    for task in std::fs::read_dir(format!("{base}/task"))?.flatten() {
        let Ok(s) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in s.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                vol += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    f.voluntary_ctxt_switches = vol;
    f.cpu = cpu_time(&format!("{base}/stat"))?;
    Ok(f)
}

/// CPU time (utime + stime) from a `stat` file of a process or a task.
pub fn cpu_time(stat_path: &str) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(stat_path)?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / hz.max(1)))
}

/// CPU time of the calling thread, at nanosecond resolution.
pub fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

fn parse_kb(v: &str) -> u64 {
    v.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap_or(0)
}
