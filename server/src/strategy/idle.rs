//! The idle-timeout queue of an event loop (`event` and `uring`): every connection has the same
//! timeout, so ordering connections by last activity orders them by
//! deadline. A doubly linked list threaded through the loop's slab (libev's
//! trick for equal timeouts): touching a connection moves it to the tail in
//! O(1), the head is the next to expire, and nothing scans all connections.
//!
//! Times are milliseconds since the loop started (`u64`). The loops stamp
//! activity with the clock read after each poll and judge idleness as of
//! the clock read before it (`EventLoop::polled_ms`).
//!
//! Callers: the event loop (`strategy::event`) and the io_uring loop
//! (`strategy::uring`), which put [`IdleQueue::next_in`] in their deadline
//! tables.

use slab::Slab;

const NIL: u32 = u32::MAX;

/// Per-connection links; embed one in each slab entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Links {
    prev: u32,
    next: u32,
    at: u64,
    linked: bool,
}

impl Default for Links {
    fn default() -> Links {
        Links { prev: NIL, next: NIL, at: 0, linked: false }
    }
}

/// Implemented by slab entries that carry [`Links`].
pub(crate) trait HasLinks {
    /// The entry's links.
    fn links(&mut self) -> &mut Links;
}

/// The queue, ordered by last activity.
#[derive(Debug)]
pub(crate) struct IdleQueue {
    head: u32,
    tail: u32,
    timeout_ms: u64,
}

impl IdleQueue {
    /// A queue whose entries expire `timeout_ms` after their last activity.
    pub(crate) fn new(timeout_ms: u64) -> IdleQueue {
        IdleQueue { head: NIL, tail: NIL, timeout_ms }
    }

    /// Marks `key` active at `now` (inserting it if it is not queued).
    pub(crate) fn touch<T: HasLinks>(&mut self, slab: &mut Slab<T>, key: usize, now: u64) {
        let l = *slab[key].links();
        if l.linked && l.at == now {
            return;
        }
        if l.linked {
            self.remove(slab, key);
        }
        let k = key as u32;
        *slab[key].links() = Links { prev: self.tail, next: NIL, at: now, linked: true };
        if self.tail != NIL {
            slab[self.tail as usize].links().next = k;
        } else {
            self.head = k;
        }
        self.tail = k;
    }

    /// Takes `key` out of the queue (before it leaves the slab).
    pub(crate) fn remove<T: HasLinks>(&mut self, slab: &mut Slab<T>, key: usize) {
        let l = *slab[key].links();
        if !l.linked {
            return;
        }
        if l.prev != NIL {
            slab[l.prev as usize].links().next = l.next;
        } else {
            self.head = l.next;
        }
        if l.next != NIL {
            slab[l.next as usize].links().prev = l.prev;
        } else {
            self.tail = l.prev;
        }
        *slab[key].links() = Links::default();
    }

    /// The first entry whose timeout has passed at `now`, if any.
    pub(crate) fn expired<T: HasLinks>(&self, slab: &mut Slab<T>, now: u64) -> Option<usize> {
        if self.head == NIL {
            return None;
        }
        let key = self.head as usize;
        (slab[key].links().at + self.timeout_ms <= now).then_some(key)
    }

    /// Milliseconds from `now` until the head expires.
    pub(crate) fn next_in<T: HasLinks>(&self, slab: &mut Slab<T>, now: u64) -> Option<u64> {
        if self.head == NIL {
            return None;
        }
        Some((slab[self.head as usize].links().at + self.timeout_ms).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct E(Links);
    impl HasLinks for E {
        fn links(&mut self) -> &mut Links {
            &mut self.0
        }
    }

    #[test]
    fn expires_in_order_of_last_activity() {
        let mut slab = Slab::new();
        let a = slab.insert(E::default());
        let b = slab.insert(E::default());
        let c = slab.insert(E::default());
        let mut q = IdleQueue::new(100);
        q.touch(&mut slab, a, 0);
        q.touch(&mut slab, b, 10);
        q.touch(&mut slab, c, 20);
        assert_eq!(q.expired(&mut slab, 99), None);
        assert_eq!(q.next_in(&mut slab, 50), Some(50));
        q.touch(&mut slab, a, 30); // a is active again: b is next
        assert_eq!(q.expired(&mut slab, 110), Some(b));
        q.remove(&mut slab, b);
        assert_eq!(q.expired(&mut slab, 110), None);
        assert_eq!(q.expired(&mut slab, 120), Some(c));
        q.remove(&mut slab, c);
        assert_eq!(q.expired(&mut slab, 129), None);
        assert_eq!(q.expired(&mut slab, 130), Some(a));
        q.remove(&mut slab, a);
        assert_eq!(q.next_in(&mut slab, 0), None);
        // Removing twice is harmless; a removed entry can come back.
        q.remove(&mut slab, a);
        q.touch(&mut slab, a, 200);
        assert_eq!(q.expired(&mut slab, 300), Some(a));
    }
}
