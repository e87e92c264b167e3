//! A producer/consumer queue on a mutex and a condition variable: producers
//! push, consumer threads pop (waiting while it is empty), and closing it
//! lets the consumers take what is left and then stop. Every item keeps the
//! time it was queued, so a producer can take out the ones that waited too
//! long.
//!
//! The queue itself is unbounded; its users bound it. Callers: the pool
//! strategy (accepted connections for its workers: the admission cap of
//! threads + `--queue` bounds it, and `--queue-timeout` expires items even
//! while every worker is busy, so a worker held by a slow client never makes
//! a queued client hang), and the handlers' offload pool (`run_blocking`
//! jobs, at most one per suspended task).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// A FIFO of `T` shared by one producer and many consumers.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<(Instant, T)>,
    closed: bool,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue { state: Mutex::new(State { items: VecDeque::new(), closed: false }), ready: Condvar::new() }
    }
}

impl<T> Queue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A consumer that panicked holding the lock left the queue intact.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `item`, queued at `now`, and wakes one consumer.
    pub(crate) fn push(&self, item: T, now: Instant) {
        self.lock().items.push_back((now, item));
        self.ready.notify_one();
    }

    /// The oldest item, waiting until there is one; `None` once the queue is
    /// closed and empty.
    pub(crate) fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some((_, item)) = s.items.pop_front() {
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No more pushes: consumers take what is left, then get `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Takes out every item queued before `cutoff`.
    pub(crate) fn expire(&self, cutoff: Instant) -> Vec<T> {
        let mut s = self.lock();
        let n = s.items.iter().take_while(|(t, _)| *t < cutoff).count();
        s.items.drain(..n).map(|(_, item)| item).collect()
    }

    /// When the oldest item was queued.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.lock().items.front().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn fifo_then_none_after_close() {
        let q = Queue::default();
        let t = Instant::now();
        q.push(1, t);
        q.push(2, t);
        q.close();
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(1), Some(2), None));
    }

    #[test]
    fn expire_takes_only_the_old_ones_in_order() {
        let q = Queue::default();
        let t = Instant::now();
        for i in 0..5u64 {
            q.push(i, t + Duration::from_secs(i));
        }
        assert_eq!(q.expire(t + Duration::from_millis(2500)), vec![0, 1, 2]);
        assert_eq!(q.oldest(), Some(t + Duration::from_secs(3)));
        assert_eq!(q.pop(), Some(3));
    }

    #[test]
    fn a_waiting_consumer_is_woken() {
        let q = Arc::new(Queue::default());
        let consumers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || std::iter::from_fn(|| q.pop()).count())
            })
            .collect();
        for i in 0..1000 {
            q.push(i, Instant::now());
        }
        q.close();
        let total: usize = consumers.into_iter().map(|c| c.join().unwrap()).sum();
        assert_eq!(total, 1000);
    }
}
