//! One deadline table per loop: a few named timers, each set to an instant
//! or stopped, and [`Deadlines::next`], the earliest, which is how long the
//! loop may sleep. Time is always passed in (quinn-proto's timer table):
//! the table never reads the clock, so its users decide which reading of it
//! counts.
//!
//! Each loop refreshes the timers of the pieces it runs (the accept policy's
//! back-off or backlog sample, the drain's next stage, the event loop's
//! idle queue, the prefork master's respawn and kill deadlines) and sleeps
//! until the earliest.

use std::time::Instant;

/// The timers a loop may run. Every loop uses a few of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The accept policy: end of a back-off, or the next backlog sample.
    Accept,
    /// The drain: when its next stage begins.
    Drain,
    /// The event loop: the first connection to become idle.
    Idle,
    /// The pool: the oldest queued connection's `--queue-timeout`.
    Queue,
    /// Something the owner must do again soon (a revisit, a retry).
    Soon,
    /// The event loop: the earliest timer of its handlers.
    Tasks,
    /// Prefork: the next respawn after a boot failure.
    Respawn,
    /// Fork, prefork: the next child to kill.
    Children,
    /// Prefork: the next sweep of the workers' heartbeats.
    Health,
}

impl Timer {
    const COUNT: usize = 9;
}

/// Named deadlines, earliest first on demand.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deadlines {
    at: [Option<Instant>; Timer::COUNT],
}

impl Deadlines {
    /// A table with every timer stopped.
    pub(crate) fn new() -> Deadlines {
        Deadlines::default()
    }

    /// This table with `timer` set to `at`.
    pub(crate) fn with(mut self, timer: Timer, at: Instant) -> Deadlines {
        self.set(timer, Some(at));
        self
    }

    /// Sets `timer` to `at` (`None` stops it).
    #[inline]
    pub(crate) fn set(&mut self, timer: Timer, at: Option<Instant>) {
        self.at[timer as usize] = at;
    }

    /// The earliest running timer and when it fires.
    pub(crate) fn next(&self) -> Option<(Timer, Instant)> {
        self.at
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by_key(|&(_, t)| t)
            .map(|(i, t)| (ALL[i], t))
    }

    /// When the earliest running timer fires.
    pub(crate) fn earliest(&self) -> Option<Instant> {
        self.next().map(|(_, t)| t)
    }
}

const ALL: [Timer; Timer::COUNT] = [
    Timer::Accept,
    Timer::Drain,
    Timer::Idle,
    Timer::Queue,
    Timer::Soon,
    Timer::Tasks,
    Timer::Respawn,
    Timer::Children,
    Timer::Health,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn next_is_the_earliest_running_timer() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut d = Deadlines::new();
        assert_eq!(d.next(), None);
        assert_eq!(d.earliest(), None);
        d.set(Timer::Drain, Some(t0 + 3 * s));
        d.set(Timer::Accept, Some(t0 + s));
        d.set(Timer::Health, Some(t0 + 2 * s));
        assert_eq!(d.next(), Some((Timer::Accept, t0 + s)));
        assert_eq!(d.earliest(), Some(t0 + s));
        d.set(Timer::Accept, None);
        assert_eq!(d.next(), Some((Timer::Health, t0 + 2 * s)));
        let d = d.with(Timer::Soon, t0);
        assert_eq!(d.next(), Some((Timer::Soon, t0)));
        for (i, t) in ALL.iter().enumerate() {
            assert_eq!(*t as usize, i, "ALL is in declaration order");
        }
    }
}
