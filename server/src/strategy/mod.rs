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
//! | `prefork/` | a master that forks worker processes, each running one of the above |
//!
//! Every strategy is the same life with a different way of giving
//! connections CPU time, and each file reads as that life, calling the
//! shared pieces: an [`Acceptor`](crate::net::acceptor::Acceptor) (the one
//! accept policy, admission, and a poll with signals and metrics), the
//! [`Drain`](crate::lifecycle::drain::Drain) (one `match` over the stages of
//! a stop), a deadline table, and a driver.

use std::io;
use std::net::TcpStream;

use crate::config::Mode;
use crate::context::Context;
use crate::driver::blocking::{self, End, Lookout};
use crate::lifecycle::signals::Signals;

pub(crate) mod event;
pub(crate) mod fork;
pub(crate) mod pool;
pub(crate) mod prefork;
pub(crate) mod reactor;
pub(crate) mod serial;
pub(crate) mod thread;

/// Runs the strategy of `ctx.config.mode` until the server stops.
pub(crate) fn run(listener: std::net::TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    match ctx.config.mode {
        Mode::Serial => serial::run(listener, signals, ctx),
        Mode::Fork => fork::run(listener, signals, ctx),
        Mode::Thread => thread::run(listener, signals, ctx),
        Mode::Pool => pool::run(listener, signals, ctx),
        Mode::Event => event::run(listener, signals, ctx),
        Mode::Reactor => reactor::run(listener, signals, ctx),
        Mode::Prefork => prefork::run(listener, signals, ctx),
    }
}

/// Serves one connection with the blocking driver, counts it, and logs how
/// it ended (peer faults below error level). Serial, fork children, thread
/// and pool workers serve through here.
fn serve_blocking(stream: &TcpStream, ctx: &Context, lookout: Option<&mut dyn Lookout>) {
    let mut proto = (ctx.factory)();
    let served = blocking::serve(stream, &mut *proto, &ctx.shutdown, ctx.config.idle_timeout, lookout);
    let t = served.totals;
    match served.end {
        Ok(End::Idle) => log::debug!("connection closed: idle for {:?}", ctx.config.idle_timeout.unwrap_or_default()),
        Ok(end) => log::trace!("connection ended: {end:?}, {} bytes in, {} out", t.bytes_in, t.bytes_out),
        Err(e) => log::debug!("connection failed: {e}"),
    }
    ctx.closed(t);
}
