//! Fork per connection: the parent accepts, forks, closes its copy of the
//! connection and goes back to accepting; the child closes the listener,
//! serves its one connection and `_exit`s, never returning into the loop.
//!
//! The parent has one thread, always (checked before the first fork). It
//! reaps every child on SIGCHLD with a `waitpid(-1, WNOHANG)` loop (signals
//! coalesce, so one SIGCHLD may stand for many exits). At `--max-children`
//! live children it stops accepting until one exits, as Python's
//! socketserver does. Children die with the parent (PR_SET_PDEATHSIG).
//!
//! Graceful stop: the parent closes the listener and forwards SIGTERM; each
//! child drains its connection until the peer closes or the grace ends;
//! children still alive a second after the grace are killed.

use std::collections::HashMap;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::acceptor::Acceptor;
use crate::context::Context;
use crate::driver::blocking;
use crate::per_ip::IpPermit;
use crate::shutdown::{Phase, Shutdown};
use crate::signals::Signals;
use crate::sys::{self, Forked};

/// Runs the fork-per-connection strategy until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    sys::ensure_single_threaded("fork mode")?;
    let parent = nix::unistd::getpid();
    let mut acceptor = Acceptor::new(listener, signals, &ctx)?;
    let mut children = Children::default();
    ctx.ready();
    while ctx.shutdown.is_running() {
        children.reap();
        let room = children.len() < ctx.config.max_children;
        let Some(accepted) = acceptor.next(room)? else { continue };
        ctx.accepted();
        let stream = accepted.stream;
        match sys::fork() {
            Ok(Forked::Parent(pid)) => {
                // The permit stays with the parent until the child is reaped.
                children.live.insert(pid, accepted.permit);
                drop(stream);
            }
            Ok(Forked::Child(blocked)) => {
                let signals = acceptor.into_child();
                sys::exit_now(child(stream, signals, blocked, &ctx, parent));
            }
            Err(e) => log::warn!("fork: {e}; closing the connection"),
        }
    }
    acceptor.close_listener();
    children.signal_all(Signal::SIGTERM);
    let kill_at = ctx.shutdown.deadline().unwrap_or_else(Instant::now) + super::FLUSH_GRACE;
    let mut killed = false;
    loop {
        children.reap();
        if children.len() == 0 {
            return Ok(());
        }
        if !killed && (Instant::now() >= kill_at || ctx.shutdown.phase() == Phase::Immediate) {
            log::info!("killing {} child(ren) still serving", children.len());
            children.signal_all(Signal::SIGKILL);
            killed = true;
        }
        let timeout =
            if killed { Duration::from_millis(50) } else { kill_at.saturating_duration_since(Instant::now()) };
        acceptor.wait(Some(timeout))?;
    }
}

/// The child's whole life; the return value is its exit code.
fn child(stream: TcpStream, signals: Signals, blocked: sys::BlockedSignals, ctx: &Context, parent: Pid) -> i32 {
    sys::die_with_parent(Signal::SIGKILL, parent);
    let mut signals = match signals.reinstall_in_child(&[Signal::SIGCHLD], blocked) {
        Ok(s) => s,
        Err(e) => {
            log::error!("child {}: signals: {e}", std::process::id());
            return 1;
        }
    };
    // A fresh stop event: the parent's state is not the child's.
    let shutdown = Shutdown::new(ctx.config.grace);
    let mut proto = (ctx.factory)();
    ctx.finished(blocking::serve(&stream, &mut *proto, &shutdown, ctx.config.idle_timeout, Some(&mut signals)));
    0
}

/// The parent's live children.
#[derive(Debug, Default)]
struct Children {
    live: HashMap<Pid, Option<IpPermit>>,
}

impl Children {
    fn len(&self) -> usize {
        self.live.len()
    }

    /// Reaps every child that has exited (zombies never linger).
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return,
                Ok(status) => {
                    if let Some(pid) = status.pid() {
                        self.live.remove(&pid);
                    }
                    match status {
                        WaitStatus::Exited(pid, code) if code != 0 => log::debug!("child {pid} exited with {code}"),
                        WaitStatus::Signaled(pid, sig, _) => log::debug!("child {pid} killed by {sig}"),
                        _ => {}
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECHILD) => {
                    self.live.clear();
                    return;
                }
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    return;
                }
            }
        }
    }

    fn signal_all(&self, sig: Signal) {
        for &pid in self.live.keys() {
            let _ = kill(pid, sig);
        }
    }
}
