//! Reactor: `--threads N` event loops on N threads ("threads under
//! coroutines"). Each loop has its own SO_REUSEPORT listener on the same
//! address, so the kernel spreads new connections across loops without a
//! shared accept queue or a hand-off between threads (docs/ARCHITECTURE.md
//! says why this was chosen). The loops share the process's admission
//! semaphore (`--max-conns` is per process) and stop event. The main thread
//! only dispatches signals, serves metrics, starts a binary upgrade, and
//! wakes the loops when the shutdown phase changes; every loop logs its
//! counts at the end so balance can be checked.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mio::Events;

use super::event::{self, EventLoop, LoopStats};
use crate::context::Context;
use crate::lifecycle::poller::Poller;
use crate::lifecycle::shutdown::Phase;
use crate::lifecycle::signals::{spawn_masked, Signals};
use crate::net::listener::{self, BindOptions};

/// Stack size of a loop thread.
const STACK_SIZE: usize = 1024 * 1024;

/// Runs N event loops until the server stops.
pub(crate) fn run(listeners: Vec<TcpListener>, signals: Signals, ctx: Context) -> io::Result<()> {
    run_loops(listeners, signals, ctx, event::acceptor, |i, acceptor, ctx| EventLoop::with(i, acceptor, ctx).run())
}

/// The reactor's frame, for any kind of loop (event loops here, io_uring
/// rings for `uring --threads N`): `--threads` listeners on one address
/// (SO_REUSEPORT; those handed over, and new ones to make up the number),
/// one poller each, made here before any loop starts (`prepare` turns them
/// into what a loop needs, on this thread), then one thread per loop
/// running `serve`; this thread dispatches signals, serves metrics, starts
/// a binary upgrade, and wakes the loops when the shutdown phase changes.
pub(crate) fn run_loops<P: Send + 'static>(
    mut listeners: Vec<TcpListener>,
    signals: Signals,
    ctx: Context,
    prepare: impl Fn(TcpListener, Poller, &Context) -> io::Result<P>,
    serve: impl Fn(usize, P, &Context) -> io::Result<LoopStats> + Clone + Send + 'static,
) -> io::Result<()> {
    let n = ctx.config.threads.max(listeners.len()).max(1);
    let addr = listeners[0].local_addr()?;
    // The sockets of the server (what a binary upgrade hands over): one per
    // loop, unless the one handed over without SO_REUSEPORT is shared.
    let mut own = Vec::with_capacity(n);
    for l in &listeners {
        own.push(l.try_clone()?);
    }
    while listeners.len() < n {
        if socket2::SockRef::from(&listeners[0]).reuse_port()? {
            let l = listener::bind(addr, BindOptions { backlog: ctx.config.backlog, reuseport: true })?;
            own.push(l.try_clone()?);
            listeners.push(l);
        } else {
            // A socket handed over without SO_REUSEPORT: the loops share it
            // (each registers it with EPOLLEXCLUSIVE, as prefork workers do).
            listeners.push(listeners[0].try_clone()?);
        }
    }
    let mut main = Poller::new(&ctx.shutdown, Some(signals), ctx.config.metrics, Some(ctx.slot))?;
    // Counted before the wake, so the main thread never misses an end.
    let finished = Arc::new(AtomicUsize::new(0));
    // Every loop's fds exist before the first loop accepts: a flood of
    // connections cannot make start-up itself run out of fds.
    let mut built = Vec::with_capacity(n);
    let mut wakers = Vec::with_capacity(n);
    for l in listeners {
        let poller = Poller::new(&ctx.shutdown, None, None, Some(ctx.slot))?;
        wakers.push(poller.waker());
        built.push(prepare(l, poller, &ctx)?);
    }
    let mut loops = Vec::with_capacity(n);
    for prepared in built {
        let i = loops.len();
        let (ended, finished, c, serve) = (main.waker(), finished.clone(), ctx.clone(), serve.clone());
        loops.push(spawn_masked(format!("loop-{i}"), STACK_SIZE, move || {
            let r = serve(i, prepared, &c);
            finished.fetch_add(1, Ordering::SeqCst);
            let _ = ended.wake();
            r
        })?);
    }
    ctx.ready();
    let mut events = Events::with_capacity(8);
    let mut seen = Phase::Running;
    while finished.load(Ordering::SeqCst) < n {
        if seen == Phase::Running && finished.load(Ordering::SeqCst) > 0 {
            log::error!("a loop ended early; stopping the others");
            ctx.shutdown.stop_now();
        }
        let phase = ctx.shutdown.phase();
        if phase != seen {
            seen = phase;
            // The loops close their sockets as they drain; these copies must
            // not keep them open.
            own.clear();
            for w in &wakers {
                let _ = w.wake();
            }
        }
        main.wait(&mut events, None)?;
        if main.take_notices().upgrade > 0 {
            let fds: Vec<_> = own.iter().map(|l| l.as_fd()).collect();
            main.start_upgrade(&fds);
        }
        main.serve_metrics(|| ctx.page());
    }
    let mut first_err = None;
    for h in loops {
        match h.join() {
            Ok(Ok(s)) => log::info!("{s}"),
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some(io::Error::other("a loop panicked"))),
        }
    }
    first_err.map_or(Ok(()), Err)
}
