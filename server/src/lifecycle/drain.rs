//! The drain: how a stop unfolds, written once for every strategy.
//!
//! ```text
//! Serving --SIGTERM--> Grace --deadline--> Flush --FLUSH_GRACE--> Over
//!   (accepting)     (no new connections;    (stop reading;      (shut both ways,
//!                    open ones served)      send what is owed)   drop, or kill)
//! ```
//!
//! An immediate stop (second SIGINT, SIGQUIT) goes straight to `Over`. The
//! stage is a function of the [`Shutdown`] phase, its deadline and the time
//! passed in ([`Stage::of`]); a [`Drain`] remembers which stages a loop has
//! acted on and hands each new one out exactly once, in order, so every
//! strategy writes one `match` over the stages and nothing else about
//! stopping:
//!
//! | stage | blocking (thread, pool) | event loops | lookout (serial, fork child) | fork parent, prefork master |
//! |---|---|---|---|---|
//! | Grace | take the listener's queue, close the listener | take the queue, close the listener | take the queue, close the listener | take the queue, close listeners; SIGTERM the children |
//! | Flush | `shutdown(SHUT_RD)` every socket | stop reading every connection | stop reading | (the children flush) |
//! | Over | `shutdown(SHUT_RDWR)` every socket | drop every connection | return | SIGQUIT what is left, SIGKILL a second later |
//!
//! Blocking strategies whose connections are served by other threads reach
//! them through a [`Registry`] of live sockets.

use std::net::{Shutdown as How, TcpStream};
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::Waker;
use slab::Slab;

use super::shutdown::{Phase, Shutdown};

/// After the grace period, how long connections get to send what they owe
/// before they are shut both ways.
pub(crate) const FLUSH_GRACE: Duration = Duration::from_secs(1);

/// Where a process is in a stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// Accepting and serving.
    Serving,
    /// Not accepting; open connections are served until the grace deadline.
    Grace,
    /// Not reading; what was received is answered until [`FLUSH_GRACE`] ends.
    Flush,
    /// Everything left is shut.
    Over,
}

impl Stage {
    const ORDER: [Stage; 4] = [Stage::Serving, Stage::Grace, Stage::Flush, Stage::Over];

    /// The stage of `shutdown` at `now`.
    pub(crate) fn of(shutdown: &Shutdown, now: Instant) -> Stage {
        match (shutdown.phase(), shutdown.deadline()) {
            (Phase::Running, _) => Stage::Serving,
            (Phase::Immediate, _) | (Phase::Draining, None) => Stage::Over,
            (Phase::Draining, Some(d)) if now < d => Stage::Grace,
            (Phase::Draining, Some(d)) if now < d + FLUSH_GRACE => Stage::Flush,
            (Phase::Draining, Some(_)) => Stage::Over,
        }
    }

    /// When the stage after this one begins, if that is a matter of time.
    pub(crate) fn ends(self, shutdown: &Shutdown) -> Option<Instant> {
        match self {
            Stage::Grace => shutdown.deadline(),
            Stage::Flush => shutdown.deadline().map(|d| d + FLUSH_GRACE),
            Stage::Serving | Stage::Over => None,
        }
    }
}

/// One loop's progress through the stages.
#[derive(Debug, Clone)]
pub(crate) struct Drain {
    reached: Stage,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    /// A loop that is serving.
    pub(crate) fn new() -> Drain {
        Drain { reached: Stage::Serving }
    }

    /// The last stage handed out.
    pub(crate) fn stage(&self) -> Stage {
        self.reached
    }

    /// Whether the loop still serves (accepts) connections.
    pub(crate) fn serving(&self) -> bool {
        self.reached == Stage::Serving
    }

    /// Moves to the stage of `shutdown` at `now` and returns the stages
    /// entered on the way, in order (each is handed out once in a loop's
    /// life).
    pub(crate) fn advance(&mut self, shutdown: &Shutdown, now: Instant) -> impl Iterator<Item = Stage> {
        let from = self.reached;
        let to = Stage::of(shutdown, now).max(from);
        self.reached = to;
        Stage::ORDER.into_iter().filter(move |s| *s > from && *s <= to)
    }

    /// When the next stage begins (a deadline for the loop's table).
    pub(crate) fn next_change(&self, shutdown: &Shutdown) -> Option<Instant> {
        self.reached.ends(shutdown)
    }
}

/// The live sockets of a blocking strategy whose connections other threads
/// serve (thread, pool), so that the drain can reach them: `shutdown(SHUT_RD)`
/// makes a blocked read return end-of-file (its driver answers and closes),
/// `shutdown(SHUT_RDWR)` also fails a blocked write. With a waker set, the
/// accepting thread is woken when the last connection leaves.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    live: Mutex<Slab<Entry>>,
    wake_when_empty: AtomicBool,
    waker: Arc<Waker>,
}

#[derive(Debug)]
struct Entry {
    fd: RawFd,
    thread: Option<JoinHandle<()>>,
}

/// A registered connection: derefs to its stream, and leaves the registry
/// when dropped, before the socket closes (so the registry never holds a
/// closed fd).
#[derive(Debug)]
pub(crate) struct Registered {
    stream: TcpStream,
    key: usize,
    registry: Registry,
}

impl Registry {
    /// An empty registry; `waker` wakes the accepting thread.
    pub(crate) fn new(waker: Arc<Waker>) -> Registry {
        Registry { inner: Arc::new(Inner { live: Mutex::default(), wake_when_empty: AtomicBool::new(false), waker }) }
    }

