//! Precise wake-ups for paced sends. mio rounds its poll timeout up to whole
//! milliseconds, which would make fixed-rate messages late by up to 1 ms and
//! charge that lateness to the server in the corrected latency. A timerfd
//! (nanosecond resolution) registered with the poll wakes the loop exactly
//! when the next message is due. Used by `engine.rs`, one per thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// A one-shot timer that wakes a mio poll.
pub struct Waker {
    fd: TimerFd,
    armed: Option<u64>,
}

impl std::fmt::Debug for Waker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waker").field("armed", &self.armed).finish()
    }
}

impl Waker {
    /// A timer registered with `registry` under `token`.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Waker> {
        let fd = TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC)
            .map_err(io::Error::from)?;
        registry.register(&mut SourceFd(&fd.as_fd().as_raw_fd()), token, Interest::READABLE)?;
        Ok(Waker { fd, armed: None })
    }

    /// Makes sure the poll wakes at `at` (ns since the run started; `now` is
    /// the current time on that clock). Re-arms only when `at` changes.
    pub fn arm(&mut self, at: u64, now: u64) -> io::Result<()> {
        if self.armed == Some(at) {
            return Ok(());
        }
        // A zero expiry would disarm the timer: wake at least 1 ns from now.
        let delay = Duration::from_nanos(at.saturating_sub(now).max(1));
        self.fd
            .set(Expiration::OneShot(TimeSpec::from_duration(delay)), TimerSetTimeFlags::empty())
            .map_err(io::Error::from)?;
        self.armed = Some(at);
        Ok(())
    }

    /// Notes that the timer fired (setting it again clears its count).
    pub fn fired(&mut self) {
        self.armed = None;
    }
}
