//! Every `unsafe` block of the server lives here, each with its `SAFETY:`
//! argument: fork, `_exit`, the parent-death signal, signal handlers and
//! masks, the shared scoreboard mapping, and reading into a buffer's spare
//! capacity.
//!
//! Callers: `strategy::fork` and `strategy::prefork` (fork), `signals`
//! (handlers), the drivers (`read_into`), strategies that spawn threads
//! (`spawn_masked`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use bytes::BytesMut;

use crate::scoreboard::Slot;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

/// The result of [`fork`], as seen by each side.
#[derive(Debug)]
pub enum Forked {
    /// We are the parent; this is the child.
    Parent(Pid),
    /// We are the child; every signal is blocked until the child has set up
    /// its own handling and releases them.
    Child(BlockedSignals),
}

/// Signals held back in a new child (they stay pending, none is lost).
#[derive(Debug)]
#[must_use = "release the signals once the child handles them"]
pub struct BlockedSignals(SigSet);

impl BlockedSignals {
    /// Restores the signal mask: pending signals are delivered now.
    pub fn release(self) {
        let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

/// Number of threads in this process, from `/proc/self/task`.
pub fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// Forks this process, with every signal blocked across the fork: a signal
/// sent to the new child before it has its own handling stays pending
/// instead of landing in the parent's bookkeeping (the child releases it
/// with [`BlockedSignals::release`]).
///
/// Callers must be single-threaded (`ensure_single_threaded` at startup):
/// the child of a multi-threaded process may only call async-signal-safe
/// functions, and Switchyard's children run normal code (allocate, log).
pub fn fork() -> io::Result<Forked> {
    debug_assert_eq!(thread_count().ok(), Some(1), "fork from a multi-threaded process");
    let mut old = SigSet::empty();
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut old)).map_err(io::Error::from)?;
    // SAFETY: the process has exactly one thread (checked by every caller at
    // startup, and in debug builds above), so no lock can be held by another
    // thread across the fork and the child may run arbitrary code.
    let forked = unsafe { nix::unistd::fork() };
    match forked {
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child(BlockedSignals(old))),
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Ok(Forked::Parent(child))
        }
        Err(e) => {
            let _ = signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
            Err(e.into())
        }
    }
}

/// Fails unless this process has exactly one thread (a precondition of
/// [`fork`]).
pub fn ensure_single_threaded(who: &str) -> io::Result<()> {
    let n = thread_count()?;
    if n != 1 {
        return Err(io::Error::other(format!("{who} must fork from a single-threaded process, found {n} threads")));
    }
    Ok(())
}

/// Ends the process at once, without running destructors or `atexit`
/// handlers and without flushing stdio buffers inherited from the parent.
/// A forked child ends through here and never returns into the parent's loop.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and takes no pointers; ending the
    // process without unwinding is the point.
    unsafe { libc::_exit(code) }
}

/// Asks the kernel to send `sig` to this process when its parent dies, then
/// closes the race where the parent died before the call: if the parent is
/// already gone (`getppid() != expected_parent`), exits at once.
pub fn die_with_parent(sig: Signal, expected_parent: Pid) {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(sig) {
        log::warn!("prctl(PR_SET_PDEATHSIG): {e}");
    }
    if nix::unistd::getppid() != expected_parent {
        exit_now(0);
    }
}

/// Reads from a socket into the spare capacity of `buf` (at most what is
/// spare; reserve first) and returns how many bytes arrived. No zeroing, no
/// copy.
pub fn read_into<S: AsFd>(sock: &S, buf: &mut BytesMut) -> io::Result<usize> {
    let sock = socket2::SockRef::from(sock);
    let spare = buf.spare_capacity_mut();
    let n = sock.recv(spare)?;
    debug_assert!(n <= spare.len());
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity,
    // and `n` is at most the spare length, so the new length covers only
    // initialised bytes within the allocation.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Maps `n` zeroed [`Slot`]s in memory shared with every process forked
/// afterwards (`MAP_SHARED | MAP_ANONYMOUS`). Never unmapped: the slots live
/// as long as the process.
pub fn map_shared_slots(n: usize) -> io::Result<&'static [Slot]> {
    use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
    let len = std::num::NonZeroUsize::new(n.max(1) * std::mem::size_of::<Slot>()).expect("non-zero");
    // SAFETY: a fresh anonymous mapping aliases nothing; we pass no address
    // hint and no fd.
    let ptr = unsafe { mmap_anonymous(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED) }
        .map_err(io::Error::from)?;
    // SAFETY: the mapping is page-aligned (enough for `Slot`'s atomics), is
    // `len` bytes long, zero-filled by the kernel (an all-zero `Slot` is a
    // valid value: only atomic integers), never unmapped (so `'static`), and
    // only ever accessed through atomics, which are sound to share between
    // processes on Linux.
    Ok(unsafe { std::slice::from_raw_parts(ptr.as_ptr().cast::<Slot>(), n.max(1)) })
}

