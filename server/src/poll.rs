//! One poll wait, as every loop of the server does it: a signal that
//! interrupts `epoll_wait` is a wake-up like any other (the loop then looks
//! at the signal counts), not an error.
//!
//! Callers: the acceptor, the event loops, the reactor's and the prefork
//! master's loops.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Poll};

/// Waits for events or `timeout`; `EINTR` returns `Ok` with no events.
pub fn wait(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
    match poll.poll(events, timeout) {
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        other => other,
    }
}

/// The earlier of two optional wake-up times (`None`: no wake-up).
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
