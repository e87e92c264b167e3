//! Combining the reports of client instances that ran at the same time
//! (e.g. several `client` processes against one server): counts and rates
//! are summed, histograms are added (percentiles are never averaged), the
//! per-second series are summed second by second. Called by `cli.rs` for
//! `client merge` and by harnesses through [`Report::merge`].

use crate::progress::SecondStat;
use crate::report::Report;
use crate::stats::add_histogram;

impl Report {
    /// Adds `other` into `self`, as if both had been one run.
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
        self.instances += other.instances.max(1);
        self.elapsed = self.elapsed.max(other.elapsed);
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.msgs_per_sec += other.msgs_per_sec;
        self.mb_per_sec += other.mb_per_sec;
        self.warmup_messages += other.warmup_messages;
        self.unfinished += other.unfinished;
        self.conns_attempted += other.conns_attempted;
        self.conns_established += other.conns_established;
        add_histogram(&mut self.latency, &other.latency);
        add_histogram(&mut self.latency_uncorrected, &other.latency_uncorrected);
        add_histogram(&mut self.connect_latency, &other.connect_latency);
        self.errors.add(&other.errors);
        self.client_cpu_secs += other.client_cpu_secs;
        self.target_rate = match (self.target_rate, other.target_rate) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        let first = self.series.is_empty() && self.instances == other.instances.max(1);
        for (i, o) in other.series.iter().enumerate() {
            if i >= self.series.len() {
                self.series.push(SecondStat { t: o.t, ..SecondStat::default() });
            }
            let s = &mut self.series[i];
            s.messages += o.messages;
            s.bytes += o.bytes;
            s.errors += o.errors;
            s.conns_open += o.conns_open;
            s.max_us = s.max_us.max(o.max_us);
            if first {
                s.p50_us = o.p50_us;
                s.p99_us = o.p99_us;
            } else {
                s.p50_us = None;
                s.p99_us = None;
            }
        }
        if !first {
            for s in &mut self.series {
                s.p50_us = None;
                s.p99_us = None;
            }
        }
    }

    /// The merge of `reports`.
    pub fn merged<'a>(reports: impl IntoIterator<Item = &'a Report>) -> Report {
        let mut r = Report::empty();
        for o in reports {
            r.merge(o);
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
}
