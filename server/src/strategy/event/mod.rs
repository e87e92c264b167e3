//! Event: one thread, one `mio::Poll`, every connection a resumable state
//! machine (done as nginx and Redis do it) or a coroutine (a handler's task,
//! the gevent model). Connections live in a `slab` keyed by their token: a
//! protocol's bytes are moved by the non-blocking driver, a handler's task
//! is polled when its socket is ready (`handler`'s executor); an
//! [`IdleQueue`] expires silent connections in O(1) per event.
//!
//! [`EventLoop`] is also the unit of the `reactor` strategy (one loop per
//! thread) and of prefork's event workers.
//!
//! One iteration: the stages of a stop, then sleep until the earliest
//! deadline (drain, idle, a revisit, handlers' timers, the accept policy),
//! then serve every connection that has an event (`conn_event` →
//! `Conn::on_readable` → `Protocol::on_read` → write; or wake the task),
//! then the woken tasks (each polled once), then the connections with input
//! left over, then accept (at most [`ACCEPT_BUDGET`] per wake-up, so a
//! connection flood cannot starve open connections), then expire the idle
//! ones.
//!
//! Stop: the listener closes at the grace; connections are served until
//! they close or the grace ends; then they stop reading and flush; what is
//! left when the flush grace ends is dropped.

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Events, Interest, Token};
use slab::Slab;

use super::idle::{HasLinks, IdleQueue, Links};
use crate::admission::Permit;
use crate::context::Context;
use crate::driver::nonblocking::{Conn, Scratch, Status};
use crate::driver::Totals;
use crate::handler::{self, Connection, LoopIo, Polled, RunQueue, Task};
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::{Drain, Stage};
use crate::lifecycle::poller::{Poller, HEADERS};
use crate::lifecycle::signals::Signals;
use crate::net::accept::AtCap;
use crate::net::acceptor::Acceptor;
use crate::serve::Service;

/// Connections accepted per wake-up at most.
pub(crate) const ACCEPT_BUDGET: usize = 256;

/// Runs the single-threaded event loop until the server stops.
pub(crate) fn run(listener: std::net::TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    let poller = Poller::new(&ctx.shutdown, Some(signals), ctx.config.metrics, Some(ctx.slot))?;
    let event_loop = EventLoop::new(0, listener, poller, &ctx)?;
    ctx.ready();
    let stats = event_loop.run()?;
    log::info!("{stats}");
    Ok(())
}

/// An event loop's acceptor: `listener` (made non-blocking) watched in
/// `poller`.
pub(crate) fn acceptor(
    listener: std::net::TcpListener,
    poller: Poller,
    ctx: &Context,
) -> io::Result<Acceptor<TcpListener>> {
    listener.set_nonblocking(true)?;
    Acceptor::new(TcpListener::from_std(listener), poller, ctx, AtCap::Wait)
}

/// What one loop did, reported when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LoopStats {
    /// Loop number.
    pub(crate) id: usize,
    /// Connections accepted.
    pub(crate) accepted: u64,
    /// Most connections open at once.
    pub(crate) peak: usize,
    /// Connections closed by the idle timeout.
    pub(crate) idle_closed: u64,
}

impl std::fmt::Display for LoopStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loop {}: accepted {} connections, peak {} open, {} closed idle",
            self.id, self.accepted, self.peak, self.idle_closed
        )
    }
}

struct Entry {
    kind: Kind,
    links: Links,
    _permit: Permit,
}

/// What serves a connection.
enum Kind {
    /// A protocol, through the non-blocking driver.
    Machine(Conn),
    /// A handler's task, and the socket it shares with its `Connection`.
    Task { task: Task, io: Rc<LoopIo>, peer: SocketAddr },
}

impl Kind {
    fn totals(&self) -> Totals {
        match self {
            Kind::Machine(c) => c.totals(),
            Kind::Task { io, .. } => io.totals(),
        }
    }
}

impl HasLinks for Entry {
    fn links(&mut self) -> &mut Links {
        &mut self.links
    }
}

