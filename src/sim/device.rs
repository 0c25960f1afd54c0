//! One emulated function: its state and the [`IntxDevice`](crate::vfio::IntxDevice) handle the daemon
//! holds.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Interest, Registry};
use vmm_sys_util::eventfd::EventFd;

use super::facts::{sim_facts, SIM_INTX_INFO};
use super::host::{drain, lock, token, Shared, Slot, KIND_UNMASK};
use super::line::IntxLine;
use super::model::{percentiles_us, AckPolicy, DeviceModel, Next};
use crate::vfio::{
    DeviceFacts, DeviceProbe, IntxActions, IntxError, IntxInfo, IntxOp, SimCounters, SimLineState,
};

/// The state of one emulated function, shared with the host thread.
pub(crate) struct SimState {
    pub(super) name: String,
    pub(super) line: IntxLine,
    pub(super) model: DeviceModel,
    pub(super) ack: EventFd,
    pub(super) doorbell: EventFd,
    unmask: Option<EventFd>,
    request: Option<EventFd>,
    faults: HashMap<IntxOp, i32>,
    gone: bool,
    pub(super) msi: bool, // `sim/lifecycle.rs`: one interrupt type at a time
}

impl SimState {
    pub(super) fn new(name: &str, ack: EventFd, doorbell: EventFd, policy: AckPolicy) -> Self {
        SimState {
            name: name.to_string(),
            line: IntxLine::default(),
            model: DeviceModel::new(policy),
            ack,
            doorbell,
            unmask: None,
            request: None,
            faults: HashMap::new(),
            gone: false,
            msi: false,
        }
    }

    /// Carries out what the model asked for.
    pub(super) fn apply(&mut self, next: Next, now: Instant) -> Next {
        match next {
            Next::RaiseNow => {
                self.model.raised_now(now);
                self.line.set_level(true);
                Next::Idle
            }
            other => other,
        }
    }

    pub(super) fn drain_acks(&mut self, now: Instant) -> Next {
        let n = drain(&self.ack);
        let mut pending = Next::Idle;
        for _ in 0..n {
            let (lower, next) = self.model.ack(now);
            if lower {
                self.line.set_level(false);
            }
            match self.apply(next, now) {
                Next::Idle => {}
                later => pending = later,
            }
        }
        pending
    }

    pub(super) fn drain_doorbell(&mut self, now: Instant) -> Next {
        let n = drain(&self.doorbell);
        if n == 0 {
            return Next::Idle;
        }
        let next = self.model.ring(n);
        self.apply(next, now)
    }

    pub(super) fn drain_unmask(&mut self) {
        let signalled = self.unmask.as_ref().map(drain).unwrap_or(0);
        if signalled > 0 {
            // Like vfio's virqfd: one handler call per wakeup, however many
            // writes were folded into the counter.
            self.line.unmask();
        }
    }

    fn check(&mut self, op: IntxOp) -> Result<(), IntxError> {
        if self.gone {
            return Err(IntxError::Gone {
                device: self.name.clone(),
            });
        }
        if let Some(errno) = self.faults.get(&op) {
            return Err(IntxError::Action {
                device: self.name.clone(),
                op,
                source: io::Error::from_raw_os_error(*errno),
            });
        }
        Ok(())
    }

    pub(super) fn einval(&self, op: IntxOp) -> IntxError {
        // vfio-pci answers EINVAL to every INTx action but enable while INTx
        // is disabled (`!is_intx(vdev)`).
        IntxError::Action {
            device: self.name.clone(),
            op,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        }
    }
}

/// The daemon's handle on one emulated function; implements
/// [`IntxDevice`](crate::vfio::IntxDevice).
pub struct SimDevice {
    name: String,
    index: u32,
    pub(super) slot: usize,
    pub(super) state: Slot,
    host: Arc<Shared>,
    pub(super) registry: Arc<Registry>,
    pub(super) ack: EventFd,
    pub(super) doorbell: EventFd,
    unmask_raw: Option<RawFd>,
}

