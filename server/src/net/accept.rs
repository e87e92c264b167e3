//! The accept policy, written once for every strategy:
//!
//! ```text
//! admission: a place under the cap? -- no --> wait (the backlog holds the client; --queue-timeout
//!    |                                        refuses it once it waited too long), or refuse at once
//!   yes
//! accept(2) -- error --> classify: retry | skip one | out of fds: shed + back off | unexpected: back off
//!    |
//! PROXY protocol? -- untrusted peer --> close at once (refused)
//!    |                 trusted --> the acceptor reads the header (`proxy`), then:
//! per-address limit (of the header's address) -- over --> close at once (refused)
//!    |
//! socket options -- failed --> close (that socket is broken)
//!    |
//! hand the connection over, with its permit
//! ```
//!
//! [`AcceptPolicy::accept`] runs that once and says what happened
//! ([`Outcome`]); a strategy calls it until it says to wait, and sleeps until
//! the listener is readable, a place frees ([`crate::admission::Admission`]
//! wakes it) or [`AcceptPolicy::deadline`]. Where the kernel accepts by
//! itself (io_uring's multishot accept), [`AcceptPolicy::judge`] takes the
//! result of that accept(2) through the rest of the same policy. The policy also remembers why it
//! stopped (empty backlog, at the cap, backing off), so
//! [`AcceptPolicy::should_try`] tells every loop when to try again.
//!
//! Every accept error has one behaviour in every mode (docs/ARCHITECTURE.md
//! has the table; a test per row runs against every mode). None ends the
//! server: a failure on one accepted socket only loses that socket, and a
//! listener that keeps failing is retried every [`BACKOFF`], as HAProxy does.
//!
//! | accept(2) error | class | what happens |
//! |---|---|---|
//! | `EAGAIN` | empty | wait for the next readiness |
//! | `EINTR` | retry | accept again at once, not counted |
//! | `ECONNABORTED`, `ECONNRESET`, `EPROTO`, `EPERM`, `ETIMEDOUT`, `ENETDOWN`, `ENETUNREACH`, `EHOSTDOWN`, `EHOSTUNREACH`, `ENONET`, `ENOPROTOOPT`, `EOPNOTSUPP` | skip | that connection failed before it was ours: counted, logged at debug, accept the next |
//! | `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM` | exhausted | counted, a warning (once a second), the waiting clients are shed (the reserve fd is closed to accept and close them, then re-opened), accepting pauses for [`BACKOFF`] |
//! | anything else (`EBADF`, `EINVAL`, `ENOTSOCK`, `EFAULT`, ...) | unexpected | counted, an error (once a second), accepting pauses for [`BACKOFF`] and is retried |

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use super::backlog::{self, BacklogWatch};
use super::listener;
use super::proxy::Pending;
use crate::admission::{Admit, Permit, Reservation};
use crate::context::Context;

/// How long accepting pauses after the process ran out of fds or memory, or
/// after an unexpected error.
pub(crate) const BACKOFF: Duration = Duration::from_millis(100);

/// Connections shed or refused in one go at most: the backlog is finite,
/// but a flood must not pin the loop.
const MAX_REFUSED: usize = 4096;

/// A listening socket the policy can accept from.
pub(crate) trait Listen: AsFd {
    /// The accepted connection.
    type Stream: AsFd;
    /// One accept(2).
    fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)>;
}

impl Listen for std::net::TcpListener {
    type Stream = std::net::TcpStream;
    fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        std::net::TcpListener::accept(self)
    }
}

impl Listen for mio::net::TcpListener {
    type Stream = mio::net::TcpStream;
    fn accept(&self) -> io::Result<(Self::Stream, SocketAddr)> {
        mio::net::TcpListener::accept(self)
    }
}

/// What an accept(2) error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Nothing waits.
    Empty,
    /// Interrupted: try again now.
    Retry,
    /// That one connection failed: take the next.
    Skip,
    /// Out of fds or memory.
    Exhausted,
    /// A broken listener or a bug.
    Unexpected,
}

/// Classifies an error from accept(2) (the table above).
pub(crate) fn classify(e: &io::Error) -> Class {
    use nix::errno::Errno::*;
    match e.kind() {
        io::ErrorKind::WouldBlock => return Class::Empty,
        io::ErrorKind::Interrupted => return Class::Retry,
        _ => {}
    }
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(
            ECONNABORTED | ECONNRESET | EPROTO | EPERM | ETIMEDOUT | ENETDOWN | ENETUNREACH | EHOSTDOWN | EHOSTUNREACH
            | ENONET | ENOPROTOOPT | EOPNOTSUPP,
        ) => Class::Skip,
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM) => Class::Exhausted,
        _ => Class::Unexpected,
    }
}

