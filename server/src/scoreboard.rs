//! The scoreboard: one slot of atomics per worker, in memory every process
//! of the server shares. The prefork master maps it (`MAP_SHARED |
//! MAP_ANONYMOUS`) before forking, so workers write their slot and the
//! master reads them all without locks or messages; in single-process modes
//! the same [`Slot`] is a plain heap value. Strategies count through
//! [`crate::Context`]; `metrics` renders the counters.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use crate::sys;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum State {
    /// Unused slot.
    Free = 0,
    /// Forked, not serving yet.
    Booting = 1,
    /// Accepting and serving.
    Running = 2,
    /// Draining after a stop request.
    Draining = 3,
}

/// One worker's counters. All-zero bytes are a valid, free slot.
#[derive(Debug, Default)]
#[repr(C)]
pub struct Slot {
    /// Process id of the worker (0: none).
    pub pid: AtomicU32,
    state: AtomicU32,
    /// Spawn time, milliseconds of CLOCK_MONOTONIC.
    pub started_ms: AtomicU64,
    /// Last heartbeat, milliseconds of CLOCK_MONOTONIC.
    pub heartbeat_ms: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Bytes received from clients (counted when a connection closes).
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients (counted when a connection closes).
    pub bytes_out: AtomicU64,
    /// Failed accept calls.
    pub accept_errors: AtomicU64,
    /// Connections closed at once without being served: over
    /// `--max-conns-per-ip`, over `--queue-timeout`, or shed when out of fds.
    pub refused: AtomicU64,
}

impl Slot {
    /// A slot of a process's own (single-process modes).
    pub fn leaked() -> &'static Slot {
        let s: &'static Slot = Box::leak(Box::default());
        s.claim(std::process::id());
        s.set_state(State::Running);
        s
    }

    /// Resets the slot for a new worker `pid`.
    pub fn claim(&self, pid: u32) {
        let now = now_ms();
        self.pid.store(pid, Relaxed);
        self.set_state(State::Booting);
        self.started_ms.store(now, Relaxed);
        self.heartbeat_ms.store(now, Relaxed);
        for c in [&self.accepted, &self.active, &self.bytes_in, &self.bytes_out, &self.accept_errors, &self.refused] {
            c.store(0, Relaxed);
        }
    }

    /// Marks the slot unused.
    pub fn free(&self) {
        self.set_state(State::Free);
        self.pid.store(0, Relaxed);
    }

    /// The worker's state.
    pub fn state(&self) -> State {
        match self.state.load(Relaxed) {
            1 => State::Booting,
            2 => State::Running,
            3 => State::Draining,
            _ => State::Free,
        }
    }

    /// Sets the worker's state.
    pub fn set_state(&self, s: State) {
        self.state.store(s as u32, Relaxed);
    }

    /// Records that the worker is alive now.
    #[inline]
    pub fn beat(&self) {
        self.heartbeat_ms.store(now_ms(), Relaxed);
    }

    /// Milliseconds since the last heartbeat.
    pub fn silent_ms(&self) -> u64 {
        now_ms().saturating_sub(self.heartbeat_ms.load(Relaxed))
    }
}

/// Milliseconds of CLOCK_MONOTONIC: the same clock in every process.
pub fn now_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Slots shared by the master and its workers.
#[derive(Debug)]
pub struct Scoreboard {
    slots: &'static [Slot],
}

impl Scoreboard {
    /// Maps `n` zeroed slots shared with every process forked afterwards.
    pub fn new(n: usize) -> std::io::Result<Scoreboard> {
        Ok(Scoreboard { slots: sys::map_shared_slots(n)? })
    }

    /// All slots.
    pub fn slots(&self) -> &'static [Slot] {
        self.slots
    }

    /// The index of a free slot, if any.
    pub fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.state() == State::Free)
    }
}
