//! A fixed pool of `--threads` workers fed by a queue (producer/consumer).
//! The acceptor is the producer; it admits a connection only while fewer
//! than threads + `--queue` are admitted, so the queue is bounded by
//! construction and a full queue makes the acceptor wait (backpressure)
//! while the listen backlog holds the rest.
//!
//! With `--queue-timeout` the queue is the only waiting room: a connection
//! that waited that long in it is closed by the acceptor (workers held by
//! slow clients never make a queued client hang), and while the queue is
//! full the acceptor goes on accepting and closes new connections at once
//! (an explicit "busy", like haproxy's full queue), rather than leave them
//! in the listen backlog, where their wait could not be bounded: a client
//! would wait there, and then again in the queue.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use crate::acceptor::Acceptor;
use crate::context::Context;
use crate::driver::{blocking, Totals};
use crate::per_ip::IpPermit;
use crate::queue::Queue;
use crate::signals::Signals;
use crate::sys;
use crate::tracker::{Tracked, Tracker};

/// Runs the thread-pool strategy until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listener, signals, &ctx)?;
    let threads = ctx.config.threads.max(1);
    let tracker = Tracker::new(threads + ctx.config.queue, acceptor.waker());
    let queue = Arc::new(Queue::<(Tracked, Option<IpPermit>)>::default());
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let queue = queue.clone();
        let c = ctx.clone();
        workers.push(sys::spawn_masked(format!("pool-{i}"), super::thread::STACK_SIZE, move || {
            while let Some((conn, _permit)) = queue.pop() {
                let mut proto = (c.factory)();
                c.finished(blocking::serve(&conn, &mut *proto, &c.shutdown, c.config.idle_timeout, None));
            }
        })?);
    }
    ctx.ready();
    while ctx.shutdown.is_running() {
        if let Some(limit) = ctx.config.queue_timeout {
            let now = Instant::now();
            let expired = now.checked_sub(limit).map_or_else(Vec::new, |cutoff| queue.expire(cutoff));
            if !expired.is_empty() {
                log::warn!("refused {} queued connection(s) that waited over --queue-timeout {limit:?}", expired.len());
                ctx.refused(expired.len());
                for _ in expired {
                    ctx.closed(Totals::default());
                }
            }
            if let Some(t) = queue.oldest() {
                acceptor.wake_by(t + limit);
            }
        }
        let room = tracker.has_room() || {
            tracker.want_wake(true);
            tracker.has_room()
        };
        let next = acceptor.next(room || ctx.config.queue_timeout.is_some());
        tracker.want_wake(false);
        if let Some(accepted) = next? {
            if !tracker.has_room() {
                log::debug!("queue full: connection refused");
                ctx.refused(1);
                continue;
            }
            ctx.accepted();
            queue.push((tracker.admit(accepted.stream), accepted.permit), Instant::now());
        }
    }
    queue.close();
    super::drain(&mut acceptor, &tracker, &ctx)?;
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}
