//! TEMPORARY (deleted before hand-over): drives `VfioIntx` and the soak's
//! VFIO path inside the QEMU guest before the daemon opens real devices.
//! usage: vfio_probe BDF CYCLES

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use intxd::config::{Exerciser, PciAddr};
use intxd::route::{Irqchip, Mode};
use intxd::soak::{
    run_one, Attached, AttachedDevice, RunSpec, Snapshot, SoakError, VfioAttached, Wiring,
};
use intxd::util::fd::new_eventfd;
use intxd::vfio::{enable_memory_and_intx, BarPage, IntxDevice, IntxError, VfioIntx};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

const EDU: Exerciser = Exerciser {
    bar: 0,
    raise_offset: 0x60,
    raise_value: 1,
    ack_offset: 0x64,
    ack_value: 1,
};

static FAILS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

fn check(what: &str, ok: bool) {
    println!("probe: [{}] {what}", if ok { "ok" } else { "BAD" });
    if !ok {
        FAILS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn fired(ev: &EventFd, ms: u16) -> bool {
    let b = intxd::util::fd::borrow_eventfd(ev);
    let mut p = [PollFd::new(b, PollFlags::POLLIN)];
    let _ = poll(&mut p, PollTimeout::from(ms));
    ev.read().is_ok()
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s.push_str(": ");
        s.push_str(&x.to_string());
        c = x.source();
    }
    s
}

fn semantics(dev: &mut VfioIntx) {
    let name = "edu0";
    enable_memory_and_intx(name, dev.device_fd()).unwrap();
    let bar = BarPage::map(name, dev.device_fd(), 0).unwrap();
    println!("probe: edu id {:#010x}", bar.read32(0).unwrap());
    let trig = new_eventfd().unwrap();
    let unm = new_eventfd().unwrap();
    let c0 = dev.host_count();
    dev.set_trigger(&trig).unwrap();
    dev.mask().unwrap();
    dev.set_unmask(Some(&unm)).unwrap();
    dev.unmask().unwrap();
    check("clean start: no trigger", !fired(&trig, 100));
    bar.write32(0x60, 1).unwrap();
    check("raise -> trigger", fired(&trig, 2000));
    dev.unmask().unwrap();
    check(
        "unmask() while asserting -> trigger re-sent",
        fired(&trig, 2000),
    );
    bar.write32(0x64, 1).unwrap();
    dev.unmask().unwrap();
    check("ack + unmask() -> no trigger", !fired(&trig, 200));
    bar.write32(0x60, 1).unwrap();
    check("second raise -> trigger", fired(&trig, 2000));
    bar.write32(0x64, 1).unwrap();
    bar.write32(0x60, 1).unwrap();
    check(
        "ack, raise while automasked -> no trigger",
        !fired(&trig, 200),
    );
    unm.write(1).unwrap();
    check(
        "unmask eventfd -> pending interrupt delivered",
        fired(&trig, 2000),
    );
    bar.write32(0x64, 1).unwrap();
    unm.write(1).unwrap();
    check("ack + unmask eventfd -> no trigger", !fired(&trig, 200));
    dev.mask().unwrap();
    bar.write32(0x60, 1).unwrap();
    check("masked: raise -> no trigger", !fired(&trig, 200));
    dev.unmask().unwrap();
    check("unmask() -> trigger", fired(&trig, 2000));
    bar.write32(0x64, 1).unwrap();
    dev.unmask().unwrap();
    dev.loopback().unwrap();
    check("loopback -> trigger", fired(&trig, 2000));
    bar.write32(0x60, 1).unwrap();
    check(
        "loopback does not mask: raise -> trigger",
        fired(&trig, 2000),
    );
    bar.write32(0x64, 1).unwrap();
    dev.unmask().unwrap();
    dev.set_unmask(None).unwrap();
    bar.write32(0x60, 1).unwrap();
    check("raise -> trigger (unmask fd removed)", fired(&trig, 2000));
    bar.write32(0x64, 1).unwrap();
    unm.write(1).unwrap();
    bar.write32(0x60, 1).unwrap();
    check("removed unmask eventfd unmasks nothing", !fired(&trig, 300));
    dev.unmask().unwrap();
    check("unmask() -> trigger", fired(&trig, 2000));
    bar.write32(0x64, 1).unwrap();
    dev.unmask().unwrap();
    let c1 = dev.host_count();
    println!("probe: host_count {c0} -> {c1}");
    check(
        "host_count counted the 4 hard IRQs (re-fires at unmask are not hard IRQs)",
        c1 == c0 + 4,
    );
    dev.disable().unwrap();
    check("disable twice is Ok", dev.disable().is_ok());
    match dev.mask() {
        Err(e @ IntxError::Action { .. }) => {
            println!("probe: mask after disable: {}", chain(&e));
            check(
                "mask after disable -> EINVAL, named",
                chain(&e).contains("edu0: could not mask INTx")
                    && chain(&e).contains("os error 22"),
            );
        }
        other => check(&format!("mask after disable -> EINVAL ({other:?})"), false),
    }
    let req = new_eventfd().unwrap();
    check("set_request(Some)", dev.set_request(Some(&req)).is_ok());
    check("set_request(None)", dev.set_request(None).is_ok());
    println!("probe: reset works: {}", dev.reset_works());
    match dev.reset() {
        Ok(()) => check("reset", true),
        Err(e) => check(&format!("reset: {}", chain(&e)), false),
    }
    println!(
        "probe: facts {}",
        serde_json::to_string(&dev.facts()).unwrap()
    );
    println!("probe: info {:?}", dev.info());
}

/// Direct or relay wiring of a VfioIntx, in this process.
struct Local {
    dev: Arc<Mutex<VfioIntx>>,
    relay: Option<(Arc<std::sync::atomic::AtomicBool>, JoinHandle<u64>)>,
    relayed: u64,
    eois: Arc<std::sync::atomic::AtomicU64>,
}

impl Wiring for Local {
    fn attach(
        &mut self,
        _: Irqchip,
        _: Mode,
        _: &EventFd,
        _: &EventFd,
    ) -> Result<Attached, SoakError> {
        Err(SoakError::Setup("real device".into()))
    }
    fn attach_device(
        &mut self,
        _: Irqchip,
        mode: Mode,
        irq: &EventFd,
        resample: &EventFd,
    ) -> Result<AttachedDevice, SoakError> {
        let e = |e: IntxError| SoakError::Setup(chain(&e));
        let mut d = self.dev.lock().unwrap();
        match mode {
            Mode::Direct => {
                d.set_trigger(irq).map_err(e)?;
                d.mask().map_err(e)?;
                d.set_unmask(Some(resample)).map_err(e)?;
                d.unmask().map_err(e)?;
            }
            Mode::Relay => {
                let trig = new_eventfd().unwrap();
                let unm = new_eventfd().unwrap();
                d.set_trigger(&trig).map_err(e)?;
                d.mask().map_err(e)?;
                d.set_unmask(Some(&unm)).map_err(e)?;
                d.unmask().map_err(e)?;
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let (irq, res) = (irq.try_clone().unwrap(), resample.try_clone().unwrap());
                let (dev, st, eois) = (self.dev.clone(), stop.clone(), self.eois.clone());
                let h = std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !st.load(std::sync::atomic::Ordering::Relaxed) {
                        let mut p = [
                            PollFd::new(intxd::util::fd::borrow_eventfd(&trig), PollFlags::POLLIN),
                            PollFd::new(intxd::util::fd::borrow_eventfd(&res), PollFlags::POLLIN),
                        ];
                        let _ = poll(&mut p, PollTimeout::from(50u16));
                        if res.read().is_ok() {
                            eois.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            dev.lock().unwrap().unmask().unwrap();
                        }
                        if trig.read().is_ok() {
                            n += 1;
                            irq.write(1).unwrap();
                        }
                    }
                    let _ = unm.as_raw_fd();
                    n
                });
                self.relay = Some((stop, h));
            }
        }
        let mut fds = d.vmm_fds().unwrap().into_iter();
        Ok(AttachedDevice::Vfio(VfioAttached {
            mode,
            reason: "local".into(),
            device: fds.next().unwrap(),
            container: fds.next().unwrap(),
            exerciser: EDU,
        }))
    }
    fn snapshot(&mut self) -> Result<Snapshot, SoakError> {
        Ok(Snapshot {
            host_interrupts: self.dev.lock().unwrap().host_count(),
            relay_eois: self.eois.load(std::sync::atomic::Ordering::Relaxed),
            ..Snapshot::default()
        })
    }
    fn detach(&mut self) -> Result<(), SoakError> {
        if let Some((s, h)) = self.relay.take() {
            s.store(true, std::sync::atomic::Ordering::Relaxed);
            self.relayed = h.join().unwrap();
        }
        let mut d = self.dev.lock().unwrap();
        d.set_unmask(None)
            .map_err(|e| SoakError::Setup(chain(&e)))?;
        d.disable().map_err(|e| SoakError::Setup(chain(&e)))?;
        d.reset().map_err(|e| SoakError::Setup(chain(&e)))?;
        Ok(())
    }
    fn device(&self) -> &str {
        "edu0"
    }
}

