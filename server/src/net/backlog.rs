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
//! This is the decision only: [`BacklogWatch::sample`] says when the
//! waiting clients must go; the accept policy (`net::accept`) samples the
//! listener and refuses them. The pool's own queue holds accepted
//! connections with their accept time and is swept by the pool itself.

use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// How often a busy process looks at its backlog.
pub(crate) const SAMPLE: Duration = Duration::from_millis(100);

/// Samples further apart than this do not prove that clients waited all
/// along.
const GAP: Duration = Duration::from_millis(3 * SAMPLE.as_millis() as u64);

/// Watches one listener's backlog while its process cannot accept.
#[derive(Debug)]
pub(crate) struct BacklogWatch {
    limit: Duration,
    /// Since when every sample found clients waiting.
    waiting_since: Option<Instant>,
    last_sample: Option<Instant>,
    next_sample: Option<Instant>,
}

impl BacklogWatch {
    /// A watch that refuses clients waiting longer than `limit`.
    pub(crate) fn new(limit: Duration) -> BacklogWatch {
        BacklogWatch { limit, waiting_since: None, last_sample: None, next_sample: None }
    }

    /// When [`BacklogWatch::sample`] is due (now, if it never ran since the
    /// last reset).
    pub(crate) fn due(&self, now: Instant) -> Instant {
        self.next_sample.unwrap_or(now)
    }

    /// The process takes connections again: forget what was seen.
    pub(crate) fn reset(&mut self) {
        self.waiting_since = None;
        self.last_sample = None;
        self.next_sample = None;
    }

    /// Records a sample taken at `now` (the caller cannot accept now):
    /// `waiting` says whether clients wait in the backlog. True when they
    /// have waited at every sample for the whole limit: refuse them now.
    pub(crate) fn sample(&mut self, waiting: bool, now: Instant) -> bool {
        self.next_sample = Some(now + SAMPLE);
        if self.last_sample.replace(now).is_some_and(|last| now.saturating_duration_since(last) > GAP) {
            self.waiting_since = None;
        }
        if !waiting {
            self.waiting_since = None;
            return false;
        }
        let since = *self.waiting_since.get_or_insert(now);
        if now.duration_since(since) < self.limit {
            return false;
        }
        self.waiting_since = None;
        true
    }

    /// The limit.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }
}

/// Whether a client waits in `listener`'s backlog (a zero-timeout poll).
pub(crate) fn has_waiting(listener: &impl AsFd) -> io::Result<bool> {
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
    use std::net::{TcpListener, TcpStream};

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

    /// Samples `l` at `t0 + at`; refuses (accepts and closes) the waiting
    /// clients when the watch says so; returns how many it refused.
    fn check(w: &mut BacklogWatch, l: &TcpListener, t0: Instant, at: Duration) -> usize {
        if !w.sample(has_waiting(l).unwrap(), t0 + at) {
            return 0;
        }
        std::iter::from_fn(|| l.accept().ok()).count()
    }

    /// Samples every [`SAMPLE`] from `from` to `to` (both included, in
    /// simulated time); returns how many were refused.
    fn sample(w: &mut BacklogWatch, l: &TcpListener, from: Duration, to: Duration, t0: Instant) -> usize {
        let mut refused = 0;
        let mut t = from;
        while t <= to {
            refused += check(w, l, t0, t);
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
        let _c = client(&l);
        assert_eq!(sample(&mut w, &l, ms(1000), ms(2900), t0), 0, "waiting since 1 s, 1.9 s < limit");
        assert_eq!(check(&mut w, &l, t0, ms(3000)), 1, "2 s: refused");
        assert!(!has_waiting(&l).unwrap());
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
        assert_eq!(check(&mut w, &l, t0, ms(1000)), 0);
        // ...and a new one arrives: it has not waited the limit.
        let _d = client(&l);
        assert_eq!(sample(&mut w, &l, ms(1100), ms(3000), t0), 0, "1.9 s of waiting");
        assert_eq!(check(&mut w, &l, t0, ms(3100)), 1);
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
        assert_eq!(check(&mut w, &l, t0, ms(2500)), 0, "a gap proves no wait");
        assert_eq!(sample(&mut w, &l, ms(2600), ms(4400), t0), 0);
        // ...and 2 s of samples later the client is refused.
        assert_eq!(check(&mut w, &l, t0, ms(4500)), 1);
    }
}
