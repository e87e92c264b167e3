//! Signals as events a loop can poll: a counting handler (in [`crate::sys`])
//! plus a self-pipe whose read end any `mio::Poll` can watch.
//!
//! The process table (same in every mode; README documents it):
//!
//! | signal | effect |
//! |---|---|
//! | SIGTERM, SIGINT | graceful stop: close the listener, drain connections up to `--grace` |
//! | second SIGINT, SIGQUIT | immediate stop |
//! | SIGCHLD | (fork, prefork master) reap children |
//! | SIGHUP, SIGTTIN, SIGTTOU | (prefork master) rolling restart, one worker more, one fewer |
//! | SIGUSR1, SIGUSR2 | counted and otherwise ignored (they only interrupt blocking calls, which are retried) |
//!
//! Callers: `lib::serve` installs the handlers once; the acceptor, the event
//! loops and the prefork master register [`Signals`] in their poll; forked
//! children call [`Signals::reinstall_in_child`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::fcntl::OFlag;
pub use nix::sys::signal::Signal;

use crate::sys;

/// Signals that stop the server, in every process.
pub const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Signals every process handles and ignores, so that stray ones (a signal
/// storm, a log-rotation script) never kill a server.
pub const NOISE_SIGNALS: [Signal; 2] = [Signal::SIGUSR1, Signal::SIGUSR2];

/// Bit mask of [`STOP_SIGNALS`] for [`sys::signals_pending`].
pub const STOP_MASK: u32 = (1 << Signal::SIGTERM as u32) | (1 << Signal::SIGINT as u32) | (1 << Signal::SIGQUIT as u32);

/// The read end of the signal self-pipe. One per process; dropping it stops
/// the wake-ups (the counts still work).
#[derive(Debug)]
pub struct Signals {
    read: OwnedFd,
}

impl Signals {
    /// Installs the handler for [`STOP_SIGNALS`] and `extra`, and a new
    /// self-pipe. SIGPIPE is ignored.
    pub fn install(extra: &[Signal]) -> io::Result<Signals> {
        sys::ignore_signals(&[Signal::SIGPIPE])?;
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        sys::set_signal_pipe(write);
        let mut all: Vec<Signal> = STOP_SIGNALS.to_vec();
        all.extend_from_slice(&NOISE_SIGNALS);
        all.extend_from_slice(extra);
        sys::install_handlers(&all)?;
        Ok(Signals { read })
    }

    /// In a freshly forked child (signals still blocked by `sys::fork`):
    /// drop the parent's pipe, forget signals counted before the fork,
    /// restore the default for `parent_only` signals (e.g. SIGCHLD), make a
    /// pipe of the child's own, and only then let signals in.
    pub fn reinstall_in_child(self, parent_only: &[Signal], blocked: sys::BlockedSignals) -> io::Result<Signals> {
        drop(self);
        sys::clear_signals();
        let installed = sys::default_handlers(parent_only).and_then(|()| Signals::install(&[]));
        blocked.release();
        installed
    }

    /// Registers the read end in a poll.
    pub fn register(&self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut SourceFd(&self.read.as_raw_fd()), token, Interest::READABLE)
    }

    /// The read end, to poll it directly.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// Empties the pipe after a wake-up (the counts carry the information).
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = nix::unistd::read(&self.read, &mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }

    /// Takes the count of `sig` since the last take.
    pub fn take(sig: Signal) -> u32 {
        sys::take_signal(sig)
    }
}
