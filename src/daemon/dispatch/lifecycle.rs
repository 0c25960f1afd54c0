//! The guest-lifecycle requests of a device's owner: `suspend_intx` (INTx
//! off in VFIO, the route parked, so the VMM may enable MSI/MSI-X),
//! `resume_intx` (wired again and re-armed with one unmask) and `reset`
//! (quiesce INTx, reset the function, bring INTx back as the guest left
//! it). The order of each, and why, is in docs/protocol.md, "Guest
//! lifecycle".

use crate::control::proto::{ErrorCode, IntxState, Reply, Request};
use crate::daemon::Daemon;
use crate::util::error::chain;

/// One lifecycle action, from its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Suspend,
    Resume,
    Reset,
}

impl Daemon {
    /// Serves `suspend_intx`, `resume_intx` and `reset`.
    pub(super) fn lifecycle(&mut self, ci: usize, req: Request) -> Reply {
        let (action, name) = match req {
            Request::SuspendIntx { device } => (Action::Suspend, device),
            Request::ResumeIntx { device } => (Action::Resume, device),
            Request::Reset { device } => (Action::Reset, device),
            _ => return Reply::error(ErrorCode::BadRequest, "not a lifecycle request"),
        };
        let di = match self.find(&name) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let conn_id = self.conns.get(ci).map(|c| c.id);
        if self.devices[di].holder().map(|h| h.conn_id) != conn_id {
            return Reply::error(
                ErrorCode::NotAttached,
                format!("{name}: not attached by this connection; only its owner may suspend, resume or reset its INTx"),
            );
        }
        let mut reg = self.lp.registrar(di);
        let dev = &mut self.devices[di];
        let tag = dev.tag();
        let Some((open, att)) = dev.state.attached_mut() else {
            return Reply::error(ErrorCode::NotAttached, format!("{name}: not attached"));
        };
        let backend = open.backend.as_mut();
        let route = &mut att.route;
        let was = route.intx();
        let r = match (action, was) {
            (Action::Suspend, IntxState::Suspended) => {
                return wrong_state(&name, "suspend_intx", was, "it is already suspended")
            }
            (Action::Resume, IntxState::Enabled) => {
                return wrong_state(&name, "resume_intx", was, "suspend it first")
            }
            (Action::Suspend, _) => route.suspend(backend).map(|pending| {
                log::info!("{tag}: INTx suspended by its owner (pending: {pending})");
                Reply::IntxSuspended {
                    device: name.clone(),
                    pending,
                }
            }),
            (Action::Resume, _) => route.resume(backend, &mut reg).map(|()| {
                log::info!("{tag}: INTx resumed by its owner");
                Reply::IntxResumed {
                    device: name.clone(),
                }
            }),
            (Action::Reset, _) => {
                // Quiesce first: a reset under a live INTx could fire into
                // a half-reset function. A lost route is taken apart the
                // same way and stays suspended: what the VMM set behind
                // our back is not ours to restore.
                let quiesced = match was {
                    IntxState::Suspended => Ok(false),
                    _ => route.suspend(backend),
                };
                quiesced.and_then(|_| {
                    if let Err(e) = backend.reset() {
                        // The function keeps its state; INTx comes back
                        // anyway, and the error is the reply.
                        log::warn!("{tag}: {}", chain(&e));
                        if was == IntxState::Enabled {
                            route.resume(backend, &mut reg)?;
                        }
                        return Ok(Reply::error(ErrorCode::DeviceError, chain(&e)));
                    }
                    if was == IntxState::Enabled {
                        route.resume(backend, &mut reg)?;
                    }
                    log::info!(
                        "{tag}: reset by its owner; INTx {}",
                        intx_word(route.intx())
                    );
                    Ok(Reply::Reset {
                        device: name.clone(),
                        intx: route.intx(),
                    })
                })
            }
        };
        let reply = r.unwrap_or_else(|e| {
            log::error!("{tag}: {}", chain(&e));
            Reply::error(ErrorCode::DeviceError, chain(&e))
        });
        self.update_status();
        // The record carries the route's INTx state across a restart.
        self.save_state();
        reply
    }
}

fn intx_word(s: IntxState) -> &'static str {
    match s {
        IntxState::Enabled => "enabled",
        IntxState::Suspended => "suspended",
        IntxState::Lost => "lost",
    }
}

fn wrong_state(name: &str, op: &str, state: IntxState, fix: &str) -> Reply {
    Reply::error(
        ErrorCode::WrongState,
        format!(
            "{name}: {op} refused: its INTx is {}; {fix}",
            intx_word(state)
        ),
    )
}
