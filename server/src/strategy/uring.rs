//! Uring: one thread, one io_uring, every connection a state machine driven
//! by completions rather than readiness (`driver::completion`). The event
//! loop's model with the kernel doing the I/O: a multishot accept takes
//! connections off the backlog, a multishot receive per connection brings
//! data in buffers of a ring shared by every connection (an idle connection
//! holds none), and sends are queued per connection. Submissions and
//! completions of one iteration cost one `io_uring_enter`; the poll every
//! loop sleeps in (signals, the waker, metrics, heartbeat) is watched
//! through the ring by a multishot poll on its epoll fd.
//!
//! The pieces are the event loop's: the one accept policy (the multishot
//! accept's results go through [`AcceptPolicy::judge`]), admission, the
//! drain's stages, the deadline table and the idle queue. Accepting has two
//! ways, by the room left under the cap:
//!
//! - with room for at least a whole backlog per ring, the multishot accept
//!   is armed: the kernel accepts, and each connection is judged;
//! - with less (near `--max-conns`, which a multishot accept could overrun
//!   in one go), or after an accept error (the policy's back-off), the
//!   multishot accept is cancelled and the loop accepts as the event loop
//!   does: a poll on the listener, then accept(2) through the policy until
//!   it says to wait, within [`ACCEPT_BUDGET`]. At the cap nothing is armed:
//!   the backlog holds the clients (sampled for `--queue-timeout`), and a
//!   freed place wakes the loop through the poller's waker.
//!
//! One iteration: the stages of a stop, arm what is due (accept, receives
//! starved of buffers), enter the ring (submit, and sleep until a
//! completion or the earliest deadline), handle every completion (accepts,
//! receives, sends, the poller's fd, the listener's poll), accept as above,
//! expire idle connections.
//!
//! Stop: the listener closes at the grace (its accept cancelled first);
//! connections are served until they close or the grace ends; then their
//! receives are cancelled and what is owed is sent; what is left when the
//! flush grace ends is closed. A connection closes once its requests in
//! flight are done (`driver::completion` says why).
//!
//! With `--proxy-protocol`, an accepted connection whose header has not
//! come yet waits in the poll the ring watches (`net::proxy::Headers`, as
//! the acceptor's do) and joins the ring once it has.
//!
//! `--threads N` runs N such loops on N threads, each with its own
//! SO_REUSEPORT listener, in the reactor's frame (`reactor::run_loops`).
//! `--handler async` is not supported here: the handlers' `Connection`
//! waits on readiness, which this loop does not have.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::Events;
use slab::Slab;

use super::event::{LoopStats, ACCEPT_BUDGET};
use super::idle::{HasLinks, IdleQueue, Links};
use super::reactor;
use crate::admission::Permit;
use crate::context::Context;
use crate::driver::completion::{Conn, Status};
use crate::handler;
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::{Drain, Stage};
use crate::lifecycle::poller::Poller;
use crate::lifecycle::signals::Signals;
use crate::net::accept::{AcceptPolicy, Accepted, AtCap, Outcome};
use crate::net::proxy::Headers;
use crate::serve::Service;
use crate::sys::uring::{self, Completion, Kind, Uring};

/// Submission queue entries per ring (completions: four times as many).
const ENTRIES: u32 = 1024;
/// Bytes of provided buffers per ring: 256 of 64 KiB where the kernel
/// consumes them incrementally, else 1,024 of 16 KiB.
const BUFFER_MEMORY: usize = 16 << 20;

/// Poll tags: the poller's epoll fd, and the listener (when accepting the
/// event loop's way).
const POLLER: u64 = 0;
const LISTENER: u64 = 1;

/// The error for a handler service.
pub(crate) const NO_HANDLERS: &str = "--handler async is not supported with --mode uring";

/// Checks that io_uring serves here; the error names the cause and the way
/// out. `Server::bind` calls it once, before binding.
pub(crate) fn probe() -> io::Result<()> {
    uring::probe().map_err(|cause| io::Error::other(format!("io_uring unavailable: {cause}; use --mode event")))
}

