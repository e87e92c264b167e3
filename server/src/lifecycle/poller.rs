//! The poll every loop of a server sleeps in: the blocking strategies'
//! accept loop, each event loop, the reactor's and the prefork master's
//! supervising loops. Besides the owner's own sources (the listener, and an
//! event loop's connections, whose tokens are below [`HEADERS`]; from there
//! to [`RESERVED`] are the acceptor's connections waiting for a PROXY
//! header) it holds
//! what every loop has: the signal pipe (signals are dispatched by the
//! table here, in the one loop per process that owns them), a waker (other
//! threads, and a freed admission place, wake the loop), the metrics
//! endpoint, and the heartbeat (every wake-up is one, and no sleep is
//! longer than [`HEARTBEAT`], which prefork's `--worker-timeout` watches).
//!
//! A signal that interrupts `epoll_wait` is a wake-up like any other, not an
//! error.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Poll, Registry, Token, Waker};

use super::readiness;
use super::shutdown::{Phase, Shutdown};
use super::signals::{Notices, Signals};
use crate::process::metrics::Metrics;
use crate::process::pidfile;
use crate::process::scoreboard::{Counter, Slot};
use crate::process::upgrade::{Progress, Successor};

/// The longest a loop sleeps without a heartbeat.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// Tokens from here to [`RESERVED`] are the acceptor's (connections that
/// wait for their PROXY header, `net::proxy`); owners use the ones below.
pub(crate) const HEADERS: usize = usize::MAX / 2;
/// Tokens from here up are the poller's.
pub(crate) const RESERVED: usize = usize::MAX - 2 * crate::process::metrics::MAX_CLIENTS;
/// The token of the listener an owner registers with [`Poller::listen`].
pub(crate) const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const UPGRADE: Token = Token(usize::MAX - 3);
const METRICS: Token = Token(RESERVED);

/// A loop's poll with the sources every loop has.
#[derive(Debug)]
pub(crate) struct Poller {
    poll: Poll,
    signals: Option<Signals>,
    shutdown: Shutdown,
    waker: Arc<Waker>,
    metrics: Option<Metrics>,
    heartbeat: Option<Slot>,
    notices: Notices,
    /// A binary upgrade in progress.
    successor: Option<Successor>,
    /// When the last wait ended (the time since is work, for the busy ratio).
    woke: Option<Instant>,
}

