//! Event: one thread, one `mio::Poll`, every connection a resumable state
//! machine (the coroutine-style server, done as nginx and Redis do it).
//! Connections live in a `slab` keyed by their token; the non-blocking
//! driver moves their bytes; an [`IdleQueue`] expires silent connections in
//! O(1) per event.
//!
//! [`EventLoop`] is also the unit of the `reactor` strategy (one loop per
//! thread) and of prefork's event workers.
//!
//! Accept: until `WouldBlock`, at most [`ACCEPT_BUDGET`] per wake-up so a
//! connection flood cannot starve open connections; ECONNABORTED and friends
//! are skipped; on EMFILE/ENFILE the listener is left alone for a back-off
//! and then retried (edge-triggered readiness would not fire again for
//! connections already queued). At `--max-conns` the loop stops accepting
//! and resumes when a connection closes.
//!
//! Stop: the listener is closed at once; connections are served until they
//! close or the grace ends; then they stop reading, flush, and close; after
//! [`super::FLUSH_GRACE`] whatever is left is dropped.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::acceptor::{
    accept_guarded, classify, shed, shed_one, AcceptError, ExhaustionLog, ACCEPT_BACKOFF, HEARTBEAT,
};
use crate::backlog::BacklogWatch;
use crate::context::Context;
use crate::driver::nonblocking::{Conn, Scratch, Status};
use crate::metrics::Metrics;
use crate::per_ip::IpPermit;
use crate::shutdown::Phase;
use crate::signals::Signals;
use crate::timer::{HasLinks, IdleQueue, Links};

const LISTENER: Token = Token(usize::MAX - 1);
const SIGNALS: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
/// The metrics endpoint and its clients use the tokens from here up.
const METRICS: Token = Token(usize::MAX - 100);

/// Connections accepted per wake-up at most.
pub const ACCEPT_BUDGET: usize = 256;

/// Runs the single-threaded event loop until the server stops.
pub fn run(listener: std::net::TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    let event_loop = EventLoop::new(0, listener, Some(signals), ctx.clone())?;
    ctx.ready();
    let stats = event_loop.run()?;
    log::info!("{stats}");
    Ok(())
}

/// What one loop did, reported when it ends.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopStats {
    /// Loop number.
    pub id: usize,
    /// Connections accepted.
    pub accepted: u64,
    /// Most connections open at once.
    pub peak: usize,
    /// Connections closed by the idle timeout.
    pub idle_closed: u64,
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
    conn: Conn,
    links: Links,
    _permit: Option<IpPermit>,
}

impl HasLinks for Entry {
    fn links(&mut self) -> &mut Links {
        &mut self.links
    }
}

/// One event loop: a poll, a listener, and the connections it accepted.
pub struct EventLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Option<Signals>,
    waker: Arc<Waker>,
    /// Every loop of the process (reactor), woken when a connection closes
    /// at the process-wide `--max-conns` cap.
    peers: Vec<Arc<Waker>>,
    metrics: Option<Metrics>,
    conns: Slab<Entry>,
    idle: Option<IdleQueue>,
    scratch: Scratch,
    again: Vec<usize>,
    again_spare: Vec<usize>,
    want_accept: bool,
    accept_paused: bool,
    backoff_until: Option<Instant>,
    exhausted: ExhaustionLog,
    /// `--queue-timeout` on the backlog while accepting is paused.
    backlog: Option<BacklogWatch>,
    ctx: Context,
    epoch: Instant,
    now_ms: u64,
    grace_over_at: Option<Instant>,
    stats: LoopStats,
}

