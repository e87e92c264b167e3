//! [`run_blocking`]: blocking or CPU-heavy work, off the event loop. On an
//! event loop the closure goes to a small pool of threads (one per CPU, at
//! least two), the task waits, and the thread that ran it wakes the task
//! with the result: an executor with a callback. Under `block_on` (the
//! blocking strategies, which have a thread or a process per connection
//! already) it runs inline.

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::Result as Caught;
use std::time::Instant;

use super::executor;
use crate::lifecycle::signals::spawn_masked;
use crate::queue::Queue;

type Job = Box<dyn FnOnce() + Send>;

/// The offload threads of this process, started on first use (only by a
/// process that runs an event loop: never by one that forks).
fn pool() -> &'static Queue<Job> {
    static POOL: OnceLock<Arc<Queue<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let queue = Arc::new(Queue::<Job>::default());
        let n = crate::config::cpus().max(2);
        for i in 0..n {
            let q = queue.clone();
            let spawned = spawn_masked(format!("offload-{i}"), 256 * 1024, move || {
                while let Some(job) = q.pop() {
                    job();
                }
            });
            if let Err(e) = spawned {
                log::warn!("cannot start offload thread {i}: {e}");
            }
        }
        queue
    })
}

struct Shared<T> {
    result: Option<Caught<T>>,
    waker: Option<Waker>,
}

/// The future of [`run_blocking`].
#[must_use = "futures do nothing unless awaited"]
pub struct Blocking<T> {
    state: State<T>,
}

enum State<T> {
    /// Not started yet.
    Idle(Option<Box<dyn FnOnce() -> T + Send>>),
    /// Running on the pool.
    Running(Arc<Mutex<Shared<T>>>),
}

impl<T> std::fmt::Debug for Blocking<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocking")
    }
}

/// Runs `f` where it cannot stall other connections: on an event loop, on
/// a small pool of threads while the task waits; in the blocking strategies,
/// inline. A panic in `f` resumes in the task that awaited it.
pub fn run_blocking<T, F>(f: F) -> Blocking<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    Blocking { state: State::Idle(Some(Box::new(f))) }
}

impl<T: Send + 'static> Future for Blocking<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match &mut self.state {
            State::Idle(f) => {
                let f = f.take().expect("polled after completion");
                if !executor::on_loop() {
                    return Poll::Ready(f());
                }
                let shared = Arc::new(Mutex::new(Shared { result: None, waker: Some(cx.waker().clone()) }));
                let s = shared.clone();
                pool().push(
                    Box::new(move || {
                        let result = catch_unwind(AssertUnwindSafe(f));
                        let waker = {
                            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                            s.result = Some(result);
                            s.waker.take()
                        };
                        if let Some(w) = waker {
                            w.wake();
                        }
                    }),
                    Instant::now(),
                );
                self.state = State::Running(shared);
                Poll::Pending
            }
            State::Running(shared) => {
                let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                match s.result.take() {
                    Some(Ok(v)) => Poll::Ready(v),
                    Some(Err(panic)) => {
                        drop(s);
                        resume_unwind(panic)
                    }
                    None => {
                        s.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}
