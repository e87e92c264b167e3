//! Prefork: a master that binds, forks `--workers` processes, and then only
//! supervises, as nginx's and gunicorn's masters do. Each worker runs an
//! in-process strategy unchanged (`--worker serial|thread|pool|event`).
//!
//! The master has one thread (checked before the first fork) and a single
//! poll loop: signals, reaping, heartbeats, the metrics endpoint. Workers die
//! with it (PR_SET_PDEATHSIG + getppid re-check).
//!
//! | signal to the master | effect |
//! |---|---|
//! | TERM, INT | graceful: listeners closed, workers drain up to `--grace`, stragglers killed, exit 0 |
//! | QUIT, second INT | immediate: workers told to quit, killed after a second |
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

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::context::Context;
use crate::listener::{self, BindOptions};
use crate::metrics::{Metrics, Retired};
use crate::scoreboard::{Scoreboard, Slot, State};
use crate::shutdown::{Phase, Shutdown};
use crate::signals::Signals;
use crate::sys::{self, Forked};

const SIGNALS: Token = Token(0);
const METRICS: Token = Token(1);

/// Workers that die before they start serving this many times in a row make
/// the master give up (exit non-zero) instead of looping.
pub const MAX_BOOT_FAILURES: u32 = 5;
/// How long a worker may stay silent after SIGABRT before SIGKILL.
pub const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Runs the prefork master until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    sys::ensure_single_threaded("prefork master")?;
    let mut m = Master::new(listener, signals, ctx)?;
    loop {
        m.reap();
        if let Some(done) = m.finished() {
            return done;
        }
        m.supervise();
        while let Some(position) = m.next_spawn() {
            let prep = m.prepare(position)?;
            match sys::fork() {
                Ok(Forked::Parent(pid)) => m.spawned(pid, prep),
                Ok(Forked::Child(blocked)) => {
                    let (signals, ctx, master) = m.into_child();
                    sys::exit_now(worker(prep, signals, blocked, &ctx, master));
                }
                Err(e) => {
                    log::error!("fork: {e}");
                    prep.slot.free();
                    break;
                }
            }
        }
        m.wait()?;
    }
}

/// What a new worker gets.
struct Prepared {
    position: usize,
    slot_index: usize,
    slot: &'static Slot,
    listener: TcpListener,
    max_requests: Option<u64>,
}

#[derive(Debug)]
struct Worker {
    pid: Pid,
    position: usize,
    slot: usize,
    /// Replaced by a rolling restart: drains once the new ones run.
    old: bool,
    /// When it was told to stop (SIGTERM), and when it gets killed.
    kill_at: Option<Instant>,
    aborted_at: Option<Instant>,
}

