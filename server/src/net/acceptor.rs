//! An acceptor: one listener, its accept policy, and the poll it is watched
//! in. Every in-process strategy has one (serial, fork, thread and pool one
//! per process, each event loop its own) and calls the same three things:
//! [`Acceptor::accept`] for the next connection, [`Acceptor::wait`] to sleep
//! until there may be one (or a signal, a metrics request, a deadline), and
//! [`Acceptor::on_stage`] as a stop goes on.
//!
//! With `--proxy-protocol`, a connection is handed over only once its
//! header came (`proxy`): until then it waits here, watched in the same
//! poll under tokens of the acceptor's own, with its deadline among the
//! acceptor's. A loop that stops waits for them too ([`Acceptor::is_idle`]),
//! until the grace ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Instant;

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};

use super::accept::{AcceptPolicy, Accepted, AtCap, Listen, Outcome};
use super::proxy::{self, Header, Parsed, Pending, Waiting, HEADER_TIMEOUT};
use crate::context::Context;
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::Stage;
use crate::lifecycle::poller::{Poller, HEADERS, LISTENER, RESERVED};

/// A listener, its policy, and its poll.
#[derive(Debug)]
pub(crate) struct Acceptor<L: Listen> {
    /// The poll (the owner registers its own sources here, and waits in it).
    pub(crate) poller: Poller,
    listener: Option<L>,
    policy: AcceptPolicy,
    /// Connections waiting for their PROXY header.
    headers: Waiting<L::Stream>,
    ctx: Context,
}

impl<L: Listen + AsRawFd> Acceptor<L> {
    /// Watches `listener` (non-blocking) in `poller`; a place freed in the
    /// process's admission wakes the poll.
    pub(crate) fn new(listener: L, poller: Poller, ctx: &Context, at_cap: AtCap) -> io::Result<Acceptor<L>> {
        poller.listen(&listener)?;
        ctx.admission.wake_on_room(poller.waker());
        Ok(Acceptor {
            poller,
            listener: Some(listener),
            policy: AcceptPolicy::new(ctx, at_cap),
            headers: Waiting::default(),
            ctx: ctx.clone(),
        })
    }

    /// The stop reached `stage`: at the grace the listener closes (new
    /// clients are refused from then on); once the grace is over,
    /// connections still waiting for their PROXY header are closed (they
    /// sent nothing the server owes an answer to).
    pub(crate) fn on_stage(&mut self, stage: Stage) {
        match stage {
            Stage::Serving => {}
            Stage::Grace => self.close(),
            Stage::Flush | Stage::Over => {
                self.close();
                for key in self.headers.keys() {
                    let p = self.headers.remove(key);
                    self.forget(&p);
                    log::debug!("{}: closed at the end of the grace, before its PROXY header", p.via);
                    self.ctx.refused(1);
                }
            }
        }
    }

    fn close(&mut self) {
        if let Some(l) = self.listener.take() {
            self.poller.unlisten(&l);
        }
    }

    /// Whether no connection waits here (for its PROXY header).
    pub(crate) fn is_idle(&self) -> bool {
        self.headers.is_empty()
    }

    /// The next connection through the policy, or `None` when the loop
    /// should sleep (nothing waits, at the cap, backing off, closed).
    pub(crate) fn accept(&mut self, now: Instant) -> Option<Accepted<L::Stream>> {
        if let Some(c) = self.headers_arrived(now) {
            return Some(c);
        }
        while self.policy.should_try(now) {
            let l = self.listener.as_ref()?;
            match self.policy.accept(l, now) {
                Outcome::Accepted(c) => return Some(c),
                Outcome::Header(p) => {
                    if let Some(c) = self.first_look(p, now) {
                        return Some(c);
                    }
                }
                Outcome::Again => {}
                Outcome::Empty | Outcome::Full | Outcome::Paused => break,
            }
        }
        None
    }

    /// A connection just accepted from a trusted balancer: its header is
    /// usually there already; if not, it waits in the poll.
    fn first_look(&mut self, p: Pending<L::Stream>, now: Instant) -> Option<Accepted<L::Stream>> {
        match proxy::peek(&p.stream) {
            Ok(Parsed::Incomplete) => {
                let key = self.headers.next_key();
                let fd = p.stream.as_fd().as_raw_fd();
                let token = Token(HEADERS + key);
                if let Err(e) = self.poller.registry().register(&mut SourceFd(&fd), token, Interest::READABLE) {
                    log::warn!("{}: cannot watch for its PROXY header: {e}; closing it", p.via);
                    self.ctx.accept_failed();
                    return None;
                }
                self.headers.insert(p, now);
                None
            }
            Ok(Parsed::Header(h)) => self.finish(p, Ok(h)),
            Ok(Parsed::Bad(why)) => self.finish(p, Err(why)),
            Err(e) => self.finish(p, Err(e.to_string())),
        }
    }