/// Runs one ring (or `--threads` rings on as many threads) until the
/// server stops.
pub(crate) fn run(mut listeners: Vec<TcpListener>, signals: Signals, ctx: Context) -> io::Result<()> {
    if matches!(ctx.service, Service::Handler(_)) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, NO_HANDLERS));
    }
    let rings = ctx.config.threads.max(listeners.len()).max(1);
    if rings > 1 {
        // A ring is made on the thread that submits to it (it is set up
        // single-issuer), and every ring (an fd of its own) exists before
        // the first accepts: a flood of connections cannot leave a ring
        // without its fd. Each thread reaches the barrier, made or not.
        let made = Arc::new(Barrier::new(rings));
        return reactor::run_loops(
            listeners,
            signals,
            ctx,
            |listener, poller, _| Ok((listener, poller)),
            move |i, (listener, poller), ctx| {
                let ring = UringLoop::new(i, listener, poller, ctx, rings);
                made.wait();
                ring?.run()
            },
        );
    }
    let listener = listeners.swap_remove(0);
    let poller = Poller::new(&ctx.shutdown, Some(signals), ctx.config.metrics, Some(ctx.slot))?;
    let ring = UringLoop::new(0, listener, poller, &ctx, 1)?;
    ctx.ready();
    let stats = ring.run()?;
    log::info!("{stats}");
    Ok(())
}

/// A connection and what the loop keeps beside it.
struct Entry {
    conn: Conn,
    links: Links,
    _permit: Permit,
}

impl HasLinks for Entry {
    fn links(&mut self) -> &mut Links {
        &mut self.links
    }
}

/// What the listener has armed in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Armed {
    /// Nothing.
    Off,
    /// The multishot accept of this generation.
    Multi(u64),
    /// A poll for readability (accepting the event loop's way).
    Poll,
}

/// One ring: its listener and policy, its connections.
pub(crate) struct UringLoop {
    ring: Uring,
    poller: Poller,
    listener: Option<TcpListener>,
    policy: AcceptPolicy,
    /// Connections waiting for their PROXY header (watched in the poll).
    headers: Headers<TcpStream>,
    armed: Armed,
    accept_generation: u64,
    /// Room under the cap from which the multishot accept is armed.
    multishot_room: usize,
    conns: Slab<Entry>,
    generations: u32,
    idle: Option<IdleQueue>,
    /// Accepted since the last enter: their idle clocks start at the next stamp.
    fresh: Vec<usize>,
    /// Connections whose receive ended for want of buffers.
    starved: Vec<u64>,
    /// Connections with replies to send once the batch is handled.
    queued: Vec<u64>,
    /// The copying path's output (split off into each reply).
    scratch: BytesMut,
    completions: Vec<Completion>,
    events: Events,
    ctx: Context,
    epoch: Instant,
    /// The time this iteration's activity is stamped with (read after
    /// `io_uring_enter`).
    now_ms: u64,
    /// The time read before the last `io_uring_enter`, as of which idleness
    /// is judged (the event loop's rule: see `EventLoop::polled_ms`).
    polled_ms: u64,
    drain: Drain,
    timers: Deadlines,
    stats: LoopStats,
}

