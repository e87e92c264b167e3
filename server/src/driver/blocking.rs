//! The blocking driver: read, hand the bytes to the protocol, write all of
//! its output, repeat ([`serve`]); a protocol that answers in place
//! (`Protocol::on_read_in_place`) has its reply written from the input
//! buffer itself. On end-of-file the protocol gets
//! `on_eof`, every pending byte is written, and the write side is shut.
//! Its socket side, [`BlockingIo`], is shared with the coroutine handlers
//! of the blocking strategies (`handler::Connection`).
//!
//! Two ways to live through a stop:
//!
//! - With a [`Lookout`] (single-threaded processes: serial, a fork child, a
//!   prefork serial worker), the driver is the process's loop while it
//!   serves: every read and every write that would block first `poll(2)`s
//!   the socket *and* the lookout's fd (the signal pipe, or the accept
//!   loop's epoll fd), until the idle deadline or the end of the drain
//!   stage. A signal writes a byte to the pipe, so it is never lost between
//!   a check and a blocking call. The stages of the stop are the ones of
//!   `lifecycle::drain`: in the grace the connection is served, then reads
//!   see end-of-file, and what is owed gets until the flush grace ends.
//! - Without one (thread, pool), the driver knows nothing of stops: reads
//!   and writes block with SO_RCVTIMEO/SO_SNDTIMEO as the idle timeout, and
//!   the accepting thread reaches every socket through the drain's registry:
//!   `shutdown(SHUT_RD)` when the grace ends reads here as end-of-file (so
//!   what was received is answered), `shutdown(SHUT_RDWR)` when the flush
//!   grace ends fails a blocked write.

use std::cell::RefCell;
use std::io::{self, Read as _, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use switchyard_common::{Protocol, Step};

use super::Totals;
use crate::lifecycle::drain::{Drain, Registered, Stage};
use crate::lifecycle::shutdown::Shutdown;
use crate::sys;

/// Bytes read per read(2) call at most.
pub(crate) const READ_CHUNK: usize = 32 * 1024;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer closed its write side; everything was answered.
    Eof,
    /// The protocol asked to close.
    Closed,
    /// No traffic for the idle timeout.
    Idle,
    /// The grace period of a graceful stop ended.
    Grace,
    /// The stop's last stage came (immediate stop, or the flush grace ended).
    Stopped,
}

/// What a single-threaded process watches besides the socket it serves.
pub(crate) trait Lookout {
    /// The fd to poll beside the socket.
    fn fd(&self) -> BorrowedFd<'_>;
    /// That fd is readable: handle it (dispatch signals, answer a metrics
    /// request, ...).
    fn on_ready(&mut self) -> io::Result<()>;
    /// The stop reached `stage` (serial closes its listener at the grace).
    fn on_stage(&mut self, _stage: Stage) {}
    /// When [`Lookout::tick`] wants to run next; `None`: never.
    fn due(&self, _now: Instant) -> Option<Instant> {
        None
    }
    /// Runs the lookout's own chores; called at or after [`Lookout::due`].
    fn tick(&mut self, _now: Instant) -> io::Result<()> {
        Ok(())
    }
}

/// A lookout, shared between the process loop that owns it and the
/// connection it serves meanwhile.
pub(crate) type SharedLookout = Rc<RefCell<dyn Lookout>>;

/// The socket a blocking connection owns.
#[derive(Debug)]
pub(crate) enum Sock {
    /// A socket of its own (serial, fork child).
    Plain(TcpStream),
    /// A socket in the drain's registry (thread, pool).
    Registered(Registered),
}

impl Sock {
    fn get(&self) -> &TcpStream {
        match self {
            Sock::Plain(s) => s,
            Sock::Registered(r) => r,
        }
    }
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Got {
    /// This many bytes.
    Data(usize),
    /// End of input: the peer closed its side, or the server ended the
    /// input (the idle timeout, the end of the grace).
    Eof(End),
    /// The connection must end now (immediate stop).
    Stopped,
    /// The caller's own deadline (`wake_at`) came first: nothing was read.
    Due,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// This many bytes (at least one).
    Sent(usize),
    /// The caller's own deadline came first: nothing was written.
    Due,
}

/// A blocking connection's socket side: reads and writes that honour the
/// idle timeout, the drain's stages and the lookout, and count bytes.
pub(crate) struct BlockingIo {
    sock: Sock,
    totals: Totals,
    idle: Option<Duration>,
    shutdown: Shutdown,
    drain: Drain,
    lookout: Option<SharedLookout>,
    last_input: Instant,
}

impl std::fmt::Debug for BlockingIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingIo").field("sock", &self.sock).field("totals", &self.totals).finish()
    }
}