    /// Connections whose header came (or whose time ran out) since the
    /// last look; returns the first one to hand over.
    fn headers_arrived(&mut self, now: Instant) -> Option<Accepted<L::Stream>> {
        while let Some((key, closed)) = self.headers.next_ready() {
            let Some(p) = self.headers.get(key) else { continue };
            let parsed = match proxy::peek(&p.stream) {
                Ok(Parsed::Incomplete) if closed => Err("closed before its whole PROXY header".to_string()),
                Ok(Parsed::Incomplete) => continue,
                Ok(Parsed::Header(h)) => Ok(h),
                Ok(Parsed::Bad(why)) => Err(why),
                Err(e) => Err(e.to_string()),
            };
            let p = self.headers.remove(key);
            self.forget(&p);
            if let Some(c) = self.finish(p, parsed) {
                return Some(c);
            }
        }
        while let Some((_, p)) = self.headers.expired(now) {
            self.forget(&p);
            let _ = self.finish(p, Err(format!("no PROXY header within {HEADER_TIMEOUT:?}")));
        }
        None
    }

    /// Hands a connection whose header is whole to the policy's last
    /// steps, or closes one whose header is bad.
    fn finish(&mut self, p: Pending<L::Stream>, header: Result<Header, String>) -> Option<Accepted<L::Stream>> {
        match header {
            Ok(h) => {
                let peer = h.source.unwrap_or(p.via);
                log::debug!("{peer}: PROXY v{} header from {}", h.version, p.via);
                match self.policy.admit(p.stream, peer, p.place) {
                    Outcome::Accepted(c) => Some(c),
                    _ => None,
                }
            }
            Err(why) => {
                log::debug!("{}: {why}; closed", p.via);
                self.ctx.proxy_header_failed();
                None
            }
        }
    }

    /// Stops watching a connection that leaves the wait.
    fn forget(&self, p: &Pending<L::Stream>) {
        let fd = p.stream.as_fd().as_raw_fd();
        let _ = self.poller.registry().deregister(&mut SourceFd(&fd));
    }

    /// A loop with an accept budget used it up: more may wait.
    pub(crate) fn budget_used(&mut self) {
        self.policy.budget_used();
    }

    /// At the cap while the process serves (serial): lets the policy sample
    /// the backlog for `--queue-timeout` when due.
    pub(crate) fn watch(&mut self, now: Instant) {
        if let Some(l) = &self.listener {
            if self.policy.should_try(now) {
                let outcome = self.policy.accept(l, now);
                debug_assert!(!matches!(outcome, Outcome::Accepted(_)), "accepted past the cap");
            }
        }
    }

    /// When the policy, or a connection waiting for its header, wants the
    /// acceptor asked again without an event.
    pub(crate) fn deadline(&self, now: Instant) -> Option<Instant> {
        let policy = self.listener.as_ref().and_then(|_| self.policy.deadline(now));
        [policy, self.headers.deadline()].into_iter().flatten().min()
    }

    /// Sleeps until an event or the earliest of `timers` (with the policy's
    /// own deadline set as [`Timer::Accept`]); notes a readable listener
    /// and answers metrics requests. `events` holds what happened, for the
    /// owner's own sources.
    pub(crate) fn wait(&mut self, events: &mut Events, timers: &mut Deadlines) -> io::Result<()> {
        timers.set(Timer::Accept, self.deadline(Instant::now()));
        self.poller.wait(events, timers.earliest())?;
        if self.poller.take_notices().upgrade > 0 {
            // SIGUSR2: the successor gets this listener; the poll watches it.
            if let Some(l) = &self.listener {
                let fd = l.as_fd();
                self.poller.start_upgrade(&[fd]);
            }
        }
        for ev in events.iter() {
            match ev.token() {
                LISTENER => self.policy.readable(),
                Token(t) if (HEADERS..RESERVED).contains(&t) => {
                    self.headers.event(t - HEADERS, ev.is_read_closed() || ev.is_error())
                }
                _ => {}
            }
        }
        let ctx = &self.ctx;
        self.poller.serve_metrics(|| ctx.page());
        Ok(())
    }

    /// In a forked child: the listener and the poll close; the signal pipe
    /// is handed back for the child to reinstall.
    pub(crate) fn into_child(self) -> Option<crate::lifecycle::signals::Signals> {
        drop(self.listener);
        self.poller.into_signals()
    }
}
