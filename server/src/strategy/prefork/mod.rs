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
//! | USR1 | reopen the log file, and forward USR1 to every worker (they reopen theirs) |
//!
//! Accept distribution: one inherited listener that every worker polls with
//! EPOLLEXCLUSIVE (the kernel wakes one waiter per connection, no thundering
//! herd), or with `--reuseport` one SO_REUSEPORT socket per worker position
//! that the master keeps open, so a respawned worker inherits its queue.
//!
//! Health: workers heartbeat into the scoreboard; one silent for
//! `--worker-timeout` gets SIGABRT, then SIGKILL a second later, and is
//! replaced. `--max-requests N --max-requests-jitter J` makes a worker drain
//! and exit after N..=N+J connections; `--max-worker-memory` replaces a
//! worker whose resident memory passed the limit (its replacement first).
//!
//! Reloads are health-checked: a rolling restart drains an old worker only
//! once its replacements serve, and a new worker that dies before serving
//! ends the reload, the old workers serving on. The master tells the
//! service manager (`RELOADING=1`, then `READY=1` with the outcome), keeps
//! the watchdog quiet only while its workers are healthy, and hands its
//! listeners to its successor on SIGUSR2.

mod worker;

use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mio::Events;
use nix::sys::signal::Signal;

use crate::config::WorkerMode;
use crate::context::Context;
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::{Drain, Stage, FLUSH_GRACE};
use crate::lifecycle::poller::Poller;
use crate::lifecycle::readiness;
use crate::lifecycle::signals::Signals;
use crate::net::listener::{self, BindOptions};
use crate::process::children::{Children, Ended, Exit, QUIT_GRACE};
use crate::process::metrics::{self, Retired, Supervision, WorkerLine};
use crate::process::scoreboard::{Counter, Scoreboard, State};
use crate::serve::Service;
use crate::sys::{self, Forked};
use worker::Prepared;

/// Workers that die before they start serving this many times in a row make
/// the master give up (exit non-zero) instead of looping.
pub(crate) const MAX_BOOT_FAILURES: u32 = 5;

/// How often the master looks at its workers' heartbeats.
const HEALTH_SWEEP: Duration = Duration::from_millis(500);