/// What to do with a client that arrives while the semaphore is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtCap {
    /// Leave it in the listen backlog (sampled for `--queue-timeout`).
    Wait,
    /// Accept and close it at once (the pool under `--queue-timeout`, whose
    /// queue is the only waiting room).
    Refuse,
}

/// A connection the policy admitted, options applied.
#[derive(Debug)]
pub(crate) struct Accepted<S> {
    /// The connection.
    pub(crate) stream: S,
    /// Who connected.
    pub(crate) peer: SocketAddr,
    /// Its place; keep it as long as the connection.
    pub(crate) permit: Permit,
}

impl<S> Accepted<S> {
    /// In a forked child, for a connection the parent serves: closes the
    /// child's copy and leaves its place to the parent's books, which the
    /// child shares (its per-address count is a gauge in the scoreboard
    /// slot): never released here.
    pub(crate) fn close_in_child(self) {
        std::mem::forget(self.permit);
    }
}

/// What one [`AcceptPolicy::accept`] did.
#[derive(Debug)]
pub(crate) enum Outcome<S> {
    /// A connection to serve.
    Accepted(Accepted<S>),
    /// A connection from a trusted balancer: read its PROXY header, then
    /// [`AcceptPolicy::admit`] it.
    Header(Pending<S>),
    /// A connection failed or was refused: call again.
    Again,
    /// Nothing waits: sleep until the listener is readable.
    Empty,
    /// At the cap: sleep until a place frees or the deadline.
    Full,
    /// Backing off: sleep until the deadline.
    Paused,
}

/// Why the policy stopped accepting, so it knows when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Connections may wait: try (the start, a readiness event, a budget used up).
    Ready,
    /// The backlog was empty.
    Readiness,
    /// The semaphore was full.
    Room,
    /// Backing off until then.
    Until(Instant),
}

/// One loop's accept policy (one per listener a loop accepts from).
#[derive(Debug)]
pub(crate) struct AcceptPolicy {
    ctx: Context,
    at_cap: AtCap,
    waiting: Waiting,
    exhausted: RateLog,
    unexpected: RateLog,
    untrusted: RateLog,
    /// `--queue-timeout` on the backlog while at the cap.
    backlog: Option<BacklogWatch>,
}

impl AcceptPolicy {
    /// The policy of a loop of `ctx`'s process.
    pub(crate) fn new(ctx: &Context, at_cap: AtCap) -> AcceptPolicy {
        AcceptPolicy {
            ctx: ctx.clone(),
            at_cap,
            waiting: Waiting::Ready,
            exhausted: RateLog::default(),
            unexpected: RateLog::default(),
            untrusted: RateLog::default(),
            backlog: ctx.config.queue_timeout.map(BacklogWatch::new),
        }
    }

    /// The listener became readable.
    pub(crate) fn readable(&mut self) {
        if self.waiting == Waiting::Readiness {
            self.waiting = Waiting::Ready;
        }
    }

    /// Whether an accept may succeed or has a chore to do at `now`.
    pub(crate) fn should_try(&self, now: Instant) -> bool {
        match self.waiting {
            Waiting::Ready => true,
            Waiting::Readiness => false,
            Waiting::Room => self.ctx.admission.has_room() || self.backlog.as_ref().is_some_and(|w| now >= w.due(now)),
            Waiting::Until(t) => now >= t,
        }
    }

    /// When the loop must call again without an event: the end of a
    /// back-off, the next backlog sample at the cap, or now when more may
    /// be queued (an accept budget was used up).
    pub(crate) fn deadline(&self, now: Instant) -> Option<Instant> {
        match self.waiting {
            Waiting::Ready => Some(now),
            Waiting::Readiness => None,
            Waiting::Room => self.backlog.as_ref().map(|w| w.due(now)),
            Waiting::Until(t) => Some(t),
        }
    }

