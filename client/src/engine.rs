//! The load generator: [`run`] splits the connections over `threads` event
//! loops (mio, edge-triggered), ramps every connection up at
//! `connect_rate` and holds it open to the end of the run, drives each
//! `Conn` from readiness events and, at a fixed rate, from the thread's
//! schedule, stops at the deadline or when the message budget is spent,
//! sends every held connection its final check, and merges what each thread
//! recorded into a `Report`. Called by `lib.rs` (`switchyard_client::run`)
//! for the CLI and the benchmark harness.
//!
//! At a fixed rate each thread owns a [`Pacer`] (its share of the rate) and
//! a list of free connections. When a message falls due the thread takes it
//! up (its lag, how late that is against the schedule, is recorded) and
//! hands it to the free connection that has waited longest: round robin over
//! the connections with room in their pipeline. When every connection is
//! busy, due messages wait in order for the next one to free up; that wait
//! is the server's doing and counts in the corrected latency, not in the lag.

use std::collections::VecDeque;
use std::io;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use mio::{Events, Poll, Registry, Token};

use crate::config::Config;
use crate::conn::{Conn, Ctx, State};
use crate::pacing::{share, Pacer, NANOS_PER_SEC};
use crate::payload::Payloads;
use crate::progress::Series;
use crate::report::Report;
use crate::stats::{thread_cpu_secs, ErrorKind, Recorder, Tick, TickSink};
use crate::timer::Waker;

/// How often each loop checks timeouts and sends its per-second tick.
const TICK_NS: u64 = 100_000_000;

/// The token of the thread's timer (connections use 0..conns).
const WAKER: Token = Token(usize::MAX);

/// Bytes read per `read` call.
const SCRATCH: usize = 64 * 1024;

/// When things happen in a run, in ns since its start (the same on every thread).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// The connection ramp ends (the slowest thread's last connect).
    pub ramp_ns: u64,
    /// The warm-up starts: `--start-at`, or the end of the ramp. Fixed-rate
    /// schedules count from here.
    pub origin_ns: u64,
    /// Closed loop: the first message may go (`--start-at`, or at once).
    pub first_send_ns: u64,
    /// Measuring starts (after the warm-up).
    pub measure_start_ns: u64,
    /// Measuring stops (`None`: when the message budget is spent).
    pub deadline_ns: Option<u64>,
    /// The wall-clock time of the run's start (ns 0).
    pub wall_t0: SystemTime,
}

impl Plan {
    /// The plan of `cfg` on `threads` threads, started at `wall_t0`.
    pub fn new(cfg: &Config, threads: usize, wall_t0: SystemTime) -> Plan {
        let ramp_ns = ramp_ns(cfg, threads);
        let start = cfg.start_at.map(|at| at.duration_since(wall_t0).unwrap_or_default().as_nanos() as u64);
        let origin_ns = start.unwrap_or(ramp_ns);
        let measure_start_ns = origin_ns + cfg.warmup.as_nanos() as u64;
        Plan {
            ramp_ns,
            origin_ns,
            first_send_ns: start.unwrap_or(0),
            measure_start_ns,
            deadline_ns: cfg.effective_duration().map(|d| measure_start_ns + d.as_nanos() as u64),
            wall_t0,
        }
    }

    /// The wall-clock time `ns` after the start of the run.
    pub fn wall(&self, ns: u64) -> SystemTime {
        self.wall_t0 + Duration::from_nanos(ns)
    }
}

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
    let cpu0 = thread_cpu_secs();
    let clock = Clock::start();
    let plan = Plan::new(cfg, threads, SystemTime::now());
    let mut series = Series::new(threads, plan.measure_start_ns, cfg.progress, cfg.conns);
    if threads == 1 {
        // One engine thread: run it here, feeding the series itself.
        let sink = TickSink::Series(Box::new(series));
        let mut rec = Thread::new(0, 1, cfg, &plan, &payloads, clock, sink).run()?;
        let series = rec.take_series().expect("the series the ticks went into");
        return Ok(Report::from_run(cfg, threads, &plan, &[rec], series.finish(), 0.0));
    }
    let (tx, rx) = mpsc::channel::<Tick>();
    let recorders = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let tx = tx.clone();
                let payloads = &payloads;
                std::thread::Builder::new().name(format!("client-{t}")).spawn_scoped(s, move || {
                    Thread::new(t, threads, cfg, &plan, payloads, clock, TickSink::Channel(tx)).run()
                })
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
    Ok(Report::from_run(cfg, threads, &plan, &recorders, series.finish(), main_cpu))
}

