//! The executor inside an event loop: each connection served by a handler
//! is a [`Task`] (one boxed future) that lives in the loop's slab beside its
//! socket, and is polled by the loop that owns the socket. No second
//! reactor: readiness comes from the loop's own `mio::Poll`.
//!
//! How a readiness event reaches a task: the loop gets an event for the
//! connection's token, sets the readiness bits of its `LoopIo` and wakes the
//! waker a suspended read or write left there; the waker (a [`TaskWaker`])
//! puts the task on the loop's [`RunQueue`]; after handling the events the
//! loop polls every queued task once. A waker used from another thread (an
//! offloaded job that finished, a timer of another loop cannot happen) also
//! wakes the loop's poll. A task queued twice is polled once; a task woken
//! while it runs is polled again in the next iteration, so one busy task
//! cannot starve the others, and the cooperative budget ([`proceed`]) makes
//! a task whose awaits are always ready yield to the loop every
//! [`BUDGET`] operations.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Operations a task may complete in one poll before it yields.
pub(crate) const BUDGET: u32 = 128;

thread_local! {
    /// The run queue of the event loop running on this thread (0: none).
    static ON_LOOP: Cell<usize> = const { Cell::new(0) };
    /// What the task being polled may still do before it yields.
    static LEFT: Cell<u32> = const { Cell::new(u32::MAX) };
}

static NEXT_QUEUE: AtomicUsize = AtomicUsize::new(1);

/// Whether this thread runs an event loop's tasks (else: `block_on`).
pub(crate) fn on_loop() -> bool {
    ON_LOOP.with(|l| l.get() != 0)
}

