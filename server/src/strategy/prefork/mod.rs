//! Prefork: a master that binds, forks `--workers` processes, and then only
//! supervises, as nginx's and gunicorn's masters do. Each worker runs an
//! in-process strategy unchanged (`--worker serial|thread|pool|event`;
//! `worker.rs` is a worker's life).
//!
//! The master has one thread (checked before every fork) and a single poll
//! loop: signals, reaping, heartbeats, deadlines, the metrics endpoint.
//! Workers die with it (PR_SET_PDEATHSIG + getppid re-check).
//!
//! | signal to the master | effect |
//! |---|---|
//! | TERM, INT | graceful: listeners closed, workers drain up to `--grace`, stragglers killed when the flush grace ends |
//! | QUIT, second INT | immediate: workers told to quit, killed a second later |
//! | HUP | rolling restart: new workers first, then the old ones drain (hard deadline: `--grace`) |
//! | TTIN / TTOU | one worker more / one fewer (the oldest drains; never below 1) |
//!
//! Accept distribution: one inherited listener that every worker polls with
//! EPOLLEXCLUSIVE (the kernel wakes one waiter per connection, no thundering
//! herd), or with `--reuseport` one SO_REUSEPORT socket per worker position
//! that the master keeps open, so a respawned worker inherits its queue.
//!
//! Health: workers heartbeat into the scoreboard; one silent for
//! `--worker-timeout` gets SIGABRT, then SIGKILL a second later, and is
//! replaced. `--max-requests N --max-requests-jitter J` makes a worker drain
//! and exit after N..=N+J connections; the master replaces it.

mod worker;

use std::io;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use mio::Events;
use nix::sys::signal::Signal;

use crate::config::WorkerMode;
use crate::context::Context;
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::{Drain, Stage, FLUSH_GRACE};
use crate::lifecycle::poller::Poller;
use crate::lifecycle::signals::Signals;
use crate::net::listener::{self, BindOptions};
use crate::process::children::{Children, Ended, Exit, QUIT_GRACE};
use crate::process::metrics::{self, Retired};
use crate::process::scoreboard::{Scoreboard, Slot, State};
use crate::serve::Service;
use crate::sys::{self, Forked};
use worker::Prepared;

/// Workers that die before they start serving this many times in a row make
/// the master give up (exit non-zero) instead of looping.
pub(crate) const MAX_BOOT_FAILURES: u32 = 5;

/// How often the master looks at its workers' heartbeats.
const HEALTH_SWEEP: Duration = Duration::from_millis(500);

/// Runs the prefork master until the server stops.
pub(crate) fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    sys::ensure_single_threaded("prefork master")?;
    // Here, not in each worker: a worker that cannot run would only fail
    // to boot (the kernel was probed by `Server::bind`).
    if ctx.config.worker == WorkerMode::Uring && matches!(ctx.service, Service::Handler(_)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, super::uring::NO_HANDLERS));
    }
    let mut m = Master::new(listener, signals, ctx)?;
    let mut events = Events::with_capacity(16);
    loop {
        let now = Instant::now();
        for exit in m.workers.reap() {
            m.reaped(exit);
        }
        for stage in m.drain.advance(&m.ctx.shutdown, now) {
            m.stop(stage, now);
        }
        if !m.drain.serving() && m.workers.is_empty() {
            return m.failed.take().map_or(Ok(()), Err);
        }
        m.supervise(now);
        while let Some(position) = m.next_spawn(now) {
            let prep = m.prepare(position)?;
            match sys::fork() {
                Ok(Forked::Parent(pid)) => m.spawned(pid, prep),
                Ok(Forked::Child(blocked)) => {
                    let (signals, ctx, master) = m.into_child();
                    sys::exit_now(worker::run(prep, signals, blocked, &ctx, master));
                }
                Err(e) => {
                    log::error!("fork: {e}");
                    prep.slot.free();
                    break;
                }
            }
        }
        m.wait(&mut events)?;
    }
}

/// What the master keeps beside each worker's pid.
#[derive(Debug)]
struct Worker {
    position: usize,
    slot: usize,
    /// Replaced by a rolling restart: drains once the new ones run.
    old: bool,
    /// Aborted for silence (`--worker-timeout`).
    aborted: bool,
}

struct Master {
    ctx: Context,
    pid: nix::unistd::Pid,
    poller: Poller,
    board: Scoreboard,
    /// Where the server listens.
    addr: std::net::SocketAddr,
    /// Index = worker position; one socket (shared) or one per position
    /// (`None`: a position given up by SIGTTOU, re-bound when used again).
    listeners: Vec<Option<TcpListener>>,
    workers: Children<Worker>,
    target: usize,
    boot_failures: u32,
    respawn_after: Option<Instant>,
    drain: Drain,
    timers: Deadlines,
    failed: Option<io::Error>,
    spawned_total: u64,
    deaths_total: u64,
    retired: Retired,
    started: Instant,
    seq: u64,
}

