//! Combining the reports of client instances that ran at the same time
//! (e.g. several `client` processes against one server, started together
//! with `--start-at`): counts are summed, histograms added (percentiles are
//! never averaged), the per-second series added second by second (aligned
//! on the wall clock, each second's histograms added, its percentiles
//! recomputed), and the rate is the sum of what every instance completed
//! within the **common window** (the time all of them were measuring),
//! divided by its length. [`overlap`] says how well the windows agree.
//! Called by `cli.rs` for `client merge` and by harnesses through
//! [`Report::merged`].

use crate::progress::SecondStat;
use crate::report::{Report, Window};
use crate::stats::{add_histogram, Hists};

/// Windows overlapping for less than this share of the longest are "partial".
pub const MIN_OVERLAP: f64 = 0.9;

/// How a set of measuring windows overlap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Overlap {
    /// The time every window covers (`None`: there is none).
    pub common: Option<Window>,
    /// Without a common window: the gap between the earliest end and the latest start, s.
    pub gap_secs: f64,
    /// The longest window, s.
    pub longest_secs: f64,
    /// The latest start minus the earliest, s.
    pub start_spread_secs: f64,
}

impl Overlap {
    /// Whether the windows overlap for at least [`MIN_OVERLAP`] of the longest one.
    pub fn good(&self) -> bool {
        self.common.is_some_and(|c| c.secs() >= MIN_OVERLAP * self.longest_secs)
    }

    /// What is wrong with the overlap, if anything (for a warning or a `--strict` error).
    pub fn problem(&self) -> Option<String> {
        match self.common {
            None => Some(format!(
                "the measuring windows do not overlap: {:.3} s from the first end to the last start",
                self.gap_secs
            )),
            Some(c) if !self.good() => Some(format!(
                "the measuring windows overlap for only {:.3} s of the longest {:.3} s (starts {:.3} s apart; \
                 start the instances together with --start-at)",
                c.secs(),
                self.longest_secs,
                self.start_spread_secs
            )),
            Some(_) => None,
        }
    }
}

/// How `windows` overlap (`None` for no windows).
pub fn overlap(windows: &[Window]) -> Option<Overlap> {
    let start = windows.iter().map(|w| w.start_unix).reduce(f64::max)?;
    let end = windows.iter().map(|w| w.end_unix).reduce(f64::min)?;
    let first = windows.iter().map(|w| w.start_unix).reduce(f64::min)?;
    Some(Overlap {
        common: (end > start).then_some(Window { start_unix: start, end_unix: end }),
        gap_secs: (start - end).max(0.0),
        longest_secs: windows.iter().map(Window::secs).fold(0.0, f64::max),
        start_spread_secs: start - first,
    })
}

/// How many of `r`'s messages (and bytes) completed within `w`: its
/// per-second series, each second weighted by how much of it lies in `w`
/// (without a series: its totals, weighted by its whole window).
fn within(r: &Report, w: &Window) -> (f64, f64) {
    let Some(own) = r.windows.first() else { return (0.0, 0.0) };
    let share = |a: f64, b: f64| {
        let inside = (b.min(w.end_unix) - a.max(w.start_unix)).max(0.0);
        if b > a {
            inside / (b - a)
        } else {
            0.0
        }
    };
    if r.series.is_empty() {
        let f = share(own.start_unix, own.end_unix);
        return (r.messages as f64 * f, r.bytes as f64 * f);
    }
    r.series.iter().fold((0.0, 0.0), |(m, b), s| {
        let (a, z) = (own.start_unix + s.t - 1.0, (own.start_unix + s.t).min(own.end_unix));
        let f = share(a.min(z), z);
        (m + s.messages as f64 * f, b + s.bytes as f64 * f)
    })
}

/// Adds second `o` into `s`; with both histograms at hand the percentiles are recomputed.
fn add_second(s: &mut SecondStat, o: &SecondStat) {
    let sum = match (s.hists(), o.hists()) {
        (Ok(Some(mut a)), Ok(Some(b))) => {
            a.add(&b);
            Some(a)
        }
        _ => None,
    };
    let counts = (s.messages + o.messages, s.bytes + o.bytes, s.errors + o.errors, s.conns_open + o.conns_open);
    *s = match sum {
        Some(h) => SecondStat::from_hists(s.t, counts.0, counts.1, counts.2, counts.3, &h),
        None => SecondStat {
            t: s.t,
            messages: counts.0,
            bytes: counts.1,
            errors: counts.2,
            conns_open: counts.3,
            max_us: s.max_us.max(o.max_us),
            ..SecondStat::default()
        },
    };
}

