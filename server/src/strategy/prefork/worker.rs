//! A prefork worker's whole life, from the fork to its exit code: die with
//! the master, take over signal handling as a worker, build a context of its
//! own (its scoreboard slot as its counters, its own admission and stop
//! event, its `--max-requests` share), and run the chosen in-process
//! strategy unchanged on the listener it was handed.

use std::net::TcpListener;
use std::sync::Arc;

use nix::unistd::Pid;

use crate::config::Mode;
use crate::context::Context;
use crate::lifecycle::signals::{Role, Signals};
use crate::process::children;
use crate::process::scoreboard::Slot;
use crate::sys::BlockedSignals;

/// What the master prepares for a new worker before forking it.
pub(super) struct Prepared {
    pub(super) position: usize,
    pub(super) slot_index: usize,
    pub(super) slot: Slot,
    pub(super) listener: TcpListener,
    pub(super) max_requests: Option<u64>,
}

/// Runs the worker; the return value is its exit code.
pub(super) fn run(
    prep: Prepared,
    signals: Option<Signals>,
    blocked: BlockedSignals,
    master: &Context,
    master_pid: Pid,
) -> i32 {
    children::die_with_parent(master_pid);
    let Some(signals) = signals else {
        blocked.release();
        return 1;
    };
    let signals = match signals.reinstall_in_child(Role::Worker, blocked) {
        Ok(s) => s,
        Err(e) => {
            log::error!("worker {}: signals: {e}", std::process::id());
            return 1;
        }
    };
    let mut config = (*master.config).clone();
    config.mode = config.worker.mode();
    config.metrics = None;
    if config.mode == Mode::Uring {
        config.threads = 1; // one ring per worker, on the listener it was handed
    }
    let ctx = Context::new(Arc::new(config), master.service.clone(), prep.slot, prep.max_requests);
    prep.slot.set_pid(std::process::id());
    prep.slot.beat();
    // The strategy marks the slot Running once it is set up (Context::ready).
    match crate::strategy::run(vec![prep.listener], signals, ctx) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("worker {}: {e}", std::process::id());
            1
        }
    }
}
