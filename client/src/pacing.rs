//! Pacing arithmetic: splitting a total (messages per second, or a message
//! budget) exactly across connections, and the send schedule of one paced
//! connection. Pure functions with no sockets or clocks, so the unit tests
//! below check them directly; `engine.rs` calls them when it sets up
//! connections and `conn.rs` when it decides whether a message is due.

/// Nanoseconds in one second.
pub const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The share of `total` that item `i` of `n` gets: `total / n`, plus one for
/// the first `total % n` items, so the shares always add up to `total`.
///
/// # Panics
/// If `n` is zero or `i >= n`.
pub fn share(total: u64, n: usize, i: usize) -> u64 {
    assert!(n > 0 && i < n, "share: item {i} of {n}");
    let n = n as u64;
    let i = i as u64;
    total / n + u64::from(i < total % n)
}

/// When the messages of one paced connection are due: message `k` at
/// `phase + k * 1s / rate`, computed from `k` every time so that rounding
/// never accumulates into drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    rate: u64,
    phase_ns: u64,
}

impl Schedule {
    /// The schedule of connection `index` of `count` sending `rate` messages
    /// per second; `None` when its rate is zero. Connections are offset by a
    /// fraction of one interval (`index / count`) so that they do not all send
    /// at the same instant.
    pub fn new(rate: u64, index: usize, count: usize) -> Option<Schedule> {
        if rate == 0 {
            return None;
        }
        let interval = NANOS_PER_SEC / rate;
        let phase_ns = (u128::from(interval) * index as u128 / count.max(1) as u128) as u64;
        Some(Schedule { rate, phase_ns })
    }

    /// Messages per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Time between two messages, in nanoseconds (rounded down).
    pub fn interval_ns(&self) -> u64 {
        NANOS_PER_SEC / self.rate
    }

    /// When message `k` (from 0) is due, in nanoseconds from the origin.
    pub fn at(&self, k: u64) -> u64 {
        self.phase_ns + (u128::from(k) * u128::from(NANOS_PER_SEC) / u128::from(self.rate)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_with_remainders() {
        for total in [0u64, 1, 7, 99, 100, 101, 1_000_003] {
            for n in [1usize, 2, 3, 7, 10, 64, 1000] {
                let shares: Vec<u64> = (0..n).map(|i| share(total, n, i)).collect();
                assert_eq!(shares.iter().sum::<u64>(), total, "total {total} over {n}");
                let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
                assert!(max - min <= 1, "uneven split of {total} over {n}: {shares:?}");
            }
        }
        assert_eq!((0..4).map(|i| share(10, 4, i)).collect::<Vec<_>>(), vec![3, 3, 2, 2]);
        // Fewer than one per connection: some get nothing.
        assert_eq!((0..5).map(|i| share(3, 5, i)).collect::<Vec<_>>(), vec![1, 1, 1, 0, 0]);
    }

    #[test]
    fn zero_rate_has_no_schedule() {
        assert_eq!(Schedule::new(0, 0, 1), None);
    }

    #[test]
    fn schedule_is_exact_and_does_not_drift() {
        let s = Schedule::new(3, 0, 1).unwrap();
        assert_eq!(s.at(0), 0);
        assert_eq!(s.at(1), 333_333_333);
        assert_eq!(s.at(2), 666_666_666);
        assert_eq!(s.at(3), NANOS_PER_SEC);
        // A million intervals later it is still exactly on the second.
        assert_eq!(s.at(3_000_000), 1_000_000 * NANOS_PER_SEC);
        // Within any one second, exactly `rate` messages are due.
        let s = Schedule::new(7, 0, 1).unwrap();
        let in_second = (0..100).filter(|&k| s.at(k) >= 2 * NANOS_PER_SEC && s.at(k) < 3 * NANOS_PER_SEC).count();
        assert_eq!(in_second, 7);
    }

    #[test]
    fn phases_spread_connections_within_one_interval() {
        let count = 4;
        let phases: Vec<u64> = (0..count).map(|i| Schedule::new(10, i, count).unwrap().at(0)).collect();
        assert_eq!(phases, vec![0, 25_000_000, 50_000_000, 75_000_000]);
        for i in 0..count {
            let s = Schedule::new(10, i, count).unwrap();
            assert!(s.at(0) < s.interval_ns());
            assert_eq!(s.at(10) - s.at(0), NANOS_PER_SEC);
        }
    }

    #[test]
    fn split_rate_total_is_exact() {
        // 1000 msgs/s over 7 connections: per-connection rates sum to 1000, and
        // over 10 s the schedules hold exactly 10,000 messages.
        let n = 7;
        let rates: Vec<u64> = (0..n).map(|i| share(1000, n, i)).collect();
        assert_eq!(rates.iter().sum::<u64>(), 1000);
        let due: usize = (0..n)
            .map(|i| {
                let s = Schedule::new(rates[i], i, n).unwrap();
                (0..).take_while(|&k| s.at(k) < 10 * NANOS_PER_SEC).count()
            })
            .sum();
        assert_eq!(due, 10_000);
    }
}