impl SimDevice {
    // The host hands over every part it created for the device at once.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        name: &str,
        index: u32,
        slot: usize,
        state: Slot,
        host: Arc<Shared>,
        registry: Arc<Registry>,
        ack: EventFd,
        doorbell: EventFd,
    ) -> Self {
        SimDevice {
            name: name.to_string(),
            index,
            slot,
            state,
            host,
            registry,
            ack,
            doorbell,
            unmask_raw: None,
        }
    }

    fn deregister_all(&self) {
        let _ = self
            .registry
            .deregister(&mut SourceFd(&self.ack.as_raw_fd()));
        let _ = self
            .registry
            .deregister(&mut SourceFd(&self.doorbell.as_raw_fd()));
        if let Some(fd) = self.unmask_raw {
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
    }

    /// Makes every later call of `op` fail with `errno` (fault injection).
    pub fn inject_fault(&self, op: IntxOp, errno: i32) {
        lock(&self.state).faults.insert(op, errno);
    }

    /// Clears every injected fault.
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// Surprise removal: the function disappears. INTx stops and every later
    /// call fails with [`IntxError::Gone`].
    pub fn surprise_remove(&self) {
        let mut st = lock(&self.state);
        st.gone = true;
        st.line.disable();
        st.unmask = None;
        // As vfio-pci signals the request interrupt before a removal.
        if let Some(r) = &st.request {
            let _ = r.write(1);
        }
    }

    /// Drives the line directly (the device model's view), for tests.
    pub fn set_level(&self, high: bool) {
        let mut st = lock(&self.state);
        if high {
            st.model.raised_now(Instant::now());
        }
        st.line.set_level(high);
    }

    /// Rings the doorbell from inside the daemon (what a VMM does with the
    /// doorbell eventfd it receives at attach).
    pub fn ring(&self, cycles: u64) -> io::Result<()> {
        self.doorbell.write(cycles)
    }

    /// Snapshot of (enabled, masked, level, has trigger fd, has unmask fd).
    pub fn line_state(&self) -> LineState {
        let st = lock(&self.state);
        LineState {
            enabled: st.line.enabled(),
            masked: st.line.masked(),
            level: st.line.level(),
            has_unmask_fd: st.unmask.is_some(),
        }
    }

    /// Changes what the device does after an ack.
    pub fn set_policy(&self, policy: AckPolicy) {
        lock(&self.state).model.policy = policy;
    }

    /// Cycles requested by the doorbell but not raised yet.
    pub fn budget(&self) -> u64 {
        lock(&self.state).model.budget()
    }
}

/// What a test can observe of the emulated line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineState {
    /// INTx enabled.
    pub enabled: bool,
    /// INTx masked.
    pub masked: bool,
    /// Device line level.
    pub level: bool,
    /// An unmask eventfd is set.
    pub has_unmask_fd: bool,
}