impl Master {
    fn new(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<Master> {
        let cfg = &ctx.config;
        let poller = Poller::new(&ctx.shutdown, Some(signals), cfg.metrics, None)?;
        let target = cfg.workers.max(1);
        let board = Scoreboard::new((target * 4 + 16).min(4096))?;
        log::info!(
            "prefork master {}: {} {} worker(s), {}",
            std::process::id(),
            target,
            cfg.worker,
            if cfg.reuseport { "one SO_REUSEPORT socket per worker" } else { "one shared listener" }
        );
        Ok(Master {
            addr: listener.local_addr()?,
            pid: nix::unistd::getpid(),
            poller,
            board,
            listeners: vec![Some(listener)],
            workers: Children::new(),
            target,
            boot_failures: 0,
            respawn_after: None,
            drain: Drain::new(),
            timers: Deadlines::new(),
            failed: None,
            spawned_total: 0,
            deaths_total: 0,
            retired: Retired::default(),
            started: Instant::now(),
            seq: 0,
            ctx,
        })
    }

    /// Books a reaped worker and logs how it ended.
    fn reaped(&mut self, exit: Exit<Worker>) {
        let slot = self.board.slot(exit.info.slot);
        let booted = slot.state() != State::Booting;
        self.retired.add(slot);
        slot.free();
        self.deaths_total += 1;
        let pid = exit.pid;
        let how = exit.ended;
        if exit.told || !self.drain.serving() {
            log::info!("worker {pid} {how}");
        } else if booted {
            log::warn!("worker {pid} {how}; replacing it");
            if !exit.info.aborted && how != Ended::Exited(0) {
                self.boot_failures = 0;
            }
        } else {
            self.boot_failures += 1;
            let backoff = Duration::from_millis(100 << self.boot_failures.min(3));
            log::error!("worker {pid} {how} before it started serving ({} in a row)", self.boot_failures);
            self.respawn_after = Some(Instant::now() + backoff);
            if self.boot_failures >= MAX_BOOT_FAILURES && self.failed.is_none() {
                self.failed = Some(io::Error::other(format!(
                    "{} workers in a row died before serving; giving up",
                    self.boot_failures
                )));
                self.ctx.shutdown.stop_now();
            }
        }
    }

    /// One stage of the stop, for every worker.
    fn stop(&mut self, stage: Stage, now: Instant) {
        match stage {
            Stage::Serving | Stage::Flush => {}
            Stage::Grace => {
                self.listeners.clear();
                self.poller.close_metrics();
                log::info!("stopping {} worker(s) gracefully", self.workers.len());
                let kill_at = self.ctx.shutdown.deadline().unwrap_or(now) + FLUSH_GRACE;
                self.workers.stop_all(Signal::SIGTERM, kill_at);
            }
            Stage::Over => self.workers.quit_all(now),
        }
    }

    /// The supervisor's signals, heartbeats, deadlines, rolling restarts.
    fn supervise(&mut self, now: Instant) {
        let notices = self.poller.take_notices();
        if self.drain.serving() {
            if notices.reload > 0 {
                log::info!("SIGHUP: rolling restart of {} worker(s)", self.workers.len());
                for w in self.workers.iter_mut() {
                    w.info.old = true;
                }
            }
            let fewer = if notices.fewer > 0 && self.ctx.config.reuseport && !migrates_queued_connections() {
                log::info!(
                    "SIGTTOU: ignored with --reuseport: a worker's socket cannot leave the SO_REUSEPORT group \
                     without resetting the connections queued in it (the kernel moves them to a sibling only \
                     with net.ipv4.tcp_migrate_req=1)"
                );
                0
            } else {
                notices.fewer
            };
            if notices.more + fewer > 0 {
                self.target = (self.target + notices.more as usize).saturating_sub(fewer as usize).max(1);
                log::info!("workers: target now {}", self.target);
            }
            self.retire(now);
        }
        if let Some(limit) = self.ctx.config.worker_timeout {
            for w in self.workers.iter_mut() {
                let silent = self.board.slot(w.info.slot).silent_ms();
                if !w.info.aborted && silent > limit.as_millis() as u64 {
                    log::warn!("worker {} silent for {silent} ms (--worker-timeout): aborting it", w.pid);
                    w.info.aborted = true;
                    w.stop(Signal::SIGABRT, now + QUIT_GRACE);
                }
            }
        }
        self.workers.kill_overdue(now);
        if self.respawn_after.is_some_and(|t| now >= t) {
            self.respawn_after = None;
        }
    }

    /// Tells workers beyond the target (oldest first) and old workers whose
    /// replacements run to drain.
    fn retire(&mut self, now: Instant) {
        let kill_at = now + self.ctx.config.grace + FLUSH_GRACE;
        let board = &self.board;
        let new_running = self
            .workers
            .iter()
            .filter(|w| !w.info.old && !w.told() && board.slot(w.info.slot).state() == State::Running)
            .count();
        let replacements_ready = new_running >= self.target;
        let mut current = self.workers.iter().filter(|w| !w.info.old && !w.told()).count();
        // Children are in spawn order: oldest first.
        for w in self.workers.iter_mut() {
            let drain = if w.info.old {
                replacements_ready
            } else if current > self.target {
                current -= 1;
                true
            } else {
                false
            };
            if drain && !w.told() {
                log::info!("worker {}: draining", w.pid);
                if !w.info.old && self.ctx.config.reuseport {
                    // Its position is given up: its socket closes now (the
                    // worker closes its copy as it drains), or the kernel
                    // would go on handing it connections nobody accepts.
                    if let Some(l) = self.listeners.get_mut(w.info.position) {
                        *l = None;
                    }
                }
                board.slot(w.info.slot).set_state(State::Draining);
                w.stop(Signal::SIGTERM, kill_at);
            }
        }
    }

    /// The position of the next worker to start, if one is missing.
    fn next_spawn(&self, now: Instant) -> Option<usize> {
        if !self.drain.serving() || self.respawn_after.is_some_and(|t| now < t) {
            return None;
        }
        let live: Vec<usize> =
            self.workers.iter().filter(|w| !w.info.old && !w.told()).map(|w| w.info.position).collect();
        if live.len() >= self.target {
            return None;
        }
        (0..).find(|p| !live.contains(p))
    }

    fn prepare(&mut self, position: usize) -> io::Result<Prepared> {
        let slot_index = self.board.free_slot().ok_or_else(|| io::Error::other("scoreboard full"))?;
        let slot = self.board.slot(slot_index);
        slot.claim(0);
        let index = if self.ctx.config.reuseport { position } else { 0 };
        if self.listeners.len() <= index {
            self.listeners.resize_with(index + 1, || None);
        }
        if self.listeners[index].is_none() {
            let opts = BindOptions { backlog: self.ctx.config.backlog, reuseport: true };
            self.listeners[index] = Some(listener::bind(self.addr, opts)?);
        }
        let listener = self.listeners[index].as_ref().expect("bound above").try_clone()?;
        let cfg = &self.ctx.config;
        self.seq += 1;
        let max_requests = cfg.max_requests.map(|n| n + jitter(cfg.max_requests_jitter, self.seq));
        Ok(Prepared { position, slot_index, slot, listener, max_requests })
    }

    fn spawned(&mut self, pid: nix::unistd::Pid, prep: Prepared) {
        prep.slot.set_pid(pid.as_raw() as u32);
        self.spawned_total += 1;
        log::info!("worker {pid} started (position {})", prep.position);
        self.workers.add(pid, Worker { position: prep.position, slot: prep.slot_index, old: false, aborted: false });
        // `prep.listener` (the child's copy) closes here in the master.
    }

    /// In a worker: everything of the master's closes; the signal pipe and
    /// the context go on.
    fn into_child(self) -> (Option<Signals>, Context, nix::unistd::Pid) {
        (self.poller.into_signals(), self.ctx, self.pid)
    }

    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let now = Instant::now();
        self.timers.set(Timer::Drain, self.drain.next_change(&self.ctx.shutdown));
        self.timers.set(Timer::Respawn, self.respawn_after);
        self.timers.set(Timer::Children, self.workers.next_deadline());
        self.timers.set(Timer::Health, Some(now + HEALTH_SWEEP));
        self.poller.wait(events, self.timers.earliest())?;
        if self.poller.wants_page() {
            let page = self.render();
            self.poller.answer(&page);
        }
        Ok(())
    }

    fn render(&self) -> String {
        let workers: Vec<(u32, Slot)> =
            self.workers.iter().map(|w| (w.pid.as_raw() as u32, self.board.slot(w.info.slot))).collect();
        metrics::render(&workers, self.retired, self.spawned_total, self.deaths_total, self.started.elapsed())
    }
}

/// Whether the kernel hands the connections queued in a closing
/// SO_REUSEPORT listener to another listener of its group (Linux 5.14+,
/// `net.ipv4.tcp_migrate_req`), instead of resetting them.
fn migrates_queued_connections() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1")
}

/// A deterministic spread in 0..=j for the seq-th worker.
fn jitter(j: u64, seq: u64) -> u64 {
    if j == 0 {
        return 0;
    }
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
    x ^= x >> 31;
    x % (j + 1)
}