/// How long the connection ramp takes: the slowest thread's connections,
/// `connect_rate / threads` per second. Without `--start-at`, fixed-rate
/// schedules start, and warm-up and duration count, from its end.
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

/// The run's clock: nanoseconds on CLOCK_MONOTONIC since the run started,
/// read with one clock_gettime (vDSO) and a subtraction (the hot path reads
/// it once per event and once per send; `Instant` arithmetic costs more).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: u64,
}

impl Clock {
    #[inline]
    fn raw() -> u64 {
        // rustix calls the vDSO itself, inlined: no libc frame (see `conn::recv`).
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        t.tv_sec as u64 * NANOS_PER_SEC + t.tv_nsec as u64
    }

    /// A clock whose zero is now.
    pub fn start() -> Clock {
        Clock { base: Clock::raw() }
    }

    /// Nanoseconds since the clock's zero.
    #[inline]
    pub fn now(&self) -> u64 {
        Clock::raw().saturating_sub(self.base)
    }
}

/// A message due at a fixed rate, not yet sent.
#[derive(Clone, Copy, Debug)]
struct Due {
    /// When it was due (ns since the start of the run).
    sched: u64,
    /// Its lag is recorded (it found every connection busy).
    lag_taken: bool,
}

/// One event loop: connections `t`, `t + threads`, `t + 2 * threads`, ...
struct Thread<'a> {
    cfg: &'a Config,
    plan: &'a Plan,
    clock: Clock,
    ctx: Ctx<'a>,
    rec: Recorder,
    conns: Vec<Conn>,
    /// Fixed rate: the connections that may take a message, longest-waiting first.
    free: VecDeque<usize>,
    /// Fixed rate: messages due and waiting for a free connection.
    backlog: VecDeque<Due>,
    pacer: Option<Pacer>,
    connect_rate: u64,
    /// Connections not done.
    live: usize,
    /// Connections started by the ramp.
    started: usize,
    /// Closed loop: the connections opened before the first send have been started.
    kicked: bool,
    drain_until: u64,
}

