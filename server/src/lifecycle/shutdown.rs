//! The shutdown event: one flag every part of a process waits on (an Event in
//! the threading sense), with three phases.
//!
//! `Running` → `Draining` (SIGTERM/SIGINT: stop accepting, let connections
//! finish until they close or the grace deadline passes) → `Immediate`
//! (second SIGINT, SIGQUIT, or the end of the grace period for whatever is
//! left). Phases only move forward.
//!
//! Signals move the phase (`signals::Signals::dispatch`), and so may the
//! process itself (`--max-requests`, a failed event loop). Every strategy
//! reads it; `drain` turns phase and deadline into the stages of a stop.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Accepting and serving.
    Running,
    /// Not accepting; open connections may finish until the deadline.
    Draining,
    /// Close everything now.
    Immediate,
}

/// A cloneable handle to the process's shutdown state.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    phase: AtomicU8,
    grace: Duration,
    deadline: Mutex<Option<Instant>>,
}

impl Shutdown {
    /// A new event in the `Running` phase; draining may last `grace`.
    pub(crate) fn new(grace: Duration) -> Shutdown {
        Shutdown { inner: Arc::new(Inner { phase: AtomicU8::new(0), grace, deadline: Mutex::new(None) }) }
    }

    /// The current phase (one atomic load).
    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Immediate,
        }
    }

    /// Starts a graceful stop (no-op unless running). Returns whether this
    /// call started it.
    pub(crate) fn drain(&self) -> bool {
        let mut deadline = self.inner.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if self.inner.phase.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            *deadline = Some(Instant::now() + self.inner.grace);
            log::info!("graceful stop: draining for up to {:?}", self.inner.grace);
            true
        } else {
            false
        }
    }

    /// Moves to `Immediate`.
    pub(crate) fn stop_now(&self) {
        if self.inner.phase.swap(2, Ordering::AcqRel) != 2 {
            log::info!("immediate stop");
        }
    }

    /// When draining ends, if a drain has started.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        *self.inner.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let s = Shutdown::new(Duration::from_secs(5));
        assert_eq!(s.phase(), Phase::Running);
        assert!(s.deadline().is_none());
        assert!(s.drain());
        assert!(!s.drain());
        assert_eq!(s.phase(), Phase::Draining);
        let left = s.deadline().unwrap().saturating_duration_since(Instant::now());
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4));
        s.stop_now();
        assert_eq!(s.phase(), Phase::Immediate);
        assert!(!s.drain());
        assert_eq!(s.phase(), Phase::Immediate);
    }
}