/// One event loop: an acceptor, and the connections it accepted.
pub(crate) struct EventLoop {
    acceptor: Acceptor<TcpListener>,
    conns: Slab<Entry>,
    idle: Option<IdleQueue>,
    scratch: Scratch,
    again: Vec<usize>,
    again_spare: Vec<usize>,
    /// Accepted since the last poll: their idle clocks start at the next
    /// poll's stamp (the stamp of this one may be older than the accept).
    fresh: Vec<usize>,
    /// Handlers' tasks that are ready to run.
    run_queue: Arc<RunQueue>,
    /// Tasks started (a task's generation tells its wakers apart from the
    /// ones of an earlier task in the same slot).
    tasks_started: u64,
    ctx: Context,
    epoch: Instant,
    /// The time this iteration's activity is stamped with: read after the
    /// poll, so a stall before it only makes connections look younger.
    now_ms: u64,
    /// The time read before the last poll. Idleness is judged as of this
    /// moment: whatever arrived before it was reported by that poll and has
    /// been handled. A clock read after the poll could be later than its
    /// report by any stall (a stop, a deschedule) and close a connection
    /// whose bytes wait unreported.
    polled_ms: u64,
    drain: Drain,
    timers: Deadlines,
    stats: LoopStats,
}

impl EventLoop {
    /// A loop that accepts on `listener` and sleeps in `poller` (which owns
    /// the process's signals in event mode, not in the reactor's loops).
    pub(crate) fn new(id: usize, listener: std::net::TcpListener, poller: Poller, ctx: &Context) -> io::Result<Self> {
        Ok(EventLoop::with(id, acceptor(listener, poller, ctx)?, ctx))
    }

    /// A loop around an acceptor made by [`acceptor`] (the reactor makes
    /// them before it starts the loops' threads, and each loop on its own).
    pub(crate) fn with(id: usize, acceptor: Acceptor<TcpListener>, ctx: &Context) -> Self {
        let run_queue = RunQueue::new(acceptor.poller.waker());
        EventLoop {
            acceptor,
            conns: Slab::new(),
            idle: ctx.config.idle_timeout.map(|d| IdleQueue::new(d.as_millis().max(1) as u64)),
            scratch: Scratch::new(ctx.config.max_buffer),
            again: Vec::new(),
            again_spare: Vec::new(),
            fresh: Vec::new(),
            run_queue,
            tasks_started: 0,
            ctx: ctx.clone(),
            epoch: Instant::now(),
            now_ms: 0,
            polled_ms: 0,
            drain: Drain::new(),
            timers: Deadlines::new(),
            stats: LoopStats { id, ..LoopStats::default() },
        }
    }

    /// Serves until the shutdown event ends the loop.
    pub(crate) fn run(mut self) -> io::Result<LoopStats> {
        let mut events = Events::with_capacity(1024);
        self.run_queue.enter();
        loop {
            let now = Instant::now();
            for stage in self.drain.advance(&self.ctx.shutdown, now) {
                self.stop(stage);
            }
            if !self.drain.serving() && self.conns.is_empty() && self.acceptor.is_idle() {
                return Ok(self.stats);
            }
            self.timers.set(Timer::Drain, self.drain.next_change(&self.ctx.shutdown));
            // Input left over, tasks to run, or connections accepted since
            // the last stamp (their idle clocks start at the next): poll
            // without sleeping.
            let soon = !self.again.is_empty() || !self.fresh.is_empty() || !self.run_queue.is_empty();
            self.timers.set(Timer::Soon, soon.then_some(now));
            self.timers.set(Timer::Tasks, handler::next_timer());
            let now_ms = self.ms_since_epoch(now);
            let idle_in = self.idle.as_ref().and_then(|q| q.next_in(&mut self.conns, now_ms));
            self.timers.set(Timer::Idle, idle_in.map(|ms| now + std::time::Duration::from_millis(ms)));
            self.polled_ms = now_ms;
            self.acceptor.wait(&mut events, &mut self.timers)?;
            let now = Instant::now();
            self.now_ms = self.ms_since_epoch(now);
            handler::fire_timers(now);
            if let Some(q) = &mut self.idle {
                for key in self.fresh.drain(..) {
                    if self.conns.contains(key) {
                        q.touch(&mut self.conns, key, self.now_ms);
                    }
                }
            }
            for ev in events.iter() {
                let Token(key) = ev.token();
                if key < HEADERS {
                    let closed = ev.is_read_closed() || ev.is_error();
                    match self.conns.get(key).map(|e| &e.kind) {
                        Some(Kind::Task { io, .. }) => io.on_event(ev.is_readable(), ev.is_writable(), closed),
                        Some(Kind::Machine(_)) => {
                            self.conn_event(key, ev.is_readable() || closed, closed, ev.is_writable())
                        }
                        None => {}
                    }
                }
            }
            self.run_tasks();
            self.revisit();
            self.accept(now);
            self.expire_idle();
        }
    }