impl UringLoop {
    /// A ring that accepts on `listener` and watches `poller` (which owns
    /// the process's signals when this is the only ring); one of `rings`
    /// sharing the process's admission.
    pub(crate) fn new(
        id: usize,
        listener: TcpListener,
        poller: Poller,
        ctx: &Context,
        rings: usize,
    ) -> io::Result<UringLoop> {
        listener.set_nonblocking(true)?;
        let mut ring = Uring::new(ENTRIES, BUFFER_MEMORY)?;
        log::debug!(
            "ring {id}: {} KiB of provided buffers, {}",
            BUFFER_MEMORY >> 10,
            if ring.incremental() { "consumed incrementally (64 KiB each)" } else { "whole (16 KiB each)" }
        );
        ring.poll_readable(poller.as_fd().as_raw_fd(), true, POLLER)?;
        ctx.admission.wake_on_room(poller.waker());
        Ok(UringLoop {
            ring,
            poller,
            listener: Some(listener),
            policy: AcceptPolicy::new(ctx, AtCap::Wait),
            headers: Headers::new(ctx),
            armed: Armed::Off,
            accept_generation: 0,
            multishot_room: rings * (backlog_limit(ctx.config.backlog) + 1),
            conns: Slab::new(),
            generations: 0,
            idle: ctx.config.idle_timeout.map(|d| IdleQueue::new(d.as_millis().max(1) as u64)),
            fresh: Vec::new(),
            starved: Vec::new(),
            queued: Vec::new(),
            scratch: BytesMut::new(),
            completions: Vec::with_capacity(1024),
            events: Events::with_capacity(64),
            ctx: ctx.clone(),
            epoch: Instant::now(),
            now_ms: 0,
            polled_ms: 0,
            drain: Drain::new(),
            timers: Deadlines::new(),
            stats: LoopStats { id, ..LoopStats::default() },
        })
    }

    /// Serves until the shutdown event ends the loop.
    pub(crate) fn run(mut self) -> io::Result<LoopStats> {
        loop {
            let now = Instant::now();
            for stage in self.drain.advance(&self.ctx.shutdown, now) {
                self.stop(stage);
            }
            if !self.drain.serving() && self.conns.is_empty() && self.headers.is_empty() {
                return Ok(self.stats);
            }
            self.accept(now);
            self.feed_starved()?;
            self.timers.set(Timer::Drain, self.drain.next_change(&self.ctx.shutdown));
            self.timers.set(Timer::Soon, (!self.fresh.is_empty()).then_some(now));
            let accept_at = match self.armed {
                Armed::Multi(_) => None,
                _ if self.listener.is_some() => self.policy.deadline(now),
                _ => None,
            };
            self.timers.set(Timer::Accept, [accept_at, self.headers.deadline()].into_iter().flatten().min());
            let now_ms = self.ms_since_epoch(now);
            let idle_in = self.idle.as_ref().and_then(|q| q.next_in(&mut self.conns, now_ms));
            self.timers.set(Timer::Idle, idle_in.map(|ms| now + Duration::from_millis(ms)));
            let timeout = self.poller.timeout(self.timers.earliest(), now);
            self.polled_ms = now_ms;
            let before = Instant::now();
            self.ring.enter(Some(timeout))?;
            let now = Instant::now();
            self.poller.slept(before, now);
            self.now_ms = self.ms_since_epoch(now);
            self.poller.beat();
            if let Some(q) = &mut self.idle {
                for key in self.fresh.drain(..) {
                    if self.conns.contains(key) {
                        q.touch(&mut self.conns, key, self.now_ms);
                    }
                }
            }
            self.ring.completions(&mut self.completions);
            let mut poller_ready = self.poller.due(now);
            let mut completions = std::mem::take(&mut self.completions);
            for c in completions.drain(..) {
                poller_ready |= self.complete(c, now)?;
            }
            self.completions = completions;
            self.send_queued();
            if poller_ready {
                self.poll_the_poller(now)?;
            }
            self.expire_idle();
        }
    }

    /// Handles what the poller's poll has ready. The ring's multishot poll
    /// of its epoll fd completes when an event is added, not while events
    /// wait: so the poll is read until it has fewer than a batch left, or
    /// events past the first batch (a flood of metrics clients, PROXY
    /// headers) would wait for an unrelated wake-up.
    fn poll_the_poller(&mut self, now: Instant) -> io::Result<()> {
        loop {
            self.poller.wait(&mut self.events, Some(now))?;
            if self.poller.take_notices().upgrade > 0 {
                // SIGUSR2 to the only ring (with more, the reactor's frame
                // owns the signals): the successor gets this listener.
                let fds: Vec<_> = self.listener.iter().map(|l| l.as_fd()).collect();
                self.poller.start_upgrade(&fds);
            }
            let mut n = 0;
            for ev in self.events.iter() {
                self.headers.on_event(ev);
                n += 1;
            }
            let ctx = &self.ctx;
            self.poller.serve_metrics(|| ctx.page());
            if n < self.events.capacity() {
                return Ok(());
            }
        }
    }

