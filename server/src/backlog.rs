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
//! alone, and so does a gap between samples (the process was stopped or
//! descheduled: nobody looked, and siblings may have drained the backlog
//! meanwhile). A refused client sees its connection closed, within the limit
//! plus one sample.
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

/// Samples further apart than this do not prove that clients waited all
/// along.
const GAP: Duration = Duration::from_millis(3 * SAMPLE.as_millis() as u64);

/// Watches one listener's backlog while its process cannot accept.
#[derive(Debug)]
pub struct BacklogWatch {
    limit: Duration,
    /// Since when every sample found clients waiting.
    waiting_since: Option<Instant>,
    last_sample: Option<Instant>,
    next_sample: Option<Instant>,
}

impl BacklogWatch {
    /// A watch that refuses clients waiting longer than `limit`.
    pub fn new(limit: Duration) -> BacklogWatch {
        BacklogWatch { limit, waiting_since: None, last_sample: None, next_sample: None }
    }

    /// When [`BacklogWatch::check`] is due (now, if it never ran since the
    /// last reset).
    pub fn due(&self, now: Instant) -> Instant {
        self.next_sample.unwrap_or(now)
    }

    /// The process takes connections again: forget what was seen.
    pub fn reset(&mut self) {
        self.waiting_since = None;
        self.last_sample = None;
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
        if self.last_sample.replace(now).is_some_and(|last| now.saturating_duration_since(last) > GAP) {
            self.waiting_since = None;
        }
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

    /// Samples every [`SAMPLE`] from `from` to `to` (both included, in
    /// simulated time); returns how many were refused.
    fn sample(w: &mut BacklogWatch, l: &TcpListener, from: Duration, to: Duration, t0: Instant) -> usize {
        let mut refused = 0;
        let mut t = from;
        while t <= to {
            refused += w.check(l, t0 + t).unwrap();
            t += SAMPLE;
        }
        refused
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn refuses_only_after_the_limit_and_only_while_clients_wait() {
        let l = listener();
        let mut w = BacklogWatch::new(Duration::from_secs(2));
        let t0 = Instant::now();
        assert_eq!(sample(&mut w, &l, ms(0), ms(900), t0), 0, "nothing waits");
        let c = client(&l);
        assert_eq!(sample(&mut w, &l, ms(1000), ms(2900), t0), 0, "waiting since 1 s, 1.9 s < limit");
        assert_eq!(w.check(&l, t0 + ms(3000)).unwrap(), 1, "2 s: refused");
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
        assert_eq!(sample(&mut w, &l, ms(0), ms(900), t0), 0);
        // Someone else (a sibling worker) takes the client...
        let (taken, _) = l.accept().unwrap();
        assert_eq!(w.check(&l, t0 + ms(1000)).unwrap(), 0);
        // ...and a new one arrives: it has not waited the limit.
        let _d = client(&l);
        assert_eq!(sample(&mut w, &l, ms(1100), ms(3000), t0), 0, "1.9 s of waiting");
        assert_eq!(w.check(&l, t0 + ms(3100)).unwrap(), 1);
        drop(taken);
    }

    #[test]
    fn a_gap_between_samples_restarts_the_count() {
        let l = listener();
        let mut w = BacklogWatch::new(Duration::from_secs(2));
        let t0 = Instant::now();
        let _c = client(&l);
        assert_eq!(sample(&mut w, &l, ms(0), ms(1000), t0), 0);
        // Stopped for 1.5 s: nobody looked, so this is a fresh start...
        assert_eq!(w.check(&l, t0 + ms(2500)).unwrap(), 0, "a gap proves no wait");
        assert_eq!(sample(&mut w, &l, ms(2600), ms(4400), t0), 0);
        // ...and 2 s of samples later the client is refused.
        assert_eq!(w.check(&l, t0 + ms(4500)).unwrap(), 1);
    }
}
