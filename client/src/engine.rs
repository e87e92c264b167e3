//! The load generator: [`run`] splits the connections over `threads` event
//! loops (mio, edge-triggered), ramps connections up at `connect_rate`, drives
//! each `Conn` from readiness events and pacing timers, stops at the deadline
//! or when the message budget is spent, and merges what each thread recorded
//! into a `Report`. Called by `lib.rs` (`switchyard_client::run`) for the CLI
//! and the benchmark harness.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use crate::config::Config;
use crate::conn::{Conn, Ctx, State};
use crate::pacing::{share, Schedule, NANOS_PER_SEC};
use crate::payload::Payloads;
use crate::progress::Series;
use crate::report::Report;
use crate::stats::{thread_cpu_secs, Recorder, Tick};
use crate::timer::Waker;

/// How often each loop checks timeouts and sends its per-second tick.
const TICK_NS: u64 = 100_000_000;

/// The token of the thread's timer (connections use 0..conns).
const WAKER: Token = Token(usize::MAX);

/// Bytes read per `read` call.
const SCRATCH: usize = 64 * 1024;

/// Runs the load test described by `cfg` and reports what it measured.
///
/// Prints nothing unless `cfg.progress` is set (then one line per second on
/// stderr). Errors of the connections (refused, reset, ...) are counted in the
/// report, not returned; an `Err` means the test could not run at all (bad
/// configuration, no threads, no poll).
pub fn run(cfg: &Config) -> io::Result<Report> {
    cfg.validate()?;
    let threads = cfg.threads.min(cfg.conns);
    let payloads = Payloads::new(cfg.payload, cfg.size);
    let measure_start = ramp_ns(cfg, threads) + cfg.warmup.as_nanos() as u64;
    let mut series = Series::new(threads, measure_start, cfg.progress, cfg.conns);
    let cpu0 = thread_cpu_secs();
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel::<Tick>();
    let recorders = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let tx = tx.clone();
                let payloads = &payloads;
                std::thread::Builder::new()
                    .name(format!("client-{t}"))
                    .spawn_scoped(s, move || thread_main(t, threads, cfg, payloads, t0, tx))
            })
            .collect::<io::Result<_>>()?;
        drop(tx);
        for tick in rx {
            series.add(tick);
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(io::Error::other("client thread panicked"))))
            .collect::<io::Result<Vec<Recorder>>>()
    })?;
    let main_cpu = thread_cpu_secs() - cpu0;
    Ok(Report::from_run(cfg, threads, measure_start, &recorders, series.finish(), main_cpu))
}

/// How long the connection ramp takes: the slowest thread's connections,
/// `connect_rate / threads` per second. Fixed-rate schedules start, and
/// warm-up and duration count, from its end.
pub fn ramp_ns(cfg: &Config, threads: usize) -> u64 {
    (0..threads)
        .map(|t| {
            let n = (t..cfg.conns).step_by(threads).count().saturating_sub(1) as u128;
            let rate = share(cfg.connect_rate, threads, t).max(1) as u128;
            (n * u128::from(NANOS_PER_SEC) / rate) as u64
        })
        .max()
        .unwrap_or(0)
}

/// Nanoseconds since `t0`.
fn ns_since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// Adds the outcome of a call on connection `i` to the loop's bookkeeping.
#[allow(clippy::too_many_arguments)]
fn settle(
    conns: &mut [Conn],
    i: usize,
    was_done: bool,
    r: Result<Option<u64>, crate::stats::ErrorKind>,
    rec: &mut Recorder,
    reg: &mio::Registry,
    heap: &mut BinaryHeap<Reverse<(u64, usize)>>,
    live: &mut usize,
) {
    let c = &mut conns[i];
    match r {
        Ok(Some(t)) => heap.push(Reverse((t, i))),
        Ok(None) => {}
        Err(kind) => c.fail(kind, rec, reg),
    }
    if !was_done && c.state() == State::Done {
        *live -= 1;
    }
}