impl Report {
    /// Adds `other` into `self`, as if both had been one run: counts,
    /// histograms and the series (other's seconds placed by its window's
    /// start against `self`'s first window). Rates are summed here;
    /// [`Report::merged`] recomputes them over the common window.
    pub fn merge(&mut self, other: &Report) {
        if self.instances == 0 {
            self.config = other.config.clone();
            self.percentiles = other.percentiles.clone();
        } else {
            let c = &mut self.config;
            let o = &other.config;
            c.conns += o.conns;
            c.threads += o.threads;
            c.rate = match (c.rate, o.rate) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
            c.messages = match (c.messages, o.messages) {
                (Some(a), Some(b)) => Some(a + b),
                (a, b) => a.or(b),
            };
            for a in &o.addrs {
                if !c.addrs.contains(a) {
                    c.addrs.push(a.clone());
                }
            }
        }
        let offset = match (self.windows.first(), other.windows.first()) {
            (Some(a), Some(b)) => (b.start_unix - a.start_unix).round().max(0.0) as usize,
            _ => 0,
        };
        self.instances += other.instances.max(1);
        self.elapsed = self.elapsed.max(other.elapsed);
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.msgs_per_sec += other.msgs_per_sec;
        self.mb_per_sec += other.mb_per_sec;
        self.warmup_messages += other.warmup_messages;
        self.checks += other.checks;
        self.unfinished += other.unfinished;
        self.waited_for_conn += other.waited_for_conn;
        self.conns_attempted += other.conns_attempted;
        self.conns_established += other.conns_established;
        self.outcomes.add(&other.outcomes);
        add_histogram(&mut self.latency, &other.latency);
        add_histogram(&mut self.latency_uncorrected, &other.latency_uncorrected);
        add_histogram(&mut self.lag, &other.lag);
        add_histogram(&mut self.connect_latency, &other.connect_latency);
        self.errors.add(&other.errors);
        self.client_cpu_secs += other.client_cpu_secs;
        self.target_rate = match (self.target_rate, other.target_rate) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        for (i, o) in other.series.iter().enumerate() {
            let at = i + offset;
            while self.series.len() < at {
                let t = self.series.len() as f64 + 1.0;
                self.series.push(SecondStat::from_hists(t, 0, 0, 0, 0, &Hists::default()));
            }
            match self.series.get_mut(at) {
                Some(s) => add_second(s, o),
                None => self.series.push(SecondStat { t: at as f64 + 1.0, ..o.clone() }),
            }
        }
        self.windows.extend(other.windows.iter().copied());
    }