    /// Takes one connection from `listener` through the whole policy.
    pub(crate) fn accept<L: Listen>(&mut self, listener: &L, now: Instant) -> Outcome<L::Stream> {
        if let Waiting::Until(t) = self.waiting {
            if now < t {
                return Outcome::Paused;
            }
        }
        let Some(place) = self.ctx.admission.reserve() else {
            return self.at_cap(listener, now);
        };
        if let Some(w) = &mut self.backlog {
            w.reset();
        }
        self.waiting = Waiting::Ready;
        match accept_guarded(|| listener.accept()) {
            Ok(accepted) => self.admit(place, accepted),
            Err(e) => self.failed(listener, &e, now),
        }
    }

    /// Judges a connection the kernel already took from `listener`'s backlog
    /// (io_uring's multishot accept), or its error, as if [`Self::accept`]
    /// had just called accept(2): errors are classified by the same table,
    /// the place, the per-address limit and the socket options are the
    /// same. A strategy keeps such an accept armed only while the semaphore
    /// has room for a whole backlog; a connection that finds it full anyway
    /// (a sibling loop took the places meanwhile) is closed and counted as
    /// refused.
    ///
    /// `listener` is `None` once it has closed (the kernel's accept was
    /// still running as the stop began): a connection is served all the
    /// same, an error has nothing left to act on.
    pub(crate) fn judge<L: Listen>(
        &mut self,
        accepted: io::Result<(L::Stream, SocketAddr)>,
        listener: Option<&L>,
        now: Instant,
    ) -> Outcome<L::Stream> {
        let accepted = match (accepted, listener) {
            (Ok(accepted), _) => accepted,
            (Err(e), Some(listener)) => return self.failed(listener, &e, now),
            (Err(e), None) => {
                log::debug!("accept after the listener closed: {e}");
                return Outcome::Again;
            }
        };
        match self.ctx.admission.reserve() {
            Some(place) => self.admit(place, accepted),
            None => {
                log::debug!("{}: accepted by the kernel past the cap, closed", accepted.1);
                self.ctx.refused(1);
                Outcome::Again
            }
        }
    }

    /// Whether accepting pauses at `now` (a back-off).
    pub(crate) fn paused(&self, now: Instant) -> bool {
        matches!(self.waiting, Waiting::Until(t) if now < t)
    }

    /// Whether the policy waits for the listener to become readable.
    pub(crate) fn wants_readiness(&self) -> bool {
        self.waiting == Waiting::Readiness
    }

    /// The rest of the policy for an accepted connection with its place:
    /// with `--proxy-protocol`, the peer must be trusted, and its header
    /// comes first ([`Outcome::Header`]); then [`Self::finish`].
    fn admit<S: AsFd>(&mut self, place: Reservation, (stream, peer): (S, SocketAddr)) -> Outcome<S> {
        if let Some(proxy) = &self.ctx.config.proxy {
            if !proxy.trusts(peer.ip()) {
                if self.untrusted.due(Instant::now()) {
                    log::warn!("{peer}: not in --proxy-from, closed{}", self.untrusted.suppressed());
                }
                self.ctx.refused(1);
                return Outcome::Again;
            }
            return Outcome::Header(Pending { stream, via: peer, place });
        }
        self.finish(stream, peer, place)
    }

    /// The last steps for a connection from `peer` (the socket's, or the one
    /// its PROXY header named): its address's limit, then socket options.
    pub(crate) fn finish<S: AsFd>(&mut self, stream: S, peer: SocketAddr, place: Reservation) -> Outcome<S> {
        let permit = match self.ctx.admission.admit(place, peer.ip()) {
            Admit::Yes(p) => p,
            Admit::OverPerIp => {
                log::debug!("{peer}: at --max-conns-per-ip, closed");
                self.ctx.refused(1);
                return Outcome::Again;
            }
        };
        if let Err(e) = listener::configure(&stream, self.ctx.config.nodelay, self.ctx.config.socket_buffer) {
            log::debug!("{peer}: socket options: {e}; closed");
            self.ctx.accept_failed();
            return Outcome::Again;
        }
        self.ctx.accepted();
        Outcome::Accepted(Accepted { stream, peer, permit })
    }

    /// The policy wants a budget-limited loop to come back soon.
    pub(crate) fn budget_used(&mut self) {
        self.waiting = Waiting::Ready;
    }

