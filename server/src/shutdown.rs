//! The shutdown event: one flag every part of a process waits on (an Event in
//! the threading sense), with three phases.
//!
//! `Running` → `Draining` (SIGTERM/SIGINT: stop accepting, let connections
//! finish until they close or the grace deadline passes) → `Immediate`
//! (second SIGINT, SIGQUIT, or the end of the grace period for whatever is
//! left). Phases only move forward.
//!
//! Callers: every strategy's loop, and the drivers (between reads, and when a
//! blocking call is interrupted by a signal).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::signals::{Signal, STOP_MASK};
use crate::sys;

/// Where a process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Accepting and serving.
    Running,
    /// Not accepting; open connections may finish until the deadline.
    Draining,
    /// Close everything now.
    Immediate,
}

/// A cloneable handle to the process's shutdown state.
#[derive(Debug, Clone)]
pub struct Shutdown {
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
    pub fn new(grace: Duration) -> Shutdown {
        Shutdown { inner: Arc::new(Inner { phase: AtomicU8::new(0), grace, deadline: Mutex::new(None) }) }
    }

    /// The current phase (one atomic load).
    #[inline]
    pub fn phase(&self) -> Phase {
        match self.inner.phase.load(Ordering::Acquire) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Immediate,
        }
    }

    /// Whether the process is still accepting.
    #[inline]
    pub fn is_running(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// Starts a graceful stop (no-op unless running). Returns whether this
    /// call started it.
    pub fn drain(&self) -> bool {
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
    pub fn stop_now(&self) {
        if self.inner.phase.swap(2, Ordering::AcqRel) != 2 {
            log::info!("immediate stop");
        }
    }

    /// When draining ends, if a drain has started.
    pub fn deadline(&self) -> Option<Instant> {
        *self.inner.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time left until the drain deadline (zero once passed), if draining.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline().map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Applies stop signals that arrived since the last call: SIGTERM and a
    /// first SIGINT drain; a second SIGINT or a SIGQUIT stops at once.
    /// Cheap when nothing is pending (one relaxed load); any thread may call.
    pub fn absorb_signals(&self) -> Phase {
        if sys::signals_pending(STOP_MASK) {
            if sys::take_signal(Signal::SIGQUIT) > 0 {
                self.stop_now();
            }
            for _ in 0..sys::take_signal(Signal::SIGINT) {
                if !self.drain() {
                    self.stop_now();
                }
            }
            if sys::take_signal(Signal::SIGTERM) > 0 {
                self.drain();
            }
        }
        self.phase()
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
        let left = s.remaining().unwrap();
        assert!(left <= Duration::from_secs(5) && left > Duration::from_secs(4));
        s.stop_now();
        assert_eq!(s.phase(), Phase::Immediate);
        assert!(!s.drain());
        assert_eq!(s.phase(), Phase::Immediate);
    }
}