/// Registers a listening socket in `poll` for readability, edge-triggered,
/// with `EPOLLEXCLUSIVE`: when several processes (prefork workers) wait on
/// one shared listener, the kernel wakes one of them per connection instead
/// of all (no thundering herd). mio has no flag for it; the event carries
/// `token` exactly as mio's own registrations do, so mio reads it as usual,
/// and mio's `deregister` removes it.
pub fn register_listener<L: AsRawFd>(poll: &mio::Poll, listener: &L, token: mio::Token) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE) as u32,
        u64: token.0 as u64,
    };
    // SAFETY: both fds are open (borrowed from live owners) and `ev` is a
    // valid, initialised epoll_event that the kernel only reads.
    let r = unsafe { libc::epoll_ctl(poll.as_raw_fd(), libc::EPOLL_CTL_ADD, listener.as_raw_fd(), &mut ev) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ----- signals -------------------------------------------------------------

/// How many times each signal (by number, < 32 on Linux) has arrived and not
/// yet been taken. Written by the handler, taken by [`take_signal`].
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

/// Hands the write end of a new self-pipe to the signal handler, which owns
/// it from then on, and closes the one it had before (if any).
pub fn set_signal_pipe(write: OwnedFd) {
    let old = PIPE_WR.swap(write.into_raw_fd(), Ordering::SeqCst);
    if old >= 0 {
        // SAFETY: `old` came from `into_raw_fd` of an `OwnedFd` in an earlier
        // call; the handler slot was its only owner and no longer holds it.
        drop(unsafe { OwnedFd::from_raw_fd(old) });
    }
}

/// Installs the counting handler for `sigs`, without `SA_RESTART`: a signal
/// interrupts a blocking call in the thread that takes it (`EINTR`), which is
/// how a single-threaded blocking server notices SIGTERM.
pub fn install_handlers(sigs: &[Signal]) -> io::Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for &s in sigs {
        // SAFETY: `on_signal` only touches atomics and calls `write`, both
        // async-signal-safe, and restores errno.
        unsafe { signal::sigaction(s, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Restores the default disposition of `sigs` (used by forked children for
/// signals only the parent handles, such as SIGCHLD).
pub fn default_handlers(sigs: &[Signal]) -> io::Result<()> {
    let action = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for &s in sigs {
        // SAFETY: installing the default disposition runs no code of ours.
        unsafe { signal::sigaction(s, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Ignores `sigs` in this process (SIGPIPE: a write to a closed peer returns
/// `EPIPE` instead of killing the process; Rust's runtime does this already).
pub fn ignore_signals(sigs: &[Signal]) -> io::Result<()> {
    let action = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for &s in sigs {
        // SAFETY: ignoring a signal runs no code of ours.
        unsafe { signal::sigaction(s, &action) }.map_err(io::Error::from)?;
    }
    Ok(())
}

/// Takes (and clears) the count of `sig` since the last take.
pub fn take_signal(sig: Signal) -> u32 {
    let n = sig as usize;
    PENDING.fetch_and(!(1 << n), Ordering::SeqCst);
    COUNTS[n].swap(0, Ordering::SeqCst)
}

/// Whether any signal in `mask` (bit per signal number) may be pending.
#[inline]
pub fn signals_pending(mask: u32) -> bool {
    PENDING.load(Ordering::Relaxed) & mask != 0
}

/// Forgets every pending signal (a forked child starts clean).
pub fn clear_signals() {
    PENDING.store(0, Ordering::SeqCst);
    for c in &COUNTS {
        c.store(0, Ordering::SeqCst);
    }
}

/// Spawns a thread with every signal blocked, so signals always go to the
/// thread that polls for them and never interrupt a worker.
pub fn spawn_masked<F, T>(name: String, stack: usize, f: F) -> io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let all = SigSet::all();
    let mut old = SigSet::empty();
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&all), Some(&mut old)).map_err(io::Error::from)?;
    let spawned = std::thread::Builder::new().name(name).stack_size(stack).spawn(f);
    signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None).map_err(io::Error::from)?;
    spawned
}

/// The raw fd of anything that has one (logging and /proc checks).
pub fn raw<F: AsRawFd>(f: &F) -> RawFd {
    f.as_raw_fd()
}