/// One event loop: connections `t`, `t + threads`, `t + 2 * threads`, ...
fn thread_main(
    t: usize,
    threads: usize,
    cfg: &Config,
    payloads: &Payloads,
    t0: Instant,
    ticks: mpsc::Sender<Tick>,
) -> io::Result<Recorder> {
    let ramp = ramp_ns(cfg, threads);
    let measure_start = ramp + cfg.warmup.as_nanos() as u64;
    let deadline = cfg.effective_duration().map(|d| measure_start + d.as_nanos() as u64);
    let timeout_ns = cfg.timeout.as_nanos() as u64;
    let depth = cfg.effective_depth();
    let mut rec = Recorder::new(t, measure_start, Some(ticks));
    let mut poll = Poll::new()?;
    let mut waker = Waker::new(poll.registry(), WAKER)?;
    let mut events = Events::with_capacity(1024);

    let mut conns = Vec::new();
    for i in (t..cfg.conns).step_by(threads) {
        let budget = cfg.messages.map(|n| share(n, cfg.conns, i));
        let schedule = cfg.rate.map(|r| Schedule::new(share(r, cfg.conns, i), i, cfg.conns));
        if budget == Some(0) || schedule == Some(None) {
            continue; // nothing for this connection to do
        }
        let addr = cfg.addrs[i % cfg.addrs.len()];
        let source = (!cfg.source_ips.is_empty()).then(|| cfg.source_ips[i % cfg.source_ips.len()]);
        let conn = Conn::new(i as u64, Token(conns.len()), addr, source, depth);
        conns.push(conn.paced(budget, schedule.flatten(), ramp));
    }
    let connect_rate = share(cfg.connect_rate, threads, t).max(1);
    let mut ctx = Ctx { payloads, depth, reconnect: cfg.reconnect, nodelay: cfg.nodelay, stopping: false };
    let mut heap = BinaryHeap::new();
    let mut scratch = vec![0u8; SCRATCH];
    let mut live = conns.len();
    let mut started = 0;
    let mut next_tick = 0;
    let mut drain_until = u64::MAX;
    let mut now = ns_since(t0);
    loop {
        let reg = poll.registry();
        if !ctx.stopping && deadline.is_some_and(|d| now >= d) {
            ctx.stopping = true;
            // Long enough for every outstanding message to reach its timeout
            // (checked every tick) and be counted as such.
            drain_until = now + timeout_ns + 2 * TICK_NS;
            live -= conns.len() - started; // never started: nothing to do
            conns.truncate(started);
            for i in 0..conns.len() {
                let was = conns[i].state() == State::Done;
                let r = conns[i].pump(&ctx, &mut rec, reg, now);
                settle(&mut conns, i, was, r, &mut rec, reg, &mut heap, &mut live);
            }
        }
        // The ramp: at most `connect_rate` new connections per second.
        let allowed = (1 + u128::from(connect_rate) * u128::from(now) / u128::from(NANOS_PER_SEC)) as usize;
        while started < conns.len().min(allowed) {
            let i = started;
            started += 1;
            let r = conns[i].start(&ctx, &mut rec, reg, now);
            settle(&mut conns, i, false, r, &mut rec, reg, &mut heap, &mut live);
        }
        while let Some(&Reverse((at, i))) = heap.peek() {
            if at > now {
                break;
            }
            heap.pop();
            if conns.get_mut(i).is_some_and(|c| c.take_timer(at)) {
                let was = conns[i].state() == State::Done;
                let r = conns[i].pump(&ctx, &mut rec, reg, now);
                settle(&mut conns, i, was, r, &mut rec, reg, &mut heap, &mut live);
            }
        }
        if now >= next_tick {
            let mut open = 0;
            for c in conns.iter_mut() {
                if let Some(kind) = c.check_timeout(now, timeout_ns) {
                    c.fail(kind, &mut rec, reg);
                    live -= 1;
                }
                open += u64::from(c.state() == State::Open);
            }
            rec.tick(now, open);
            next_tick = now + TICK_NS;
        }
        if live == 0 && started == conns.len() {
            break;
        }
        if now >= drain_until {
            for c in conns.iter_mut().filter(|c| c.state() != State::Done) {
                c.abandon(&mut rec, reg);
            }
            break;
        }
        let mut wake = next_tick.min(drain_until);
        if let Some(d) = deadline.filter(|_| !ctx.stopping) {
            wake = wake.min(d);
        }
        if let Some(&Reverse((at, _))) = heap.peek() {
            if at < wake {
                wake = at;
                waker.arm(at, now)?;
            }
        }
        if started < conns.len() {
            wake = wake.min((started as u128 * u128::from(NANOS_PER_SEC) / u128::from(connect_rate)) as u64);
        }
        let wait = Duration::from_nanos(wake.saturating_sub(now));
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let reg = poll.registry();
        for ev in events.iter() {
            if ev.token() == WAKER {
                waker.fired();
                continue;
            }
            let i = ev.token().0;
            if i >= conns.len() {
                continue;
            }
            // Per event: a large batch must not age the later timestamps.
            now = ns_since(t0);
            let was = conns[i].state() == State::Done;
            let r = conns[i].on_event(ev, &ctx, &mut rec, reg, &mut scratch, now);
            settle(&mut conns, i, was, r, &mut rec, reg, &mut heap, &mut live);
        }
        now = ns_since(t0);
    }
    rec.finish(ns_since(t0));
    Ok(rec)
}