/// What a wait found.
enum Ready {
    Socket,
    /// The lookout's fd was handled, a chore ran, or the stage moved: look again.
    Again,
    Timeout,
    /// The caller's own deadline.
    Due,
}

impl BlockingIo {
    /// The socket side of a connection served on this thread.
    pub(crate) fn new(
        sock: Sock,
        shutdown: &Shutdown,
        idle: Option<Duration>,
        lookout: Option<SharedLookout>,
    ) -> io::Result<BlockingIo> {
        if lookout.is_none() {
            sock.get().set_read_timeout(idle)?;
            sock.get().set_write_timeout(idle)?;
        }
        Ok(BlockingIo {
            sock,
            totals: Totals::default(),
            idle,
            shutdown: shutdown.clone(),
            drain: Drain::new(),
            lookout,
            last_input: Instant::now(),
        })
    }

    /// Bytes moved so far.
    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    /// Reads what arrived into the spare capacity of `buf`.
    pub(crate) fn read_into(&mut self, buf: &mut BytesMut, wake_at: Option<Instant>) -> io::Result<Got> {
        self.read_with(wake_at, |s| sys::read_into(s, buf))
    }

    /// Reads what arrived into `buf`.
    pub(crate) fn read(&mut self, buf: &mut [u8], wake_at: Option<Instant>) -> io::Result<Got> {
        self.read_with(wake_at, |mut s| s.read(buf))
    }

