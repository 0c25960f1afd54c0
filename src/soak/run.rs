//! One soak run: a VM, the device attached to it, N cycles, the figures.
//!
//! An emulated device is asked for cycles through its doorbell and counts
//! its own acks. A real function is driven by the guest itself (the
//! exerciser guest acks and re-raises it through its BAR page: the VMM
//! raises the first interrupt) or, with no exerciser, by vfio-pci's loopback
//! ([`super::hostside`]); the guest's count is checked against the host's
//! own count of EOIs (and of loopback triggers).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

pub use super::error::SoakError;
use super::exerciser::DeviceDriver;
use super::guest;
use super::hostside::{cross_check, HostCounts, HostSide, RealRun};
use super::recover::Recovery;
use super::report::{per_relayed, Latency, RunReport};
use super::stall::StallInput;
use super::vcpu::{ChipCounters, UserChipFds, VcpuError, VcpuRunner};
use super::vm::{GuestRam, SoakVm};
use super::wiring::{Attached, AttachedDevice, Snapshot, Wiring};
use crate::route::{Irqchip, Mode};
use crate::util::fd::new_eventfd;

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Route mode to ask for.
    pub mode: Mode,
    /// Interrupt controller flavour.
    pub irqchip: Irqchip,
    /// Cycles to run (with `duration`: at most this many).
    pub cycles: Option<u64>,
    /// How long to run.
    pub duration: Option<Duration>,
    /// How long without progress counts as a hang.
    pub stall: Duration,
}

/// The device side of a session.
pub(super) enum Side {
    /// An emulated device: its doorbell asks for cycles.
    Sim(Attached),
    /// A real function, raised through its BAR.
    Vfio(DeviceDriver),
}

/// A VM with the device attached and its vCPU running.
pub struct Session<'w> {
    pub(super) wiring: &'w mut dyn Wiring,
    runner: Option<VcpuRunner>,
    mode: Mode,
    reason: String,
    pub(super) side: Side,
    pub(super) vm: SoakVm,
    pub(super) host: Option<HostSide>,
    detached: bool,
    pub(super) _irq: EventFd,
    pub(super) _resample: EventFd,
}