struct Master {
    ctx: Context,
    parent: Pid,
    signals: Signals,
    poll: Poll,
    events: Events,
    board: Scoreboard,
    /// Index = worker position; one socket (shared) or one per position.
    listeners: Vec<TcpListener>,
    reuseport: bool,
    metrics: Option<Metrics>,
    workers: Vec<Worker>,
    target: usize,
    boot_failures: u32,
    respawn_after: Option<Instant>,
    stopping: bool,
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
        let poll = Poll::new()?;
        signals.register(poll.registry(), SIGNALS)?;
        let metrics = match cfg.metrics {
            Some(addr) => Some(Metrics::bind(addr, poll.registry(), METRICS)?),
            None => None,
        };
        let reuseport = cfg.reuseport;
        let target = cfg.workers.max(1);
        let board = Scoreboard::new((target * 4 + 16).min(4096))?;
        log::info!(
            "prefork master {}: {} {} worker(s), {}",
            std::process::id(),
            target,
            cfg.worker,
            if reuseport { "one SO_REUSEPORT socket per worker" } else { "one shared listener" }
        );
        Ok(Master {
            parent: nix::unistd::getpid(),
            signals,
            poll,
            events: Events::with_capacity(16),
            board,
            listeners: vec![listener],
            reuseport,
            metrics,
            workers: Vec::new(),
            target,
            boot_failures: 0,
            respawn_after: None,
            stopping: false,
            failed: None,
            spawned_total: 0,
            deaths_total: 0,
            retired: Retired::default(),
            started: Instant::now(),
            seq: 0,
            ctx,
        })
    }

    fn shutdown(&self) -> &Shutdown {
        &self.ctx.shutdown
    }

    /// Reaps every exited worker and logs how it ended.
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    return;
                }
                Ok(s) => s,
            };
            let Some(pid) = status.pid() else { continue };
            let Some(i) = self.workers.iter().position(|w| w.pid == pid) else { continue };
            let w = self.workers.swap_remove(i);
            let slot = &self.board.slots()[w.slot];
            let booted = slot.state() != State::Booting;
            self.retired.add(slot);
            slot.free();
            self.deaths_total += 1;
            let expected = w.kill_at.is_some() || self.stopping;
            let how = match status {
                WaitStatus::Exited(_, code) => format!("exited with status {code}"),
                WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
                other => format!("{other:?}"),
            };
            if expected {
                log::info!("worker {pid} {how}");
            } else if booted {
                log::warn!("worker {pid} {how}; replacing it");
                if w.aborted_at.is_none() && !matches!(status, WaitStatus::Exited(_, 0)) {
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
                    self.begin_stop(Phase::Immediate);
                }
            }
        }
    }

    /// When stopping and no worker is left: the result to return.
    fn finished(&mut self) -> Option<io::Result<()>> {
        if self.stopping && self.workers.is_empty() {
            return Some(self.failed.take().map_or(Ok(()), Err));
        }
        None
    }

    /// Signals, heartbeats, deadlines, rolling restarts.
    fn supervise(&mut self) {
        let phase = self.shutdown().absorb_signals();
        if phase != Phase::Running && !self.stopping {
            self.begin_stop(phase);
        } else if phase == Phase::Immediate {
            self.quit_all();
        }
        if !self.stopping {
            if Signals::take(Signal::SIGHUP) > 0 {
                log::info!("SIGHUP: rolling restart of {} worker(s)", self.workers.len());
                for w in &mut self.workers {
                    w.old = true;
                }
            }
            let more = Signals::take(Signal::SIGTTIN) as usize;
            let fewer = Signals::take(Signal::SIGTTOU) as usize;
            if more + fewer > 0 {
                self.target = (self.target + more).saturating_sub(fewer).max(1);
                log::info!("workers: target now {}", self.target);
            }
            self.retire();
        }
        let now = Instant::now();
        let timeout = self.ctx.config.worker_timeout;
        for w in &mut self.workers {
            let slot = &self.board.slots()[w.slot];
            if let Some(t) = w.kill_at {
                if now >= t {
                    let _ = kill(w.pid, Signal::SIGKILL);
                }
            }
            if let Some(limit) = timeout {
                if w.aborted_at.is_none() && slot.silent_ms() > limit.as_millis() as u64 {
                    log::warn!("worker {} silent for {} ms (--worker-timeout): aborting it", w.pid, slot.silent_ms());
                    let _ = kill(w.pid, Signal::SIGABRT);
                    w.aborted_at = Some(now);
                    w.kill_at = Some(now + ABORT_GRACE);
                }
            }
        }
    }

    /// Tells workers beyond the target (oldest first) and old workers whose
    /// replacements run to drain.
    fn retire(&mut self) {
        let now = Instant::now();
        let grace = self.ctx.config.grace;
        let new_running = self
            .workers
            .iter()
            .filter(|w| !w.old && w.kill_at.is_none() && self.board.slots()[w.slot].state() == State::Running)
            .count();
        let replacements_ready = new_running >= self.target;
        let mut current = self.workers.iter().filter(|w| !w.old && w.kill_at.is_none()).count();
        // self.workers is in spawn order: oldest first.
        for w in &mut self.workers {
            let drain = if w.old {
                replacements_ready
            } else if current > self.target {
                current -= 1;
                true
            } else {
                false
            };
            if drain && w.kill_at.is_none() {
                log::info!("worker {}: draining", w.pid);
                self.board.slots()[w.slot].set_state(State::Draining);
                let _ = kill(w.pid, Signal::SIGTERM);
                w.kill_at = Some(now + grace + super::FLUSH_GRACE);
            }
        }
    }

    fn begin_stop(&mut self, phase: Phase) {
        self.stopping = true;
        self.listeners.clear();
        if let Some(m) = &mut self.metrics {
            m.close(self.poll.registry());
        }
        self.metrics = None;
        if phase == Phase::Immediate {
            self.quit_all();
            return;
        }
        log::info!("stopping {} worker(s) gracefully", self.workers.len());
        let kill_at = self.shutdown().deadline().unwrap_or_else(Instant::now) + super::FLUSH_GRACE;
        for w in &mut self.workers {
            let _ = kill(w.pid, Signal::SIGTERM);
            w.kill_at = Some(w.kill_at.map_or(kill_at, |t| t.min(kill_at)));
        }
    }

    fn quit_all(&mut self) {
        let kill_at = Instant::now() + ABORT_GRACE;
        for w in &mut self.workers {
            if w.kill_at.is_none_or(|t| t > kill_at) {
                let _ = kill(w.pid, Signal::SIGQUIT);
                w.kill_at = Some(kill_at);
            }
        }
    }

    /// The position of the next worker to start, if one is missing.
    fn next_spawn(&self) -> Option<usize> {
        if self.stopping || self.respawn_after.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let live: Vec<usize> =
            self.workers.iter().filter(|w| !w.old && w.kill_at.is_none()).map(|w| w.position).collect();
        if live.len() >= self.target {
            return None;
        }
        (0..).find(|p| !live.contains(p))
    }

    fn prepare(&mut self, position: usize) -> io::Result<Prepared> {
        let slot_index = self.board.free_slot().ok_or_else(|| io::Error::other("scoreboard full"))?;
        let slot = &self.board.slots()[slot_index];
        slot.claim(0);
        let index = if self.reuseport { position } else { 0 };
        while self.listeners.len() <= index {
            let addr = self.listeners[0].local_addr()?;
            self.listeners
                .push(listener::bind(addr, BindOptions { backlog: self.ctx.config.backlog, reuseport: true })?);
        }
        let cfg = &self.ctx.config;
        self.seq += 1;
        let max_requests = cfg.max_requests.map(|n| n + jitter(cfg.max_requests_jitter, self.seq));
        Ok(Prepared { position, slot_index, slot, listener: self.listeners[index].try_clone()?, max_requests })
    }

    fn spawned(&mut self, pid: Pid, prep: Prepared) {
        prep.slot.pid.store(pid.as_raw() as u32, std::sync::atomic::Ordering::Relaxed);
        self.spawned_total += 1;
        log::info!("worker {pid} started (position {})", prep.position);
        self.workers.push(Worker {
            pid,
            position: prep.position,
            slot: prep.slot_index,
            old: false,
            kill_at: None,
            aborted_at: None,
        });
        // `prep.listener` (the child's copy) closes here in the master.
    }

    /// In a worker: everything of the master's closes; the signal pipe and
    /// the context go on.
    fn into_child(self) -> (Signals, Context, Pid) {
        (self.signals, self.ctx, self.parent)
    }

    fn wait(&mut self) -> io::Result<()> {
        let mut timeout = Duration::from_millis(500);
        if let Some(t) = self.respawn_after {
            timeout = timeout.min(t.saturating_duration_since(Instant::now()));
        }
        for w in &self.workers {
            if let Some(t) = w.kill_at {
                timeout = timeout.min(t.saturating_duration_since(Instant::now()));
            }
        }
        crate::poll::wait(&mut self.poll, &mut self.events, Some(timeout))?;
        for ev in self.events.iter() {
            match ev.token() {
                SIGNALS => self.signals.drain(),
                _ => {
                    if let Some(mut m) = self.metrics.take() {
                        m.on_event(ev, self.poll.registry(), &|| self.render());
                        self.metrics = Some(m);
                    }
                }
            }
        }
        if self.respawn_after.is_some_and(|t| Instant::now() >= t) {
            self.respawn_after = None;
        }
        Ok(())
    }

    fn render(&self) -> String {
        let workers: Vec<(u32, &Slot)> =
            self.workers.iter().map(|w| (w.pid.as_raw() as u32, &self.board.slots()[w.slot])).collect();
        crate::metrics::render(&workers, self.retired, self.spawned_total, self.deaths_total, self.started.elapsed())
    }
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

