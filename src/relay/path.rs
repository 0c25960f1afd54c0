//! One relay route's data path and its figures.

use std::io;
use std::time::{Duration, Instant};

pub use intxd_client::types::RelayStats;

use super::carry::{Carried, Carrier};
use super::latency::EoiLatency;
use super::storm::StormLimiter;
use super::watchdog::{EoiWatchdog, Overdue, WatchdogPolicy};
use super::RelayConfig;
use crate::route::{VfioLine, VmmLine};

/// What to do after a resample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleOutcome {
    /// Nothing was pending (a stale wakeup).
    Idle,
    /// Unmasked.
    Unmasked,
    /// Unmasked; the line was still high and its next interrupt has already
    /// gone to the VMM.
    Refired,
    /// The storm limiter holds the line masked until then.
    Backoff(Instant),
}

/// What a timer check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerOutcome {
    /// Nothing due.
    Idle,
    /// A storm back-off ended; unmasked.
    BackoffEnded,
    /// The EOI watchdog fired after an EOI was outstanding for `waited`;
    /// `policy` says whether it re-armed the line or only reported it.
    Watchdog {
        /// How long the EOI was outstanding.
        waited: Duration,
        /// What was done about it.
        policy: WatchdogPolicy,
    },
}

/// What the relay asks of the device on its hot path.
pub trait RelayDevice {
    /// The device's unmask call (`VFIO_DEVICE_SET_IRQS`
    /// `ACTION_UNMASK|DATA_NONE`).
    fn unmask(&mut self) -> io::Result<()>;
    /// The device's own count of acks that lowered its line, where it keeps
    /// one (the emulated device; a real function cannot tell the host). The
    /// storm limiter asks at most twice per 100 ms window.
    fn acks(&mut self) -> Option<u64> {
        None
    }
}

/// The relay between VFIO's eventfds (ours) and the VMM's.
#[derive(Debug)]
pub struct RelayPath {
    /// VFIO's line (intxd's own eventfds).
    vfio: VfioLine,
    /// The VMM's line.
    vmm: VmmLine,
    storm: StormLimiter,
    watchdog: EoiWatchdog,
    backoff_until: Option<Instant>,
    relayed: u64,
    eois: u64,
    stale_resamples: u64,
    wakeups: u64,
    last_turn: u64,
    syscalls: u64,
    latency: EoiLatency,
    #[cfg(feature = "test-hooks")]
    late: super::late::LateInjection,
}

impl RelayPath {
    /// A relay between VFIO's line and the VMM's.
    pub fn new(vfio: VfioLine, vmm: VmmLine, cfg: &RelayConfig, now: Instant) -> Self {
        RelayPath {
            vfio,
            vmm,
            storm: StormLimiter::new(
                cfg.storm_rate,
                Duration::from_millis(cfg.storm_backoff_ms),
                Duration::from_millis(cfg.storm_backoff_max_ms),
                now,
            ),
            watchdog: EoiWatchdog::new(cfg.eoi_timeout(), cfg.watchdog),
            backoff_until: None,
            relayed: 0,
            eois: 0,
            stale_resamples: 0,
            wakeups: 0,
            last_turn: u64::MAX,
            syscalls: 0,
            latency: EoiLatency::new(),
            #[cfg(feature = "test-hooks")]
            late: super::late::LateInjection::from_env(super::late::RELAY_VAR),
        }
    }

    /// Loop turn `turn` (the daemon's wakeup count) carried an event of this
    /// route: counts one wakeup per turn, however many of its eventfds
    /// were ready in it.
    #[inline]
    pub fn woken(&mut self, turn: u64) {
        if self.last_turn != turn {
            self.last_turn = turn;
            self.wakeups += 1;
        }
    }

    /// The trigger of the route in `slot` may have fired: if it did,
    /// signal the VMM (`carrier`: the write alone when the trigger watch
    /// said so from memory, or a read of the trigger and the write).
    #[inline]
    pub fn on_trigger(
        &mut self,
        slot: usize,
        now: Instant,
        carrier: &mut Carrier,
    ) -> io::Result<bool> {
        #[cfg(feature = "test-hooks")]
        if self.late.active() {
            return self.on_trigger_modelled(slot, now, carrier);
        }
        match carrier.carry(slot, &self.vfio.trigger, &self.vmm.irq, &mut self.syscalls)? {
            Carried::Empty => return Ok(false),
            Carried::Sent => {}
        }
        self.relayed += 1;
        self.watchdog.armed(now);
        Ok(true)
    }

    /// [`on_trigger`](Self::on_trigger) with the late-injection model on:
    /// take the firing, let the model drop the signal, write.
    #[cfg(feature = "test-hooks")]
    fn on_trigger_modelled(
        &mut self,
        slot: usize,
        now: Instant,
        carrier: &mut Carrier,
    ) -> io::Result<bool> {
        if !carrier.take(slot, &self.vfio.trigger, &mut self.syscalls)? {
            return Ok(false);
        }
        if self.late.drops() {
            self.syscalls += 1;
        } else {
            Carrier::send(&self.vmm.irq, &mut self.syscalls)?;
        }
        self.relayed += 1;
        self.watchdog.armed(now);
        Ok(true)
    }