impl Poller {
    /// A poll for a loop that stops with `shutdown`. With `signals`, this
    /// loop dispatches the process's signals; with `metrics`, it serves the
    /// endpoint there; with `heartbeat`, every wake-up beats in that slot.
    pub(crate) fn new(
        shutdown: &Shutdown,
        signals: Option<Signals>,
        metrics: Option<SocketAddr>,
        heartbeat: Option<Slot>,
    ) -> io::Result<Poller> {
        let poll = Poll::new()?;
        if let Some(s) = &signals {
            s.register(poll.registry(), SIGNALS)?;
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let metrics = Metrics::maybe_bind(metrics, poll.registry(), METRICS)?;
        Ok(Poller {
            poll,
            signals,
            shutdown: shutdown.clone(),
            waker,
            metrics,
            heartbeat,
            notices: Notices::default(),
            successor: None,
            woke: None,
        })
    }

    /// The registry, for the owner's own sources (tokens below [`HEADERS`]).
    pub(crate) fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// Watches a listening socket (token [`LISTENER`]), with
    /// `EPOLLEXCLUSIVE`, so that of several processes waiting on one shared
    /// listener only one is woken per connection.
    pub(crate) fn listen(&self, listener: &impl AsRawFd) -> io::Result<()> {
        crate::sys::register_listener(&self.poll, listener, LISTENER)
    }

    /// Stops watching the listener (before it closes).
    pub(crate) fn unlisten(&self, listener: &impl AsRawFd) {
        let _ = self.poll.registry().deregister(&mut SourceFd(&listener.as_raw_fd()));
    }

    /// Wakes this loop from anywhere.
    pub(crate) fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Sleeps until an event, a signal, a wake-up or `deadline` (at most
    /// [`HEARTBEAT`]), then handles its own events: signals are dispatched
    /// (stops move the shutdown phase; [`Poller::take_notices`] has the
    /// rest), metrics requests are read. `events` holds the owner's.
    pub(crate) fn wait(&mut self, events: &mut Events, deadline: Option<Instant>) -> io::Result<()> {
        let now = Instant::now();
        let timeout = self.timeout(deadline, now);
        if let (Some(slot), Some(woke)) = (self.heartbeat, self.woke) {
            slot.add_busy(now.saturating_duration_since(woke).as_micros() as u64);
        }
        let polled = match self.poll.poll(events, Some(timeout)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                events.clear();
                Ok(())
            }
            other => other,
        };
        self.beat();
        self.woke = Some(Instant::now());
        polled?;
        for ev in events.iter() {
            match ev.token() {
                SIGNALS => self.dispatch(),
                t if self.metrics.as_ref().is_some_and(|m| m.owns(t)) => {
                    if let Some(m) = &mut self.metrics {
                        m.on_event(ev, self.poll.registry());
                    }
                }
                _ => {}
            }
        }
        let now = Instant::now();
        if let Some(m) = &mut self.metrics {
            m.tick(self.poll.registry(), now);
        }
        if self.signals.is_some() {
            self.tell_the_outside(now);
        }
        Ok(())
    }

    /// What the service manager and a replaced process hear from the loop
    /// that owns the process's signals: the watchdog, the status, the start
    /// of a stop; and how a binary upgrade in progress goes.
    fn tell_the_outside(&mut self, now: Instant) {
        readiness::watchdog(now);
        if let Some(slot) = self.heartbeat {
            readiness::status(|| format!("serving {} connection(s)", slot.get(Counter::Active)), now);
        }
        if self.shutdown.phase() != Phase::Running {
            readiness::stopping();
        }
        let Some(s) = &mut self.successor else { return };
        match s.progress(now) {
            Progress::Waiting => {}
            Progress::Ready(pid) => {
                log::info!("upgrade: pid {pid} serves now; this server drains");
                readiness::handed_over(pid);
                self.end_upgrade();
                self.shutdown.drain();
            }
            Progress::Failed(why) => {
                pidfile::upgrade_failed();
                log::warn!("upgrade failed: {why}; this server goes on serving");
                self.end_upgrade();
            }
        }
    }

    fn end_upgrade(&mut self) {
        if let Some(s) = self.successor.take() {
            let _ = self.poll.registry().deregister(&mut SourceFd(&s.fd().as_raw_fd()));
        }
    }

    /// Starts a binary upgrade (SIGUSR2), handing the successor `listeners`;
    /// this loop then watches it, and drains this server once it serves.
    /// Every SIGUSR2 comes here, so that each one refused says why: an
    /// upgrade already under way, or a server that stops (its listeners
    /// are closed by then).
    pub(crate) fn start_upgrade(&mut self, listeners: &[BorrowedFd<'_>]) {
        if self.successor.is_some() {
            log::info!("SIGUSR2: an upgrade is in progress already");
            return;
        }
        if self.shutdown.phase() != Phase::Running {
            log::info!("SIGUSR2: the server is stopping; no upgrade");
            return;
        }
        if listeners.is_empty() {
            log::warn!("SIGUSR2: no listening socket to hand over; no upgrade");
            return;
        }
        pidfile::upgrade_begins();
        match Successor::start(listeners) {
            Ok(s) => {
                let registered =
                    self.poll.registry().register(&mut SourceFd(&s.fd().as_raw_fd()), UPGRADE, mio::Interest::READABLE);
                if let Err(e) = registered {
                    log::warn!("upgrade: cannot watch the successor's pipe: {e}; polling it");
                }
                self.successor = Some(s);
            }
            Err(e) => {
                pidfile::upgrade_failed();
                log::warn!("upgrade failed: cannot start the new binary: {e}; this server goes on serving");
            }
        }
    }

    /// The earliest chore of the poller's own: the metrics endpoint's
    /// (a retry, a head's time limit), the watchdog, an upgrade's deadline.
    fn chores(&mut self) -> Option<Instant> {
        let metrics = self.metrics.as_mut().and_then(|m| m.deadline());
        let watchdog = self.signals.as_ref().and_then(|_| readiness::next_watchdog());
        let upgrade = self.successor.as_ref().map(Successor::deadline);
        [metrics, watchdog, upgrade].into_iter().flatten().min()
    }

    /// How long a loop that wants to wake at `deadline` may sleep from
    /// `now`: until then or the poller's own next chore, and at most
    /// [`HEARTBEAT`]. (A loop that sleeps elsewhere, io_uring's, polls this
    /// poll's fd and calls [`Poller::wait`] when it is readable or
    /// [`Poller::due`].)
    pub(crate) fn timeout(&mut self, deadline: Option<Instant>, now: Instant) -> Duration {
        let deadline = [deadline, self.chores()].into_iter().flatten().min();
        deadline.map_or(HEARTBEAT, |d| d.saturating_duration_since(now).min(HEARTBEAT))
    }

    /// Whether the poller has a chore of its own due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        self.chores().is_some_and(|t| now >= t)
    }

    /// A loop that sleeps elsewhere (io_uring's) slept from `from` to `to`:
    /// the time before `from` since the last wake-up was work (the busy
    /// ratio), the sleep was not.
    pub(crate) fn slept(&mut self, from: Instant, to: Instant) {
        if let (Some(slot), Some(woke)) = (self.heartbeat, self.woke) {
            slot.add_busy(from.saturating_duration_since(woke).as_micros() as u64);
        }
        self.woke = Some(to);
    }

    /// Records a heartbeat (every wake-up does).
    pub(crate) fn beat(&self) {
        if let Some(s) = self.heartbeat {
            s.beat();
        }
    }

    /// Applies pending signals now (a loop that learned of one another way).
    pub(crate) fn dispatch(&mut self) {
        if let Some(s) = &mut self.signals {
            let n = s.dispatch(&self.shutdown);
            self.notices.reload += n.reload;
            self.notices.more += n.more;
            self.notices.fewer += n.fewer;
            self.notices.reap |= n.reap;
            self.notices.upgrade += n.upgrade;
            self.notices.reopen |= n.reopen;
        }
    }

    /// Takes what the signals asked of a supervisor since the last call.
    pub(crate) fn take_notices(&mut self) -> Notices {
        std::mem::take(&mut self.notices)
    }

    /// Whether a metrics request waits for its page.
    pub(crate) fn wants_page(&self) -> bool {
        self.metrics.as_ref().is_some_and(|m| m.wants_page())
    }

    /// Answers the waiting metrics requests with `page`.
    pub(crate) fn answer(&mut self, page: &str) {
        if let Some(m) = &mut self.metrics {
            m.answer(page, self.poll.registry());
        }
    }

    /// Renders and answers metrics requests, if any waits.
    pub(crate) fn serve_metrics(&mut self, render: impl FnOnce() -> String) {
        if self.wants_page() {
            let page = render();
            self.answer(&page);
        }
    }

    /// Stops serving metrics (a stopping prefork master).
    pub(crate) fn close_metrics(&mut self) {
        if let Some(mut m) = self.metrics.take() {
            m.close(self.poll.registry());
        }
    }

    /// In a forked child: everything of the parent's loop closes but the
    /// signal pipe, which the child reinstalls as its own.
    pub(crate) fn into_signals(self) -> Option<Signals> {
        self.signals
    }

    /// In a forked child that serves one connection and ends in `_exit`
    /// (fork mode): closes the child's copies of the metrics endpoint and
    /// its clients and of an upgrade's pipe, and hands back the signal pipe
    /// to reinstall. The epoll fd and the waker stay open, unused, until
    /// the child exits: the epoll instance is the parent's too, and closing
    /// the child's copy of its fd changes nothing for either.
    pub(crate) fn leave_to_child(&mut self) -> Option<Signals> {
        self.metrics = None;
        self.successor = None;
        self.signals.take()
    }
}

impl AsFd for Poller {
    /// The epoll fd: readable when an event is ready, so a loop that blocks
    /// elsewhere (serial's driver) can `poll(2)` it beside its socket.
    fn as_fd(&self) -> BorrowedFd<'_> {
        crate::sys::poll_fd(&self.poll)
    }
}
