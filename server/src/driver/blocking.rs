//! The blocking driver: read, hand the bytes to the protocol, write all of
//! its output, repeat. On end-of-file the protocol gets `on_eof`, every
//! pending byte is written, and the write side is shut.
//!
//! Two ways to learn about a stop while blocked in a read:
//!
//! - With a [`Lookout`] (single-threaded processes: serial, a fork child, a
//!   prefork serial worker): each read is preceded by `poll(2)` on the
//!   socket *and* the signal self-pipe, until the idle deadline or the end of
//!   the grace period. A signal writes a byte to the pipe, so it is never
//!   lost between a check and a blocking call. The lookout may also ask to
//!   be woken for its own chores (serial samples its backlog for
//!   `--queue-timeout`) without that counting as traffic.
//! - Without one (thread, pool): reads block with SO_RCVTIMEO as the idle
//!   timeout; the acceptor thread ends the grace period with
//!   `shutdown(SHUT_RD)` on every live socket, which reads here as
//!   end-of-file, so the driver flushes what it received and closes.
//!
//! Writes block with SO_SNDTIMEO as the idle timeout (a peer that stops
//! reading is dropped); an immediate stop interrupts them.

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use switchyard_common::{Protocol, Step};

use super::Totals;
use crate::shutdown::{Phase, Shutdown};
use crate::signals::Signals;
use crate::sys;

/// Bytes read per read(2) call at most.
pub const READ_CHUNK: usize = 32 * 1024;

/// Why a connection ended, when it ended without an I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The peer closed its write side; everything was echoed.
    Eof,
    /// The protocol asked to close.
    Closed,
    /// No traffic for the idle timeout.
    Idle,
    /// The grace period of a graceful stop ended.
    Grace,
    /// Immediate stop.
    Stopped,
}

/// What a single-threaded process watches besides the socket it serves.
pub trait Lookout {
    /// The process's signal pipe.
    fn signals(&self) -> &Signals;
    /// A graceful stop began (serial closes its listener).
    fn on_drain(&mut self) {}
    /// When [`Lookout::tick`] wants to run next; `None`: never.
    fn due(&self, _now: Instant) -> Option<Instant> {
        None
    }
    /// Runs the lookout's own chores; called at or after [`Lookout::due`].
    fn tick(&mut self, _now: Instant) -> io::Result<()> {
        Ok(())
    }
}

/// A fork child watches its signals only.
impl Lookout for Signals {
    fn signals(&self) -> &Signals {
        self
    }
}

/// Serves one connection to its end.
pub fn serve(
    stream: &TcpStream,
    proto: &mut dyn Protocol,
    shutdown: &Shutdown,
    idle: Option<Duration>,
    mut watch: Option<&mut dyn Lookout>,
) -> io::Result<(End, Totals)> {
    let mut totals = Totals::default();
    if watch.is_none() {
        stream.set_read_timeout(idle)?;
    }
    stream.set_write_timeout(idle)?;
    let (mut input, mut output) = super::buffer_pair(READ_CHUNK);
    let mut draining = false;
    let mut last_input = Instant::now();
    loop {
        match shutdown.absorb_signals() {
            Phase::Running => {}
            Phase::Immediate => return Ok((End::Stopped, totals)),
            Phase::Draining if !draining => {
                draining = true;
                if let Some(w) = &mut watch {
                    w.on_drain();
                }
                if watch.is_none() {
                    match shutdown.remaining() {
                        Some(left) if !left.is_zero() => stream.set_read_timeout(Some(left))?,
                        _ => return Ok((End::Grace, totals)),
                    }
                }
            }
            Phase::Draining => {}
        }
        if let Some(w) = &mut watch {
            let deadline = if draining {
                shutdown.remaining().map(|left| Instant::now() + left)
            } else {
                idle.map(|d| last_input + d)
            };
            match wait_readable(stream, &mut **w, deadline)? {
                Ready::Socket => {}
                Ready::Signal => continue,
                Ready::Timeout => return Ok((if draining { End::Grace } else { End::Idle }, totals)),
            }
        }
        input.reserve(READ_CHUNK);
        match sys::read_into(stream, &mut input) {
            Ok(0) => {
                proto.on_eof(&mut output);
                write_out(stream, &mut output, &mut totals, shutdown)?;
                let _ = stream.shutdown(std::net::Shutdown::Write);
                return Ok((End::Eof, totals));
            }
            Ok(n) => {
                totals.bytes_in += n as u64;
                if watch.is_some() {
                    last_input = Instant::now();
                }
                let step = proto.on_read(&mut input, &mut output);
                write_out(stream, &mut output, &mut totals, shutdown)?;
                if step == Step::Close {
                    return Ok((End::Closed, totals));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok((if draining { End::Grace } else { End::Idle }, totals));
            }
            Err(e) => return Err(e),
        }
    }
}

enum Ready {
    Socket,
    Signal,
    Timeout,
}

/// Waits until the socket is readable, a signal arrived, or `deadline`
/// passed, running the lookout's chores when they fall due. A passed
/// deadline is only a timeout once a poll found the socket silent: after the
/// process was stalled (stopped, descheduled) past its deadline, bytes that
/// arrived meanwhile are traffic, not idleness.
fn wait_readable(stream: &TcpStream, lookout: &mut dyn Lookout, deadline: Option<Instant>) -> io::Result<Ready> {
    loop {
        let now = Instant::now();
        let chore = lookout.due(now);
        if chore.is_some_and(|c| now >= c) {
            lookout.tick(now)?;
            continue;
        }
        let wake = crate::poll::earliest(deadline, chore);
        // Whole milliseconds, rounded up so a 0.4 ms remainder does not
        // become a busy 0 ms poll; a passed deadline polls once, at 0.
        let timeout = match wake {
            None => PollTimeout::NONE,
            Some(t) => {
                let ms = t.saturating_duration_since(now).as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
            }
        };
        let signals = lookout.signals();
        let mut fds = [PollFd::new(stream.as_fd(), PollFlags::POLLIN), PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(Ready::Timeout),
            Ok(0) => continue, // a chore is due
            Ok(_) => {
                if fds[1].any().unwrap_or(false) {
                    signals.drain();
                    return Ok(Ready::Signal);
                }
                return Ok(Ready::Socket);
            }
            Err(nix::errno::Errno::EINTR) => return Ok(Ready::Signal),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes all of `output`; only an immediate stop interrupts it.
fn write_out(
    mut stream: &TcpStream,
    output: &mut BytesMut,
    totals: &mut Totals,
    shutdown: &Shutdown,
) -> io::Result<()> {
    let mut sent = 0;
    while sent < output.len() {
        match stream.write(&output[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                if shutdown.absorb_signals() == Phase::Immediate {
                    return Err(io::Error::new(io::ErrorKind::Interrupted, "immediate stop"));
                }
            }
            Err(e) => return Err(e),
        }
    }
    totals.bytes_out += sent as u64;
    output.clear();
    Ok(())
}