    /// The guest EOI'd: unmask, unless a storm holds the line masked.
    ///
    /// The resample eventfd is not read. mio registers it edge-triggered,
    /// and every eventfd signal (KVM's at the EOI, or a userspace irqchip's
    /// write) wakes an `EPOLLET` waiter, whatever the counter holds, so each
    /// EOI is one event without draining; the counter only grows, and
    /// nothing reads it. That saves a syscall per interrupt, and a read of a
    /// peer's eventfd that could block if the VMM passed one without
    /// `O_NONBLOCK`. An event with no interrupt outstanding (a count that
    /// was there at registration, another source's EOI on a shared guest
    /// line) unmasks nothing: level semantics say the line was not handed
    /// out, so there is nothing to give back.
    ///
    /// The device's unmask (`VFIO_DEVICE_SET_IRQS`
    /// `ACTION_UNMASK|DATA_NONE`) is synchronous: when the line is still
    /// high, vfio-pci signals the trigger before the call returns, so the
    /// next interrupt is carried in this same wakeup instead of the next
    /// one. The relay learns that the unmask re-fired from the trigger
    /// watch's completion queue, posted before the unmask returned, with
    /// no syscall ([`super::TriggerWatch`]): three per interrupt with the
    /// unmask and the wakeup; where io_uring is refused, from a read of the
    /// trigger: four ([`Carrier`]).
    #[inline]
    pub fn on_resample(
        &mut self,
        slot: usize,
        now: Instant,
        dev: &mut dyn RelayDevice,
        carrier: &mut Carrier,
    ) -> io::Result<ResampleOutcome> {
        let Some(sent) = self.watchdog.eoi() else {
            self.stale_resamples += 1;
            return Ok(ResampleOutcome::Idle);
        };
        self.eois += 1;
        #[cfg(feature = "test-hooks")]
        self.late.resampled();
        self.latency.record(now.saturating_duration_since(sent));
        if let Some(until) = self.backoff_until {
            return Ok(ResampleOutcome::Backoff(until));
        }
        if let Some(until) = self.storm.admit(now, &mut || dev.acks()) {
            self.backoff_until = Some(until);
            return Ok(ResampleOutcome::Backoff(until));
        }
        self.syscalls += 1;
        if let Err(e) = dev.unmask() {
            // Still outstanding: the watchdog re-arms it, instead of
            // leaving INTx masked with nothing left to wait for.
            self.watchdog.armed(sent);
            return Err(e);
        }
        let refired = self.on_trigger(slot, now, carrier)?;
        self.storm.unmasked(refired);
        Ok(if refired {
            ResampleOutcome::Refired
        } else {
            ResampleOutcome::Unmasked
        })
    }

    /// A restart took this route back while the interrupt the last daemon
    /// sent was still waiting for its EOI: the next EOI is that one's (not
    /// a stale one), and the watchdog covers it.
    pub fn adopt_outstanding(&mut self, now: Instant) {
        self.watchdog.armed(now);
    }

    /// Checks the back-off and the EOI watchdog at `now`.
    pub fn on_timer(&mut self, now: Instant) -> io::Result<TimerOutcome> {
        if let Some(until) = self.backoff_until {
            if now >= until {
                self.backoff_until = None;
                self.do_unmask()?;
                return Ok(TimerOutcome::BackoffEnded);
            }
            return Ok(TimerOutcome::Idle);
        }
        match self.watchdog.check(now) {
            Overdue::No => Ok(TimerOutcome::Idle),
            Overdue::Report(waited) => Ok(TimerOutcome::Watchdog {
                waited,
                policy: WatchdogPolicy::Log,
            }),
            Overdue::Rearm(waited) => {
                self.do_unmask()?;
                Ok(TimerOutcome::Watchdog {
                    waited,
                    policy: WatchdogPolicy::Rearm,
                })
            }
        }
    }

    /// VFIO's line.
    pub fn vfio(&self) -> &VfioLine {
        &self.vfio
    }

    /// The VMM's line.
    pub fn vmm(&self) -> &VmmLine {
        &self.vmm
    }

    /// When the next timer check is due, if one is.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.backoff_until
    }

    /// Whether an EOI is outstanding (the watchdog has something to watch).
    pub fn eoi_pending(&self) -> bool {
        self.watchdog.pending()
    }

    /// Whether the storm limiter currently holds the line masked.
    pub fn backing_off(&self) -> bool {
        self.backoff_until.is_some()
    }

    /// The interrupt-to-EOI latency histogram.
    pub fn latency(&self) -> &EoiLatency {
        &self.latency
    }

    /// The route's figures.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            relayed: self.relayed,
            eois: self.eois,
            stale_resamples: self.stale_resamples,
            wakeups: self.wakeups,
            storms: self.storm.engaged,
            watchdog_fires: self.watchdog.fired,
            syscalls: self.syscalls,
            latency_p50_us: self.latency.quantile_us(0.50),
            latency_p99_us: self.latency.quantile_us(0.99),
            latency_max_us: self.latency.max_us(),
        }
    }

    fn do_unmask(&mut self) -> io::Result<()> {
        self.syscalls += 1;
        self.vfio.unmask.write(1)
    }
}