fn soak(dev: VfioIntx, mode: Mode, irqchip: Irqchip, cycles: u64) -> VfioIntx {
    let mut w = Local {
        dev: Arc::new(Mutex::new(dev)),
        relay: None,
        relayed: 0,
        eois: Default::default(),
    };
    let spec = RunSpec {
        mode,
        irqchip,
        cycles: Some(cycles),
        duration: None,
        stall: Duration::from_secs(3),
    };
    let t = Instant::now();
    match run_one(&mut w, &spec, &mut |_, _| {}) {
        Ok(r) => {
            println!(
                "probe: soak {mode}/{irqchip}: cycles {} delivered {} triggered {} eois {} lost {} spurious {} rate {:.0}/s ({:.2}s) relayed {}",
                r.cycles, r.delivered, r.triggered, r.eois, r.lost, r.spurious, r.rate_per_s, t.elapsed().as_secs_f64(), w.relayed
            );
            check(&format!("soak {mode}/{irqchip} clean"), r.is_clean());
        }
        Err(e) => check(&format!("soak {mode}/{irqchip}: {}", chain(&e)), false),
    }
    Arc::try_unwrap(w.dev).ok().unwrap().into_inner().unwrap()
}

fn main() {
    let _ = env_logger::builder()
        .filter_level(log::LevelFilter::Info)
        .try_init();
    let args: Vec<String> = std::env::args().collect();
    let addr: PciAddr = args[1].parse().unwrap();
    let cycles: u64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(2000);
    let t = Instant::now();
    let mut dev = match VfioIntx::open("edu0", addr) {
        Ok(d) => d,
        Err(e) => {
            println!("probe: open failed: {}", chain(&e));
            std::process::exit(1);
        }
    };
    println!("probe: opened {dev:?} in {:.3}s", t.elapsed().as_secs_f64());
    match VfioIntx::open("edu0-again", addr) {
        Err(e) => println!("probe: second open refused: {}", chain(&e)),
        Ok(_) => check("second open refused", false),
    }
    semantics(&mut dev);
    let mut dev = soak(dev, Mode::Direct, Irqchip::Kernel, cycles);
    dev = soak(dev, Mode::Relay, Irqchip::Kernel, cycles);
    dev = soak(dev, Mode::Direct, Irqchip::User, cycles / 4);
    // Adopt: park the fds as the fd store would, drop the opener, adopt.
    let parked: Vec<_> = dev
        .store_fds()
        .into_iter()
        .map(|(n, f)| (n, f.try_clone_to_owned().unwrap()))
        .collect();
    drop(dev);
    let mut it = parked.into_iter();
    let (dn, d) = it.next().unwrap();
    let (cn, c) = it.next().unwrap();
    println!("probe: parked {dn} {cn}");
    match VfioIntx::adopt("edu0", addr, d, c) {
        Ok(dev) => {
            println!("probe: adopted {dev:?}");
            let dev = soak(dev, Mode::Direct, Irqchip::Kernel, cycles / 2);
            drop(dev);
        }
        Err(e) => check(&format!("adopt: {}", chain(&e)), false),
    }
    // After everything is closed, the group opens again.
    match VfioIntx::open("edu0", addr) {
        Ok(_) => check("re-open after close", true),
        Err(e) => check(&format!("re-open after close: {}", chain(&e)), false),
    }
    let f = FAILS.load(std::sync::atomic::Ordering::Relaxed);
    println!("probe: {} failure(s), {:.2}s", f, t.elapsed().as_secs_f64());
    std::process::exit(if f == 0 { 0 } else { 1 });
}