impl IntxActions for SimDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_trigger(&mut self, fd: &EventFd) -> Result<(), IntxError> {
        let mut st = lock(&self.state);
        st.check(IntxOp::SetTrigger)?;
        st.refuse_intx_while_msi()?;
        let fd = fd.try_clone().map_err(|source| IntxError::Action {
            device: self.name.clone(),
            op: IntxOp::SetTrigger,
            source,
        })?;
        if !st.line.enabled() {
            // A new enable starts a new session of hardware-side counters.
            st.model.reset_counters();
            st.line.triggers = 0;
            st.line.unmasks = 0;
            st.line.refires = 0;
            st.line.loopbacks = 0;
        }
        st.line.enable(fd);
        Ok(())
    }

    fn set_unmask(&mut self, fd: Option<&EventFd>) -> Result<(), IntxError> {
        let mut st = lock(&self.state);
        st.check(IntxOp::SetUnmask)?;
        if !st.line.enabled() {
            return Err(st.einval(IntxOp::SetUnmask));
        }
        let err = |source| IntxError::Action {
            device: self.name.clone(),
            op: IntxOp::SetUnmask,
            source,
        };
        if let Some(old) = self.unmask_raw.take() {
            let _ = self.registry.deregister(&mut SourceFd(&old));
        }
        st.unmask = None;
        if let Some(fd) = fd {
            let fd = fd.try_clone().map_err(err)?;
            let raw = fd.as_raw_fd();
            self.registry
                .register(
                    &mut SourceFd(&raw),
                    token(self.slot, KIND_UNMASK),
                    Interest::READABLE,
                )
                .map_err(err)?;
            self.unmask_raw = Some(raw);
            st.unmask = Some(fd);
        }
        Ok(())
    }

    fn mask(&mut self) -> Result<(), IntxError> {
        let mut st = lock(&self.state);
        st.check(IntxOp::Mask)?;
        if !st.line.enabled() {
            return Err(st.einval(IntxOp::Mask));
        }
        st.line.mask();
        Ok(())
    }

    fn unmask(&mut self) -> Result<(), IntxError> {
        let mut st = lock(&self.state);
        st.check(IntxOp::Unmask)?;
        if !st.line.enabled() {
            return Err(st.einval(IntxOp::Unmask));
        }
        // An ack the guest wrote before its EOI reaches the device before
        // this unmask does (as a posted write the guest flushed would).
        if let Next::RaiseAt(t) = st.drain_acks(Instant::now()) {
            self.host.start_timer(t, self.slot);
        }
        st.line.unmask();
        Ok(())
    }

    fn loopback(&mut self) -> Result<(), IntxError> {
        let mut st = lock(&self.state);
        st.check(IntxOp::Loopback)?;
        if !st.line.enabled() {
            return Err(st.einval(IntxOp::Loopback));
        }
        st.line.loopback();
        Ok(())
    }

    fn disable(&mut self) -> Result<(), IntxError> {
        let mut st = lock(&self.state);
        if let Some(old) = self.unmask_raw.take() {
            let _ = self.registry.deregister(&mut SourceFd(&old));
        }
        st.unmask = None;
        st.line.disable();
        if st.gone {
            return Err(IntxError::Gone {
                device: self.name.clone(),
            });
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<(), IntxError> {
        let mut st = lock(&self.state);
        st.check(IntxOp::Reset)?;
        // Doorbells and acks the last owner left unread are part of its
        // session, not the next one's.
        drain(&st.doorbell);
        drain(&st.ack);
        st.model.reset();
        st.line.set_level(false);
        st.reset_irq_type();
        Ok(())
    }

    fn set_request(&mut self, fd: Option<&EventFd>) -> Result<(), IntxError> {
        let mut st = lock(&self.state);
        st.check(IntxOp::SetRequest)?;
        st.request = match fd {
            Some(f) => Some(f.try_clone().map_err(|source| IntxError::Action {
                device: self.name.clone(),
                op: IntxOp::SetRequest,
                source,
            })?),
            None => None,
        };
        Ok(())
    }
}

impl DeviceProbe for SimDevice {
    fn info(&self) -> IntxInfo {
        SIM_INTX_INFO
    }

    fn facts(&self) -> DeviceFacts {
        sim_facts(self.index)
    }

    fn host_count(&self) -> u64 {
        lock(&self.state).line.triggers
    }

    fn sim_counters(&self) -> Option<SimCounters> {
        let st = lock(&self.state);
        let (p50, p99, max) = percentiles_us(&st.model.latency_ns);
        Some(SimCounters {
            raised: st.model.raised,
            acked: st.model.acked,
            spurious_acks: st.model.spurious_acks,
            triggers: st.line.triggers,
            unmasks: st.line.unmasks,
            refires: st.line.refires,
            loopbacks: st.line.loopbacks,
            latency_p50_us: p50,
            latency_p99_us: p99,
            latency_max_us: max,
            latency_hist: crate::util::latency::latency_buckets(&st.model.latency_ns),
            intx_enabled: Some(st.line.enabled()),
            state: SimLineState {
                enabled: st.line.enabled(),
                masked: st.line.masked(),
                high: st.line.level(),
                timer_pending: st.model.timer_pending(),
                budget: st.model.budget(),
            },
        })
    }

    fn is_gone(&self) -> bool {
        lock(&self.state).gone
    }

    /// As a real function's PCI status bit 3: the line's level, whether
    /// INTx is masked or not (the model's "asserted" is what PCI 2.3's
    /// Interrupt Status shows).
    fn intx_status(&self) -> Option<bool> {
        Some(lock(&self.state).line.level())
    }

    fn intx_enabled(&self) -> Option<bool> {
        Some(lock(&self.state).line.enabled())
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        self.deregister_all();
        let mut d = self.host.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = d.get_mut(self.slot) {
            *s = None;
        }
    }
}
