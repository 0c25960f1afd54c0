//! The relay's cost taken apart on this host: the one wakeup of its
//! thread, each syscall of its turn and the emulated device's unmask, each
//! measured alone in the bench's own process; and the ceiling that the
//! wakeup leaves relay/direct.
//!
//! On real vfio-pci, direct mode runs everything from the guest's EOI to
//! the next interrupt in the kernel (KVM's resampler signals VFIO's unmask
//! eventfd, whose handler unmasks; a line still high fires the trigger,
//! which is KVM's irqfd). The relay puts its thread in that path: KVM
//! signals the resample eventfd, the relay's thread wakes in `epoll_wait`,
//! unmasks (the same work, now an ioctl), learns whether the trigger fired
//! (from the trigger watch's completion, which the unmask's re-fire posts;
//! or, where io_uring is refused, by reading the trigger) and writes the
//! VMM's irq eventfd. What the relay adds to each interrupt is the wakeup
//! plus that check and the irq write; with direct's period `T` per
//! interrupt, relay/direct cannot exceed `T / (T + added)`. The wakeup is
//! measured twice, because it depends on where the scheduler puts the
//! thread: on its waker's CPU, or on another that sleeps (idle) and must be
//! woken first.
//!
//! With the emulated device, direct mode is not all in the kernel: the
//! emulator's own thread takes the unmask, as the relay's does. Direct and
//! relay then both wake a thread per interrupt, and relay/direct measured
//! here can exceed the ceiling for a real function.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use super::scale::percentile;
use crate::sim::{AckPolicy, SimHost};
use crate::util::fd::{new_eventfd, read_eventfd, write_eventfd};
use crate::vfio::IntxActions;

/// Batches per figure; the figure is their median.
const BATCHES: usize = 7;
/// How long one batch runs at most (under TCG one operation can take
/// 100 µs; on a native host a batch is its iteration count first).
const BATCH_TIME: Duration = Duration::from_millis(150);
/// Iterations per batch at most.
const BATCH_ITERS: u32 = 20_000;

/// The figures, in µs per operation unless named otherwise.
#[derive(Debug, Clone, Serialize)]
pub struct Breakdown {
    /// A signal (an eventfd write) in one thread to `epoll_wait`'s return
    /// in another that slept in it, both pinned to one CPU: the woken
    /// thread runs where its waker goes to sleep. Half a ping-pong's round
    /// trip.
    pub wakeup_same_cpu_us: f64,
    /// The same with the two pinned to two CPUs: each wake is of a thread
    /// asleep on another, idle CPU (on a host that is itself a VM, the
    /// hypervisor wakes a halted vCPU). The same-CPU figure on one CPU.
    pub wakeup_other_cpu_us: f64,
    /// `epoll_wait` that returns at once (the syscall alone, no sleep).
    pub epoll_wait_ready_us: f64,
    /// `read` of a signalled eventfd (the relay's trigger read).
    pub eventfd_read_us: f64,
    /// `write` of 1 to an eventfd (the relay's irq write).
    pub eventfd_write_us: f64,
    /// What a signal to a watched trigger adds to the signalling write (the
    /// watch's poll, its task work and the completion, taken from shared
    /// memory): what replaces the trigger read. `None` where io_uring is
    /// refused.
    pub watched_signal_us: Option<f64>,
    /// The carry the ceilings count: the watched signal (or, without the
    /// watch, the trigger read) plus the irq write.
    pub carry_us: f64,
    /// The emulated device's unmask with its line high (the lock, the read
    /// of its ack eventfd, the re-fire's write of its trigger): where real
    /// vfio-pci takes one `VFIO_DEVICE_SET_IRQS` ioctl.
    pub emulated_unmask_us: f64,
    /// relay-kernel's loop-thread CPU per interrupt in the rounds.
    pub relay_loop_cpu_us: f64,
    /// Of that, the parts measured here: the same-CPU wakeup, the unmask,
    /// the read and the write. The rest is not taken apart (the switches
    /// in and out of `epoll_wait` on the loop's clock, the turn's code).
    pub relay_parts_us: f64,
    /// Direct mode's period per interrupt in the rounds (1 / its rate).
    pub direct_period_us: f64,
    /// What the relay may add to each period, at most, for 0.9 × direct
    /// (`direct_period / 9`).
    pub budget_for_0_9_us: f64,
    /// relay/direct at most, when the relay adds a same-CPU wakeup, the
    /// read and the write to each period: `T / (T + added)`.
    pub ceiling_same_cpu: f64,
    /// The same when its thread is woken on an idle CPU each time.
    pub ceiling_other_cpu: f64,
}

