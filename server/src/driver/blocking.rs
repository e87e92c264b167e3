//! The blocking driver: read, hand the bytes to the protocol, write all of
//! its output, repeat. On end-of-file the protocol gets `on_eof`, every
//! pending byte is written, and the write side is shut.
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
//!   `lifecycle::drain`: in the grace the connection is served, then reading
//!   stops, and what is owed gets until the flush grace ends.
//! - Without one (thread, pool), the driver knows nothing of stops: reads
//!   and writes block with SO_RCVTIMEO/SO_SNDTIMEO as the idle timeout, and
//!   the accepting thread reaches every socket through the drain's registry:
//!   `shutdown(SHUT_RD)` when the grace ends reads here as end-of-file (so
//!   what was received is answered), `shutdown(SHUT_RDWR)` when the flush
//!   grace ends fails a blocked write.

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use switchyard_common::{Protocol, Step};

use super::Totals;
use crate::lifecycle::drain::{Drain, Stage};
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

/// How a connection went.
#[derive(Debug)]
pub(crate) struct Served {
    /// Why it ended, or the I/O error that ended it.
    pub(crate) end: io::Result<End>,
    /// Bytes moved, also when it failed.
    pub(crate) totals: Totals,
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

/// Serves one connection to its end.
pub(crate) fn serve(
    stream: &TcpStream,
    proto: &mut dyn Protocol,
    shutdown: &Shutdown,
    idle: Option<Duration>,
    lookout: Option<&mut dyn Lookout>,
) -> Served {
    let mut conn = Blocking { stream, totals: Totals::default(), idle, shutdown, drain: Drain::new(), lookout };
    let end = conn.run(proto);
    Served { end, totals: conn.totals }
}

struct Blocking<'a, 'l> {
    stream: &'a TcpStream,
    totals: Totals,
    idle: Option<Duration>,
    shutdown: &'a Shutdown,
    drain: Drain,
    lookout: Option<&'l mut dyn Lookout>,
}

/// What a wait found.
enum Ready {
    Socket,
    /// The lookout's fd was handled, a chore ran, or the stage moved: look again.
    Again,
    Timeout,
}

impl Blocking<'_, '_> {
    fn run(&mut self, proto: &mut dyn Protocol) -> io::Result<End> {
        if self.lookout.is_none() {
            self.stream.set_read_timeout(self.idle)?;
            self.stream.set_write_timeout(self.idle)?;
        }
        let (mut input, mut output) = super::buffer_pair(READ_CHUNK);
        let mut last_input = Instant::now();
        loop {
            if self.lookout.is_some() {
                match self.stage(Instant::now()) {
                    Stage::Serving | Stage::Grace => {}
                    Stage::Flush => return Ok(End::Grace),
                    Stage::Over => return Ok(End::Stopped),
                }
                let deadline = match self.drain.stage() {
                    Stage::Serving => self.idle.map(|d| last_input + d),
                    _ => self.drain.next_change(self.shutdown),
                };
                match self.wait(PollFlags::POLLIN, deadline)? {
                    Ready::Socket => {}
                    Ready::Again => continue,
                    Ready::Timeout if self.drain.serving() => return Ok(End::Idle),
                    Ready::Timeout => continue, // the stage moves on
                }
            }
            input.reserve(READ_CHUNK);
            match sys::read_into(self.stream, &mut input) {
                Ok(0) => {
                    proto.on_eof(&mut output);
                    self.write_out(&mut output)?;
                    let _ = self.stream.shutdown(std::net::Shutdown::Write);
                    return Ok(End::Eof);
                }
                Ok(n) => {
                    self.totals.bytes_in += n as u64;
                    last_input = Instant::now();
                    let step = proto.on_read(&mut input, &mut output);
                    self.write_out(&mut output)?;
                    if step == Step::Close {
                        return Ok(End::Closed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Ok(End::Idle);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The drain stage at `now`, telling the lookout of each new one.
    fn stage(&mut self, now: Instant) -> Stage {
        let entered: Vec<Stage> = self.drain.advance(self.shutdown, now).collect();
        if let Some(l) = &mut self.lookout {
            for s in entered {
                l.on_stage(s);
            }
        }
        self.drain.stage()
    }

    /// Writes all of `output`. With a lookout, a write that would block
    /// waits (for the idle timeout while serving or in the grace, until the
    /// flush grace ends after it); without one, the socket blocks.
    fn write_out(&mut self, output: &mut BytesMut) -> io::Result<()> {
        let mut sent = 0;
        let mut last_progress = Instant::now();
        while sent < output.len() {
            let written = match self.lookout {
                None => (&mut &*self.stream).write(&output[sent..]),
                Some(_) => socket2::SockRef::from(self.stream)
                    .send_with_flags(&output[sent..], libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL),
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    sent += n;
                    last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && self.lookout.is_some() => {
                    let deadline = match self.stage(Instant::now()) {
                        Stage::Serving | Stage::Grace => self.idle.map(|d| last_progress + d),
                        Stage::Flush => self.drain.next_change(self.shutdown),
                        Stage::Over => return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped")),
                    };
                    if let Ready::Timeout = self.wait(PollFlags::POLLOUT, deadline)? {
                        if self.drain.stage() == Stage::Serving || self.drain.stage() == Stage::Grace {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "peer stopped reading"));
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.totals.bytes_out += sent as u64;
        output.clear();
        Ok(())
    }

    /// Waits until the socket is ready for `flags`, the lookout's fd is
    /// readable (handled here), or `deadline` passed, running the lookout's
    /// chores when they fall due. A passed deadline is only a timeout once a
    /// poll found the socket not ready: after the process was stalled
    /// (stopped, descheduled) past its deadline, bytes that arrived
    /// meanwhile are traffic, not idleness.
    fn wait(&mut self, flags: PollFlags, deadline: Option<Instant>) -> io::Result<Ready> {
        let lookout = self.lookout.as_mut().expect("only with a lookout");
        let now = Instant::now();
        let chore = lookout.due(now);
        if chore.is_some_and(|c| now >= c) {
            lookout.tick(now)?;
            return Ok(Ready::Again);
        }
        let wake = match (deadline, chore) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
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
            let mut fds = [PollFd::new(self.stream.as_fd(), flags), PollFd::new(lookout.fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, timeout) {
                Ok(0) => (false, false),
                Ok(_) => (fds[0].any().unwrap_or(false), fds[1].any().unwrap_or(false)),
                Err(nix::errno::Errno::EINTR) => (false, true),
                Err(e) => return Err(e.into()),
            }
        };
        if other {
            lookout.on_ready()?;
            return Ok(Ready::Again);
        }
        if socket {
            return Ok(Ready::Socket);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Ready::Timeout);
        }
        Ok(Ready::Again) // a chore is due
    }
}
