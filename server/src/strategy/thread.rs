//! Thread per connection. The acceptor admits a connection only while fewer
//! than `--max-conns` are open (the admission semaphore); at the cap it
//! stops accepting, the listen backlog absorbs the rest, and a connection
//! that closes wakes it. Each connection's thread is detached when it
//! finishes (no pile of join handles); threads still serving at the end are
//! joined.
//!
//! The connection threads know nothing of stops: the accepting thread
//! reaches their sockets through the drain's registry.

use std::io;
use std::net::TcpListener;
use std::time::Instant;

use mio::Events;

use crate::context::Context;
use crate::driver::blocking::Sock;
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::{Drain, Registry};
use crate::lifecycle::poller::Poller;
use crate::lifecycle::signals::{spawn_masked, Signals};
use crate::net::accept::AtCap;
use crate::net::acceptor::Acceptor;

/// Stack size of a connection thread: the driver needs little.
pub(crate) const STACK_SIZE: usize = 256 * 1024;

/// Runs the thread-per-connection strategy until the server stops.
pub(crate) fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let poller = Poller::new(&ctx.shutdown, Some(signals), ctx.config.metrics, Some(ctx.slot))?;
    let registry = Registry::new(poller.waker());
    let mut acceptor = Acceptor::new(listener, poller, &ctx, AtCap::Wait)?;
    let mut events = Events::with_capacity(16);
    let mut drain = Drain::new();
    let mut timers = Deadlines::new();
    ctx.ready();
    loop {
        let now = Instant::now();
        for stage in drain.advance(&ctx.shutdown, now) {
            acceptor.on_stage(stage);
            registry.on_stage(stage);
        }
        if !drain.serving() && registry.is_empty() && acceptor.is_idle() {
            break;
        }
        if let Some(conn) = acceptor.accept(now) {
            let (permit, peer) = (conn.permit, conn.peer);
            let stream = registry.register(conn.stream);
            let key = stream.key();
            let c = ctx.clone();
            let spawned = spawn_masked(format!("conn-{key}"), STACK_SIZE, move || {
                let _permit = permit;
                super::serve_blocking(Sock::Registered(stream), peer, &c, None);
            });
            match spawned {
                Ok(handle) => registry.attach(key, handle),
                // The closure (and with it the connection) was dropped: the
                // client sees a close, the server goes on.
                Err(e) => {
                    log::warn!("cannot spawn a connection thread: {e}; closing the connection");
                    ctx.handover_failed();
                }
            }
            continue;
        }
        timers.set(Timer::Drain, drain.next_change(&ctx.shutdown));
        acceptor.wait(&mut events, &mut timers)?;
    }
    for t in registry.take_threads() {
        let _ = t.join();
    }
    Ok(())
}