/// Runs the prefork master until the server stops.
pub(crate) fn run(listeners: Vec<TcpListener>, signals: Signals, ctx: Context) -> io::Result<()> {
    sys::ensure_single_threaded("prefork master")?;
    // Here, not in each worker: a worker that cannot run would only fail
    // to boot (the kernel was probed by `Server::bind`).
    if ctx.config.worker == WorkerMode::Uring && matches!(ctx.service, Service::Handler(_)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, super::uring::NO_HANDLERS));
    }
    let mut m = Master::new(listeners, signals, ctx)?;
    let mut events = Events::with_capacity(16);
    loop {
        let now = Instant::now();
        while let Some(exit) = m.workers.reap() {
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
    /// Replaced by a rolling restart (or for its memory): drains once the
    /// new ones run.
    old: bool,
    /// Aborted for silence (`--worker-timeout`).
    aborted: bool,
    /// The reload it was started by (0: none).
    generation: u64,
    /// Its resident memory limit (`--max-worker-memory` less a spread).
    memory_limit: Option<u64>,
    /// Busy microseconds at the last sweep, and the share since the one before.
    busy_at_sweep: u64,
    busy_ratio: Option<f64>,
    rss: Option<u64>,
}

struct Master {
    ctx: Context,
    pid: nix::unistd::Pid,
    poller: Poller,
    board: Scoreboard,
    /// Where the server listens.
    addr: std::net::SocketAddr,
    /// One SO_REUSEPORT socket per worker position (else one shared).
    reuseport: bool,
    /// The reload in progress (its generation), if any.
    reloading: Option<u64>,
    generations: u64,
    reload_failures: u64,
    last_sweep: Instant,
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
    fn new(listeners: Vec<TcpListener>, signals: Signals, ctx: Context) -> io::Result<Master> {
        let cfg = &ctx.config;
        let poller = Poller::new(&ctx.shutdown, Some(signals), cfg.metrics, None)?;
        let target = cfg.workers.max(1);
        let board = Scoreboard::new((target * 4 + 16).min(4096))?;
        // Sockets handed over one per position (a binary upgrade of a
        // --reuseport master), or one that allows more beside it.
        let reuse = listeners.len() > 1 || socket2::SockRef::from(&listeners[0]).reuse_port().unwrap_or(false);
        let reuseport = cfg.reuseport && reuse;
        if cfg.reuseport && !reuseport {
            log::warn!("--reuseport: the socket handed over has no SO_REUSEPORT; the workers share it");
        }
        log::info!(
            "prefork master {}: {} {} worker(s), {}",
            std::process::id(),
            target,
            cfg.worker,
            if reuseport { "one SO_REUSEPORT socket per worker" } else { "one shared listener" }
        );
        let addr = listeners[0].local_addr()?;
        let listeners = if reuseport {
            listeners.into_iter().map(Some).collect()
        } else {
            vec![listeners.into_iter().next().map(Some).unwrap_or(None)]
        };
        Ok(Master {
            addr,
            reuseport,
            reloading: None,
            generations: 0,
            reload_failures: 0,
            last_sweep: Instant::now(),
            pid: nix::unistd::getpid(),
            poller,
            board,
            listeners,
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
        } else if let Some(generation) = self.reloading.filter(|g| exit.info.generation == *g) {
            // The reload's new code does not start: give the reload up, the
            // old workers serve on.
            log::error!(
                "reload failed: new worker {pid} {how} before it started serving; the old workers go on serving"
            );
            self.abort_reload(generation);
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
        if notices.reopen {
            self.workers.signal_all(Signal::SIGUSR1);
        }
        if notices.upgrade > 0 {
            // (Draining, the listeners are closed: the poller says no.)
            let fds: Vec<_> = self.listeners.iter().flatten().map(|l| l.as_fd()).collect();
            self.poller.start_upgrade(&fds);
        }
        if self.drain.serving() {
            if notices.reload > 0 {
                self.start_reload();
            }
            let fewer = if notices.fewer > 0 && self.reuseport && !migrates_queued_connections() {
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
            if now >= self.last_sweep + HEALTH_SWEEP {
                self.sweep(now);
            }
            self.retire(now);
            self.report(now);
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

    /// SIGHUP: every worker is replaced, new ones first.
    fn start_reload(&mut self) {
        if self.reloading.is_some() {
            log::info!("SIGHUP: a rolling restart is in progress already");
            return;
        }
        self.generations += 1;
        self.reloading = Some(self.generations);
        log::info!("SIGHUP: rolling restart of {} worker(s)", self.workers.len());
        readiness::reloading();
        for w in self.workers.iter_mut() {
            w.info.old = true;
        }
    }

    /// A new worker of reload `generation` died before serving: its
    /// siblings drain, the old workers are kept.
    fn abort_reload(&mut self, generation: u64) {
        self.reload_failures += 1;
        self.reloading = None;
        let kill_at = Instant::now() + self.ctx.config.grace + FLUSH_GRACE;
        for w in self.workers.iter_mut() {
            if w.info.generation == generation && !w.told() {
                w.stop(Signal::SIGTERM, kill_at);
            } else if !w.told() {
                w.info.old = false;
            }
        }
        readiness::reloaded("reload failed: a new worker died before serving; the old workers go on serving");
    }

    /// Reads each worker's memory and busy time; replaces one over its
    /// memory limit (its replacement starts first).
    fn sweep(&mut self, now: Instant) {
        let elapsed_us = now.duration_since(self.last_sweep).as_micros().max(1) as f64;
        self.last_sweep = now;
        for w in self.workers.iter_mut() {
            let slot = self.board.slot(w.info.slot);
            let busy = slot.busy_us();
            w.info.busy_ratio = Some(((busy.saturating_sub(w.info.busy_at_sweep)) as f64 / elapsed_us).min(1.0));
            w.info.busy_at_sweep = busy;
            w.info.rss = metrics::rss_bytes(w.pid.as_raw() as u32);
            if let (Some(limit), Some(rss)) = (w.info.memory_limit, w.info.rss) {
                if rss > limit && !w.info.old && !w.told() {
                    log::warn!(
                        "worker {} uses {} MiB, over --max-worker-memory ({} MiB with its spread): replacing it",
                        w.pid,
                        rss >> 20,
                        limit >> 20
                    );
                    w.info.old = true;
                }
            }
        }
    }

    /// What the service manager hears: ready once every worker serves, a
    /// reload's end, the status, and whether the watchdog may be fed.
    fn report(&mut self, now: Instant) {
        let board = &self.board;
        let running = self
            .workers
            .iter()
            .filter(|w| !w.info.old && !w.told() && board.slot(w.info.slot).state() == State::Running)
            .count();
        let healthy = running >= self.target && self.workers.iter().all(|w| !w.info.aborted);
        readiness::set_healthy(healthy);
        if running >= self.target {
            readiness::ready(&format!("serving: {running} worker(s)"));
            if self.reloading.is_some() && self.workers.iter().all(|w| !w.info.old || w.told()) {
                self.reloading = None;
                log::info!("rolling restart done: {running} new worker(s) serve");
                readiness::reloaded(&format!("reloaded: {running} worker(s)"));
            }
        }
        let conns: u64 = self.workers.iter().map(|w| board.slot(w.info.slot).get(Counter::Active)).sum();
        readiness::status(|| format!("{} worker(s), {conns} connection(s)", self.workers.len()), now);
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
                if !w.info.old && self.reuseport {
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
        let index = if self.reuseport { position } else { 0 };
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
        let memory_limit = self.ctx.config.max_worker_memory.map(|m| m - m / 10 * jitter(9, self.seq) / 9);
        self.workers.add(
            pid,
            Worker {
                position: prep.position,
                slot: prep.slot_index,
                old: false,
                aborted: false,
                generation: self.reloading.unwrap_or(0),
                memory_limit,
                busy_at_sweep: 0,
                busy_ratio: None,
                rss: None,
            },
        );
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
        let workers: Vec<WorkerLine> = self
            .workers
            .iter()
            .map(|w| WorkerLine {
                pid: w.pid.as_raw() as u32,
                slot: self.board.slot(w.info.slot),
                rss: w.info.rss,
                busy: w.info.busy_ratio,
            })
            .collect();
        let sup = Supervision {
            retired: self.retired,
            spawns: self.spawned_total,
            deaths: self.deaths_total,
            reload_failures: self.reload_failures,
        };
        metrics::render(&workers, &sup, self.started.elapsed())
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