/// A worker's whole life; the return value is its exit code.
fn worker(prep: Prepared, signals: Signals, blocked: sys::BlockedSignals, master: &Context, master_pid: Pid) -> i32 {
    sys::die_with_parent(Signal::SIGKILL, master_pid);
    let _ = sys::ignore_signals(&[Signal::SIGHUP, Signal::SIGTTIN, Signal::SIGTTOU]);
    let signals = match signals.reinstall_in_child(&[Signal::SIGCHLD], blocked) {
        Ok(s) => s,
        Err(e) => {
            log::error!("worker {}: signals: {e}", std::process::id());
            return 1;
        }
    };
    let mut config = (*master.config).clone();
    config.mode = config.worker;
    config.metrics = None;
    let ctx = Context {
        shutdown: Shutdown::new(config.grace),
        config: Arc::new(config),
        factory: master.factory.clone(),
        slot: prep.slot,
        max_requests: prep.max_requests,
        per_ip: master.config.max_conns_per_ip.map(crate::per_ip::PerIp::new),
    };
    prep.slot.pid.store(std::process::id(), std::sync::atomic::Ordering::Relaxed);
    prep.slot.beat();
    // The strategy marks the slot Running once it is set up (Context::ready).
    match super::run(prep.listener, signals, ctx) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("worker {}: {e}", std::process::id());
            1
        }
    }
}
