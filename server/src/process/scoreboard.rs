//! The scoreboard: one slot of atomic counters per worker, in memory every
//! process of the server shares. The prefork master maps it (`MAP_SHARED |
//! MAP_ANONYMOUS`, in `sys`) before forking, so workers write their slot and
//! the master reads them all without locks or messages; fork mode maps one
//! slot that its children count into; single-process modes use a plain
//! heap slot. Strategies count through [`crate::context::Context`]; `metrics`
//! renders the counters.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::sys;

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub(crate) enum State {
    /// Unused slot.
    Free = 0,
    /// Forked, not serving yet.
    Booting = 1,
    /// Accepting and serving.
    Running = 2,
    /// Draining after a stop request.
    Draining = 3,
}

/// A counter of a slot. The metrics page lists them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Connections accepted.
    Accepted = 4,
    /// Connections open now.
    Active = 5,
    /// Bytes received from clients (counted when a connection closes).
    BytesIn = 6,
    /// Bytes sent to clients (counted when a connection closes).
    BytesOut = 7,
    /// Failed accept calls (and accepted sockets that could not be set up).
    AcceptErrors = 8,
    /// Connections closed at once without being served: over
    /// `--max-conns-per-ip`, over `--queue-timeout`, or shed when out of fds.
    Refused = 9,
    /// Handlers that returned an error or panicked.
    HandlerErrors = 10,
    /// Connections closed for their PROXY header.
    ProxyErrors = 12,
    /// Client addresses with a connection open now (kept with
    /// `--max-conns-per-ip`).
    Addresses = 13,
}

impl Counter {
    /// Every counter, in page order.
    pub(crate) const ALL: [Counter; 9] = [
        Counter::Accepted,
        Counter::Active,
        Counter::BytesIn,
        Counter::BytesOut,
        Counter::AcceptErrors,
        Counter::Refused,
        Counter::HandlerErrors,
        Counter::ProxyErrors,
        Counter::Addresses,
    ];

    /// Whether it is a level (what is open now) rather than a count.
    pub(crate) fn is_gauge(self) -> bool {
        matches!(self, Counter::Active | Counter::Addresses)
    }
}

const PID: usize = 0;
const STATE: usize = 1;
const STARTED_MS: usize = 2;
const HEARTBEAT_MS: usize = 3;
/// Microseconds the process's loop spent not waiting for events.
const BUSY_US: usize = 11;
/// Words per slot: the fields above and the counters, padded to two cache
/// lines so that workers writing neighbouring slots do not share a line.
const WORDS: usize = 16;

/// One worker's counters (a handle: copies refer to the same slot). All-zero
/// words are a valid, free slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot(&'static [AtomicU64; WORDS]);

impl Slot {
    /// A slot of a process's own (single-process modes), running.
    pub(crate) fn leaked() -> Slot {
        let s = Slot(Box::leak(Box::new([const { AtomicU64::new(0) }; WORDS])));
        s.claim(std::process::id());
        s.set_state(State::Running);
        s
    }

    /// Resets the slot for a new worker `pid` (booting).
    pub(crate) fn claim(&self, pid: u32) {
        let now = now_ms();
        self.set_pid(pid);
        self.set_state(State::Booting);
        self.0[STARTED_MS].store(now, Relaxed);
        self.0[HEARTBEAT_MS].store(now, Relaxed);
        for c in Counter::ALL {
            self.0[c as usize].store(0, Relaxed);
        }
        self.0[BUSY_US].store(0, Relaxed);
    }

    /// Marks the slot unused.
    pub(crate) fn free(&self) {
        self.set_state(State::Free);
        self.set_pid(0);
    }

    /// Sets the worker's process id.
    pub(crate) fn set_pid(&self, pid: u32) {
        self.0[PID].store(u64::from(pid), Relaxed);
    }

    /// The worker's state.
    pub(crate) fn state(&self) -> State {
        match self.0[STATE].load(Relaxed) {
            1 => State::Booting,
            2 => State::Running,
            3 => State::Draining,
            _ => State::Free,
        }
    }

    /// Sets the worker's state.
    pub(crate) fn set_state(&self, s: State) {
        self.0[STATE].store(s as u64, Relaxed);
    }

    /// When the slot was claimed, in milliseconds of CLOCK_MONOTONIC.
    pub(crate) fn started_ms(&self) -> u64 {
        self.0[STARTED_MS].load(Relaxed)
    }

    /// Records that the worker is alive now.
    #[inline]
    pub(crate) fn beat(&self) {
        self.0[HEARTBEAT_MS].store(now_ms(), Relaxed);
    }

    /// Adds `us` microseconds of work (the loop was not waiting).
    #[inline]
    pub(crate) fn add_busy(&self, us: u64) {
        self.0[BUSY_US].fetch_add(us, Relaxed);
    }

    /// Microseconds of work so far.
    pub(crate) fn busy_us(&self) -> u64 {
        self.0[BUSY_US].load(Relaxed)
    }

    /// Milliseconds since the last heartbeat.
    pub(crate) fn silent_ms(&self) -> u64 {
        now_ms().saturating_sub(self.0[HEARTBEAT_MS].load(Relaxed))
    }

    /// Adds `n` to `c`; returns the value before.
    #[inline]
    pub(crate) fn add(&self, c: Counter, n: u64) -> u64 {
        self.0[c as usize].fetch_add(n, Relaxed)
    }

    /// Subtracts `n` from `c`; returns the value before.
    #[inline]
    pub(crate) fn sub(&self, c: Counter, n: u64) -> u64 {
        self.0[c as usize].fetch_sub(n, Relaxed)
    }

    /// The value of `c`.
    #[inline]
    pub(crate) fn get(&self, c: Counter) -> u64 {
        self.0[c as usize].load(Relaxed)
    }
}

/// Milliseconds of CLOCK_MONOTONIC: the same clock in every process.
pub(crate) fn now_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

/// Slots shared by the master and its workers.
#[derive(Debug)]
pub(crate) struct Scoreboard {
    slots: Vec<Slot>,
}

impl Scoreboard {
    /// Maps `n` free slots shared with every process forked afterwards.
    pub(crate) fn new(n: usize) -> std::io::Result<Scoreboard> {
        let words = sys::map_shared_words(n.max(1) * WORDS)?;
        let slots = words
            .chunks_exact(WORDS)
            .map(|w| Slot(<&[AtomicU64; WORDS]>::try_from(w).expect("chunks of WORDS")))
            .collect();
        Ok(Scoreboard { slots })
    }

    /// Slot `i`.
    pub(crate) fn slot(&self, i: usize) -> Slot {
        self.slots[i]
    }

    /// The index of a free slot, if any.
    pub(crate) fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.state() == State::Free)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_separate_and_reset_on_claim() {
        let b = Scoreboard::new(3).unwrap();
        assert_eq!(b.free_slot(), Some(0));
        let (s0, s1) = (b.slot(0), b.slot(1));
        s0.claim(10);
        s1.claim(11);
        s0.add(Counter::Accepted, 5);
        s1.add(Counter::BytesIn, 7);
        assert_eq!((s0.get(Counter::Accepted), s1.get(Counter::Accepted)), (5, 0));
        assert_eq!((s0.0[PID].load(Relaxed), s1.0[PID].load(Relaxed), s0.state()), (10, 11, State::Booting));
        assert_eq!(b.free_slot(), Some(2));
        s0.free();
        assert_eq!(b.free_slot(), Some(0));
        s0.claim(12);
        assert_eq!(s0.get(Counter::Accepted), 0);
    }
}