    fn ms_since_epoch(&self, now: Instant) -> u64 {
        now.duration_since(self.epoch).as_millis() as u64
    }

    /// One stage of the stop: close the listener, stop reading, close.
    fn stop(&mut self, stage: Stage) {
        match stage {
            Stage::Serving => {}
            Stage::Grace => {
                // What the listener's queue holds is taken and served before
                // it closes: closing resets it (see `net::acceptor`).
                self.disarm_accept();
                self.take_queue(Instant::now());
                self.listener = None;
                log::debug!("ring {}: listener closed, {} connection(s) draining", self.stats.id, self.conns.len());
            }
            Stage::Flush => {
                self.headers.close_all(self.poller.registry());
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    let tag = self.tag(key);
                    match self.conns[key].conn.stop_reading(&mut self.ring, tag) {
                        Ok(false) => {}
                        Ok(true) | Err(_) => self.close(key),
                    }
                }
            }
            Stage::Over => {
                self.headers.close_all(self.poller.registry());
                let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                for key in keys {
                    self.close(key);
                }
            }
        }
    }

    /// Arms or disarms accepting for the room left (the module docs).
    fn accept(&mut self, now: Instant) {
        while let Some(c) = self.headers.arrived(&mut self.policy, self.poller.registry(), now) {
            self.add(c);
        }
        let Some(listener) = &self.listener else { return };
        let fd = listener.as_raw_fd();
        if self.ctx.admission.room() >= self.multishot_room && !self.policy.paused(now) {
            if self.armed == Armed::Poll {
                let _ = self.ring.cancel(Kind::Poll, LISTENER);
            }
            if !matches!(self.armed, Armed::Multi(_)) {
                self.accept_generation += 1;
                self.armed = match self.ring.accept_multi(fd, self.accept_generation) {
                    Ok(()) => Armed::Multi(self.accept_generation),
                    Err(e) => {
                        log::warn!("ring {}: cannot arm the accept: {e}", self.stats.id);
                        Armed::Off
                    }
                };
            }
            return;
        }
        if let Armed::Multi(_) = self.armed {
            self.disarm_accept();
        }
        for _ in 0..ACCEPT_BUDGET {
            if !self.policy.should_try(now) || !self.accept_one(now) {
                break;
            }
        }
        if self.policy.should_try(now) {
            self.policy.budget_used();
        } else if self.policy.wants_readiness()
            && self.armed == Armed::Off
            && self.ring.poll_readable(fd, false, LISTENER).is_ok()
        {
            self.armed = Armed::Poll;
        }
    }

    /// Accepts what the listener's queue holds now, through the policy, at
    /// most a backlog's worth.
    fn take_queue(&mut self, now: Instant) {
        for _ in 0..self.ctx.config.backlog.max(1) {
            if !self.accept_one(now) {
                break;
            }
        }
    }

    /// One accept(2) through the policy, its connection served; whether
    /// more may wait.
    fn accept_one(&mut self, now: Instant) -> bool {
        let Some(listener) = &self.listener else { return false };
        match self.policy.accept(listener, now) {
            Outcome::Accepted(c) => self.add(c),
            Outcome::Header(p) => {
                if let Some(c) = self.headers.first_look(p, &mut self.policy, self.poller.registry(), now) {
                    self.add(c);
                }
            }
            Outcome::Again => {}
            Outcome::Empty | Outcome::Full | Outcome::Paused => return false,
        }
        true
    }

    /// Cancels whatever the listener has armed.
    fn disarm_accept(&mut self) {
        let _ = match self.armed {
            Armed::Off => Ok(()),
            Armed::Multi(generation) => self.ring.cancel(Kind::Accept, generation),
            Armed::Poll => self.ring.cancel(Kind::Poll, LISTENER),
        };
        self.armed = Armed::Off;
    }

    /// Serves an admitted connection.
    fn add(&mut self, c: Accepted<TcpStream>) {
        let Service::Protocol(factory) = &self.ctx.service else { unreachable!("{NO_HANDLERS}: refused at start") };
        self.generations = self.generations.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Conn::new(c.stream, factory(), self.generations);
        let tag = u64::from(self.generations) << 32 | key as u64;
        if let Err(e) = conn.start(&mut self.ring, tag) {
            log::warn!("{}: cannot arm the receive: {e}; closing the connection", c.peer);
            self.ctx.handover_failed();
            return;
        }
        entry.insert(Entry { conn, links: Links::default(), _permit: c.permit });
        if self.idle.is_some() {
            self.fresh.push(key);
        }
        self.stats.accepted += 1;
        self.stats.peak = self.stats.peak.max(self.conns.len());
    }

    fn tag(&self, key: usize) -> u64 {
        u64::from(self.conns[key].conn.generation()) << 32 | key as u64
    }

    /// The live connection a tag names, if any.
    fn key_of(&self, tag: u64) -> Option<usize> {
        let key = (tag & u64::from(u32::MAX)) as usize;
        self.conns.get(key).filter(|e| u64::from(e.conn.generation()) == tag >> 32).map(|_| key)
    }

    /// Handles one completion; returns whether the poller's fd is ready.
    fn complete(&mut self, c: Completion, now: Instant) -> io::Result<bool> {
        match c {
            Completion::Polled { tag: POLLER, result, more } => {
                if !more {
                    // Ended (an error, or the kernel's limits): arm it again.
                    if let Err(e) = &result {
                        log::debug!("ring {}: poll of the poller ended: {e}", self.stats.id);
                    }
                    self.ring.poll_readable(self.poller.as_fd().as_raw_fd(), true, POLLER)?;
                }
                return Ok(true);
            }
            Completion::Polled { result, .. } => {
                if self.armed == Armed::Poll {
                    self.armed = Armed::Off;
                }
                if result.is_ok() {
                    self.policy.readable();
                }
            }
            Completion::Accepted { tag, result, more } => {
                if !more && self.armed == Armed::Multi(tag) {
                    self.armed = Armed::Off;
                }
                if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::ECANCELED)) {
                    return Ok(false);
                }
                // A connection the kernel took as the listener closed is
                // served all the same (see `stop`).
                let listener = self.listener.as_ref();
                // A peer that is gone before its name was asked for failed
                // before it was ours, as ECONNABORTED says of accept(2).
                let named = result.and_then(|s| match s.peer_addr() {
                    Ok(peer) => Ok((s, peer)),
                    Err(_) => Err(io::Error::from_raw_os_error(libc::ECONNABORTED)),
                });
                match self.policy.judge(named, listener, now) {
                    Outcome::Accepted(c) => self.add(c),
                    Outcome::Header(p) => {
                        if let Some(c) = self.headers.first_look(p, &mut self.policy, self.poller.registry(), now) {
                            self.add(c);
                        }
                    }
                    _ => {}
                }
            }
            Completion::Received { tag, result, more } => {
                let Some(key) = self.key_of(tag) else {
                    if let Ok(Some(buf)) = result {
                        self.ring.recycle(buf);
                    }
                    return Ok(false);
                };
                let max_buffer = self.ctx.config.max_buffer;
                let (ring, scratch) = (&mut self.ring, &mut self.scratch);
                let conn = &mut self.conns[key].conn;
                let st =
                    catch_unwind(AssertUnwindSafe(|| conn.on_received(ring, tag, result, more, scratch, max_buffer)));
                self.after(key, tag, st);
            }
            Completion::Sent { tag, result, payload } => {
                let Some(key) = self.key_of(tag) else {
                    let ring = &mut self.ring;
                    payload.each(|p| {
                        if let uring::Payload::Buf { buf, .. } = p {
                            ring.recycle(buf);
                        }
                    });
                    return Ok(false);
                };
                let max_buffer = self.ctx.config.max_buffer;
                let ring = &mut self.ring;
                let conn = &mut self.conns[key].conn;
                let st = catch_unwind(AssertUnwindSafe(|| conn.on_sent(ring, tag, result, payload, max_buffer)));
                self.after(key, tag, st);
            }
        }
        Ok(false)
    }

    /// The loop's bookkeeping after a connection handled a completion.
    fn after(&mut self, key: usize, tag: u64, st: std::thread::Result<io::Result<Status>>) {
        match st {
            Err(panic) => {
                // The protocol panicked: this connection ends, and nothing it
                // left in the scratch buffer reaches another.
                self.scratch.clear();
                log::warn!("connection {key}: protocol panicked: {}", handler::panic_message(panic.as_ref()));
                self.ctx.handler_failed();
                self.close(key);
            }
            Ok(Err(e)) => {
                log::debug!("connection {key}: {e}");
                self.close(key);
            }
            Ok(Ok(st)) => {
                if st.starved {
                    self.starved.push(tag);
                }
                if st.queued {
                    self.queued.push(tag);
                }
                let conn = &self.conns[key].conn;
                if st.done || conn.closing() {
                    self.close(key);
                } else if st.progressed {
                    if let Some(q) = &mut self.idle {
                        q.touch(&mut self.conns, key, self.now_ms);
                    }
                }
            }
        }
    }

    /// Sends what the batch of completions queued: one send per connection
    /// for everything that arrived in it.
    fn send_queued(&mut self) {
        let mut queued = std::mem::take(&mut self.queued);
        for tag in queued.drain(..) {
            let Some(key) = self.key_of(tag) else { continue };
            let st = self.conns[key].conn.send_queued(&mut self.ring, tag);
            self.after(key, tag, Ok(st));
        }
        self.queued = queued;
    }

    /// Arms the receives that ran out of buffers again, once some are back.
    fn feed_starved(&mut self) -> io::Result<()> {
        if self.starved.is_empty() || self.ring.buffers_free() == 0 {
            return Ok(());
        }
        for tag in std::mem::take(&mut self.starved) {
            if let Some(key) = self.key_of(tag) {
                self.conns[key].conn.start(&mut self.ring, tag)?;
            }
        }
        Ok(())
    }

    /// Closes connections idle for the timeout as of `polled_ms` (the event
    /// loop's rule: a moment before the wait whose completions were handled,
    /// not the stamp read after it, nor a fresh clock).
    fn expire_idle(&mut self) {
        let now = self.polled_ms;
        while let Some(key) = self.idle.as_ref().and_then(|q| q.expired(&mut self.conns, now)) {
            log::debug!("connection {key}: idle timeout");
            self.stats.idle_closed += 1;
            self.close(key);
        }
    }

    /// Closes a connection: at once if no request of its is in flight,
    /// else once their completions (cancelled now) have come.
    fn close(&mut self, key: usize) {
        let Some(e) = self.conns.get_mut(key) else { return };
        if !e.conn.closing() {
            e.conn.close(&mut self.ring);
            if let Some(q) = &mut self.idle {
                q.remove(&mut self.conns, key);
            }
        }
        if self.conns[key].conn.in_flight() > 0 {
            return;
        }
        // Dropping the entry closes the socket and frees its place.
        let e = self.conns.remove(key);
        let t = e.conn.totals();
        self.ctx.closed(t);
        log::trace!("connection {key} closed: {} bytes in, {} out", t.bytes_in, t.bytes_out);
    }
}

/// The longest listen backlog the kernel keeps for `asked`
/// (`net.core.somaxconn` caps it).
fn backlog_limit(asked: i32) -> usize {
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(4096);
    (asked.max(1) as usize).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// What an idle connection holds in user space: its slab slot (the
    /// entry, plus at most a word for the vacancy tag); no buffer, and the
    /// protocol's box is empty for a stateless protocol (UpperEcho).
    #[test]
    fn an_idle_connection_is_a_slab_slot_of_at_most_128_bytes() {
        let slot = size_of::<Entry>() + size_of::<usize>();
        println!(
            "uring slab slot: {slot} B (connection {}, idle links {}, permit {})",
            size_of::<Conn>(),
            size_of::<Links>(),
            size_of::<Permit>()
        );
        assert!(slot <= 128, "slab slot {slot} B");
    }
}
