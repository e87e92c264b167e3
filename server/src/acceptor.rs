//! The accept loop shared by the blocking strategies (serial, fork, thread,
//! pool): one `mio::Poll` watching the listener, the signal pipe and a
//! waker, so a strategy sleeps until there is a connection to take, a signal,
//! or a freed permit, and never spins.
//!
//! Accept errors never kill the server: ECONNABORTED/ECONNRESET/EPROTO are
//! skipped; EMFILE/ENFILE/ENOBUFS/ENOMEM stop accepting for a back-off period
//! (with a rate-limited log line) and serving resumes when fds free up.
//!
//! While the strategy cannot take a connection (at its cap, or serial busy
//! serving one), the acceptor enforces `--queue-timeout` on the backlog
//! ([`crate::backlog`]); for serial it does so as the driver's
//! [`Lookout`].

use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Poll, Token, Waker};

use crate::backlog::BacklogWatch;
use crate::context::Context;
use crate::driver::blocking::Lookout;
use crate::listener;
use crate::metrics::{self, Metrics};
use crate::per_ip::IpPermit;
use crate::scoreboard::Slot;
use crate::shutdown::{Phase, Shutdown};
use crate::signals::Signals;

const LISTENER: Token = Token(0);
const SIGNALS: Token = Token(1);
const WAKER: Token = Token(2);
const METRICS: Token = Token(3);

/// The longest a loop sleeps without a heartbeat (prefork's
/// `--worker-timeout` watches it).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long accepting pauses after the process ran out of fds or memory.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What an accept error means for the loop.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptError {
    /// The queue is empty.
    Empty,
    /// That one connection failed (aborted, reset); try the next.
    Skip,
    /// Out of fds or memory: back off, then try again.
    Exhausted,
    /// Anything else is a bug or a broken listener.
    Fatal,
}

/// Classifies an error from accept(2).
pub fn classify(e: &io::Error) -> AcceptError {
    use nix::errno::Errno;
    match e.kind() {
        io::ErrorKind::WouldBlock => return AcceptError::Empty,
        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset => {
            return AcceptError::Skip
        }
        _ => {}
    }
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM) => AcceptError::Exhausted,
        Some(Errno::EPROTO | Errno::EPERM | Errno::ENETDOWN | Errno::EHOSTUNREACH | Errno::ENETUNREACH) => {
            AcceptError::Skip
        }
        _ => AcceptError::Fatal,
    }
}

/// One fd per process kept in reserve for fd exhaustion. When accept fails
/// with EMFILE/ENFILE the connections waiting in the backlog would otherwise
/// hang until fds free up; instead the reserve is closed, which frees one fd,
/// and the waiting connections are accepted and closed at once (their
/// clients see the connection end immediately and can retry or fail over),
/// then the reserve is re-opened. libuv does the same.
///
/// The reserve is process-wide because fds are: every accept in the process
/// holds the read side of this lock (uncontended: one atomic per accepted
/// connection), shedding holds the write side, so no sibling event loop can
/// take the freed fd for a connection of its own while a loop sheds (it
/// would then keep the reserve from ever coming back).
static RESERVE: RwLock<Option<File>> = RwLock::new(None);

