//! Reactor: `--threads N` event loops on N threads ("threads under
//! coroutines"). Each loop has its own SO_REUSEPORT listener on the same
//! address, so the kernel spreads new connections across loops without a
//! shared accept queue or a hand-off between threads (docs/ARCHITECTURE.md
//! says why this was chosen). The main thread only watches signals and wakes
//! the loops when the shutdown phase changes; every loop logs its counts at
//! the end so balance can be checked.

use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mio::{Events, Poll, Token, Waker};

use super::event::{EventLoop, LoopStats};
use crate::context::Context;
use crate::listener::{self, BindOptions};
use crate::metrics::Metrics;
use crate::shutdown::Phase;
use crate::signals::Signals;
use crate::sys;

const SIGNALS: Token = Token(0);
const LOOP_ENDED: Token = Token(1);
const METRICS: Token = Token(2);

/// Stack size of a loop thread.
const STACK_SIZE: usize = 1024 * 1024;

/// Runs N event loops until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    let n = ctx.config.threads.max(1);
    let addr = listener.local_addr()?;
    let mut listeners = vec![listener];
    for _ in 1..n {
        listeners.push(listener::bind(addr, BindOptions { backlog: ctx.config.backlog, reuseport: true })?);
    }
    let mut poll = Poll::new()?;
    signals.register(poll.registry(), SIGNALS)?;
    let ended = Arc::new(Waker::new(poll.registry(), LOOP_ENDED)?);
    // Counted before the wake, so the main thread never misses an end.
    let finished = Arc::new(AtomicUsize::new(0));
    // Every loop's fds exist before the first loop accepts: a flood of
    // connections cannot make start-up itself run out of fds.
    let mut built = Vec::with_capacity(n);
    for (i, l) in listeners.into_iter().enumerate() {
        built.push(EventLoop::new(i, l, None, ctx.clone())?);
    }
    let wakers: Vec<_> = built.iter().map(|lp| lp.waker()).collect();
    let mut loops = Vec::with_capacity(n);
    for mut lp in built {
        lp.set_peers(wakers.clone());
        let i = loops.len();
        let (ended, finished) = (ended.clone(), finished.clone());
        loops.push(sys::spawn_masked(format!("loop-{i}"), STACK_SIZE, move || {
            let r = lp.run();
            finished.fetch_add(1, Ordering::SeqCst);
            let _ = ended.wake();
            r
        })?);
    }
    let mut metrics = Metrics::maybe_bind(ctx.config.metrics, poll.registry(), METRICS)?;
    ctx.ready();
    let mut events = Events::with_capacity(8);
    let mut seen = Phase::Running;
    while finished.load(Ordering::SeqCst) < n {
        if seen == Phase::Running && finished.load(Ordering::SeqCst) > 0 {
            log::error!("an event loop ended early; stopping the others");
            ctx.shutdown.stop_now();
        }
        let phase = ctx.shutdown.absorb_signals();
        if phase != seen {
            seen = phase;
            for w in &wakers {
                let _ = w.wake();
            }
        }
        crate::poll::wait(&mut poll, &mut events, None)?;
        signals.drain();
        if let Some(m) = &mut metrics {
            for ev in events.iter() {
                if !m.owns(ev.token()) {
                    continue;
                }
                m.on_event(ev, poll.registry(), &|| crate::metrics::render_process(ctx.slot));
            }
        }
    }
    let mut first_err = None;
    let mut all: Vec<LoopStats> = Vec::with_capacity(n);
    for h in loops {
        match h.join() {
            Ok(Ok(s)) => all.push(s),
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some(io::Error::other("an event loop panicked"))),
        }
    }
    for s in &all {
        log::info!("{s}");
    }
    first_err.map_or(Ok(()), Err)
}
