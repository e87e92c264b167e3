//! Pacing arithmetic: splitting a total (messages per second, a message
//! budget, connections per second) exactly across threads or connections,
//! and the send schedule of one engine thread at a fixed rate: uniform
//! (message `k` at `phase + k / rate`) or Poisson (exponential gaps drawn
//! from a seeded generator). Pure functions and plain values with no sockets
//! or clocks, so the unit tests below check them directly; `engine.rs` asks
//! its thread's [`Pacer`] when the next message is due.

use std::fmt;
use std::str::FromStr;

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

/// How the send times of a fixed rate are spread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Arrival {
    /// Evenly spaced, `1 / rate` apart (as wrk2).
    #[default]
    Uniform,
    /// A Poisson process: independent exponential gaps of mean `1 / rate`
    /// (open-loop traffic as mutilate and lancet send it).
    Poisson,
}

impl FromStr for Arrival {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "uniform" => Ok(Arrival::Uniform),
            "poisson" => Ok(Arrival::Poisson),
            _ => Err(format!("unknown arrival `{s}` (uniform or poisson)")),
        }
    }
}

impl fmt::Display for Arrival {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arrival::Uniform => "uniform",
            Arrival::Poisson => "poisson",
        })
    }
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, fast generator whose output
/// for a seed is fixed by its definition, so a `--seed` reproduces the same
/// schedule with any version of this crate and of its dependencies (the
/// `rand` crate documents that its standard generators may change between
/// versions).
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform value in (0, 1]: never 0, so its logarithm is finite.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// An exponential value of mean `mean` (inversion: `-ln(U) * mean`).
    pub fn next_exp(&mut self, mean: f64) -> f64 {
        -self.next_open01().ln() * mean
    }
}

/// The send schedule of one engine thread at a fixed rate: when message
/// `k` (from 0) is due, in nanoseconds from the schedule's origin. Uniform
/// times are computed from `k` every time, so rounding never accumulates
/// into drift; Poisson times add exponential gaps to the previous time.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate: u64,
    phase_ns: u64,
    arrival: Arrival,
    rng: SplitMix64,
    /// Messages handed out so far.
    k: u64,
    /// Poisson: the time of the next message, ns (fractional).
    next_f: f64,
}