fn open_reserve() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Opens the reserve (once per process, before serving; a forked child
/// keeps its inherited copy as its own).
pub fn init_reserve() {
    let mut r = RESERVE.write().unwrap_or_else(|e| e.into_inner());
    if r.is_none() {
        *r = open_reserve();
    }
}

/// Runs one accept call so that it never races a shed.
#[inline]
pub fn accept_guarded<T>(accept: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let _shared = RESERVE.read().unwrap_or_else(|e| e.into_inner());
    accept()
}

/// Sheds the backlog through `accept_and_close`, which accepts one
/// connection and closes it, returning `Ok(false)` when the backlog is
/// empty. Returns how many connections were shed.
pub fn shed(mut accept_and_close: impl FnMut() -> io::Result<bool>) -> usize {
    let mut reserve = RESERVE.write().unwrap_or_else(|e| e.into_inner());
    if reserve.take().is_none() {
        // Lost earlier (fds were short even for /dev/null): try to get it
        // back now, and shed next time.
        *reserve = open_reserve();
        return 0;
    }
    let mut shed = 0;
    // Bounded: the backlog is finite, but a flood must not pin the loop.
    while shed < 4096 {
        match accept_and_close() {
            Ok(true) => shed += 1,
            Ok(false) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    *reserve = open_reserve();
    drop(reserve);
    if shed > 0 {
        log::warn!("out of fds: closed {shed} waiting connection(s) at once rather than leave them hanging");
    }
    shed
}

/// Logs fd exhaustion at most once a second.
#[derive(Debug, Default)]
pub struct ExhaustionLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ExhaustionLog {
    /// Records one exhaustion error.
    pub fn note(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self.last.is_none_or(|t| now - t >= Duration::from_secs(1)) {
            log::warn!(
                "accept: {e}; pausing accept for {ACCEPT_BACKOFF:?} ({} more since last report)",
                self.suppressed
            );
            self.last = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
    }
}

/// Accepts one connection for [`shed`] and closes it.
pub fn shed_one<S>(accepted: io::Result<(S, std::net::SocketAddr)>) -> io::Result<bool> {
    match accepted {
        Ok((stream, _)) => {
            drop(stream);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// A connection the acceptor took, with its per-address permit.
#[derive(Debug)]
pub struct Accepted {
    /// The connection (blocking, options applied).
    pub stream: TcpStream,
    /// Its place under `--max-conns-per-ip`; keep it as long as the connection.
    pub permit: Option<IpPermit>,
}

/// A blocking strategy's view of its listener, signals and wake-ups.
#[derive(Debug)]
pub struct Acceptor {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    signals: Signals,
    waker: Arc<Waker>,
    shutdown: Shutdown,
    slot: &'static Slot,
    ctx: Context,
    metrics: Option<Metrics>,
    backoff_until: Option<Instant>,
    exhausted: ExhaustionLog,
    backlog: Option<BacklogWatch>,
    wake_at: Option<Instant>,
}

impl Acceptor {
    /// Takes over `listener` (made non-blocking) and the signal pipe.
    pub fn new(listener: TcpListener, signals: Signals, ctx: &Context) -> io::Result<Acceptor> {
        let poll = Poll::new()?;
        listener.set_nonblocking(true)?;
        crate::sys::register_listener(&poll, &listener, LISTENER)?;
        signals.register(poll.registry(), SIGNALS)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let metrics = Metrics::maybe_bind(ctx.config.metrics, poll.registry(), METRICS)?;
        Ok(Acceptor {
            poll,
            events: Events::with_capacity(8),
            listener: Some(listener),
            signals,
            waker,
            shutdown: ctx.shutdown.clone(),
            slot: ctx.slot,
            ctx: ctx.clone(),
            metrics,
            backoff_until: None,
            exhausted: ExhaustionLog::default(),
            backlog: ctx.config.queue_timeout.map(BacklogWatch::new),
            wake_at: None,
        })
    }

    /// Makes the next [`Acceptor::next`] return by `t` at the latest (the
    /// pool sweeps its queue then).
    pub fn wake_by(&mut self, t: Instant) {
        self.wake_at = crate::poll::earliest(self.wake_at, Some(t));
    }

    /// Samples the backlog for `--queue-timeout` if a sample is due.
    fn watch_backlog(&mut self, now: Instant) -> io::Result<()> {
        if let (Some(w), Some(l)) = (&mut self.backlog, &self.listener) {
            if now >= w.due(now) {
                let refused = w.check(l, now)?;
                self.ctx.refused(refused);
            }
        }
        Ok(())
    }

    /// Wakes [`Acceptor::next`] or [`Acceptor::wait`] from another thread.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// The next connection (a blocking socket, options applied), or `None`
    /// when the caller should look around first: the shutdown phase, its
    /// children, its permits. With `can_accept` false only waits.
    pub fn next(&mut self, can_accept: bool) -> io::Result<Option<Accepted>> {
        if self.shutdown.absorb_signals() != Phase::Running {
            return Ok(None);
        }
        let backing_off = self.backoff_until.is_some_and(|t| Instant::now() < t);
        if can_accept && !backing_off {
            if let Some(l) = &self.listener {
                match accept_guarded(|| l.accept()) {
                    Ok((stream, peer)) => {
                        if let Some(w) = &mut self.backlog {
                            w.reset();
                        }
                        let Some(permit) = self.ctx.admit_peer(peer) else { return Ok(None) };
                        listener::configure(&stream, self.ctx.config.nodelay, self.ctx.config.socket_buffer)?;
                        return Ok(Some(Accepted { stream, permit }));
                    }
                    Err(e) => match classify(&e) {
                        AcceptError::Empty => {
                            if let Some(w) = &mut self.backlog {
                                w.reset();
                            }
                        }
                        AcceptError::Skip => {
                            self.slot.accept_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            log::debug!("accept: {e} (skipped)");
                            return Ok(None);
                        }
                        AcceptError::Exhausted => {
                            self.slot.accept_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.exhausted.note(&e);
                            self.ctx.refused(shed(|| shed_one(l.accept())));
                            self.backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        }
                        AcceptError::Fatal => return Err(e),
                    },
                }
            }
        }
        let now = Instant::now();
        let mut wake = self.backoff_until;
        if !can_accept {
            self.watch_backlog(now)?;
            wake = crate::poll::earliest(wake, self.backlog.as_ref().map(|w| w.due(now)));
        }
        wake = crate::poll::earliest(wake, self.wake_at.take());
        self.wait(wake.map(|t| t.saturating_duration_since(now)))?;
        Ok(None)
    }

    /// Sleeps until a signal, a wake-up, a new connection, or `timeout`
    /// (at most [`HEARTBEAT`]: every wake-up is a heartbeat).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = Some(timeout.map_or(HEARTBEAT, |t| t.min(HEARTBEAT)));
        let polled = crate::poll::wait(&mut self.poll, &mut self.events, timeout);
        self.slot.beat();
        polled?;
        for ev in self.events.iter() {
            match ev.token() {
                SIGNALS => self.signals.drain(),
                t => {
                    if let Some(m) = self.metrics.as_mut().filter(|m| m.owns(t)) {
                        let slot = self.slot;
                        m.on_event(ev, self.poll.registry(), &|| metrics::render_process(slot));
                    }
                }
            }
        }
        if self.backoff_until.is_some_and(|t| Instant::now() >= t) {
            self.backoff_until = None;
        }
        self.shutdown.absorb_signals();
        Ok(())
    }

    /// Closes the listening socket: new connections are refused from now on.
    pub fn close_listener(&mut self) {
        if let Some(l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&l.as_raw_fd()));
        }
    }

    /// In a forked child: closes the child's copies of the listener, the
    /// poll and the waker, and hands back the signal pipe to reinstall.
    pub fn into_child(self) -> Signals {
        self.signals
    }
}

/// While serial serves a connection itself, the acceptor is the driver's
/// lookout: its signal pipe, its listener to close when a graceful stop
/// begins, and its backlog to watch for `--queue-timeout`.
impl Lookout for Acceptor {
    fn signals(&self) -> &Signals {
        &self.signals
    }

    fn on_drain(&mut self) {
        self.close_listener();
    }

    fn due(&self, now: Instant) -> Option<Instant> {
        self.listener.as_ref()?;
        self.backlog.as_ref().map(|w| w.due(now))
    }

    fn tick(&mut self, now: Instant) -> io::Result<()> {
        self.slot.beat();
        self.watch_backlog(now)
    }
}
