//! The concurrency strategies, one file each: this folder's listing is the
//! list of models.
//!
//! | file | model |
//! |---|---|
//! | `serial.rs` | iterative: one client at a time |
//! | `fork.rs` | a process per connection |
//! | `thread.rs` | a thread per connection |
//! | `pool.rs` | a fixed thread pool fed by a bounded queue |
//! | `event.rs` | one thread, one event loop (mio), connections as state machines |
//! | `reactor.rs` | one event loop per thread, each with its own SO_REUSEPORT listener |
//! | `prefork.rs` | a master that forks worker processes, each running one of the above |
//!
//! Every strategy takes a bound listener, the signal pipe and a
//! [`Context`], serves until the shutdown event says stop, drains, and
//! returns. All of them drive the same protocol through a driver.

use std::io;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::acceptor::Acceptor;
use crate::config::Mode;
use crate::context::Context;
use crate::shutdown::Phase;
use crate::signals::Signals;
use crate::tracker::Tracker;

pub mod event;
pub mod fork;
pub mod pool;
pub mod prefork;
pub mod reactor;
pub mod serial;
pub mod thread;

/// Runs the strategy of `ctx.config.mode` until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
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

/// After the grace period, how long drivers get to flush what they received
/// before their sockets are shut both ways.
pub const FLUSH_GRACE: Duration = Duration::from_secs(1);

/// The end of a blocking strategy's life: close the listener, let tracked
/// connections finish until they close or the grace ends, then make their
/// reads see end-of-file (they flush and close), and after [`FLUSH_GRACE`]
/// shut them both ways. Returns when no connection is left.
pub(crate) fn drain(acceptor: &mut Acceptor, tracker: &Tracker, ctx: &Context) -> io::Result<()> {
    acceptor.close_listener();
    ctx.shutdown.drain();
    tracker.want_wake(true);
    let mut read_shut: Option<Instant> = None;
    let mut both_shut = false;
    while tracker.active() > 0 {
        let now = Instant::now();
        let grace_over = ctx.shutdown.remaining().is_none_or(|d| d.is_zero());
        if (grace_over || ctx.shutdown.phase() == Phase::Immediate) && read_shut.is_none() {
            log::info!(
                "grace over: closing {} connection(s) after flushing",
                tracker.shutdown_all(std::net::Shutdown::Read)
            );
            read_shut = Some(now);
        }
        let flush_over = read_shut.is_some_and(|t| now >= t + FLUSH_GRACE);
        if (flush_over || ctx.shutdown.phase() == Phase::Immediate) && !both_shut {
            tracker.shutdown_all(std::net::Shutdown::Both);
            both_shut = true;
        }
        let timeout = match read_shut {
            None => ctx.shutdown.remaining(),
            Some(t) if !both_shut => Some((t + FLUSH_GRACE).saturating_duration_since(now)),
            Some(_) => Some(Duration::from_millis(50)),
        };
        acceptor.wait(timeout)?;
    }
    for t in tracker.take_threads() {
        let _ = t.join();
    }
    Ok(())
}