    fn at_cap<L: Listen>(&mut self, listener: &L, now: Instant) -> Outcome<L::Stream> {
        if self.at_cap == AtCap::Refuse {
            return match accept_guarded(|| listener.accept()) {
                Ok((_, peer)) => {
                    log::debug!("{peer}: queue full, closed");
                    self.ctx.refused(1);
                    Outcome::Again
                }
                Err(e) => self.failed(listener, &e, now),
            };
        }
        self.waiting = Waiting::Room;
        if let Some(w) = &mut self.backlog {
            if now >= w.due(now) {
                let waiting = backlog::has_waiting(listener).unwrap_or(false);
                if w.sample(waiting, now) {
                    let refused = refuse_waiting(listener);
                    if refused > 0 {
                        log::warn!(
                            "refused {refused} connection(s) that waited over --queue-timeout {:?} for a worker",
                            w.limit()
                        );
                    }
                    self.ctx.refused(refused);
                }
            }
        }
        Outcome::Full
    }

    fn failed<L: Listen>(&mut self, listener: &L, e: &io::Error, now: Instant) -> Outcome<L::Stream> {
        match classify(e) {
            Class::Empty => {
                self.waiting = Waiting::Readiness;
                Outcome::Empty
            }
            Class::Retry => Outcome::Again,
            Class::Skip => {
                self.ctx.accept_failed();
                log::debug!("accept: {e} (skipped)");
                Outcome::Again
            }
            Class::Exhausted => {
                self.ctx.accept_failed();
                if self.exhausted.due(now) {
                    log::warn!("accept: {e}; pausing accept for {BACKOFF:?}{}", self.exhausted.suppressed());
                }
                self.ctx.refused(shed(listener));
                self.waiting = Waiting::Until(now + BACKOFF);
                Outcome::Paused
            }
            Class::Unexpected => {
                self.ctx.accept_failed();
                if self.unexpected.due(now) {
                    log::error!("accept: {e}; retrying in {BACKOFF:?}{}", self.unexpected.suppressed());
                }
                self.waiting = Waiting::Until(now + BACKOFF);
                Outcome::Paused
            }
        }
    }
}

/// Logs a recurring condition at most once a second.
#[derive(Debug, Default)]
struct RateLog {
    last: Option<Instant>,
    suppressed: u64,
    reported: u64,
}