impl EventLoop {
    /// A loop that accepts on `listener`; with `signals` it also handles
    /// stop signals itself (otherwise its owner wakes it on a phase change).
    pub fn new(id: usize, listener: std::net::TcpListener, signals: Option<Signals>, ctx: Context) -> io::Result<Self> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener);
        crate::sys::register_listener(&poll, &listener, LISTENER)?;
        if let Some(s) = &signals {
            s.register(poll.registry(), SIGNALS)?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        // Only a loop that owns the process's signals (event mode) serves
        // metrics; the reactor serves them from its main thread.
        let metrics = match &signals {
            Some(_) => Metrics::maybe_bind(ctx.config.metrics, poll.registry(), METRICS)?,
            None => None,
        };
        let idle = ctx.config.idle_timeout.map(|d| IdleQueue::new(d.as_millis().max(1) as u64));
        Ok(EventLoop {
            poll,
            listener: Some(listener),
            signals,
            waker,
            peers: Vec::new(),
            metrics,
            conns: Slab::new(),
            idle,
            scratch: Scratch::new(ctx.config.max_buffer),
            again: Vec::new(),
            again_spare: Vec::new(),
            want_accept: true,
            accept_paused: false,
            backoff_until: None,
            exhausted: ExhaustionLog::default(),
            backlog: ctx.config.queue_timeout.map(BacklogWatch::new),
            ctx,
            epoch: Instant::now(),
            now_ms: 0,
            grace_over_at: None,
            stats: LoopStats { id, ..LoopStats::default() },
        })
    }

    /// Wakes the loop from another thread (it then re-reads the shutdown
    /// phase).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// The wakers of every loop sharing this process's `--max-conns`.
    pub fn set_peers(&mut self, peers: Vec<Arc<Waker>>) {
        self.peers = peers;
    }

    fn has_room(&self) -> bool {
        self.ctx.open_connections() < self.ctx.config.max_conns
    }

    /// Serves until the shutdown event ends the loop.
    pub fn run(mut self) -> io::Result<LoopStats> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.check_phase() {
                return Ok(self.stats);
            }
            let timeout = Some(self.timeout().map_or(HEARTBEAT, |t| t.min(HEARTBEAT)));
            let polled = crate::poll::wait(&mut self.poll, &mut events, timeout);
            self.ctx.slot.beat();
            polled?;
            self.now_ms = self.epoch.elapsed().as_millis() as u64;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.want_accept = true,
                    SIGNALS => {
                        if let Some(s) = &self.signals {
                            s.drain();
                        }
                    }
                    WAKER => {}
                    t if self.metrics.as_ref().is_some_and(|m| m.owns(t)) => {
                        if let Some(m) = &mut self.metrics {
                            let slot = self.ctx.slot;
                            m.on_event(ev, self.poll.registry(), &|| crate::metrics::render_process(slot));
                        }
                    }
                    Token(key) => {
                        let closed = ev.is_read_closed() || ev.is_error();
                        self.conn_event(key, ev.is_readable() || closed, closed, ev.is_writable());
                    }
                }
            }
            self.revisit();
            if self.accept_paused && self.has_room() {
                self.accept_paused = false;
                self.want_accept = true;
                if let Some(w) = &mut self.backlog {
                    w.reset();
                }
            }
            if self.accept_paused {
                self.watch_backlog()?;
            }
            if self.backoff_until.is_some_and(|t| Instant::now() >= t) {
                self.backoff_until = None;
                self.want_accept = true;
            }
            if self.want_accept && self.backoff_until.is_none() {
                self.accept();
            }
            self.expire_idle();
        }
    }

    /// Applies the shutdown phase; true when the loop is finished.
    fn check_phase(&mut self) -> bool {
        let phase = self.ctx.shutdown.absorb_signals();
        if phase == Phase::Running {
            return false;
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
            log::debug!("loop {}: listener closed, {} connection(s) draining", self.stats.id, self.conns.len());
        }
        let now = Instant::now();
        let grace_over = self.ctx.shutdown.remaining().is_none_or(|d| d.is_zero());
        if phase == Phase::Immediate {
            self.close_all();
        } else if grace_over && self.grace_over_at.is_none() {
            self.grace_over_at = Some(now);
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                if self.conns[key].conn.stop_reading() {
                    self.close(key);
                }
            }
        }
        if self.grace_over_at.is_some_and(|t| now >= t + super::FLUSH_GRACE) {
            self.close_all();
        }
        self.conns.is_empty()
    }

    /// At `--max-conns`: refuses clients that waited over `--queue-timeout`.
    fn watch_backlog(&mut self) -> io::Result<()> {
        let now = Instant::now();
        if let (Some(w), Some(l)) = (&mut self.backlog, &self.listener) {
            if now >= w.due(now) {
                let refused = w.check_with(l, || shed_one(l.accept()), now)?;
                self.ctx.refused(refused);
            }
        }
        Ok(())
    }

    fn timeout(&mut self) -> Option<Duration> {
        if !self.again.is_empty() || (self.want_accept && self.backoff_until.is_none() && self.listener.is_some()) {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let mut t: Option<Duration> = None;
        let mut earliest = |d: Duration| t = Some(t.map_or(d, |x| x.min(d)));
        if let Some(q) = &self.idle {
            let now_ms = self.epoch.elapsed().as_millis() as u64;
            if let Some(ms) = q.next_in(&mut self.conns, now_ms) {
                earliest(Duration::from_millis(ms));
            }
        }
        if let Some(b) = self.backoff_until {
            earliest(b.saturating_duration_since(now));
        }
        if let Some(w) = self.backlog.as_ref().filter(|_| self.accept_paused) {
            earliest(w.due(now).saturating_duration_since(now));
        }
        if self.ctx.shutdown.phase() != Phase::Running {
            match self.grace_over_at {
                None => earliest(self.ctx.shutdown.remaining().unwrap_or_default()),
                Some(g) => earliest((g + super::FLUSH_GRACE).saturating_duration_since(now)),
            }
        }
        t
    }

    fn conn_event(&mut self, key: usize, readable: bool, peer_closed: bool, writable: bool) {
        let Some(e) = self.conns.get_mut(key) else { return };
        let mut st = Status::default();
        let result = (|| {
            if writable {
                merge(&mut st, e.conn.on_writable(&mut self.scratch)?);
            }
            if readable && !st.done {
                merge(&mut st, e.conn.on_readable(&mut self.scratch, peer_closed)?);
            }
            io::Result::Ok(())
        })();
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

    fn accept(&mut self) {
        self.want_accept = false;
        let Some(listener) = &self.listener else { return };
        for _ in 0..ACCEPT_BUDGET {
            if !self.has_room() {
                self.accept_paused = true;
                return;
            }
            match accept_guarded(|| listener.accept()) {
                Ok((mut stream, peer)) => {
                    let Some(permit) = self.ctx.admit_peer(peer) else { continue };
                    if let Err(e) =
                        crate::listener::configure(&stream, self.ctx.config.nodelay, self.ctx.config.socket_buffer)
                    {
                        log::debug!("socket options: {e}");
                    }
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    if let Err(e) =
                        self.poll.registry().register(&mut stream, Token(key), Interest::READABLE | Interest::WRITABLE)
                    {
                        log::warn!("register: {e}");
                        continue;
                    }
                    entry.insert(Entry {
                        conn: Conn::new(stream, (self.ctx.factory)()),
                        links: Links::default(),
                        _permit: permit,
                    });
                    if let Some(q) = &mut self.idle {
                        q.touch(&mut self.conns, key, self.now_ms);
                    }
                    self.stats.accepted += 1;
                    self.ctx.accepted();
                    self.stats.peak = self.stats.peak.max(self.conns.len());
                }
                Err(e) => match classify(&e) {
                    AcceptError::Empty => return,
                    AcceptError::Skip => {
                        self.ctx.accept_failed();
                        log::debug!("accept: {e} (skipped)");
                    }
                    AcceptError::Exhausted => {
                        self.ctx.accept_failed();
                        self.exhausted.note(&e);
                        self.ctx.refused(shed(|| shed_one(listener.accept())));
                        self.backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                    AcceptError::Fatal => {
                        log::error!("accept: {e}; retrying after {ACCEPT_BACKOFF:?}");
                        self.backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                },
            }
        }
        self.want_accept = true; // budget used: more may be queued
    }

    /// Closes connections idle for the timeout as of `now_ms`, the time
    /// this iteration's activity was stamped with. Not a fresh clock: a
    /// process stalled (stopped, descheduled) between the poll and here
    /// would otherwise close connections it just served.
    fn expire_idle(&mut self) {
        let now = self.now_ms;
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
        let e = self.conns.remove(key);
        let t = e.conn.totals();
        let before = self.ctx.closed(t) as usize;
        if before == self.ctx.config.max_conns {
            for w in &self.peers {
                let _ = w.wake();
            }
        }
        log::trace!("connection {key} closed: {} bytes in, {} out", t.bytes_in, t.bytes_out);
        if self.accept_paused && self.has_room() {
            self.accept_paused = false;
            self.want_accept = true;
        }
    }

    fn close_all(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
    }
}

fn merge(into: &mut Status, s: Status) {
    into.progressed |= s.progressed;
    into.more |= s.more;
    into.done |= s.done;
}