impl Pacer {
    /// The schedule of thread `index` of `count` sending `rate` messages per
    /// second; `None` when its rate is zero. Uniform schedules of different
    /// threads are offset by a fraction of one interval (`index / count`) so
    /// that they do not all send at the same instant; Poisson schedules draw
    /// from the generator seeded with `seed` and `index`.
    pub fn new(rate: u64, index: usize, count: usize, arrival: Arrival, seed: u64) -> Option<Pacer> {
        if rate == 0 {
            return None;
        }
        let interval = NANOS_PER_SEC / rate;
        let phase_ns = (u128::from(interval) * index as u128 / count.max(1) as u128) as u64;
        // Each thread its own stream: mix the index into the seed.
        let mut rng = SplitMix64::new(seed ^ (index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        let next_f = match arrival {
            Arrival::Uniform => 0.0,
            Arrival::Poisson => rng.next_exp(NANOS_PER_SEC as f64 / rate as f64),
        };
        Some(Pacer { rate, phase_ns, arrival, rng, k: 0, next_f })
    }

    /// Messages per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// When the next message is due (ns from the origin), without taking it.
    pub fn peek(&self) -> u64 {
        match self.arrival {
            Arrival::Uniform => uniform_at(self.phase_ns, self.rate, self.k),
            Arrival::Poisson => self.next_f as u64,
        }
    }

    /// Takes the next message: returns when it is due, and moves on.
    pub fn take(&mut self) -> u64 {
        let at = self.peek();
        self.k += 1;
        if self.arrival == Arrival::Poisson {
            self.next_f += self.rng.next_exp(NANOS_PER_SEC as f64 / self.rate as f64);
        }
        at
    }
}

/// Message `k` of a uniform schedule of `rate` per second starting at `phase_ns`.
fn uniform_at(phase_ns: u64, rate: u64, k: u64) -> u64 {
    phase_ns + (u128::from(k) * u128::from(NANOS_PER_SEC) / u128::from(rate)) as u64
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
        // Fewer than one per item: some get nothing.
        assert_eq!((0..5).map(|i| share(3, 5, i)).collect::<Vec<_>>(), vec![1, 1, 1, 0, 0]);
    }

    fn uniform(rate: u64, index: usize, count: usize) -> Pacer {
        Pacer::new(rate, index, count, Arrival::Uniform, 0).unwrap()
    }

    fn times(p: &mut Pacer, n: usize) -> Vec<u64> {
        (0..n).map(|_| p.take()).collect()
    }

    #[test]
    fn zero_rate_has_no_schedule() {
        assert!(Pacer::new(0, 0, 1, Arrival::Uniform, 0).is_none());
        assert!(Pacer::new(0, 0, 1, Arrival::Poisson, 0).is_none());
    }

    #[test]
    fn uniform_schedule_is_exact_and_does_not_drift() {
        let mut p = uniform(3, 0, 1);
        assert_eq!(p.peek(), 0);
        assert_eq!(times(&mut p, 4), vec![0, 333_333_333, 666_666_666, NANOS_PER_SEC]);
        // A million intervals later it is still exactly on the second.
        assert_eq!(uniform_at(0, 3, 3_000_000), 1_000_000 * NANOS_PER_SEC);
        // Within any one second, exactly `rate` messages are due.
        let mut p = uniform(7, 0, 1);
        let t = times(&mut p, 100);
        assert_eq!(t.iter().filter(|&&x| (2 * NANOS_PER_SEC..3 * NANOS_PER_SEC).contains(&x)).count(), 7);
    }

    #[test]
    fn phases_spread_threads_within_one_interval() {
        let count = 4;
        let phases: Vec<u64> = (0..count).map(|i| uniform(10, i, count).peek()).collect();
        assert_eq!(phases, vec![0, 25_000_000, 50_000_000, 75_000_000]);
        let mut p = uniform(10, 3, count);
        let t = times(&mut p, 11);
        assert_eq!(t[10] - t[0], NANOS_PER_SEC);
    }

    #[test]
    fn split_rate_total_is_exact() {
        // 1000 msgs/s over 7 threads: per-thread rates sum to 1000, and over
        // 10 s the schedules hold exactly 10,000 messages.
        let n = 7;
        let due: usize = (0..n)
            .map(|i| {
                let mut p = uniform(share(1000, n, i), i, n);
                std::iter::from_fn(|| Some(p.take())).take_while(|&t| t < 10 * NANOS_PER_SEC).count()
            })
            .sum();
        assert_eq!(due, 10_000);
    }

    #[test]
    fn arrival_names_round_trip() {
        for a in [Arrival::Uniform, Arrival::Poisson] {
            assert_eq!(a.to_string().parse::<Arrival>(), Ok(a));
        }
        assert!("gaussian".parse::<Arrival>().is_err());
    }

    #[test]
    fn splitmix_matches_its_published_output() {
        // SplitMix64 from seed 0: the sequence every implementation of the
        // algorithm gives (e.g. the seeding examples of the xoshiro generators).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(r.next_u64(), 0x06C4_5D18_8009_454F);
    }

    /// The gaps of a Poisson schedule of 1000 msgs/s from a fixed seed.
    fn poisson_gaps(seed: u64, n: usize) -> Vec<f64> {
        let mut p = Pacer::new(1000, 0, 1, Arrival::Poisson, seed).unwrap();
        let t = times(&mut p, n + 1);
        t.windows(2).map(|w| (w[1] - w[0]) as f64).collect()
    }

    /// The Kolmogorov–Smirnov statistic of `gaps` against an exponential
    /// distribution of mean `mean`.
    fn ks_exponential(gaps: &[f64], mean: f64) -> f64 {
        let mut sorted = gaps.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        sorted
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = 1.0 - (-x / mean).exp();
                (f - i as f64 / n).abs().max(((i + 1) as f64 / n - f).abs())
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn poisson_gaps_are_exponential() {
        let n = 100_000;
        let gaps = poisson_gaps(42, n);
        let mean_ns = 1e9 / 1000.0;
        let mean = gaps.iter().sum::<f64>() / n as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let cv = var.sqrt() / mean;
        // Standard errors at n = 100,000: 0.32% for the mean, about 0.45% for the CV.
        assert!((mean / mean_ns - 1.0).abs() < 0.02, "mean gap {mean} ns, expected {mean_ns}");
        assert!((cv - 1.0).abs() < 0.03, "coefficient of variation {cv}, expected 1 (uniform gaps: 0)");
        // The critical value of the KS statistic at the 1% level is 1.63 / sqrt(n).
        let d = ks_exponential(&gaps, mean_ns);
        assert!(d < 1.63 / (n as f64).sqrt(), "KS statistic {d}");
        // The same seed gives the same schedule; another seed another one.
        assert_eq!(poisson_gaps(42, 100), gaps[..100].to_vec());
        assert_ne!(poisson_gaps(43, 100), gaps[..100].to_vec());
    }

    #[test]
    fn the_ks_check_rejects_uniform_gaps() {
        // The check above can fail: a uniform schedule's equal gaps are far from exponential.
        let mut p = uniform(1000, 0, 1);
        let t = times(&mut p, 1001);
        let gaps: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
        assert!(ks_exponential(&gaps, 1e6) > 1.63 / (gaps.len() as f64).sqrt());
    }

    #[test]
    fn poisson_threads_draw_different_streams() {
        let mut a = Pacer::new(100, 0, 2, Arrival::Poisson, 7).unwrap();
        let mut b = Pacer::new(100, 1, 2, Arrival::Poisson, 7).unwrap();
        assert_ne!(times(&mut a, 10), times(&mut b, 10));
    }
}