impl RateLog {
    /// Whether to log an occurrence at `now` (else it is counted).
    fn due(&mut self, now: Instant) -> bool {
        if self.last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.last = Some(now);
            self.reported = std::mem::take(&mut self.suppressed);
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// " (N more since the last report)", or nothing.
    fn suppressed(&self) -> String {
        match self.reported {
            0 => String::new(),
            n => format!(" ({n} more since the last report)"),
        }
    }
}

/// One fd per process kept in reserve for fd exhaustion. When accept fails
/// with EMFILE/ENFILE the connections waiting in the backlog would otherwise
/// hang until fds free up; instead the reserve is closed, which frees one fd,
/// and the waiting connections are accepted and closed at once (their
/// clients see the connection end immediately and can retry or fail over),
/// then the reserve is re-opened. libuv does the same.
///
/// The reserve is process-wide because fds are: every accept in the process
/// holds the read side of this lock (uncontended: one atomic per accepted
/// connection), shedding holds the write side, so no sibling event loop can
/// take the freed fd for a connection of its own while a loop sheds (it
/// would then keep the reserve from ever coming back).
static RESERVE: RwLock<Option<File>> = RwLock::new(None);

fn open_reserve() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Opens the reserve (once per process, before serving; a forked child
/// keeps its inherited copy as its own).
pub(crate) fn init_reserve() {
    let mut r = RESERVE.write().unwrap_or_else(|e| e.into_inner());
    if r.is_none() {
        *r = open_reserve();
    }
}

/// Runs one accept call so that it never races a shed.
#[inline]
fn accept_guarded<T>(accept: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    let _shared = RESERVE.read().unwrap_or_else(|e| e.into_inner());
    accept()
}

/// How many clients wait in `listener`'s accept queue now: what a shed or
/// a refusal may close. Clients that arrive while it runs did not wait, and
/// are left for the next look (a loop that chased them could go on for as
/// long as they keep coming).
fn waiting_now<L: Listen>(listener: &L) -> usize {
    crate::sys::waiting_clients(listener).unwrap_or(MAX_REFUSED).min(MAX_REFUSED)
}

/// Accepts and closes the clients waiting now; returns how many.
fn refuse_waiting<L: Listen>(listener: &L) -> usize {
    let waiting = waiting_now(listener);
    let mut refused = 0;
    while refused < waiting {
        match accept_guarded(|| listener.accept()) {
            Ok(_) => refused += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Empty, out of fds, an aborted connection: what is left waits
            // for the next sample.
            Err(_) => break,
        }
    }
    refused
}

/// Sheds the backlog through the reserve fd; returns how many connections
/// were closed.
fn shed<L: Listen>(listener: &L) -> usize {
    let mut reserve = RESERVE.write().unwrap_or_else(|e| e.into_inner());
    if reserve.take().is_none() {
        // Lost earlier (fds were short even for /dev/null): try to get it
        // back now, and shed next time.
        *reserve = open_reserve();
        return 0;
    }
    let waiting = waiting_now(listener);
    let mut shed = 0;
    while shed < waiting {
        match listener.accept() {
            Ok(_) => shed += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    *reserve = open_reserve();
    drop(reserve);
    if shed > 0 {
        log::warn!("out of fds: closed {shed} waiting connection(s) at once rather than leave them hanging");
    }
    shed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(e: nix::errno::Errno) -> io::Error {
        io::Error::from_raw_os_error(e as i32)
    }

    #[test]
    fn classes_follow_the_table() {
        use nix::errno::Errno::*;
        assert_eq!(classify(&err(EAGAIN)), Class::Empty);
        assert_eq!(classify(&err(EINTR)), Class::Retry);
        for e in [ECONNABORTED, ECONNRESET, EPROTO, EPERM, ETIMEDOUT, ENETUNREACH, EHOSTUNREACH, EOPNOTSUPP] {
            assert_eq!(classify(&err(e)), Class::Skip, "{e}");
        }
        for e in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            assert_eq!(classify(&err(e)), Class::Exhausted, "{e}");
        }
        for e in [EBADF, EINVAL, ENOTSOCK, EFAULT] {
            assert_eq!(classify(&err(e)), Class::Unexpected, "{e}");
        }
    }

    fn context(max_conns: usize) -> Context {
        let mut config = crate::config::Config::new(crate::config::Mode::Uring);
        config.max_conns = max_conns;
        let service =
            crate::serve::Service::Protocol(switchyard_common::protocol::factory_of::<switchyard_common::UpperEcho>());
        Context::new(std::sync::Arc::new(config), service, crate::process::scoreboard::Slot::leaked(), None)
    }

    /// The kernel's accepts (io_uring) go through the same policy: an error
    /// is classified by the table, a connection takes a place, and one that
    /// finds the semaphore full is closed and counted as refused.
    #[test]
    fn judge_applies_the_policy_to_accepts_made_by_the_kernel() {
        use crate::process::scoreboard::Counter;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let ctx = context(1);
        let mut p = AcceptPolicy::new(&ctx, AtCap::Wait);
        let now = Instant::now();
        let accepted = |l: &std::net::TcpListener| {
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let got = loop {
                match std::net::TcpListener::accept(l) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    other => break other.unwrap(),
                }
            };
            (c, got)
        };

        assert!(matches!(p.judge(Err(err(nix::errno::Errno::ECONNABORTED)), Some(&l), now), Outcome::Again));
        assert_eq!(ctx.slot.get(Counter::AcceptErrors), 1, "a skipped connection counts as an accept error");
        assert!(!p.paused(now));

        let (_c1, first) = accepted(&l);
        let Outcome::Accepted(one) = p.judge(Ok(first), Some(&l), now) else {
            panic!("the first connection was not admitted")
        };
        assert!(!ctx.admission.has_room(), "the admitted connection holds the only place");
        let (_c2, second) = accepted(&l);
        assert!(matches!(p.judge(Ok(second), Some(&l), now), Outcome::Again), "past the cap");
        assert_eq!(ctx.slot.get(Counter::Refused), 1, "closed past the cap, counted as refused");
        drop(one);
        assert!(ctx.admission.has_room(), "the place came back");

        assert!(matches!(p.judge(Err(err(nix::errno::Errno::EINVAL)), Some(&l), now), Outcome::Paused));
        assert!(p.paused(now) && !p.paused(now + BACKOFF), "an unexpected error backs off for {BACKOFF:?}");
    }

    #[test]
    fn rate_log_reports_what_it_suppressed() {
        let mut r = RateLog::default();
        let t = Instant::now();
        assert!(r.due(t));
        assert_eq!(r.suppressed(), "");
        assert!(!r.due(t + Duration::from_millis(10)));
        assert!(!r.due(t + Duration::from_millis(20)));
        assert!(r.due(t + Duration::from_secs(1)));
        assert_eq!(r.suppressed(), " (2 more since the last report)");
    }
}
