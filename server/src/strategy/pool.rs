//! A fixed pool of `--threads` workers fed by a queue (producer/consumer).
//! The acceptor is the producer; it admits a connection only while fewer
//! than threads + `--queue` are admitted, so the queue is bounded by
//! construction and a full queue makes the acceptor wait (backpressure)
//! while the listen backlog holds the rest.

use std::io;
use std::net::TcpListener;

use crate::acceptor::Acceptor;
use crate::context::Context;
use crate::driver::blocking;
use crate::per_ip::IpPermit;
use crate::signals::Signals;
use crate::sys;
use crate::tracker::{Tracked, Tracker};

/// Runs the thread-pool strategy until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listener, signals, &ctx)?;
    let threads = ctx.config.threads.max(1);
    let tracker = Tracker::new(threads + ctx.config.queue, acceptor.waker());
    let (tx, rx) = crossbeam_channel::unbounded::<(Tracked, Option<IpPermit>)>();
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let rx = rx.clone();
        let c = ctx.clone();
        workers.push(sys::spawn_masked(format!("pool-{i}"), super::thread::STACK_SIZE, move || {
            for (conn, _permit) in rx.iter() {
                let mut proto = (c.factory)();
                c.finished(blocking::serve(&conn, &mut *proto, &c.shutdown, c.config.idle_timeout, None));
            }
        })?);
    }
    ctx.ready();
    while ctx.shutdown.is_running() {
        let room = tracker.has_room() || {
            tracker.want_wake(true);
            tracker.has_room()
        };
        let next = acceptor.next(room);
        tracker.want_wake(false);
        if let Some(accepted) = next? {
            ctx.accepted();
            // Workers only stop when `tx` is dropped, so the send succeeds.
            let _ = tx.send((tracker.admit(accepted.stream), accepted.permit));
        }
    }
    drop(tx);
    super::drain(&mut acceptor, &tracker, &ctx)?;
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}