    /// The merge of `reports` (in order of their windows' starts), its rate
    /// the sum over the common window when there is one.
    pub fn merged<'a>(reports: impl IntoIterator<Item = &'a Report>) -> Report {
        let mut all: Vec<&Report> = reports.into_iter().collect();
        all.sort_by(|a, b| {
            let start = |r: &Report| r.windows.first().map_or(0.0, |w| w.start_unix);
            start(a).total_cmp(&start(b))
        });
        let mut r = Report::empty();
        for o in &all {
            r.merge(o);
        }
        let every = all.iter().all(|o| !o.windows.is_empty());
        if let Some(common) = overlap(&r.windows).and_then(|o| o.common).filter(|_| every && all.len() > 1) {
            let (m, b) = all.iter().map(|o| within(o, &common)).fold((0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
            r.elapsed = std::time::Duration::from_secs_f64(common.secs());
            r.msgs_per_sec = m / common.secs();
            r.mb_per_sec = b / common.secs() / 1e6;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_histogram, ErrorKind};
    use std::time::Duration;

    fn report(values: &[u64], mps: f64, secs: u64) -> Report {
        let mut r = Report::empty();
        r.instances = 1;
        r.config.conns = 2;
        let mut h = new_histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        r.latency = h;
        r.messages = values.len() as u64;
        r.bytes = 64 * r.messages;
        r.msgs_per_sec = mps;
        r.elapsed = Duration::from_secs(secs);
        r.client_cpu_secs = 0.5;
        r.errors.count(ErrorKind::Mismatch);
        r.series = vec![SecondStat { t: 1.0, messages: 3, max_us: 2.0, p99_us: Some(1.0), ..Default::default() }];
        r
    }

    #[test]
    fn merge_sums_counts_and_adds_histograms() {
        let a = report(&[1000, 2000, 3000], 100.0, 10);
        let b = report(&[1_000_000; 97], 250.0, 12);
        let m = Report::merged([&a, &b]);
        assert_eq!(m.instances, 2);
        assert_eq!(m.messages, 100);
        assert_eq!(m.bytes, 6400);
        // No windows: the rates are summed.
        assert_eq!(m.msgs_per_sec, 350.0);
        assert_eq!(m.elapsed, Duration::from_secs(12));
        assert_eq!(m.client_cpu_secs, 1.0);
        assert_eq!(m.errors.mismatch, 2);
        assert_eq!(m.config.conns, 4);
        // Added, not averaged: 97% of the values are 1 ms, so the median is 1 ms
        // (an average of the two medians would be about 0.5 ms).
        assert_eq!(m.latency.len(), 100);
        assert_eq!(m.latency.value_at_quantile(0.5), m.latency.highest_equivalent(1_000_000));
        assert_eq!(m.latency.min(), 1000);
        assert_eq!(m.series.len(), 1);
        assert_eq!(m.series[0].messages, 6);
        // Seconds without histograms cannot give percentiles.
        assert_eq!(m.series[0].p99_us, None);
        // Merging one report changes nothing but the instance count.
        let one = Report::merged([&a]);
        assert_eq!(one.messages, a.messages);
        assert_eq!(one.series[0].p99_us, Some(1.0));
    }

    #[test]
    fn merge_survives_json() {
        let a = report(&[1000, 5000], 10.0, 1);
        let b = Report::from_json(&a.to_json().to_string()).unwrap();
        assert_eq!(b.latency, a.latency);
        assert_eq!((b.messages, b.errors, b.elapsed), (a.messages, a.errors, a.elapsed));
        let m = Report::merged([&a, &b]);
        assert_eq!(m.latency.len(), 4);
        assert_eq!(m.latency.max(), a.latency.max());
    }

    /// A run of `secs` seconds from `start` with `per_sec` messages each second, with histograms.
    fn windowed(start: f64, secs: usize, per_sec: u64) -> Report {
        let mut r = Report::empty();
        r.instances = 1;
        let mut total = Hists::default();
        for i in 0..secs {
            let mut h = Hists::default();
            for k in 0..per_sec {
                h.latency.record(1000 + k * (i as u64 + 1)).unwrap();
            }
            total.add(&h);
            r.series.push(SecondStat::from_hists(i as f64 + 1.0, per_sec, 64 * per_sec, 0, 1, &h));
        }
        r.latency = total.latency;
        r.messages = per_sec * secs as u64;
        r.bytes = 64 * r.messages;
        r.elapsed = Duration::from_secs(secs as u64);
        r.recompute_rates();
        r.windows = vec![Window { start_unix: start, end_unix: start + secs as f64 }];
        r
    }

    #[test]
    fn the_merged_rate_is_the_sum_over_the_common_window() {
        // a measures 100..110 at 100/s, b 102..112 at 300/s: the common window
        // is 102..110, in which a completed 800 and b 2400 messages.
        let (a, b) = (windowed(100.0, 10, 100), windowed(102.0, 10, 300));
        let o = overlap(&[a.windows[0], b.windows[0]]).unwrap();
        assert_eq!(o.common, Some(Window { start_unix: 102.0, end_unix: 110.0 }));
        assert!(!o.good(), "{o:?}"); // 8 s of 10: a partial overlap
        let m = Report::merged([&b, &a]);
        assert_eq!(m.elapsed, Duration::from_secs(8));
        assert!((m.msgs_per_sec - 400.0).abs() < 1e-9, "{}", m.msgs_per_sec);
        assert_eq!(m.messages, 4000);
        // Seconds are aligned on the wall clock: b's first second is the merge's third.
        assert_eq!(m.series.len(), 12);
        assert_eq!(m.series.iter().map(|s| s.messages).collect::<Vec<_>>()[..4], [100, 100, 400, 400]);
        // Per-second percentiles come from the added histograms.
        let h = m.series[2].hists().unwrap().unwrap();
        assert_eq!(h.latency.len(), 400);
        assert_eq!(m.series[2].p99_us, Some(h.latency.value_at_quantile(0.99) as f64 / 1e3));
    }

    #[test]
    fn overlap_tells_the_gap_and_partial_windows() {
        let w = |a: f64, b: f64| Window { start_unix: a, end_unix: b };
        let o = overlap(&[w(0.0, 10.0), w(13.5, 20.0)]).unwrap();
        assert_eq!((o.common, o.gap_secs), (None, 3.5));
        assert!(o.problem().unwrap().contains("do not overlap: 3.500 s"), "{:?}", o.problem());
        let o = overlap(&[w(0.0, 10.0), w(2.0, 12.0)]).unwrap();
        assert!(!o.good() && o.problem().unwrap().contains("only 8.000 s"), "{o:?}");
        let o = overlap(&[w(0.0, 10.0), w(0.01, 10.0)]).unwrap();
        assert!(o.good() && o.problem().is_none());
        assert_eq!(overlap(&[]), None);
    }
}
