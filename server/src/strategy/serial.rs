//! Serial: the iterative server. Accept one client, serve it to its end,
//! then accept the next; everyone else waits in the listen backlog.
//!
//! One thread, so while it serves, the driver is the process's loop: its
//! lookout is the acceptor, whose poll (signals, metrics) it watches beside
//! the socket. A graceful stop closes the listener at once (the backlog is
//! refused rather than left waiting). The admission cap is 1, so while a
//! client is served the acceptor is at its cap and, with `--queue-timeout`,
//! samples the backlog and refuses clients that waited too long.

use std::cell::RefCell;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::Instant;

use mio::Events;

use crate::context::Context;
use crate::driver::blocking::{Lookout, SharedLookout, Sock};
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::{Drain, Stage};
use crate::lifecycle::poller::{Poller, HEARTBEAT};
use crate::lifecycle::signals::Signals;
use crate::net::accept::AtCap;
use crate::net::acceptor::Acceptor;

/// Runs the serial strategy until the server stops.
pub(crate) fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let poller = Poller::new(&ctx.shutdown, Some(signals), ctx.config.metrics, Some(ctx.slot))?;
    let acceptor = Acceptor::new(listener, poller, &ctx, AtCap::Wait)?;
    let door = Rc::new(RefCell::new(Door { acceptor, events: Events::with_capacity(16), beat: Instant::now() }));
    let lookout: SharedLookout = door.clone();
    let mut drain = Drain::new();
    let mut timers = Deadlines::new();
    ctx.ready();
    loop {
        let now = Instant::now();
        for stage in drain.advance(&ctx.shutdown, now) {
            door.borrow_mut().on_stage(stage);
        }
        if !drain.serving() && door.borrow().acceptor.is_idle() {
            return Ok(()); // between clients nothing is left to drain
        }
        let accepted = door.borrow_mut().acceptor.accept(now);
        if let Some(conn) = accepted {
            conn.stream.set_nonblocking(false)?;
            super::serve_blocking(Sock::Plain(conn.stream), conn.peer, &ctx, Some(lookout.clone()));
            continue; // the permit drops here: the next client may come
        }
        timers.set(Timer::Drain, drain.next_change(&ctx.shutdown));
        let mut door = door.borrow_mut();
        let Door { acceptor, events, .. } = &mut *door;
        acceptor.wait(events, &mut timers)?;
    }
}

/// The acceptor, and what serial watches through it while it serves a
/// client: the driver polls the acceptor's poll beside the socket (a
/// signal, a metrics request, a new client in the backlog), closes the
/// listener when the grace begins, and wakes for the backlog samples and
/// heartbeats.
struct Door {
    acceptor: Acceptor<TcpListener>,
    events: Events,
    beat: Instant,
}

impl Lookout for Door {
    fn fd(&self) -> BorrowedFd<'_> {
        self.acceptor.poller.as_fd()
    }

    fn on_ready(&mut self) -> io::Result<()> {
        self.acceptor.wait(&mut self.events, &mut Deadlines::new().with(Timer::Soon, Instant::now()))
    }

    fn on_stage(&mut self, stage: Stage) {
        self.acceptor.on_stage(stage);
    }

    fn due(&self, now: Instant) -> Option<Instant> {
        let beat = self.beat + HEARTBEAT;
        Some(self.acceptor.deadline(now).map_or(beat, |t| t.min(beat)))
    }

    fn tick(&mut self, now: Instant) -> io::Result<()> {
        if now >= self.beat + HEARTBEAT {
            self.acceptor.poller.beat();
            self.beat = now;
        }
        self.acceptor.watch(now);
        Ok(())
    }
}