impl<'w> Session<'w> {
    /// Builds the VM, attaches the device through `wiring`, and starts the
    /// vCPU once the guest is ready. For a real function it also maps the
    /// exerciser's BAR page into the guest, loads the exerciser guest, and
    /// lets any interrupt left pending by the device's last user drain
    /// before the count starts.
    pub fn start(
        wiring: &'w mut dyn Wiring,
        irqchip: Irqchip,
        mode: Mode,
    ) -> Result<Session<'w>, SoakError> {
        let mut vm = SoakVm::new(irqchip)?;
        let ev = |source| SoakError::Eventfd {
            what: "create or clone the VM's irq and resample eventfds",
            source,
        };
        let irq = new_eventfd().map_err(ev)?;
        let resample = new_eventfd().map_err(ev)?;
        if irqchip == Irqchip::Kernel {
            // The VMM registers its own irqfd: KVM refuses VM ioctls from any
            // other process, intxd included.
            vm.register_irqfd(&irq, &resample)?;
        }
        let attached = wiring.attach_device(irqchip, mode, &irq, &resample)?;
        let (mode, reason) = (attached.mode(), attached.reason().to_string());
        let side = match attached {
            AttachedDevice::Sim(a) => vm
                .bind_ack(&a.ack)
                .map(|()| Side::Sim(a))
                .map_err(SoakError::from),
            AttachedDevice::Vfio(v) => DeviceDriver::prepare(wiring.device(), v).and_then(|d| {
                let Some((page, ex)) = d.exerciser() else {
                    log::info!("{}: no exerciser: driven by vfio-pci's loopback trigger through its device fd", wiring.device());
                    vm.ram.set_ack_enabled(false);
                    return Ok(Side::Vfio(d));
                };
                vm.load_exerciser(page, ex)?;
                log::info!(
                    "{}: BAR {} page mapped into the guest at {:#x}; its ISR acks at +{:#x} and raises at +{:#x}",
                    wiring.device(),
                    ex.bar,
                    guest::DEVICE_PAGE_ADDR,
                    ex.ack_offset,
                    ex.raise_offset
                );
                Ok(Side::Vfio(d))
            }),
        };
        let side = match side {
            Ok(s) => s,
            Err(e) => {
                let _ = wiring.detach();
                return Err(e);
            }
        };
        let chip = match irqchip {
            Irqchip::Kernel => None,
            _ => Some(UserChipFds {
                irq: irq.try_clone().map_err(ev)?,
                resample: resample.try_clone().map_err(ev)?,
            }),
        };
        let vcpu = vm.vcpu.take().ok_or(VcpuError::Taken)?;
        let runner = VcpuRunner::start(vcpu, Arc::clone(&vm.vm), chip)?;
        let host = match &side {
            Side::Vfio(d) => {
                let lb = match d.exerciser() {
                    Some(_) => None,
                    None => Some(d.device_fd().map_err(ev)?),
                };
                let c = Some(Arc::clone(&runner.chip));
                Some(HostSide::start(wiring.device(), &vm, irqchip, c, lb)?)
            }
            Side::Sim(_) => None,
        };
        let session = Session {
            wiring,
            runner: Some(runner),
            mode,
            reason,
            side,
            vm,
            host,
            detached: false,
            _irq: irq,
            _resample: resample,
        };
        let t0 = Instant::now();
        while !session.ram().ready() {
            if t0.elapsed() > guest::READY_TIMEOUT {
                return Err(SoakError::GuestNotReady(guest::READY_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Side::Vfio(d) = &session.side {
            d.settle(session.wiring.device(), session.ram())?;
        }
        Ok(session)
    }

    /// The mode the daemon chose.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the daemon chose it.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether the device is a real function (driven through its BAR).
    pub fn is_real_device(&self) -> bool {
        matches!(self.side, Side::Vfio(_))
    }

    /// Guest RAM (the ISR's count, the ack switch).
    pub fn ram(&self) -> &GuestRam {
        &self.vm.ram
    }

    /// Asks the device for `n` more cycles.
    ///
    /// An emulated device gets them through its doorbell. For a real
    /// function, the guest's target goes up by `n` and, if the guest's
    /// chain of interrupts has stopped (its count reached the old target),
    /// the VMM raises the device once through its BAR; otherwise the ISR
    /// sees the new target and keeps re-raising. The target is raised with
    /// a locked add before the count is read, and the ISR counts with a
    /// locked increment before it reads the target, so one of the two always
    /// sees the other. A raise that lands while the device is already
    /// raised merges with it.
    pub fn ring(&self, n: u64) -> Result<(), SoakError> {
        match &self.side {
            Side::Sim(a) => a.doorbell.write(n).map_err(|source| SoakError::Eventfd {
                what: "ring the emulated device's doorbell",
                source,
            }),
            Side::Vfio(_) if self.host.as_ref().is_some_and(HostSide::is_loopback) => {
                self.host.iter().for_each(|h| h.add_target(n));
                Ok(())
            }
            Side::Vfio(d) => {
                let old = self.ram().target();
                let n = u32::try_from(n)
                    .ok()
                    .filter(|n| old.checked_add(*n).is_some())
                    .ok_or(SoakError::TooManyCycles {
                        more: n,
                        current: old,
                    })?;
                let old = self.ram().add_target(n);
                if self.ram().count() >= old {
                    d.raise()?;
                }
                Ok(())
            }
        }
    }

    /// The host-side counts of a real function (zero for an emulated one).
    pub fn host_counts(&self) -> HostCounts {
        self.host.as_ref().map(HostSide::counts).unwrap_or_default()
    }

    /// Current figures from the wiring.
    pub fn snapshot(&mut self) -> Result<Snapshot, SoakError> {
        self.wiring.snapshot()
    }

    /// Waits until the guest has counted `target` interrupts or nothing has
    /// moved for `stall`. Returns the count.
    pub fn wait_count(&self, target: u64, stall: Duration) -> u64 {
        let mut last = u64::from(self.ram().count());
        let mut moved = Instant::now();
        while last < target && moved.elapsed() < stall {
            std::thread::sleep(Duration::from_micros(500));
            let c = u64::from(self.ram().count());
            if c != last {
                last = c;
                moved = Instant::now();
            }
        }
        last
    }

    /// Detaches while the guest keeps running (interrupts in flight).
    pub fn detach_in_flight(&mut self) -> Result<(), SoakError> {
        self.detached = true;
        self.wiring.detach()
    }

    /// Stops the vCPU and detaches. A real function is acked first, so it
    /// is handed back with its line low.
    pub fn finish(mut self) -> Result<(), SoakError> {
        let vcpu = self.runner.take().map(VcpuRunner::stop).unwrap_or(Ok(()));
        self.host = None;
        if let Side::Vfio(d) = &self.side {
            if let Err(e) = d.ack() {
                log::warn!("{}: {e}", self.wiring.device());
            }
        }
        let detach = if self.detached {
            Ok(())
        } else {
            self.wiring.detach()
        };
        vcpu?;
        detach
    }

    /// Returns from `KVM_RUN` so far.
    pub fn vcpu_exits(&self) -> u64 {
        self.runner
            .as_ref()
            .map(|r| r.chip.exits.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The interrupt controller's counters.
    pub fn chip(&self) -> Option<Arc<ChipCounters>> {
        self.runner.as_ref().map(|r| Arc::clone(&r.chip))
    }

    /// The userspace chip's counters (injected, eois).
    pub fn chip_eois(&self) -> u64 {
        self.runner
            .as_ref()
            .map(|r| r.chip.eois.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// Runs `spec` through `wiring`. `progress` is called about every 100 ms with
/// the guest's count and the elapsed time; a device gone ends the run then.
pub fn run_one(
    wiring: &mut dyn Wiring,
    spec: &RunSpec,
    progress: &mut dyn FnMut(u64, Duration),
) -> Result<RunReport, SoakError> {
    let device = wiring.device().to_string();
    let mut s = Session::start(wiring, spec.irqchip, spec.mode)?;
    let before = s.snapshot()?;
    let host_before = s.host_counts();
    let exits_before = s.vcpu_exits();
    let timer_before = s.ram().timer_count();
    let chip = s.chip().unwrap_or_default();
    let kicks_before = chip.kicks.load(Ordering::SeqCst);
    let limit = spec.cycles.unwrap_or(u64::MAX);
    // Keep the device's budget ahead of the guest so it never idles, but
    // bounded, so a duration run ends with nothing outstanding: 4096 cycles
    // is a few tens of ms at these rates, so it ends at most that much late.
    let chunk = if spec.duration.is_some() { 4096 } else { limit };
    let t0 = Instant::now();
    let mut requested = chunk.min(limit);
    s.ring(requested)?;
    let mut last_progress = Instant::now();
    let mut last = 0u64;
    let mut moved = Instant::now();
    let mut stalled = false;
    let mut recovery = Recovery::default();
    loop {
        std::thread::sleep(Duration::from_micros(500));
        let count = u64::from(s.ram().count());
        if count != last {
            last = count;
            moved = Instant::now();
        }
        if last_progress.elapsed() >= Duration::from_millis(100) {
            progress(count, t0.elapsed());
            last_progress = Instant::now();
            s.wiring.check_gone()?;
        }
        let time_up = spec.duration.is_some_and(|d| t0.elapsed() >= d);
        if !time_up && requested < limit && requested - count < chunk / 2 {
            let more = chunk.min(limit - requested);
            s.ring(more)?;
            requested += more;
        }
        if count >= requested && (time_up || requested >= limit) {
            break;
        }
        recovery.poll(&mut s, moved.elapsed())?;
        if moved.elapsed() >= spec.stall {
            stalled = true;
            break;
        }
    }
    let stalled_for = moved.elapsed();
    let elapsed = t0.elapsed();
    // Let anything spurious show up before the final count.
    std::thread::sleep(Duration::from_millis(20));
    let delivered = u64::from(s.ram().count());
    progress(delivered, elapsed);
    let after = s.snapshot()?;
    let host = s.host_counts().since(host_before);
    let loopback = s.host.as_ref().is_some_and(HostSide::is_loopback);
    let chip_eois = s.chip_eois();
    let exits = s.vcpu_exits().saturating_sub(exits_before);
    let mode = s.mode();
    let reason = s.reason().to_string();
    let real = s.is_real_device();
    let timer_interrupts = s.ram().timer_count().saturating_sub(timer_before);
    let fault = s.ram().fault();
    let stall = stalled.then(|| {
        super::stall::diagnose(&StallInput {
            mode,
            irqchip: spec.irqchip,
            before: &before,
            after: &after,
            chip: &chip,
            delivered,
            requested,
            fault,
            real,
            after_s: stalled_for.as_secs_f64(),
        })
    });
    if let Some(st) = &stall {
        st.log(&device, mode, spec.irqchip);
    }
    s.finish()?;
    let d = |a: u64, b: u64| a.saturating_sub(b);
    let eois = if real {
        host.eois
    } else if mode == Mode::Relay {
        d(after.relay_eois, before.relay_eois)
    } else if spec.irqchip == Irqchip::Kernel && !real {
        d(after.sim.unmasks, before.sim.unmasks)
    } else {
        chip_eois
    };
    // An emulated device counts what it raised and what the guest acked; a
    // real one is checked against the host's own counts.
    let (lost, spurious_acks, triggered) = if real {
        let hard = d(after.host_interrupts, before.host_interrupts);
        let run = RealRun {
            requested,
            delivered,
            host,
            hard,
            exits,
            loopback,
        };
        cross_check(&device, &run)
    } else {
        (
            requested.saturating_sub(d(after.sim.acked, before.sim.acked)),
            d(after.sim.spurious_acks, before.sim.spurious_acks),
            d(after.sim.triggers, before.sim.triggers),
        )
    };
    let (spurious, late_injections) = recovery.split(spurious_acks);
    let wakeups = d(after.loop_wakeups, before.loop_wakeups);
    Ok(RunReport {
        mode,
        irqchip: spec.irqchip,
        device,
        mode_reason: reason,
        cycles: requested,
        delivered,
        triggered,
        eois,
        lost,
        spurious,
        storms: d(after.storms, before.storms),
        elapsed_s: elapsed.as_secs_f64(),
        rate_per_s: delivered as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_us: Latency {
            p50: after.sim.latency_p50_us,
            p99: after.sim.latency_p99_us,
            max: after.sim.latency_max_us,
        },
        loop_wakeups: wakeups,
        loop_wakeups_per_irq: wakeups as f64 / delivered.max(1) as f64,
        relay_syscalls_per_irq: per_relayed(
            d(after.relay_syscalls, before.relay_syscalls) + wakeups,
            d(after.relayed, before.relayed),
        ),
        timer_interrupts,
        vcpu_kicks: d(chip.kicks.load(Ordering::SeqCst), kicks_before),
        recovered: recovery.recovered,
        late_injections,
        stall,
    })
}