    fn lock(&self) -> MutexGuard<'_, Slab<Entry>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `stream`.
    pub(crate) fn register(&self, stream: TcpStream) -> Registered {
        let key = self.lock().insert(Entry { fd: stream.as_raw_fd(), thread: None });
        Registered { stream, key, registry: self.clone() }
    }

    /// Attaches the thread serving connection `key`, to join it at the end.
    /// If the connection is already gone the handle is dropped (the thread
    /// is finishing; nothing piles up).
    pub(crate) fn attach(&self, key: usize, handle: JoinHandle<()>) {
        if let Some(e) = self.lock().get_mut(key) {
            e.thread = Some(handle);
        }
    }

    /// Connections registered now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// From now on, wake the accepting thread when the registry empties.
    pub(crate) fn wake_when_empty(&self) {
        self.inner.wake_when_empty.store(true, Ordering::SeqCst);
    }

    /// Shuts down every live socket in direction `how`; returns how many.
    pub(crate) fn shutdown_all(&self, how: How) -> usize {
        let live = self.lock();
        let how = match how {
            How::Read => nix::sys::socket::Shutdown::Read,
            How::Write => nix::sys::socket::Shutdown::Write,
            How::Both => nix::sys::socket::Shutdown::Both,
        };
        for (_, e) in live.iter() {
            // The fd is open: entries leave the registry before their socket
            // closes, and we hold the registry lock.
            let _ = nix::sys::socket::shutdown(e.fd, how);
        }
        live.len()
    }

    /// Applies a stage of the stop to every registered connection: from the
    /// grace on, the accepting thread is woken when the last one leaves;
    /// when the grace ends, reads see end-of-file (the drivers answer what
    /// they received and close); when the flush grace ends, every socket is
    /// shut both ways.
    pub(crate) fn on_stage(&self, stage: Stage) {
        match stage {
            Stage::Serving => {}
            Stage::Grace => self.wake_when_empty(),
            Stage::Flush => {
                let n = self.shutdown_all(How::Read);
                if n > 0 {
                    log::info!("grace over: closing {n} connection(s) after flushing");
                }
            }
            Stage::Over => {
                self.shutdown_all(How::Both);
            }
        }
    }

    /// Takes the handles of threads still serving, to join them.
    pub(crate) fn take_threads(&self) -> Vec<JoinHandle<()>> {
        self.lock().iter_mut().filter_map(|(_, e)| e.thread.take()).collect()
    }

    fn release(&self, key: usize) {
        let mut live = self.lock();
        drop(live.try_remove(key));
        let empty = live.is_empty();
        drop(live);
        if empty && self.inner.wake_when_empty.load(Ordering::SeqCst) {
            let _ = self.inner.waker.wake();
        }
    }
}

impl Registered {
    /// The registry key (for [`Registry::attach`]).
    pub(crate) fn key(&self) -> usize {
        self.key
    }
}

impl Deref for Registered {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Runs before the `stream` field is dropped: unregister, then close.
        self.registry.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn stages_follow_the_phase_and_the_clock_and_are_handed_out_once() {
        let s = Shutdown::new(Duration::from_secs(10));
        let mut d = Drain::new();
        let t0 = Instant::now();
        assert_eq!(d.advance(&s, t0).count(), 0);
        assert!(d.serving());
        assert_eq!(d.next_change(&s), None);
        s.drain();
        let deadline = s.deadline().unwrap();
        assert_eq!(d.advance(&s, t0).collect::<Vec<_>>(), [Stage::Grace]);
        assert_eq!(d.advance(&s, t0).count(), 0, "handed out once");
        assert_eq!(d.next_change(&s), Some(deadline));
        assert_eq!(d.advance(&s, deadline).collect::<Vec<_>>(), [Stage::Flush]);
        assert_eq!(d.next_change(&s), Some(deadline + FLUSH_GRACE));
        assert_eq!(d.advance(&s, deadline + FLUSH_GRACE).collect::<Vec<_>>(), [Stage::Over]);
        assert_eq!(d.next_change(&s), None);
        // Time never moves a drain backwards.
        assert_eq!(d.advance(&s, t0).count(), 0);
        assert_eq!(d.stage(), Stage::Over);
    }

    #[test]
    fn an_immediate_stop_passes_every_stage_at_once() {
        let s = Shutdown::new(Duration::from_secs(10));
        let mut d = Drain::new();
        s.stop_now();
        assert_eq!(d.advance(&s, Instant::now()).collect::<Vec<_>>(), [Stage::Grace, Stage::Flush, Stage::Over]);
        // From the middle of a drain, too.
        let s = Shutdown::new(Duration::from_secs(10));
        let mut d = Drain::new();
        s.drain();
        assert_eq!(d.advance(&s, Instant::now()).collect::<Vec<_>>(), [Stage::Grace]);
        s.stop_now();
        assert_eq!(d.advance(&s, Instant::now()).collect::<Vec<_>>(), [Stage::Flush, Stage::Over]);
    }

    #[test]
    fn the_registry_reaches_live_sockets_and_wakes_when_empty() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let r = Registry::new(waker);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = r.register(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        let b = r.register(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        assert_eq!(r.len(), 2);
        assert_eq!(r.shutdown_all(How::Both), 2);
        r.wake_when_empty();
        drop(a);
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty(), "woken before the registry emptied");
        drop(b);
        assert!(r.is_empty());
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(events.iter().count(), 1, "not woken when the registry emptied");
    }
}