    fn read_with(
        &mut self,
        wake_at: Option<Instant>,
        mut read: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> io::Result<Got> {
        loop {
            if self.lookout.is_some() || wake_at.is_some() {
                match self.stage(Instant::now()) {
                    Stage::Serving | Stage::Grace => {}
                    Stage::Flush => return Ok(Got::Eof(End::Grace)),
                    Stage::Over => return Ok(Got::Stopped),
                }
                let deadline = match self.drain.stage() {
                    Stage::Serving => self.idle.map(|d| self.last_input + d),
                    _ => self.drain.next_change(&self.shutdown),
                };
                match self.wait(PollFlags::POLLIN, deadline, wake_at)? {
                    Ready::Socket => {}
                    Ready::Again => continue,
                    Ready::Due => return Ok(Got::Due),
                    Ready::Timeout if self.drain.serving() => return Ok(Got::Eof(End::Idle)),
                    Ready::Timeout => continue, // the stage moves on
                }
            }
            match read(self.sock.get()) {
                Ok(0) => return Ok(Got::Eof(End::Eof)),
                Ok(n) => {
                    self.totals.bytes_in += n as u64;
                    self.last_input = Instant::now();
                    return Ok(Got::Data(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Polled first: a non-blocking socket that was not ready after
                // all (a fork child's, as accepted). Wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && (self.lookout.is_some() || wake_at.is_some()) => {
                    continue
                }
                // SO_RCVTIMEO (no lookout): the idle timeout.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Ok(Got::Eof(End::Idle));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes some of `data`. With a lookout, a write that would block
    /// waits (for the idle timeout while serving or in the grace, until the
    /// flush grace ends after it); without one, the socket blocks.
    pub(crate) fn write(&mut self, data: &[u8], wake_at: Option<Instant>) -> io::Result<Wrote> {
        let mut waited_since = Instant::now();
        loop {
            let polled = self.lookout.is_some() || wake_at.is_some();
            let written = if polled {
                socket2::SockRef::from(self.sock.get()).send_with_flags(data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            } else {
                (&mut self.sock.get()).write(data)
            };
            match written {
                Ok(0) if !data.is_empty() => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.totals.bytes_out += n as u64;
                    return Ok(Wrote::Sent(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && polled => {
                    let deadline = match self.stage(Instant::now()) {
                        Stage::Serving | Stage::Grace => self.idle.map(|d| waited_since + d),
                        Stage::Flush => self.drain.next_change(&self.shutdown),
                        Stage::Over => return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped")),
                    };
                    match self.wait(PollFlags::POLLOUT, deadline, wake_at)? {
                        Ready::Due => return Ok(Wrote::Due),
                        Ready::Timeout if matches!(self.drain.stage(), Stage::Serving | Stage::Grace) => {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"));
                        }
                        Ready::Socket => waited_since = Instant::now(),
                        Ready::Timeout | Ready::Again => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `data`.
    pub(crate) fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if let Wrote::Sent(n) = self.write(data, None)? {
                data = &data[n..];
            }
        }
        Ok(())
    }

    /// Shuts the write side (the peer reads end-of-file).
    pub(crate) fn shutdown_write(&self) {
        let _ = self.sock.get().shutdown(std::net::Shutdown::Write);
    }

    /// The drain stage at `now`, telling the lookout of each new one.
    fn stage(&mut self, now: Instant) -> Stage {
        let entered: Vec<Stage> = self.drain.advance(&self.shutdown, now).collect();
        if let Some(l) = &self.lookout {
            for s in entered {
                l.borrow_mut().on_stage(s);
            }
        }
        self.drain.stage()
    }

    /// Waits until the socket is ready for `flags`, the lookout's fd is
    /// readable (handled here), `deadline` passed, or `wake_at`, running the
    /// lookout's chores when they fall due. A passed deadline is only a
    /// timeout once a poll found the socket not ready: after the process was
    /// stalled (stopped, descheduled) past its deadline, bytes that arrived
    /// meanwhile are traffic, not idleness.
    fn wait(&mut self, flags: PollFlags, deadline: Option<Instant>, wake_at: Option<Instant>) -> io::Result<Ready> {
        let now = Instant::now();
        if wake_at.is_some_and(|t| now >= t) {
            return Ok(Ready::Due);
        }
        let chore = match &self.lookout {
            Some(l) => {
                let mut l = l.borrow_mut();
                let chore = l.due(now);
                if chore.is_some_and(|c| now >= c) {
                    l.tick(now)?;
                    return Ok(Ready::Again);
                }
                chore
            }
            None => None,
        };
        let wake = [deadline, chore, wake_at].into_iter().flatten().min();
        // Whole milliseconds, rounded up so a 0.4 ms remainder does not
        // become a busy 0 ms poll; a passed deadline polls once, at 0.
        let timeout = match wake {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let (socket, other) = {
            let lookout = self.lookout.as_ref().map(|l| l.borrow());
            let sock = self.sock.get().as_fd();
            // On the stack: a wait allocates nothing.
            let mut both =
                [PollFd::new(sock, flags), PollFd::new(lookout.as_ref().map_or(sock, |l| l.fd()), PollFlags::POLLIN)];
            let fds = &mut both[..if lookout.is_some() { 2 } else { 1 }];
            match nix::poll::poll(fds, timeout) {
                Ok(0) => (false, false),
                Ok(_) => (fds[0].any().unwrap_or(false), fds.get(1).is_some_and(|f| f.any().unwrap_or(false))),
                Err(nix::errno::Errno::EINTR) => (false, lookout.is_some()),
                Err(e) => return Err(e.into()),
            }
        };
        if other {
            if let Some(l) = &self.lookout {
                l.borrow_mut().on_ready()?;
            }
            return Ok(Ready::Again);
        }
        if socket {
            return Ok(Ready::Socket);
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(Ready::Timeout);
        }
        if wake_at.is_some_and(|t| now >= t) {
            return Ok(Ready::Due);
        }
        Ok(Ready::Again) // a chore is due
    }
}

/// Serves one connection with `proto` to its end; returns why it ended (or
/// the error that ended it) and the bytes it moved.
pub(crate) fn serve(io: &mut BlockingIo, proto: &mut dyn Protocol) -> io::Result<End> {
    let (mut input, mut output) = super::buffer_pair(READ_CHUNK);
    loop {
        input.reserve(READ_CHUNK);
        let held = !input.is_empty();
        match io.read_into(&mut input, None)? {
            Got::Data(_) => {
                let step = match (!held).then(|| proto.on_read_in_place(&mut input)).flatten() {
                    // The reply is the input, transformed where it landed.
                    Some(step) => {
                        io.write_all(&input)?;
                        input.clear();
                        step
                    }
                    None => {
                        let step = proto.on_read(&mut input, &mut output);
                        io.write_all(&output)?;
                        output.clear();
                        step
                    }
                };
                if step == Step::Close {
                    return Ok(End::Closed);
                }
            }
            Got::Eof(End::Eof) => {
                proto.on_eof(&mut output);
                io.write_all(&output)?;
                io.shutdown_write();
                return Ok(End::Eof);
            }
            Got::Eof(end) => return Ok(end),
            Got::Stopped => return Ok(End::Stopped),
            Got::Due => {} // no deadline of its own was given
        }
    }
}
