//! Admission: whether one more connection may be served now. One counting
//! semaphore per process, [`Admission`], whose capacity is the strategy's
//! limit (`--max-conns` for thread, event and reactor; `--max-children` for
//! fork; threads + `--queue` for the pool; 1 for serial), and per-address
//! permits (`--max-conns-per-ip`, [`per_ip`]). A connection holds one
//! [`Permit`] for its whole life (fork: the parent holds it beside the
//! child's pid until the child is reaped); dropping it gives the place back
//! and, if the semaphore was full, wakes every loop waiting for room.
//!
//! The accept policy (`net::accept`) reserves a place *before* it accepts, so
//! the cap is exact even when several loops share one semaphore (reactor),
//! and a process at its cap leaves clients in the listen backlog instead of
//! accepting connections it cannot serve.

mod per_ip;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use mio::Waker;

use crate::process::scoreboard::Slot;
pub(crate) use per_ip::{IpPermit, PerIp};

/// The process's connection semaphore and per-address limit.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cap: usize,
    open: AtomicUsize,
    per_ip: Option<PerIp>,
    /// Woken when a place frees while the semaphore is full.
    waiters: Mutex<Vec<Arc<Waker>>>,
}

/// A place reserved under the cap, before the connection is accepted. It
/// becomes a [`Permit`] once the peer's address is admitted too; dropped,
/// it gives the place back.
#[derive(Debug)]
pub(crate) struct Reservation {
    inner: Option<Arc<Inner>>,
}

/// One connection's place: under the cap, and under its address's limit
/// (boxed: only with `--max-conns-per-ip`, and a permit is in every
/// connection's slot, which an idle connection is made of).
#[derive(Debug)]
pub(crate) struct Permit {
    _place: Reservation,
    _ip: Option<Box<IpPermit>>,
}

/// The answer for a peer.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Admitted: keep the permit as long as the connection.
    Yes(Permit),
    /// Its address is at `--max-conns-per-ip`: close it at once.
    OverPerIp,
}

impl Admission {
    /// At most `cap` connections at once; at most `per_ip` from one address
    /// (the addresses with a connection open are a gauge in `slot`).
    pub(crate) fn new(cap: usize, per_ip: Option<usize>, slot: Slot) -> Admission {
        Admission {
            inner: Arc::new(Inner {
                cap: cap.max(1),
                open: AtomicUsize::new(0),
                per_ip: per_ip.map(|max| PerIp::new(max, slot)),
                waiters: Mutex::default(),
            }),
        }
    }

    /// Connections admitted (or reserved) now.
    pub(crate) fn open(&self) -> usize {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Whether a place is free now.
    pub(crate) fn has_room(&self) -> bool {
        self.open() < self.inner.cap
    }

    /// How many places are free now.
    pub(crate) fn room(&self) -> usize {
        self.inner.cap.saturating_sub(self.open())
    }

    /// Wakes `waker` whenever a place frees while the semaphore is full (a
    /// loop that stopped accepting at the cap sleeps until then).
    pub(crate) fn wake_on_room(&self, waker: Arc<Waker>) {
        self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner()).push(waker);
    }

    /// Reserves a place under the cap, or `None` when full.
    pub(crate) fn reserve(&self) -> Option<Reservation> {
        let mut n = self.inner.open.load(Ordering::SeqCst);
        loop {
            if n >= self.inner.cap {
                return None;
            }
            match self.inner.open.compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(Reservation { inner: Some(self.inner.clone()) }),
                Err(now) => n = now,
            }
        }
    }

    /// Turns a reservation into a permit for a connection from `peer`.
    pub(crate) fn admit(&self, place: Reservation, peer: IpAddr) -> Admit {
        let ip = match &self.inner.per_ip {
            None => None,
            Some(limit) => match limit.admit(peer) {
                Some(p) => Some(Box::new(p)),
                None => return Admit::OverPerIp,
            },
        };
        Admit::Yes(Permit { _place: place, _ip: ip })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else { return };
        let before = inner.open.fetch_sub(1, Ordering::SeqCst);
        if before == inner.cap {
            for w in inner.waiters.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_cap_is_exact_and_a_freed_place_wakes_waiters() {
        let mut poll = mio::Poll::new().unwrap();
        let a = Admission::new(2, None, Slot::leaked());
        a.wake_on_room(Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap()));
        let r1 = a.reserve().unwrap();
        let r2 = a.reserve().unwrap();
        assert!(a.reserve().is_none() && !a.has_room());
        let Admit::Yes(p1) = a.admit(r1, ip("127.0.0.1")) else { panic!("no per-ip limit") };
        assert_eq!(a.open(), 2);
        drop(p1);
        assert!(a.has_room());
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(events.iter().count(), 1, "a place freed at the cap must wake the waiter");
        drop(r2);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty(), "a place freed below the cap wakes nobody");
        assert_eq!(a.open(), 0);
    }

    #[test]
    fn per_ip_refusal_gives_the_place_back() {
        let a = Admission::new(10, Some(1), Slot::leaked());
        let Admit::Yes(_p) = a.admit(a.reserve().unwrap(), ip("127.0.0.1")) else { panic!() };
        assert!(matches!(a.admit(a.reserve().unwrap(), ip("127.0.0.1")), Admit::OverPerIp));
        assert_eq!(a.open(), 1, "the refused connection's place is free again");
        assert!(matches!(a.admit(a.reserve().unwrap(), ip("127.0.0.2")), Admit::Yes(_)));
    }

    #[test]
    fn threads_never_pass_the_cap() {
        let a = Admission::new(3, None, Slot::leaked());
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (a, most) = (a.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if let Some(r) = a.reserve() {
                            most.fetch_max(a.open(), Ordering::SeqCst);
                            drop(r);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert_eq!(a.open(), 0);
    }
}
