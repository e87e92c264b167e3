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
//!
//! A stop closes the listener, and the kernel resets every connection still
//! in its queue: a client (or a balancer that has not yet seen the server
//! go) whose handshake completed, and which may have sent its request,
//! would lose it. So at the grace the acceptor first takes what the queue
//! holds, through the same policy (the cap, the per-address limit, PROXY
//! headers), and hands those connections out as usual; only then does the
//! listener close.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use mio::Events;

use super::accept::{AcceptPolicy, Accepted, AtCap, Listen, Outcome};
use super::proxy::Headers;
use crate::context::Context;
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::Stage;
use crate::lifecycle::poller::{Poller, LISTENER};

/// A listener, its policy, and its poll.
#[derive(Debug)]
pub(crate) struct Acceptor<L: Listen> {
    /// The poll (the owner registers its own sources here, and waits in it).
    pub(crate) poller: Poller,
    listener: Option<L>,
    policy: AcceptPolicy,
    /// Connections waiting for their PROXY header.
    headers: Headers<L::Stream>,
    /// Connections taken from the queue as the listener closed, not yet handed out.
    taken: VecDeque<Accepted<L::Stream>>,
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
            headers: Headers::new(ctx),
            taken: VecDeque::new(),
            ctx: ctx.clone(),
        })
    }

    /// The stop reached `stage`: at the grace the connections in the
    /// listener's queue are taken (see the module docs) and the listener
    /// closes (new clients are refused from then on); once the grace is
    /// over, connections still waiting for their PROXY header are closed
    /// (they sent nothing the server owes an answer to), and so are any
    /// taken from the queue and not yet handed out (an immediate stop).
    pub(crate) fn on_stage(&mut self, stage: Stage) {
        match stage {
            Stage::Serving => {}
            Stage::Grace => {
                self.take_queue(Instant::now());
                self.close();
            }
            Stage::Flush | Stage::Over => {
                self.close();
                self.headers.close_all(self.poller.registry());
                // Taken at the grace and not handed out: only an immediate
                // stop, which hands out every stage at once, leaves any.
                self.taken.clear();
            }
        }
    }

    /// Accepts what the listener's queue holds now, at most a backlog's
    /// worth (a flood must not keep a stopping server accepting).
    fn take_queue(&mut self, now: Instant) {
        for _ in 0..self.ctx.config.backlog.max(1) {
            match self.accept_one(now) {
                Some(Some(c)) => self.taken.push_back(c),
                Some(None) => {}
                None => break,
            }
        }
        if !self.taken.is_empty() {
            log::debug!("took {} connection(s) from the queue as the listener closes", self.taken.len());
        }
    }

    /// One accept(2) through the policy: `Some(Some(c))` a connection to
    /// hand out, `Some(None)` none this time (refused, or waiting for its
    /// PROXY header) but more may wait, `None` stop (empty, at the cap,
    /// backing off, closed).
    fn accept_one(&mut self, now: Instant) -> Option<Option<Accepted<L::Stream>>> {
        let l = self.listener.as_ref()?;
        match self.policy.accept(l, now) {
            Outcome::Accepted(c) => Some(Some(c)),
            Outcome::Header(p) => Some(self.headers.first_look(p, &mut self.policy, self.poller.registry(), now)),
            Outcome::Again => Some(None),
            Outcome::Empty | Outcome::Full | Outcome::Paused => None,
        }
    }

    fn close(&mut self) {
        if let Some(l) = self.listener.take() {
            self.poller.unlisten(&l);
        }
    }

    /// Whether no connection waits here (for its PROXY header, or to be
    /// handed out).
    pub(crate) fn is_idle(&self) -> bool {
        self.headers.is_empty() && self.taken.is_empty()
    }

    /// The next connection through the policy, or `None` when the loop
    /// should sleep (nothing waits, at the cap, backing off, closed).
    pub(crate) fn accept(&mut self, now: Instant) -> Option<Accepted<L::Stream>> {
        if let Some(c) = self.taken.pop_front() {
            return Some(c);
        }
        if let Some(c) = self.headers.arrived(&mut self.policy, self.poller.registry(), now) {
            return Some(c);
        }
        while self.policy.should_try(now) {
            if let Some(c) = self.accept_one(now)? {
                return Some(c);
            }
        }
        None
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
        if !self.taken.is_empty() {
            return Some(now);
        }
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
            // (Draining, the listener is closed: the poller says no.)
            let fds: Vec<_> = self.listener.iter().map(|l| l.as_fd()).collect();
            self.poller.start_upgrade(&fds);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                self.policy.readable();
            }
            self.headers.on_event(ev);
        }
        let ctx = &self.ctx;
        self.poller.serve_metrics(|| ctx.page());
        Ok(())
    }

    /// In a forked child: closes what the child must not keep open (the
    /// listener, the connections taken from its queue or waiting for their
    /// PROXY header, whose places stay in the parent's books, the poller's
    /// endpoints) and hands back the signal pipe for the child to
    /// reinstall. The rest stays as the fork copied it, never dropped (the
    /// child ends in `_exit`), and is not moved: freeing or copying it would
    /// write to pages the child still shares with the parent, each write a
    /// copy-on-write fault.
    pub(crate) fn leave_to_child(&mut self) -> Option<crate::lifecycle::signals::Signals> {
        self.listener = None;
        for c in self.taken.drain(..) {
            c.close_in_child();
        }
        self.headers.close_in_child();
        self.poller.leave_to_child()
    }
}