    fn ms_since_epoch(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_millis() as u64
    }

    /// One stage of the stop: close the listener, stop reading, drop.
    fn stop(&mut self, stage: Stage) {
        match stage {
            Stage::Serving => {}
            Stage::Grace => {
                self.acceptor.on_stage(stage);
                log::debug!("loop {}: listener closed, {} connection(s) draining", self.stats.id, self.conns.len());
            }
            Stage::Flush => {
                self.acceptor.on_stage(stage);
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    match &mut self.conns[key].kind {
                        Kind::Machine(conn) => {
                            if conn.stop_reading() {
                                self.close(key);
                            }
                        }
                        // Reads see end-of-file; what the handler writes
                        // still goes out until the flush grace ends.
                        Kind::Task { io, .. } => io.end_input(),
                    }
                }
            }
            Stage::Over => {
                self.acceptor.on_stage(stage);
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.close(key);
                }
            }
        }
    }

    fn conn_event(&mut self, key: usize, readable: bool, peer_closed: bool, writable: bool) {
        let Some(Entry { kind: Kind::Machine(conn), .. }) = self.conns.get_mut(key) else { return };
        let mut st = Status::default();
        let scratch = &mut self.scratch;
        let result = catch_unwind(AssertUnwindSafe(|| {
            if writable {
                merge(&mut st, conn.on_writable(scratch)?);
            }
            if readable && !st.done {
                merge(&mut st, conn.on_readable(scratch, peer_closed)?);
            }
            io::Result::Ok(())
        }));
        let result = match result {
            Ok(r) => r,
            Err(panic) => {
                // The protocol panicked: this connection ends, and nothing it
                // left in the scratch buffers reaches another.
                self.scratch.reset();
                log::warn!("connection {key}: protocol panicked: {}", handler::panic_message(panic.as_ref()));
                self.ctx.handler_failed();
                self.close(key);
                return;
            }
        };
        match result {
            Err(err) => {
                log::debug!("connection {key}: {err}");
                self.close(key);
            }
            Ok(()) if st.done => self.close(key),
            Ok(()) => {
                if st.more {
                    self.again.push(key);
                }
                if st.progressed {
                    if let Some(q) = &mut self.idle {
                        q.touch(&mut self.conns, key, self.now_ms);
                    }
                }
            }
        }
    }

    /// Polls every handler task that was woken, once each.
    fn run_tasks(&mut self) {
        for (key, generation) in self.run_queue.take() {
            let Some(Entry { kind: Kind::Task { task, io, peer }, .. }) = self.conns.get_mut(key) else { continue };
            if task.generation() != generation {
                continue; // a waker of an earlier task in this slot
            }
            match task.poll() {
                Polled::Pending => {
                    if io.take_progress() {
                        if let Some(q) = &mut self.idle {
                            q.touch(&mut self.conns, key, self.now_ms);
                        }
                    }
                }
                Polled::Done(Ok(())) => self.close(key),
                Polled::Done(Err(e)) => {
                    log::debug!("{peer}: handler: {e}");
                    self.ctx.handler_failed();
                    self.close(key);
                }
                Polled::Panicked(m) => {
                    log::warn!("{peer}: handler panicked: {m}; connection closed");
                    self.ctx.handler_failed();
                    self.close(key);
                }
            }
        }
    }

    /// Serves connections that still have input without a new edge.
    fn revisit(&mut self) {
        if self.again.is_empty() {
            return;
        }
        std::mem::swap(&mut self.again, &mut self.again_spare);
        let mut keys = std::mem::take(&mut self.again_spare);
        for &key in &keys {
            self.conn_event(key, true, false, false);
        }
        keys.clear();
        self.again_spare = keys;
    }

    /// Takes new connections through the accept policy, within the budget.
    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPT_BUDGET {
            let Some(c) = self.acceptor.accept(now) else { return };
            let mut stream = c.stream;
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.acceptor.poller.registry().register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("{}: cannot register the connection: {e}; closing it", c.peer);
                self.ctx.handover_failed();
                continue;
            }
            let kind = match &self.ctx.service {
                Service::Protocol(factory) => Kind::Machine(Conn::new(stream, factory())),
                Service::Handler(h) => {
                    let io = Rc::new(LoopIo::new(stream));
                    self.tasks_started += 1;
                    let future = h(Connection::on_loop(io.clone(), c.peer));
                    let task = Task::new(key, self.tasks_started, future, &self.run_queue);
                    Kind::Task { task, io, peer: c.peer }
                }
            };
            entry.insert(Entry { kind, links: Links::default(), _permit: c.permit });
            if self.idle.is_some() {
                self.fresh.push(key);
            }
            self.stats.accepted += 1;
            self.stats.peak = self.stats.peak.max(self.conns.len());
        }
        self.acceptor.budget_used();
    }

    /// Closes connections idle for the timeout as of `polled_ms`, a moment
    /// before the poll whose events this iteration handled. Not the stamp
    /// read after the poll, nor a fresh clock: a process stalled (stopped,
    /// descheduled) after the poll returned would otherwise close a
    /// connection whose bytes arrived during the stall, unreported. A
    /// timeout that falls due during a poll is acted on one (non-sleeping)
    /// poll later.
    fn expire_idle(&mut self) {
        let now = self.polled_ms;
        while let Some(key) = self.idle.as_ref().and_then(|q| q.expired(&mut self.conns, now)) {
            log::debug!("connection {key}: idle timeout");
            self.stats.idle_closed += 1;
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        if let Some(q) = &mut self.idle {
            q.remove(&mut self.conns, key);
        }
        // Dropping the entry frees its admission place (waking any loop
        // that waits for room) and closes the socket, which leaves the poll.
        let e = self.conns.remove(key);
        let t = e.kind.totals();
        self.ctx.closed(t);
        log::trace!("connection {key} closed: {} bytes in, {} out", t.bytes_in, t.bytes_out);
    }
}