/// Spends one unit of the running task's budget; when it is used up, the
/// task is woken and told to wait (it runs again after the others).
pub(crate) fn proceed(cx: &mut Context<'_>) -> Poll<()> {
    LEFT.with(|left| match left.get() {
        0 => {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
        n => {
            left.set(n - 1);
            Poll::Ready(())
        }
    })
}

/// Sets the budget of the next poll.
pub(crate) fn set_budget(n: u32) {
    LEFT.with(|l| l.set(n));
}

/// The tasks of one loop that are ready to run.
#[derive(Debug)]
pub(crate) struct RunQueue {
    id: usize,
    ready: Mutex<Vec<Arc<TaskWaker>>>,
    /// Wakes the loop's poll (from another thread).
    poll: Arc<mio::Waker>,
}

impl RunQueue {
    /// A queue for the loop that `poll` wakes.
    pub(crate) fn new(poll: Arc<mio::Waker>) -> Arc<RunQueue> {
        Arc::new(RunQueue { id: NEXT_QUEUE.fetch_add(1, Ordering::Relaxed), ready: Mutex::default(), poll })
    }

    /// Marks this thread as the loop's (call on the loop's own thread, before
    /// it polls any task).
    pub(crate) fn enter(&self) {
        ON_LOOP.with(|l| l.set(self.id));
    }

    /// Whether a task waits to run.
    pub(crate) fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Takes the tasks ready now (each once, in the order they were woken).
    pub(crate) fn take(&self) -> Vec<(usize, u64)> {
        let ready = std::mem::take(&mut *self.lock());
        ready
            .into_iter()
            .map(|w| {
                w.queued.store(false, Ordering::SeqCst);
                (w.key, w.generation)
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<TaskWaker>>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, w: Arc<TaskWaker>) {
        if w.queued.swap(true, Ordering::SeqCst) {
            return; // already queued
        }
        self.lock().push(w);
        if ON_LOOP.with(|l| l.get()) != self.id {
            let _ = self.poll.wake();
        }
    }
}

/// The waker of one task: its slab key and generation (a key is reused by
/// later tasks; the generation tells a stale waker apart).
#[derive(Debug)]
pub(crate) struct TaskWaker {
    key: usize,
    generation: u64,
    queued: AtomicBool,
    queue: Arc<RunQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        let q = self.queue.clone();
        q.push(self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.queue.push(self.clone());
    }
}

/// The size of a task's waker (for the memory accounting of a task).
#[cfg(test)]
pub(crate) fn task_waker_size() -> usize {
    std::mem::size_of::<TaskWaker>()
}

/// A future a handler made, boxed, not `Send` (it never leaves its thread).
pub type LocalFuture = Pin<Box<dyn Future<Output = io::Result<()>>>>;

/// How a poll of a task went.
#[derive(Debug)]
pub(crate) enum Polled {
    /// It waits.
    Pending,
    /// The handler returned.
    Done(io::Result<()>),
    /// The handler panicked (the message).
    Panicked(String),
}

/// One connection's handler, suspended or runnable.
pub(crate) struct Task {
    future: LocalFuture,
    waker: Waker,
    generation: u64,
}

impl Task {
    /// The task in slot `key`, queued to run once.
    pub(crate) fn new(key: usize, generation: u64, future: LocalFuture, queue: &Arc<RunQueue>) -> Task {
        let w = Arc::new(TaskWaker { key, generation, queued: AtomicBool::new(false), queue: queue.clone() });
        queue.push(w.clone());
        Task { future, waker: Waker::from(w), generation }
    }

    /// Its generation (a waker of a task that ended names an old one).
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Polls the handler once, within the budget; a panic is caught here
    /// and ends only this task.
    pub(crate) fn poll(&mut self) -> Polled {
        set_budget(BUDGET);
        let mut cx = Context::from_waker(&self.waker);
        let polled = catch_unwind(AssertUnwindSafe(|| self.future.as_mut().poll(&mut cx)));
        set_budget(u32::MAX);
        match polled {
            Ok(Poll::Pending) => Polled::Pending,
            Ok(Poll::Ready(r)) => Polled::Done(r),
            Err(p) => Polled::Panicked(panic_message(p.as_ref())),
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::task::Poll;

    fn queue() -> (mio::Poll, Arc<RunQueue>) {
        let poll = mio::Poll::new().unwrap();
        let w = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let q = RunQueue::new(w);
        q.enter();
        (poll, q)
    }

    /// A future that is ready once `flag` is set, and keeps its waker in `slot`.
    struct Gate {
        flag: Rc<Cell<bool>>,
        slot: Rc<std::cell::RefCell<Option<Waker>>>,
    }
    impl Future for Gate {
        type Output = io::Result<()>;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.flag.get() {
                return Poll::Ready(Ok(()));
            }
            *self.slot.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_task_that_completes_at_once_runs_once() {
        let (_p, q) = queue();
        let mut t = Task::new(0, 1, Box::pin(async { Ok(()) }), &q);
        assert_eq!(q.take(), [(0, 1)]);
        assert!(matches!(t.poll(), Polled::Done(Ok(()))));
        assert!(q.is_empty());
    }

    #[test]
    fn wakeups_queue_a_task_once_and_stale_wakers_are_harmless() {
        let (_p, q) = queue();
        let (flag, slot) = (Rc::new(Cell::new(false)), Rc::default());
        let mut t = Task::new(3, 7, Box::pin(Gate { flag: flag.clone(), slot: Rc::clone(&slot) }), &q);
        assert_eq!(q.take(), [(3, 7)]);
        assert!(matches!(t.poll(), Polled::Pending));
        let w = slot.borrow_mut().take().unwrap();
        w.wake_by_ref();
        w.wake_by_ref();
        assert_eq!(q.take(), [(3, 7)], "woken twice, queued once");
        flag.set(true);
        assert!(matches!(t.poll(), Polled::Done(Ok(()))));
        drop(t);
        // The task is gone: its waker still queues (3, 7), which the loop
        // finds no task of that generation for.
        w.wake();
        assert_eq!(q.take(), [(3, 7)]);
    }

    #[test]
    fn a_task_dropped_while_suspended_leaves_nothing_running() {
        let (_p, q) = queue();
        let (flag, slot) = (Rc::new(Cell::new(false)), Rc::default());
        let mut t = Task::new(0, 1, Box::pin(Gate { flag, slot: Rc::clone(&slot) }), &q);
        q.take();
        assert!(matches!(t.poll(), Polled::Pending));
        drop(t);
        // The future is gone; its waker outlives it safely.
        let w = slot.borrow_mut().take().unwrap();
        drop(w);
        assert!(q.is_empty());
    }

    #[test]
    fn many_tasks_woken_by_one_batch_each_run_once() {
        let (_p, q) = queue();
        let flag = Rc::new(Cell::new(false));
        let mut tasks: Vec<(Task, Rc<std::cell::RefCell<Option<Waker>>>)> = (0..100)
            .map(|k| {
                let slot: Rc<std::cell::RefCell<Option<Waker>>> = Rc::default();
                let fut = Box::pin(Gate { flag: flag.clone(), slot: slot.clone() });
                (Task::new(k, 1, fut, &q), slot)
            })
            .collect();
        assert_eq!(q.take().len(), 100);
        for (t, _) in &mut tasks {
            assert!(matches!(t.poll(), Polled::Pending));
        }
        flag.set(true);
        for (_, slot) in &tasks {
            slot.borrow().as_ref().unwrap().wake_by_ref();
        }
        let ready = q.take();
        assert_eq!(ready.len(), 100);
        for (k, _) in ready {
            assert!(matches!(tasks[k].0.poll(), Polled::Done(Ok(()))));
        }
    }

    #[test]
    fn a_panic_ends_the_task_only() {
        let (_p, q) = queue();
        let mut t = Task::new(0, 1, Box::pin(async { panic!("handler bug") }), &q);
        match t.poll() {
            Polled::Panicked(m) => assert_eq!(m, "handler bug"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_wake_from_another_thread_wakes_the_loop() {
        let (mut poll, q) = queue();
        let (flag, slot) = (Rc::new(Cell::new(false)), Rc::default());
        let mut t = Task::new(0, 1, Box::pin(Gate { flag, slot: Rc::clone(&slot) }), &q);
        q.take();
        assert!(matches!(t.poll(), Polled::Pending));
        let w = slot.borrow_mut().take().unwrap();
        std::thread::spawn(move || w.wake()).join().unwrap();
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(std::time::Duration::from_secs(5))).unwrap();
        assert_eq!(events.iter().count(), 1, "the loop's poll was not woken");
        assert_eq!(q.take(), [(0, 1)]);
    }

    #[test]
    fn the_budget_makes_a_busy_task_yield() {
        let (_p, q) = queue();
        // A future whose every operation is ready: without the budget it
        // would never return to the loop.
        struct Busy(u32);
        impl Future for Busy {
            type Output = io::Result<()>;
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                loop {
                    if proceed(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.0 += 1;
                }
            }
        }
        let mut t = Task::new(0, 1, Box::pin(Busy(0)), &q);
        q.take();
        assert!(matches!(t.poll(), Polled::Pending));
        assert_eq!(q.take(), [(0, 1)], "a task that used its budget is queued again");
    }
}
