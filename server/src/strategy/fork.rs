//! Fork per connection: the parent accepts, forks, keeps the connection's
//! admission permit beside the child's pid, closes its copy of the
//! connection and goes back to accepting; the child closes the listener,
//! serves its one connection and `_exit`s, never returning into the loop.
//!
//! The parent has one thread, always (checked before every fork). It reaps
//! its children on SIGCHLD; at `--max-children` live children (the
//! admission cap) it stops accepting until one exits, as Python's
//! socketserver does. Children die with the parent (PR_SET_PDEATHSIG).
//!
//! Stop: at the grace the parent closes the listener and forwards SIGTERM
//! (each child drains its connection with its own deadline); a child made
//! in the grace, for a connection taken from the listener's queue, inherits
//! the parent's drain and its deadline with the rest of its memory. Children
//! still alive when the flush grace ends are told to quit and killed a
//! second later. SIGUSR1 (reopen the log file) is forwarded to every child.
//!
//! A child touches as little of what it shares with the parent as it can:
//! every page either writes after the fork is a copy-on-write fault, and a
//! process per connection pays those faults per connection (docs/FORK.md).
//! So the child uses the parent's state in place, and closes the fds it
//! must not keep without freeing or moving what holds them.

use std::cell::RefCell;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::time::Instant;

use mio::Events;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::admission::Permit;
use crate::context::Context;
use crate::driver::blocking::{Lookout, SharedLookout, Sock};
use crate::lifecycle::deadlines::{Deadlines, Timer};
use crate::lifecycle::drain::{Drain, Stage, FLUSH_GRACE};
use crate::lifecycle::poller::Poller;
use crate::lifecycle::shutdown::Shutdown;
use crate::lifecycle::signals::{Role, Signals};
use crate::net::accept::AtCap;
use crate::net::acceptor::Acceptor;
use crate::process::children::{self, Children};
use crate::sys::{self, BlockedSignals, Forked};

/// Runs the fork-per-connection strategy until the server stops.
pub(crate) fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    sys::ensure_single_threaded("fork mode")?;
    let parent = nix::unistd::getpid();
    listener.set_nonblocking(true)?;
    let poller = Poller::new(&ctx.shutdown, Some(signals), ctx.config.metrics, Some(ctx.slot))?;
    let mut acceptor = Acceptor::new(listener, poller, &ctx, AtCap::Wait)?;
    let mut children: Children<Permit> = Children::new();
    let mut events = Events::with_capacity(16);
    let mut drain = Drain::new();
    let mut timers = Deadlines::new();
    ctx.ready();
    loop {
        let now = Instant::now();
        while let Some(exit) = children.reap() {
            // The permit drops here: a place is free again.
            match exit.ended {
                children::Ended::Exited(0) => {}
                ended => log::debug!("child {} {ended}", exit.pid),
            }
        }
        for stage in drain.advance(&ctx.shutdown, now) {
            acceptor.on_stage(stage);
            match stage {
                Stage::Serving | Stage::Flush => {}
                Stage::Grace => {
                    let kill_at = ctx.shutdown.deadline().unwrap_or(now) + FLUSH_GRACE;
                    children.stop_all(Signal::SIGTERM, kill_at);
                }
                Stage::Over => children.quit_all(now),
            }
        }
        if acceptor.poller.take_notices().reopen {
            children.signal_all(Signal::SIGUSR1);
        }
        if children.kill_overdue(now) > 0 {
            log::info!("killed the children still serving");
        }
        if !drain.serving() && children.is_empty() && acceptor.is_idle() {
            return Ok(());
        }
        if let Some(conn) = acceptor.accept(now) {
            match sys::fork() {
                Ok(Forked::Parent(pid)) => children.add(pid, conn.permit),
                Ok(Forked::Child(blocked)) => {
                    // The child's copy of the permit belongs to the parent's
                    // books: never released here.
                    std::mem::forget(conn.permit);
                    let signals = acceptor.leave_to_child();
                    sys::exit_now(child(conn.stream, conn.peer, signals, blocked, &ctx, parent));
                }
                Err(e) => {
                    log::warn!("fork: {e}; closing the connection");
                    ctx.handover_failed();
                }
            }
            continue;
        }
        timers.set(Timer::Drain, drain.next_change(&ctx.shutdown));
        timers.set(Timer::Children, children.next_deadline());
        acceptor.wait(&mut events, &mut timers)?;
    }
}

/// The child's whole life; the return value is its exit code.
fn child(
    stream: TcpStream,
    peer: SocketAddr,
    signals: Option<Signals>,
    blocked: BlockedSignals,
    ctx: &Context,
    parent: Pid,
) -> i32 {
    children::die_with_parent(parent);
    let Some(signals) = signals else {
        blocked.release();
        return 1;
    };
    let signals = match signals.reinstall_in_child(Role::ForkChild, blocked) {
        Ok(s) => s,
        Err(e) => {
            log::error!("child {}: signals: {e}", std::process::id());
            return 1;
        }
    };
    // The context is the parent's, copied by the fork and the child's own
    // from here on (only the scoreboard slot is shared memory): its stop
    // event included. Forked
    // while serving, that is a running one; forked in the grace, from the
    // connections the listener's queue held, it is the parent's drain, with
    // the parent's deadline, so the child drains with the parent. Used in
    // place, not cloned whole: each clone writes reference counts into pages
    // the child still shares with the parent, each a copy-on-write fault.
    //
    // The socket stays non-blocking, as accepted: with a lookout, the driver
    // polls before it reads or writes.
    let lookout: SharedLookout = Rc::new(RefCell::new(Signalled { signals, shutdown: ctx.shutdown.clone() }));
    super::serve_blocking(Sock::Plain(stream), peer, ctx, Some(lookout));
    0
}

/// A child watches its signals only.
struct Signalled {
    signals: Signals,
    shutdown: Shutdown,
}

impl Lookout for Signalled {
    fn fd(&self) -> BorrowedFd<'_> {
        self.signals.as_fd()
    }

    fn on_ready(&mut self) -> io::Result<()> {
        self.signals.dispatch(&self.shutdown);
        Ok(())
    }
}
