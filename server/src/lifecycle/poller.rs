//! The poll every loop of a server sleeps in: the blocking strategies'
//! accept loop, each event loop, the reactor's and the prefork master's
//! supervising loops. Besides the owner's own sources (the listener, and an
//! event loop's connections, whose tokens are below [`RESERVED`]) it holds
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

use super::shutdown::Shutdown;
use super::signals::{Notices, Signals};
use crate::process::metrics::Metrics;
use crate::process::scoreboard::Slot;

/// The longest a loop sleeps without a heartbeat.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// Tokens from here up are the poller's; owners use the ones below.
pub(crate) const RESERVED: usize = usize::MAX - 1024;
/// The token of the listener an owner registers with [`Poller::listen`].
pub(crate) const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
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
        Ok(Poller { poll, signals, shutdown: shutdown.clone(), waker, metrics, heartbeat, notices: Notices::default() })
    }

    /// The registry, for the owner's own sources (tokens below [`RESERVED`]).
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
        let timeout = self.timeout(deadline, Instant::now());
        let polled = match self.poll.poll(events, Some(timeout)) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                events.clear();
                Ok(())
            }
            other => other,
        };
        self.beat();
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
        if let Some(m) = &mut self.metrics {
            m.retry(self.poll.registry(), Instant::now());
        }
        Ok(())
    }

    /// How long a loop that wants to wake at `deadline` may sleep from
    /// `now`: until then, or the metrics endpoint's retry, and at most
    /// [`HEARTBEAT`]. (A loop that sleeps elsewhere, io_uring's, polls this
    /// poll's fd and calls [`Poller::wait`] when it is readable or
    /// [`Poller::due`].)
    pub(crate) fn timeout(&self, deadline: Option<Instant>, now: Instant) -> Duration {
        let retry = self.metrics.as_ref().and_then(|m| m.retry_at());
        let deadline = [deadline, retry].into_iter().flatten().min();
        deadline.map_or(HEARTBEAT, |d| d.saturating_duration_since(now).min(HEARTBEAT))
    }

    /// Whether the poller has a chore of its own due at `now` (the metrics
    /// endpoint's retry after running out of fds).
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.metrics.as_ref().and_then(|m| m.retry_at()).is_some_and(|t| now >= t)
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
}

impl AsFd for Poller {
    /// The epoll fd: readable when an event is ready, so a loop that blocks
    /// elsewhere (serial's driver) can `poll(2)` it beside its socket.
    fn as_fd(&self) -> BorrowedFd<'_> {
        crate::sys::poll_fd(&self.poll)
    }
}
