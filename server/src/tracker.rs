//! Live connections of one process: a counting semaphore (`--max-conns`,
//! `--max-children`, the pool's threads + queue) and a registry that can
//! force every open socket closed when the grace period ends.
//!
//! A permit is a [`Tracked`] connection: taking one counts it, dropping it
//! unregisters the socket (before the socket closes, so the registry never
//! holds a closed fd) and frees the permit, waking the acceptor when it waits
//! for room or for the last connection of a drain.
//!
//! Callers: the `thread`, `pool` and `serial` strategies (the `event` loops
//! own their connections in a slab and need no registry).

use std::net::{Shutdown as How, TcpStream};
use std::ops::Deref;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::Waker;
use slab::Slab;

/// Shared by the acceptor and the threads serving connections.
#[derive(Debug, Clone)]
pub struct Tracker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cap: usize,
    active: AtomicUsize,
    waiting: AtomicBool,
    waker: Arc<Waker>,
    live: Mutex<Slab<Entry>>,
}

#[derive(Debug)]
struct Entry {
    fd: RawFd,
    thread: Option<JoinHandle<()>>,
}

/// A counted, registered connection. Derefs to the stream.
#[derive(Debug)]
pub struct Tracked {
    stream: TcpStream,
    key: usize,
    tracker: Tracker,
}

impl Tracker {
    /// A tracker admitting at most `cap` connections at once, waking `waker`
    /// when a permit frees while someone waits.
    pub fn new(cap: usize, waker: Arc<Waker>) -> Tracker {
        Tracker {
            inner: Arc::new(Inner {
                cap: cap.max(1),
                active: AtomicUsize::new(0),
                waiting: AtomicBool::new(false),
                waker,
                live: Mutex::new(Slab::new()),
            }),
        }
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::SeqCst)
    }

    /// Whether one more connection may be admitted.
    pub fn has_room(&self) -> bool {
        self.active() < self.inner.cap
    }

    /// Announces that the caller is about to sleep until a permit frees (or
    /// the count reaches zero). Call before re-checking, then poll.
    pub fn want_wake(&self, on: bool) {
        self.inner.waiting.store(on, Ordering::SeqCst);
    }

    /// Counts and registers `stream`. The caller checked [`has_room`]
    /// (only the acceptor admits, so the count cannot pass the cap).
    ///
    /// [`has_room`]: Tracker::has_room
    pub fn admit(&self, stream: TcpStream) -> Tracked {
        self.inner.active.fetch_add(1, Ordering::SeqCst);
        let key = self.lock().insert(Entry { fd: stream.as_raw_fd(), thread: None });
        Tracked { stream, key, tracker: self.clone() }
    }

    /// Attaches the thread serving connection `key`, so it can be joined at
    /// shutdown. If the connection is already gone the handle is dropped
    /// (the thread is finishing; nothing piles up).
    pub fn attach(&self, key: usize, handle: JoinHandle<()>) {
        if let Some(e) = self.lock().get_mut(key) {
            e.thread = Some(handle);
        }
    }

    /// Shuts down every live socket in direction `how`: `Read` makes a
    /// blocked read return end-of-file so its driver flushes and closes;
    /// `Both` also fails blocked writes.
    pub fn shutdown_all(&self, how: How) -> usize {
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

    /// Takes the handles of threads still serving, to join them.
    pub fn take_threads(&self) -> Vec<JoinHandle<()>> {
        self.lock().iter_mut().filter_map(|(_, e)| e.thread.take()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Entry>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, key: usize) {
        drop(self.lock().try_remove(key));
        self.inner.active.fetch_sub(1, Ordering::SeqCst);
        if self.inner.waiting.load(Ordering::SeqCst) {
            let _ = self.inner.waker.wake();
        }
    }
}

impl Tracked {
    /// The registry key (for [`Tracker::attach`]).
    pub fn key(&self) -> usize {
        self.key
    }
}

impl Deref for Tracked {
    type Target = TcpStream;
    fn deref(&self) -> &TcpStream {
        &self.stream
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Runs before the `stream` field is dropped: unregister, then close.
        self.tracker.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn permits_count_and_free() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let t = Tracker::new(2, waker);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = t.admit(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        assert!(t.has_room());
        let b = t.admit(TcpStream::connect(l.local_addr().unwrap()).unwrap());
        assert!(!t.has_room());
        assert_eq!(t.active(), 2);
        assert_eq!(t.shutdown_all(How::Both), 2);
        drop(a);
        assert!(t.has_room());
        drop(b);
        assert_eq!(t.active(), 0);
        assert_eq!(t.shutdown_all(How::Both), 0);
    }
}
