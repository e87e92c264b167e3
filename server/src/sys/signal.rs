//! The signal handler and the state it writes: one counter per signal, a
//! bit mask of pending signals, and the write end of a self-pipe that wakes
//! whichever loop polls the read end. What each signal *means* is not here:
//! `lifecycle::signals` holds the table; this is only the async-signal-safe
//! part.
//!
//! The handler is written by hand (rather than taken from signal-hook)
//! because the server needs exact control of it: no `SA_RESTART`, counts
//! rather than flags (a second SIGINT must not coalesce with the first), and
//! a pipe that a forked child replaces with its own while its signals are
//! blocked.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// How many times each signal (by number, < 32 on Linux) has arrived and not
/// yet been taken.
static COUNTS: [AtomicU32; 32] = [const { AtomicU32::new(0) }; 32];
/// Bit `n` set when signal `n` is pending: one load tells "anything?".
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Write end of the self-pipe that wakes the loop which polls signals.
static PIPE_WR: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let n = sig as usize;
    if n < 32 {
        COUNTS[n].fetch_add(1, Ordering::SeqCst);
        PENDING.fetch_or(1 << n, Ordering::SeqCst);
    }
    let fd = PIPE_WR.load(Ordering::SeqCst);
    if fd >= 0 {
        let saved = nix::errno::Errno::last_raw();
        let byte = 0u8;
        // SAFETY: `write` is async-signal-safe; the pointer is to a live local
        // byte; the fd is a non-blocking pipe (a full pipe just drops the
        // wake, which is fine: one unread byte already wakes the reader).
        unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
        nix::errno::Errno::set_raw(saved);
    }
}

/// Records `sig` as if it had arrived: counted, and the pipe woken. For a
/// stop requested from inside the process (a thread of the program, or a
/// test), so it takes exactly the path a real signal takes.
pub(crate) fn deliver(sig: Signal) {
    on_signal(sig as libc::c_int);
}

/// Hands the write end of a new self-pipe to the signal handler, which owns
/// it from then on, and closes the one it had before (if any).
pub(crate) fn set_pipe(write: OwnedFd) {
    let old = PIPE_WR.swap(write.into_raw_fd(), Ordering::SeqCst);
    if old >= 0 {
        // SAFETY: `old` came from `into_raw_fd` of an `OwnedFd` in an earlier
        // call; the handler slot was its only owner and no longer holds it.
        drop(unsafe { OwnedFd::from_raw_fd(old) });
    }
}

/// What to do with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// Count it and wake the pipe, without `SA_RESTART`: a signal interrupts
    /// a blocking call in the thread that takes it (`EINTR`).
    Count,
    /// Ignore it in the kernel (`SIG_IGN`).
    Ignore,
    /// The default action.
    Default,
}

/// Sets the disposition of `sig`.
pub(crate) fn set_disposition(sig: Signal, d: Disposition) -> io::Result<()> {
    let handler = match d {
        Disposition::Count => SigHandler::Handler(on_signal),
        Disposition::Ignore => SigHandler::SigIgn,
        Disposition::Default => SigHandler::SigDfl,
    };
    let action = SigAction::new(handler, SaFlags::empty(), SigSet::empty());
    // SAFETY: `on_signal` only touches atomics and calls `write`, both
    // async-signal-safe, and restores errno; `SIG_IGN` and `SIG_DFL` run no
    // code of ours.
    unsafe { sigaction(sig, &action) }.map(drop).map_err(io::Error::from)
}

/// Takes (and clears) the count of `sig` since the last take.
pub(crate) fn take(sig: Signal) -> u32 {
    let n = sig as usize;
    PENDING.fetch_and(!(1 << n), Ordering::SeqCst);
    COUNTS[n].swap(0, Ordering::SeqCst)
}

/// Whether any signal in `mask` (bit per signal number) may be pending.
#[inline]
pub(crate) fn pending(mask: u32) -> bool {
    PENDING.load(Ordering::Relaxed) & mask != 0
}

/// Forgets every pending signal (a forked child starts clean).
pub(crate) fn clear() {
    PENDING.store(0, Ordering::SeqCst);
    for c in &COUNTS {
        c.store(0, Ordering::SeqCst);
    }
}
