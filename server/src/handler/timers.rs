//! Timers for handlers: [`sleep`] and [`timeout`]. Every thread that runs
//! handlers (an event loop, or a connection's thread under `block_on`) has
//! one timer heap; a [`Sleep`] registers its deadline and waker there when it
//! first waits, and the thread's executor puts [`next_deadline`] in its own
//! deadline table and calls [`fire`] when it passes. No thread per timer.
//! Under `block_on` the thread sleeps until the deadline: a real sleep.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

thread_local! {
    static TIMERS: RefCell<Heap> = RefCell::new(Heap::default());
}

#[derive(Debug, Default)]
struct Heap {
    entries: Slab<(u64, Waker)>,
    /// Deadline, sequence number, entry: entries that were cancelled (or
    /// re-used) are skipped when they come up.
    order: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    seq: u64,
}

impl Heap {
    fn is_live(&self, seq: u64, key: usize) -> bool {
        self.entries.get(key).is_some_and(|(s, _)| *s == seq)
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse((_, seq, key))) = self.order.peek().copied() {
            if self.is_live(seq, key) {
                return;
            }
            self.order.pop();
        }
    }
}

/// The earliest deadline of this thread's timers.
pub(crate) fn next_deadline() -> Option<Instant> {
    TIMERS.with(|t| {
        let mut t = t.borrow_mut();
        t.drop_stale();
        t.order.peek().map(|Reverse((at, _, _))| *at)
    })
}

/// Wakes every timer of this thread whose deadline is at or before `now`;
/// returns how many.
pub(crate) fn fire(now: Instant) -> usize {
    let due: Vec<Waker> = TIMERS.with(|t| {
        let mut t = t.borrow_mut();
        let mut due = Vec::new();
        while let Some(Reverse((at, seq, key))) = t.order.peek().copied() {
            if at > now {
                break;
            }
            t.order.pop();
            if t.is_live(seq, key) {
                due.push(t.entries.remove(key).1);
            }
        }
        due
    });
    // Woken outside the borrow: a waker may run code that sets a timer.
    let n = due.len();
    for w in due {
        w.wake();
    }
    n
}

/// A future that is ready at a deadline. Made by [`sleep`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep {
    at: Instant,
    /// The heap entry, once registered.
    entry: Option<(u64, usize)>,
}

/// Waits for `d`. On an event loop the task is suspended and the loop serves
/// others meanwhile; in the blocking strategies the thread sleeps.
pub fn sleep(d: Duration) -> Sleep {
    Sleep { at: Instant::now() + d, entry: None }
}

impl Sleep {
    fn cancel(&mut self) {
        if let Some((seq, key)) = self.entry.take() {
            // At thread exit the heap may be gone already: nothing to cancel.
            let _ = TIMERS.try_with(|t| {
                let mut t = t.borrow_mut();
                if t.is_live(seq, key) {
                    t.entries.remove(key);
                }
            });
        }
    }
}

impl Sleep {
    /// Registers the deadline with `cx`'s waker (or updates the waker).
    fn arm(&mut self, cx: &mut Context<'_>) {
        let at = self.at;
        match self.entry {
            Some((seq, key)) => TIMERS.with(|t| {
                let mut t = t.borrow_mut();
                if let Some((s, w)) = t.entries.get_mut(key) {
                    if *s == seq && !w.will_wake(cx.waker()) {
                        *w = cx.waker().clone();
                    }
                }
            }),
            None => {
                let entry = TIMERS.with(|t| {
                    let mut t = t.borrow_mut();
                    t.seq += 1;
                    let seq = t.seq;
                    let key = t.entries.insert((seq, cx.waker().clone()));
                    t.order.push(Reverse((at, seq, key)));
                    (seq, key)
                });
                self.entry = Some(entry);
            }
        }
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.at {
            self.cancel();
            return Poll::Ready(());
        }
        self.arm(cx);
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// The error of a [`timeout`] whose time ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline has elapsed")
    }
}

impl std::error::Error for Elapsed {}

impl From<Elapsed> for std::io::Error {
    fn from(e: Elapsed) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, e)
    }
}

pin_project_lite::pin_project! {
    /// A future with a deadline. Made by [`timeout`].
    #[derive(Debug)]
    #[must_use = "futures do nothing unless awaited"]
    pub struct Timeout<F> {
        #[pin]
        future: F,
        sleep: Sleep,
    }
}

/// Runs `future` for at most `d`: its output, or [`Elapsed`].
pub fn timeout<F: Future>(d: Duration, future: F) -> Timeout<F> {
    Timeout { future, sleep: sleep(d) }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The deadline is known before the future runs: a blocking
        // connection's read waits only until then.
        this.sleep.arm(cx);
        if let Poll::Ready(v) = this.future.poll(cx) {
            this.sleep.cancel();
            return Poll::Ready(Ok(v));
        }
        match Pin::new(this.sleep).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn timers_fire_in_deadline_order_and_cancel_on_drop() {
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(sleep(Duration::from_secs(30)));
        let mut b = Box::pin(sleep(Duration::from_secs(10)));
        let mut c = Box::pin(sleep(Duration::from_secs(20)));
        for s in [&mut a, &mut b, &mut c] {
            assert!(s.as_mut().poll(&mut cx).is_pending());
        }
        let d = |secs| b.at - Duration::from_secs(10) + Duration::from_secs(secs);
        assert_eq!(next_deadline(), Some(b.at));
        assert_eq!(fire(d(5)), 0, "nothing is due yet");
        drop(c); // cancelled: never fires
        assert_eq!(fire(d(25)), 1, "b fires, c was cancelled");
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(next_deadline(), Some(a.at));
        drop(a);
        assert_eq!(next_deadline(), None);
        assert_eq!(fire(d(100)), 0);
    }

    #[test]
    fn timeout_fires_and_does_not_fire() {
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut quick = Box::pin(timeout(Duration::from_secs(60), std::future::ready(7)));
        assert_eq!(quick.as_mut().poll(&mut cx), Poll::Ready(Ok(7)));
        let mut slow = Box::pin(timeout(Duration::ZERO, std::future::pending::<()>()));
        assert_eq!(slow.as_mut().poll(&mut cx), Poll::Ready(Err(Elapsed)));
        let mut later = Box::pin(timeout(Duration::from_secs(60), std::future::pending::<()>()));
        assert!(later.as_mut().poll(&mut cx).is_pending());
        assert!(next_deadline().is_some());
        drop(later);
        assert_eq!(next_deadline(), None, "a dropped timeout leaves no timer behind");
    }
}