fn merge(into: &mut Status, s: Status) {
    into.progressed |= s.progressed;
    into.more |= s.more;
    into.done |= s.done;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// The size of the future a handler function makes, without making one.
    fn future_size<F, Fut>(_: &F) -> usize
    where
        F: Fn(Connection) -> Fut,
    {
        size_of::<Fut>()
    }

    /// What a connection waiting in the coroutine echo holds in user space,
    /// heap blocks rounded to glibc's 16 bytes plus its 8-byte header:
    /// docs/ARCHITECTURE.md lists these figures; the bound is the issue's.
    #[test]
    fn a_waiting_async_connection_holds_under_1_kib() {
        let block = |n: usize| (n + 8).div_ceil(16) * 16;
        // A slab slot is an enum of the entry and a vacancy: at most one
        // word more than the entry.
        let slot = size_of::<Entry>() + size_of::<usize>();
        let future = block(future_size(&handler::upper_echo));
        let io = block(2 * size_of::<usize>() + size_of::<LoopIo>());
        let waker = block(2 * size_of::<usize>() + handler::task_waker_size());
        let total = slot + future + io + waker;
        println!("slab slot {slot} + future {future} + socket state {io} + waker {waker} = {total} B");
        assert!(total < 1024, "a waiting async connection holds {total} B");
        // A protocol's connection holds only its slot (and no buffer).
        assert!(slot <= 256, "slab slot {slot} B");
    }
}
