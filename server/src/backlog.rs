//! The queue-wait limit (`--queue-timeout`, haproxy's `timeout queue`): a
//! client that waits longer than this for a worker is refused, accepted and
//! closed at once, instead of hanging in the listen backlog while slow
//! clients hold every worker.
//!
//! The kernel keeps no arrival times for the backlog, so a process that
//! cannot take connections now (serial while it serves one, a blocking
//! strategy at its cap) samples the listener every [`SAMPLE`]: if clients
//! were waiting at every sample for the whole limit, it refuses the waiting
//! ones. A single empty sample restarts the count, so a backlog that moves
//! (another worker of a prefork group takes from the same listener) is left
//! alone. A refused client sees its connection closed, within the limit plus
//! one sample.
//!
//! The pool's own queue holds accepted connections with their accept time
//! and is swept by [`crate::strategy::pool`] directly.
//!
//! Callers: [`crate::acceptor::Acceptor`] (which also serves as the serial
//! strategy's lookout while it serves a connection), and the event loops
//! while they are at `--max-conns`.

use std::io;
use std::net::TcpListener;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::acceptor::{accept_guarded, shed_one};

/// How often a busy process looks at its backlog.
pub const SAMPLE: Duration = Duration::from_millis(100);

/// Refuses connections at most per check: the backlog is finite, but a
/// flood must not pin the caller.
const MAX_REFUSED: usize = 4096;

/// Watches one listener's backlog while its process cannot accept.
#[derive(Debug)]
pub struct BacklogWatch {
    limit: Duration,
    /// Since when every sample found clients waiting.
    waiting_since: Option<Instant>,
    next_sample: Option<Instant>,
}

impl BacklogWatch {
    /// A watch that refuses clients waiting longer than `limit`.
    pub fn new(limit: Duration) -> BacklogWatch {
        BacklogWatch { limit, waiting_since: None, next_sample: None }
    }

    /// The limit.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// When [`BacklogWatch::check`] is due (now, if it never ran since the
    /// last reset).
    pub fn due(&self, now: Instant) -> Instant {
        self.next_sample.unwrap_or(now)
    }

    /// The process takes connections again: forget what was seen.
    pub fn reset(&mut self) {
        self.waiting_since = None;
        self.next_sample = None;
    }

    /// Samples the backlog of the non-blocking `listener` (the caller cannot
    /// accept now). Returns how many waiting clients it refused.
    pub fn check(&mut self, listener: &TcpListener, now: Instant) -> io::Result<usize> {
        self.check_with(listener, || shed_one(listener.accept()), now)
    }

    /// [`BacklogWatch::check`] for any listener: `accept_and_close` takes one
    /// waiting client and closes it (`Ok(false)`: none was waiting).
    pub fn check_with(
        &mut self,
        listener: &impl AsFd,
        mut accept_and_close: impl FnMut() -> io::Result<bool>,
        now: Instant,
    ) -> io::Result<usize> {
        self.next_sample = Some(now + SAMPLE);
        if !has_waiting(listener)? {
            self.waiting_since = None;
            return Ok(0);
        }
        let since = *self.waiting_since.get_or_insert(now);
        if now.duration_since(since) < self.limit {
            return Ok(0);
        }
        self.waiting_since = None;
        let mut refused = 0;
        while refused < MAX_REFUSED {
            match accept_guarded(&mut accept_and_close) {
                Ok(true) => refused += 1,
                Ok(false) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Out of fds, an aborted connection: what is left waits
                // for the next check.
                Err(_) => break,
            }
        }
        if refused > 0 {
            log::warn!(
                "refused {refused} connection(s) that waited over --queue-timeout {:?} for a worker",
                self.limit
            );
        }
        Ok(refused)
    }
}

/// Whether a client waits in `listener`'s backlog (a zero-timeout poll).
fn has_waiting(listener: &impl AsFd) -> io::Result<bool> {
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) => Ok(n > 0 && fds[0].any().unwrap_or(false)),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    fn listener() -> TcpListener {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    }

    /// Connects a client and waits (bounded) until it is in the backlog.
    fn client(l: &TcpListener) -> TcpStream {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let mut fds = [PollFd::new(l.as_fd(), PollFlags::POLLIN)];
        assert_eq!(nix::poll::poll(&mut fds, PollTimeout::from(5000u16)).unwrap(), 1, "client never queued");
        c
    }

    #[test]
    fn refuses_only_after_the_limit_and_only_while_clients_wait() {
        let l = listener();
        let mut w = BacklogWatch::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert_eq!(w.check(&l, t0).unwrap(), 0, "nothing waits");
        let c = client(&l);
        assert_eq!(w.check(&l, t0 + Duration::from_secs(1)).unwrap(), 0, "waiting starts now");
        assert_eq!(w.check(&l, t0 + Duration::from_millis(2900)).unwrap(), 0, "1.9 s < limit");
        assert_eq!(w.check(&l, t0 + Duration::from_secs(3)).unwrap(), 1, "2 s: refused");
        assert!(!has_waiting(&l).unwrap());
        // The refused client sees its connection end.
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(std::io::Read::read(&mut &c, &mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn an_empty_sample_restarts_the_count() {
        let l = listener();
        let mut w = BacklogWatch::new(Duration::from_secs(2));
        let t0 = Instant::now();
        let _c = client(&l);
        assert_eq!(w.check(&l, t0).unwrap(), 0);
        // Someone else (a sibling worker) takes the client...
        let (taken, _) = l.accept().unwrap();
        assert_eq!(w.check(&l, t0 + Duration::from_secs(1)).unwrap(), 0);
        // ...and a new one arrives: it has not waited the limit.
        let _d = client(&l);
        assert_eq!(w.check(&l, t0 + Duration::from_millis(1500)).unwrap(), 0);
        assert_eq!(w.check(&l, t0 + Duration::from_millis(3000)).unwrap(), 0, "1.5 s of waiting");
        assert_eq!(w.check(&l, t0 + Duration::from_millis(3600)).unwrap(), 1);
        drop(taken);
    }
}