impl<'a> Thread<'a> {
    fn new(
        t: usize,
        threads: usize,
        cfg: &'a Config,
        plan: &'a Plan,
        payloads: &'a Payloads,
        clock: Clock,
        sink: TickSink,
    ) -> Thread<'a> {
        let paced = cfg.rate.is_some();
        let depth = cfg.effective_depth();
        let mut rec = Recorder::new(t, plan.measure_start_ns, paced, sink);
        let mut conns = Vec::new();
        let mut budget = 0;
        for i in (t..cfg.conns).step_by(threads) {
            // Closed loop: each connection its share of the budget. At a fixed
            // rate the thread's dispatcher spends the thread's share.
            let own = cfg.messages.filter(|_| !paced).map(|n| share(n, cfg.conns, i));
            budget += own.unwrap_or(0);
            let addr = cfg.addrs[i % cfg.addrs.len()];
            let source = (!cfg.source_ips.is_empty()).then(|| cfg.source_ips[i % cfg.source_ips.len()]);
            conns.push(Conn::new(i as u64, Token(conns.len()), addr, source, depth, own));
        }
        rec.budget = cfg.messages.map(|n| if paced { share(n, threads, t) } else { budget });
        let pacer = cfg.rate.and_then(|r| Pacer::new(share(r, threads, t), t, threads, cfg.arrival, cfg.seed));
        let ctx = Ctx {
            payloads,
            depth,
            reconnect: cfg.reconnect,
            paced,
            nodelay: cfg.nodelay,
            origin: plan.first_send_ns,
            stopping: false,
        };
        let live = conns.len();
        Thread {
            cfg,
            plan,
            clock,
            ctx,
            rec,
            conns,
            free: VecDeque::new(),
            backlog: VecDeque::new(),
            pacer,
            connect_rate: share(cfg.connect_rate, threads, t).max(1),
            live,
            started: 0,
            kicked: paced,
            drain_until: u64::MAX,
        }
    }

    /// Adds the outcome of a call on connection `i` to the loop's bookkeeping.
    #[inline(always)]
    fn settle(&mut self, i: usize, was_done: bool, r: Result<(), ErrorKind>, reg: &Registry) {
        let c = &mut self.conns[i];
        if let Err(kind) = r {
            c.fail(kind, &mut self.rec, reg);
        }
        if !was_done && c.state() == State::Done {
            self.live -= 1;
        }
        if self.ctx.paced && !c.queued && c.is_free(&self.ctx) {
            c.queued = true;
            self.free.push_back(i);
        }
    }

    /// Pumps connection `i` (see [`Conn::pump`]).
    fn pump(&mut self, i: usize, reg: &Registry, now: u64) {
        let was = self.conns[i].state() == State::Done;
        let r = self.conns[i].pump(&self.ctx, &mut self.rec, reg, now);
        self.settle(i, was, r, reg);
    }

    /// Whether the thread has nothing more to send: its budget is spent and
    /// every reply is in.
    fn budget_done(&self) -> bool {
        self.rec.budget == Some(0) && self.rec.outstanding == 0 && self.backlog.is_empty()
    }

    /// Stops issuing: connections never started are left out, messages still
    /// waiting for a connection are counted as unfinished, and every open
    /// connection sends its final check once its last reply is in.
    fn stop(&mut self, reg: &Registry, now: u64) {
        // The seconds that ended so far, with the connections held until now.
        let open = self.conns.iter().filter(|c| c.state() == State::Open).count();
        self.rec.tick(now, open as u64);
        self.ctx.stopping = true;
        // Long enough for every outstanding message to reach its timeout
        // (checked every tick) and be counted as such.
        self.drain_until = now + self.cfg.timeout.as_nanos() as u64 + 2 * TICK_NS;
        let never = self.conns.len() - self.started;
        self.live -= never;
        if !self.cfg.reconnect {
            self.rec.outcomes.not_opened += never as u64;
        }
        self.conns.truncate(self.started);
        self.rec.unfinished += self.backlog.len() as u64;
        self.backlog.clear();
        for i in 0..self.conns.len() {
            self.pump(i, reg, now);
        }
    }

    /// Takes up every message due by `now` and hands what it can to free
    /// connections. A message's lag is how late it left against its
    /// schedule: the clock is read as each one is handed to its socket (a
    /// batch of late messages leaves one after the other); a message that
    /// finds every connection busy has its lag taken when it is taken up,
    /// and waits for a connection in the backlog.
    fn dispatch(&mut self, reg: &Registry, now: u64) {
        let Some(pacer) = self.pacer.as_mut() else { return };
        let before = self.backlog.len();
        while self.plan.origin_ns + pacer.peek() <= now {
            let sched = self.plan.origin_ns + pacer.peek();
            if self.plan.deadline_ns.is_some_and(|d| sched >= d) {
                break;
            }
            if self.rec.is_measured(sched) {
                match self.rec.budget.as_mut() {
                    Some(0) => break,
                    Some(b) => *b -= 1,
                    None => {}
                }
            }
            pacer.take();
            self.backlog.push_back(Due { sched, lag_taken: false });
        }
        let added = self.backlog.len() - before;
        let mut t = now;
        while let Some(&due) = self.backlog.front() {
            let Some(i) = self.free.pop_front() else { break };
            self.conns[i].queued = false;
            if !self.conns[i].is_free(&self.ctx) {
                continue;
            }
            self.backlog.pop_front();
            if !due.lag_taken {
                self.rec.took_up(due.sched, t);
            }
            let was = self.conns[i].state() == State::Done;
            let r = self.conns[i].dispatch(due.sched, &self.ctx, &mut self.rec, reg, t);
            self.settle(i, was, r, reg);
            t = self.clock.now();
        }
        // Every connection is busy: the rest wait, late by the server's doing from here on.
        for due in self.backlog.iter_mut().filter(|d| !d.lag_taken) {
            due.lag_taken = true;
            self.rec.took_up(due.sched, t);
        }
        self.rec.waited_for_conn += added.min(self.backlog.len()) as u64;
    }

    /// Whether a message is due by `now`, or waits while a connection is free.
    #[inline(always)]
    fn wants_dispatch(&self, now: u64) -> bool {
        !self.ctx.stopping
            && (self.next_due().is_some_and(|at| at <= now) || (!self.backlog.is_empty() && !self.free.is_empty()))
    }

    /// The next time the pacer wants the loop awake, if it does.
    fn next_due(&self) -> Option<u64> {
        let p = self.pacer.as_ref().filter(|_| !self.ctx.stopping && self.rec.budget != Some(0))?;
        Some(self.plan.origin_ns + p.peek())
    }

    fn run(mut self) -> io::Result<Recorder> {
        let timeout_ns = self.cfg.timeout.as_nanos() as u64;
        let mut events = Events::with_capacity(1024);
        let mut scratch = vec![0u8; SCRATCH];
        let mut next_tick = 0;
        let mut now = self.clock.now();
        let mut poll = Poll::new()?;
        let mut waker = Waker::new(poll.registry(), WAKER)?;
        let spin_ns = self.cfg.spin.as_nanos() as u64;
        loop {
            let reg = poll.registry();
            if !self.ctx.stopping && (self.plan.deadline_ns.is_some_and(|d| now >= d) || self.budget_done()) {
                self.stop(reg, now);
            }
            // The ramp: at most `connect_rate` new connections per second.
            let rate = u128::from(self.connect_rate);
            let allowed = || (1 + rate * u128::from(now) / u128::from(NANOS_PER_SEC)) as usize;
            while !self.ctx.stopping && self.started < self.conns.len() && self.started < allowed() {
                let i = self.started;
                self.started += 1;
                let r = self.conns[i].start(&self.ctx, &mut self.rec, reg, now);
                self.settle(i, false, r, reg);
            }
            if !self.kicked && now >= self.ctx.origin {
                // Closed loop: the connections that opened before the first send may go.
                self.kicked = true;
                for i in 0..self.started {
                    self.pump(i, reg, now);
                }
            }
            if !self.ctx.stopping {
                self.dispatch(reg, now);
            }
            if now >= next_tick {
                let mut open = 0;
                for i in 0..self.conns.len() {
                    if let Some(kind) = self.conns[i].check_timeout(now, timeout_ns) {
                        self.settle(i, false, Err(kind), reg);
                    }
                    open += u64::from(self.conns[i].state() == State::Open);
                }
                self.rec.tick(now, open);
                next_tick = now + TICK_NS;
            }
            if self.live == 0 && self.started == self.conns.len() {
                break;
            }
            if now >= self.drain_until {
                for c in self.conns.iter_mut().filter(|c| c.state() != State::Done) {
                    c.abandon(&self.ctx, &mut self.rec, reg);
                }
                break;
            }
            let mut wake = next_tick.min(self.drain_until);
            if let Some(d) = self.plan.deadline_ns.filter(|_| !self.ctx.stopping) {
                wake = wake.min(d);
            }
            // Pacing and the start of a coordinated run want the exact nanosecond.
            let precise = self.next_due().into_iter().chain((!self.kicked).then_some(self.ctx.origin)).min();
            // With --spin, the timer wakes the loop that much early and it
            // polls without sleeping until the moment comes.
            let mut busy = false;
            if let Some(at) = precise.filter(|&at| at < wake) {
                wake = at;
                if at.saturating_sub(now) <= spin_ns {
                    busy = true;
                } else {
                    waker.arm(at - spin_ns, now)?;
                }
            }
            if self.started < self.conns.len() && !self.ctx.stopping {
                let next = self.started as u128 * u128::from(NANOS_PER_SEC) / u128::from(self.connect_rate);
                wake = wake.min(next as u64);
            }
            let wait = if busy { Duration::ZERO } else { Duration::from_nanos(wake.saturating_sub(now)) };
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
                if i >= self.conns.len() {
                    continue;
                }
                // Per event: a large batch must not age the later timestamps.
                now = self.clock.now();
                let was = self.conns[i].state() == State::Done;
                let r = self.conns[i].on_event(ev, &self.ctx, &mut self.rec, reg, &mut scratch, now);
                self.settle(i, was, r, reg);
                // A message that fell due while the batch is handled, or that waits
                // for the connection this event freed, goes now, not after the batch.
                if self.wants_dispatch(now) {
                    self.dispatch(reg, now);
                }
            }
            now = self.clock.now();
        }
        self.rec.finish(self.clock.now());
        Ok(self.rec)
    }
}
