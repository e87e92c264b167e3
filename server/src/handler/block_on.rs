//! `block_on`: how the blocking strategies (serial, fork, thread, pool, and
//! prefork workers running them) run a handler, on the thread or process
//! that serves its connection. The connection's operations block the
//! thread, so the future is mostly ready; it waits only for its timers
//! (the thread sleeps until the earliest: a real sleep) or for a waker from
//! elsewhere (the thread parks). A single-threaded process (serial, a fork
//! child) watches its lookout while it waits, so signals and metrics are
//! served meanwhile; the last stage of a stop ends the wait (the future is
//! dropped, and with it the connection).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::{executor, timers};
use crate::driver::blocking::SharedLookout;
use crate::lifecycle::drain::{Drain, Stage};
use crate::lifecycle::shutdown::Shutdown;

struct ThreadWaker {
    woken: AtomicBool,
    thread: Thread,
}

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Runs `future` to its end on this thread; `None` when the stop's last
/// stage came first.
pub(crate) fn block_on<F: Future>(
    future: F,
    shutdown: &Shutdown,
    lookout: Option<&SharedLookout>,
) -> Option<F::Output> {
    let state = Arc::new(ThreadWaker { woken: AtomicBool::new(false), thread: std::thread::current() });
    let waker = Waker::from(state.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut drain = Drain::new();
    executor::set_budget(u32::MAX);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return Some(v);
        }
        loop {
            let now = Instant::now();
            for stage in drain.advance(shutdown, now) {
                if let Some(l) = lookout {
                    l.borrow_mut().on_stage(stage);
                }
            }
            if drain.stage() == Stage::Over {
                return None;
            }
            timers::fire(now);
            if state.woken.swap(false, Ordering::SeqCst) {
                break;
            }
            let until = timers::next_deadline();
            match lookout {
                Some(l) => wait_on(l, until),
                None => match until {
                    Some(t) => std::thread::park_timeout(t.saturating_duration_since(now)),
                    None => std::thread::park(),
                },
            }
        }
    }
}

/// Waits for the lookout's fd (and handles it) until `until`, at most a
/// second (the lookout's chores and the stop's stages are looked at then).
fn wait_on(lookout: &SharedLookout, until: Option<Instant>) {
    let now = Instant::now();
    let mut l = lookout.borrow_mut();
    if l.due(now).is_some_and(|t| now >= t) {
        let _ = l.tick(now);
        return;
    }
    let wake = [until, l.due(now), Some(now + Duration::from_secs(1))].into_iter().flatten().min().unwrap_or(now);
    let ms = wake.saturating_duration_since(now).as_nanos().div_ceil(1_000_000);
    let timeout = PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
    let ready = {
        let mut fds = [PollFd::new(l.fd(), PollFlags::POLLIN)];
        matches!(nix::poll::poll(&mut fds, timeout), Ok(n) if n > 0) || fds[0].any().unwrap_or(false)
    };
    if ready {
        let _ = l.on_ready();
    }
}
