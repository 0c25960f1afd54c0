//! The binder's worker thread: a reload's sysfs work (release a function to
//! its driver, bind one to vfio-pci) runs here, one job at a time, and each
//! result comes back to the event loop through its waker, so no relay route
//! waits on sysfs.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::Waker;

use super::{Binder, BinderError};
use crate::config::DeviceConfig;
use crate::pci::BindRecord;
use crate::util::error::chain;

/// One device's sysfs work.
pub struct Job {
    /// The device slot to bring up when it is done (`None`: nothing to
    /// bring up, the function was only given back).
    pub slot: Option<usize>,
    /// Give this function back to its original driver first.
    pub release: Option<DeviceConfig>,
    /// Then bind this one to vfio-pci.
    pub bind: Option<DeviceConfig>,
    /// First of all: the host took this function back; put its
    /// `driver_override` back and forget its record.
    pub given_back: Option<BindRecord>,
}

/// What a job did.
pub struct Done {
    /// The device slot it was for.
    pub slot: Option<usize>,
    /// The bind's config and result, when the job had one.
    pub bound: Option<(DeviceConfig, Result<BindRecord, BinderError>)>,
}

/// Runs binder jobs off the event loop.
pub struct BindWorker {
    binder: Arc<Binder>,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    pending: usize,
    thread: Option<JoinHandle<()>>,
}

impl BindWorker {
    /// Starts the worker; it wakes `waker` after each job.
    pub fn start(binder: Binder, waker: Arc<Waker>) -> std::io::Result<BindWorker> {
        let binder = Arc::new(binder);
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        let b = Arc::clone(&binder);
        let thread = std::thread::Builder::new()
            .name("intxd-binder".into())
            .spawn(move || {
                for job in job_rx {
                    let _ = done_tx.send(run(&b, job));
                    let _ = waker.wake();
                }
            })?;
        Ok(BindWorker {
            binder,
            jobs: Some(jobs),
            done,
            pending: 0,
            thread: Some(thread),
        })
    }

    /// The binder, for work that must finish before the loop goes on
    /// (start-up and a clean stop).
    pub fn binder(&self) -> &Binder {
        &self.binder
    }

    /// Queues a job. If the worker is gone, runs it here.
    pub fn submit(&mut self, job: Job) -> Option<Done> {
        let job = match &self.jobs {
            Some(tx) => match tx.send(job) {
                Ok(()) => {
                    self.pending += 1;
                    return None;
                }
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        log::warn!("binder worker gone; doing the sysfs work in the loop");
        Some(run(&self.binder, job))
    }

    /// The results that are in.
    pub fn finished(&mut self) -> Vec<Done> {
        let done: Vec<Done> = self.done.try_iter().collect();
        self.pending -= done.len().min(self.pending);
        done
    }

    /// Waits for every queued job (a clean stop).
    pub fn wait_all(&mut self) -> Vec<Done> {
        let mut all = Vec::new();
        while self.pending > 0 {
            match self.done.recv() {
                Ok(d) => {
                    self.pending -= 1;
                    all.push(d);
                }
                Err(_) => break,
            }
        }
        all
    }

    /// Whether jobs are still running.
    pub fn busy(&self) -> bool {
        self.pending > 0
    }
}

/// Does one job's sysfs work.
fn run(binder: &Binder, job: Job) -> Done {
    if let Some(rec) = &job.given_back {
        if let Err(e) = binder.given_back(rec) {
            log::error!("{}", chain(&e));
        }
    }
    if let Some(cfg) = &job.release {
        if let Err(e) = binder.release(cfg) {
            log::error!("{}", chain(&e));
        }
    }
    Done {
        slot: job.slot,
        bound: job.bind.map(|cfg| {
            let r = binder.bind(&cfg);
            (cfg, r)
        }),
    }
}

impl Drop for BindWorker {
    fn drop(&mut self) {
        // Closing the queue ends the thread once the job in hand is done
        // (a sysfs write gives up after `sysfs_timeout_ms`).
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