impl Breakdown {
    /// Measures the parts, and relates them to the rounds' direct rate
    /// (`direct_rate`, interrupts per second) and relay-kernel's loop CPU
    /// per interrupt (`relay_loop_cpu_us`).
    pub fn measure(direct_rate: f64, relay_loop_cpu_us: f64) -> io::Result<Breakdown> {
        let cpus = allowed_cpus()?;
        let wakeup_same_cpu_us = wakeup([cpus[0], cpus[0]])?;
        let wakeup_other_cpu_us = match cpus[..] {
            [a, b, ..] => wakeup([a, b])?,
            _ => wakeup_same_cpu_us,
        };
        let epoll_wait_ready_us = epoll_ready()?;
        let (eventfd_read_us, eventfd_write_us) = read_write()?;
        let emulated_unmask_us = emulated_unmask(eventfd_read_us)?;
        let t = if direct_rate > 0.0 {
            1e6 / direct_rate
        } else {
            0.0
        };
        let watched_signal_us = watched_signal(eventfd_write_us)?;
        let carry = watched_signal_us.unwrap_or(eventfd_read_us) + eventfd_write_us;
        let ceiling = |added: f64| t / (t + added).max(1e-9);
        Ok(Breakdown {
            wakeup_same_cpu_us,
            wakeup_other_cpu_us,
            epoll_wait_ready_us,
            eventfd_read_us,
            eventfd_write_us,
            watched_signal_us,
            carry_us: carry,
            emulated_unmask_us,
            relay_loop_cpu_us,
            relay_parts_us: wakeup_same_cpu_us + emulated_unmask_us + carry,
            direct_period_us: t,
            budget_for_0_9_us: t / 9.0,
            ceiling_same_cpu: ceiling(wakeup_same_cpu_us + carry),
            ceiling_other_cpu: ceiling(wakeup_other_cpu_us + carry),
        })
    }

    /// The breakdown as the bench's table prints it.
    pub fn table(&self) -> String {
        let rows: [(&str, String); 13] = [
            (
                "wakeup, on its waker's CPU (eventfd write to epoll_wait's return)",
                f2(self.wakeup_same_cpu_us),
            ),
            (
                "wakeup, of a thread asleep on another, idle CPU",
                f2(self.wakeup_other_cpu_us),
            ),
            (
                "epoll_wait that returns at once",
                f2(self.epoll_wait_ready_us),
            ),
            ("eventfd read (the trigger)", f2(self.eventfd_read_us)),
            ("eventfd write (the VMM's irq)", f2(self.eventfd_write_us)),
            (
                "a watched trigger's signal over its write (replaces the read)",
                self.watched_signal_us
                    .map_or_else(|| "refused".to_string(), f2),
            ),
            (
                "emulated unmask, line high (real vfio-pci: one SET_IRQS ioctl)",
                f2(self.emulated_unmask_us),
            ),
            (
                "relay-kernel's loop CPU per interrupt (above)",
                f2(self.relay_loop_cpu_us),
            ),
            (
                "  of it the parts: same-CPU wakeup, unmask, trigger check, write",
                f2(self.relay_parts_us),
            ),
            (
                "direct's period per interrupt (above)",
                f2(self.direct_period_us),
            ),
            (
                "0.9 x direct leaves the relay per interrupt",
                f2(self.budget_for_0_9_us),
            ),
            (
                "relay/direct ceiling, woken on the waker's CPU",
                format!("{:.3}", self.ceiling_same_cpu),
            ),
            (
                "relay/direct ceiling, woken on an idle CPU",
                format!("{:.3}", self.ceiling_other_cpu),
            ),
        ];
        let mut o = String::from(
            "\ncost breakdown (this host; each part measured alone, us per operation):\n",
        );
        for (what, v) in rows {
            o.push_str(&format!("  {what:<68} {v:>8}\n"));
        }
        o
    }
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

/// The median over [`BATCHES`] of `batch`'s µs per iteration; `batch`
/// runs up to `n` iterations and returns how many it ran.
fn per_op(mut batch: impl FnMut(u32) -> io::Result<u32>) -> io::Result<f64> {
    let mut v = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let t0 = Instant::now();
        let n = batch(BATCH_ITERS)?.max(1);
        v.push(t0.elapsed().as_secs_f64() * 1e6 / f64::from(n));
    }
    Ok(percentile(&v, 0.5))
}

