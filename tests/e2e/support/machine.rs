//! Who has the machine. The tests of every topic run in one binary, two at
//! a time (libtest's default `--test-threads` is the number of cores);
//! a few measure CPU time or load the machine (thousands of connections, fd
//! exhaustion) and must run alone. Such a test calls [`exclusive`] first;
//! every [`Server`](super::server::Server) holds a [`Claim`] while it runs,
//! so an exclusive test waits until no other test has a server, and no
//! other test starts one until it is done.
//!
//! A waiting exclusive test goes first: new claims wait for it, except on a
//! thread that already holds one (a test with a second server of its own),
//! which would otherwise wait for itself.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest a test waits for the machine: longer than any test runs.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct State {
    /// Servers running, with a claim.
    running: usize,
    /// An exclusive test runs.
    exclusive: bool,
    /// Exclusive tests waiting for the running servers to end.
    waiting: usize,
}

static STATE: Mutex<State> = Mutex::new(State { running: 0, exclusive: false, waiting: 0 });
static CHANGED: Condvar = Condvar::new();

thread_local! {
    /// Claims this thread holds.
    static MINE: Cell<usize> = const { Cell::new(0) };
    /// This thread's test has the machine to itself.
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

/// Not `Send`: a claim is released on the thread that took it.
type SameThread = PhantomData<MutexGuard<'static, ()>>;

fn state() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits (bounded) on [`CHANGED`] until `blocked` is false.
fn wait_while(
    mut s: MutexGuard<'static, State>,
    what: &str,
    blocked: impl Fn(&State) -> bool,
) -> MutexGuard<'static, State> {
    let deadline = Instant::now() + WAIT_LIMIT;
    while blocked(&s) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "waited {WAIT_LIMIT:?} for {what}: {s:?}");
        s = CHANGED.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
    }
    s
}

/// The machine to this test alone, until dropped.
pub struct Exclusive(SameThread);

/// Waits until no other test runs a server, then keeps others from
/// starting one until the guard is dropped.
pub fn exclusive() -> Exclusive {
    assert_eq!(MINE.get(), 0, "exclusive() called while this test already runs a server");
    let mut s = state();
    s.waiting += 1;
    let mut s = wait_while(s, "the machine to myself", |s| s.exclusive || s.running > 0);
    s.waiting -= 1;
    s.exclusive = true;
    ALONE.set(true);
    Exclusive(PhantomData)
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        state().exclusive = false;
        ALONE.set(false);
        CHANGED.notify_all();
    }
}

/// A running server's share of the machine.
pub struct Claim {
    counted: bool,
    _thread: SameThread,
}

/// Takes a share of the machine for one server: waits while an exclusive
/// test runs or waits (unless this thread holds a claim or is the exclusive
/// test itself).
pub fn claim() -> Claim {
    if ALONE.get() {
        return Claim { counted: false, _thread: PhantomData };
    }
    let mut s = state();
    if MINE.get() == 0 {
        s = wait_while(s, "an exclusive test to end", |s| s.exclusive || s.waiting > 0);
    }
    s.running += 1;
    MINE.set(MINE.get() + 1);
    Claim { counted: true, _thread: PhantomData }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.counted {
            state().running -= 1;
            MINE.set(MINE.get() - 1);
            CHANGED.notify_all();
        }
    }
}
