//! The concurrency strategies, one file (or folder) each: this folder's
//! listing is the list of models.
//!
//! | file | model |
//! |---|---|
//! | `serial.rs` | iterative: one client at a time |
//! | `fork.rs` | a process per connection |
//! | `thread.rs` | a thread per connection |
//! | `pool/` | a fixed thread pool fed by a bounded queue |
//! | `event/` | one thread, one event loop (mio), connections as state machines |
//! | `reactor.rs` | one event loop per thread, each with its own SO_REUSEPORT listener |
//! | `uring.rs` | one thread, one io_uring: completions instead of readiness |
//! | `prefork/` | a master that forks worker processes, each running one of the above |
//!
//! Every strategy is the same life with a different way of giving
//! connections CPU time, and each file reads as that life, calling the
//! shared pieces: an [`Acceptor`](crate::net::acceptor::Acceptor) (the one
//! accept policy, admission, and a poll with signals and metrics), the
//! [`Drain`](crate::lifecycle::drain::Drain) (one `match` over the stages of
//! a stop), a deadline table, and a driver.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use crate::config::Mode;
use crate::context::Context;
use crate::driver::blocking::{self, BlockingIo, End, SharedLookout, Sock};
use crate::driver::Totals;
use crate::handler::{block_on, panic_message, Connection};
use crate::lifecycle::signals::Signals;
use crate::serve::Service;

pub(crate) mod event;
pub(crate) mod fork;
mod idle;
pub(crate) mod pool;
pub(crate) mod prefork;
pub(crate) mod reactor;
pub(crate) mod serial;
pub(crate) mod thread;
pub(crate) mod uring;

/// Runs the strategy of `ctx.config.mode` until the server stops, on
/// `listeners`: one, or one per loop or worker position when they were
/// handed over that way (the strategies that serve one listener serve the
/// first).
pub(crate) fn run(mut listeners: Vec<std::net::TcpListener>, signals: Signals, ctx: Context) -> io::Result<()> {
    match ctx.config.mode {
        Mode::Reactor => return reactor::run(listeners, signals, ctx),
        Mode::Uring => return uring::run(listeners, signals, ctx),
        Mode::Prefork => return prefork::run(listeners, signals, ctx),
        _ => {}
    }
    if listeners.len() > 1 {
        log::warn!("{} mode serves one listener: the first of the {} handed over", ctx.config.mode, listeners.len());
    }
    let listener = listeners.swap_remove(0);
    match ctx.config.mode {
        Mode::Serial => serial::run(listener, signals, ctx),
        Mode::Fork => fork::run(listener, signals, ctx),
        Mode::Thread => thread::run(listener, signals, ctx),
        Mode::Pool => pool::run(listener, signals, ctx),
        Mode::Event => event::run(listener, signals, ctx),
        Mode::Reactor | Mode::Uring | Mode::Prefork => unreachable!("served above"),
    }
}

/// Serves one connection on this thread (serial, fork children, thread and
/// pool workers): a protocol through the blocking driver, or a handler
/// through `block_on` over the same socket side. Counts it, and logs how it
/// ended (peer faults below error level).
fn serve_blocking(sock: Sock, peer: SocketAddr, ctx: &Context, lookout: Option<SharedLookout>) {
    let io = match BlockingIo::new(sock, &ctx.shutdown, ctx.config.idle_timeout, lookout.clone()) {
        Ok(io) => io,
        Err(e) => {
            log::debug!("{peer}: {e}");
            ctx.closed(Totals::default());
            return;
        }
    };
    // Counted and logged while the socket is still held: in thread and pool
    // modes its registry entry is what a stopping server waits for.
    let finish = |t: Totals| {
        log::trace!("{peer}: {} bytes in, {} out", t.bytes_in, t.bytes_out);
        ctx.closed(t);
    };
    match &ctx.service {
        Service::Protocol(factory) => {
            let mut io = io;
            let mut proto = factory();
            match blocking::serve(&mut io, &mut *proto) {
                Ok(End::Idle) => {
                    log::debug!("{peer}: closed, idle for {:?}", ctx.config.idle_timeout.unwrap_or_default())
                }
                Ok(end) => log::trace!("{peer}: ended: {end:?}"),
                Err(e) => log::debug!("{peer}: {e}"),
            }
            finish(io.totals());
        }
        Service::Handler(h) => {
            let io = Rc::new(RefCell::new(io));
            let future = h(Connection::blocking(io.clone(), peer));
            let ran = catch_unwind(AssertUnwindSafe(|| block_on(future, &ctx.shutdown, lookout.as_ref())));
            handler_ended(ctx, peer, ran.map_err(|p| panic_message(p.as_ref())));
            let t = io.borrow().totals();
            finish(t);
        }
    }
}

/// Logs and counts how a handler ended: `Ok(None)` when the stop's last
/// stage dropped it.
fn handler_ended(ctx: &Context, peer: SocketAddr, ran: Result<Option<io::Result<()>>, String>) {
    match ran {
        Ok(Some(Ok(()))) | Ok(None) => {}
        Ok(Some(Err(e))) => {
            log::debug!("{peer}: handler: {e}");
            ctx.handler_failed();
        }
        Err(panic) => {
            log::warn!("{peer}: handler panicked: {panic}; connection closed");
            ctx.handler_failed();
        }
    }
}