/// Runs `op` until [`BATCH_TIME`] or `n` iterations.
fn timed(n: u32, mut op: impl FnMut() -> io::Result<()>) -> io::Result<u32> {
    let t0 = Instant::now();
    for i in 0..n {
        op()?;
        if i % 64 == 63 && t0.elapsed() > BATCH_TIME {
            return Ok(i + 1);
        }
    }
    Ok(n)
}

/// A mio poll that waits for `fd`.
fn poll_on(fd: &EventFd) -> io::Result<Poll> {
    use std::os::fd::AsRawFd;
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut SourceFd(&fd.as_raw_fd()), Token(0), Interest::READABLE)?;
    Ok(poll)
}

/// Waits in `poll` until its fd was signalled (mio is edge-triggered: each
/// signal is one event, as on the relay's resample eventfd).
fn wait(poll: &mut Poll, events: &mut Events) -> io::Result<()> {
    loop {
        match poll.poll(events, Some(Duration::from_secs(5))) {
            Ok(()) if !events.is_empty() => return Ok(()),
            Ok(()) => return Err(io::Error::other("a ping-pong peer did not answer in 5 s")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The CPUs this process may run on (at least one).
fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(io::Error::from)?;
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect();
    if cpus.is_empty() {
        return Err(io::Error::other("sched_getaffinity gave no CPU"));
    }
    Ok(cpus)
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// Half the round trip of a ping-pong between two threads, each asleep in
/// `epoll_wait` on its own eventfd until the other signals it, pinned to
/// `cpus` (the same one twice: the woken thread runs where its waker just
/// went to sleep; two: it is woken on an idle CPU, as the relay's thread is
/// by a vCPU that goes on running the guest).
fn wakeup(cpus: [usize; 2]) -> io::Result<f64> {
    let (ping, pong) = (new_eventfd()?, new_eventfd()?);
    let (ping_peer, pong_peer) = (ping.try_clone()?, pong.try_clone()?);
    let stop = Arc::new(AtomicBool::new(false));
    let stop_peer = Arc::clone(&stop);
    let mut peer_poll = poll_on(&ping_peer)?;
    let peer = std::thread::Builder::new()
        .name("intxd-bench-pong".into())
        .spawn(move || -> io::Result<()> {
            pin(cpus[1])?;
            let mut events = Events::with_capacity(4);
            while !stop_peer.load(Ordering::Relaxed) {
                wait(&mut peer_poll, &mut events)?;
                write_eventfd(&pong_peer, 1)?;
            }
            Ok(())
        })?;
    let mut poll = poll_on(&pong)?;
    let pinger = std::thread::Builder::new()
        .name("intxd-bench-ping".into())
        .spawn(move || -> io::Result<f64> {
            pin(cpus[0])?;
            let mut events = Events::with_capacity(4);
            let rtt = per_op(|n| {
                timed(n, || {
                    write_eventfd(&ping, 1)?;
                    wait(&mut poll, &mut events)
                })
            });
            stop.store(true, Ordering::Relaxed);
            let _ = write_eventfd(&ping, 1);
            rtt
        })?;
    let panicked = |_| io::Error::other("a ping-pong thread panicked");
    let rtt = pinger.join().map_err(panicked)?;
    peer.join().map_err(panicked)??;
    Ok(rtt? / 2.0)
}

/// `epoll_wait` with a zero timeout on a registered fd: the syscall's
/// entry and exit without a sleep (what the relay's wakeup costs beyond
/// the sleep itself, less the event's copy).
fn epoll_ready() -> io::Result<f64> {
    let ev = new_eventfd()?;
    let mut poll = poll_on(&ev)?;
    let mut events = Events::with_capacity(4);
    per_op(|n| timed(n, || poll.poll(&mut events, Some(Duration::ZERO))))
}

/// A signalled eventfd's read, and a write: (read µs, write µs).
fn read_write() -> io::Result<(f64, f64)> {
    let ev = new_eventfd()?;
    let write = per_op(|n| timed(n, || write_eventfd(&ev, 1)))?;
    let pair = per_op(|n| {
        timed(n, || {
            write_eventfd(&ev, 1)?;
            read_eventfd(&ev).map(|_| ())
        })
    })?;
    Ok(((pair - write).max(0.0), write))
}

/// A write to a trigger the relay's watch has armed, and the take of its
/// completion, less a plain write (`write_us`); `None` where the watch is
/// refused.
fn watched_signal(write_us: f64) -> io::Result<Option<f64>> {
    let Ok(mut watch) = crate::relay::TriggerWatch::new() else {
        return Ok(None);
    };
    let ev = new_eventfd()?;
    watch.arm(0, &ev)?;
    let each = per_op(|n| {
        timed(n, || {
            write_eventfd(&ev, 1)?;
            if watch.take(0) {
                Ok(())
            } else {
                Err(io::Error::other("a watched signal posted no completion"))
            }
        })
    });
    watch.disarm(0);
    Ok(Some((each? - write_us).max(0.0)))
}

/// The emulated device's unmask with its line held high: each unmask
/// re-fires (masks the line and writes the trigger), which is then read;
/// the read's cost (`read_us`) is taken off.
fn emulated_unmask(read_us: f64) -> io::Result<f64> {
    let host = SimHost::start().map_err(io::Error::other)?;
    let mut dev = host
        .add_device("bench-breakdown", 0, AckPolicy::Raise)
        .map_err(io::Error::other)?;
    let trigger = new_eventfd()?;
    dev.set_trigger(&trigger).map_err(io::Error::other)?;
    dev.set_level(true);
    let _ = read_eventfd(&trigger);
    let each = per_op(|n| {
        timed(n, || {
            dev.unmask().map_err(io::Error::other)?;
            read_eventfd(&trigger).map(|_| ())
        })
    })?;
    let _ = dev.disable();
    Ok((each - read_us).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_is_measured_and_the_ceiling_follows_from_them() {
        let b = Breakdown::measure(40_000.0, 9.0).unwrap();
        for (name, v) in [
            ("wakeup on another CPU", b.wakeup_other_cpu_us),
            ("wakeup on one CPU", b.wakeup_same_cpu_us),
            ("epoll_wait", b.epoll_wait_ready_us),
            ("write", b.eventfd_write_us),
            ("unmask", b.emulated_unmask_us),
        ] {
            assert!(v > 0.0 && v < 10_000.0, "{name}: {v} us");
        }
        // A sleeping thread's wakeup costs more than a syscall that
        // returns at once.
        assert!(b.wakeup_same_cpu_us > b.epoll_wait_ready_us, "{b:?}");
        assert_eq!(b.direct_period_us, 25.0);
        let check = b.watched_signal_us.unwrap_or(b.eventfd_read_us);
        let carry = check + b.eventfd_write_us;
        assert!((b.carry_us - carry).abs() < 1e-9, "{b:?}");
        let want = 25.0 / (25.0 + b.wakeup_same_cpu_us + carry);
        assert!((b.ceiling_same_cpu - want).abs() < 1e-9, "{b:?}");
        let want = 25.0 / (25.0 + b.wakeup_other_cpu_us + carry);
        assert!((b.ceiling_other_cpu - want).abs() < 1e-9, "{b:?}");
        assert_eq!(b.relay_loop_cpu_us, 9.0);
        assert!(b
            .table()
            .contains("relay/direct ceiling, woken on an idle CPU"));
    }
}
