//! A fixed pool of `--threads` workers fed by a queue (producer/consumer).
//! The acceptor is the producer; the admission cap is threads + `--queue`,
//! so the queue is bounded by construction and a full queue makes the
//! acceptor wait (backpressure) while the listen backlog holds the rest.
//!
//! With `--queue-timeout` the queue is the only waiting room: a connection
//! that waited that long in it is closed by the acceptor (workers held by
//! slow clients never make a queued client hang), and while the queue is
//! full the acceptor goes on accepting and closes new connections at once
//! (an explicit "busy", like haproxy's full queue), rather than leave them
//! in the listen backlog, where their wait could not be bounded: a client
//! would wait there, and then again in the queue.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Instant;

use mio::Events;

use crate::admission::Permit;
use crate::context::Context;
use crate::driver::blocking::Sock;
use crate::driver::Totals;
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::{Drain, Registered, Registry};
use crate::lifecycle::poller::Poller;
use crate::lifecycle::signals::{spawn_masked, Signals};
use crate::net::accept::AtCap;
use crate::net::acceptor::Acceptor;
use crate::queue::Queue;

/// Runs the thread-pool strategy until the server stops.
pub(crate) fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let poller = Poller::new(&ctx.shutdown, Some(signals), ctx.config.metrics, Some(ctx.slot))?;
    let registry = Registry::new(poller.waker());
    let at_cap = if ctx.config.queue_timeout.is_some() { AtCap::Refuse } else { AtCap::Wait };
    let mut acceptor = Acceptor::new(listener, poller, &ctx, at_cap)?;
    let queue = Arc::new(Queue::<(Registered, SocketAddr, Permit)>::default());
    let mut workers = Vec::with_capacity(ctx.config.threads.max(1));
    for i in 0..ctx.config.threads.max(1) {
        let queue = queue.clone();
        let c = ctx.clone();
        workers.push(spawn_masked(format!("pool-{i}"), super::thread::STACK_SIZE, move || {
            while let Some((conn, peer, _permit)) = queue.pop() {
                super::serve_blocking(Sock::Registered(conn), peer, &c, None);
            }
        })?);
    }
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
        if let Some(limit) = ctx.config.queue_timeout {
            let expired = now.checked_sub(limit).map_or_else(Vec::new, |cutoff| queue.expire(cutoff));
            if !expired.is_empty() {
                log::warn!("refused {} queued connection(s) that waited over --queue-timeout {limit:?}", expired.len());
                ctx.refused(expired.len());
                for _ in expired {
                    ctx.closed(Totals::default());
                }
            }
            timers.set(Timer::Queue, queue.oldest().map(|t| t + limit));
        }
        if let Some(conn) = acceptor.accept(now) {
            queue.push((registry.register(conn.stream), conn.peer, conn.permit), Instant::now());
            continue;
        }
        timers.set(Timer::Drain, drain.next_change(&ctx.shutdown));
        acceptor.wait(&mut events, &mut timers)?;
    }
    queue.close();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}
