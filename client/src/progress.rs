//! Per-second view of a run, assembled on the main thread from the ticks the
//! engine threads send: the live progress line on stderr (when asked) and the
//! per-second series of the report. Called by `engine.rs` while the threads
//! run.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::pacing::NANOS_PER_SEC;
use crate::report::fmt_ns;
use crate::stats::{add_histogram, second_phase, Tick};

/// One second of a run, all threads together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SecondStat {
    /// End of the second, in seconds since measuring started.
    pub t: f64,
    /// Messages completed.
    pub messages: u64,
    /// Bytes echoed.
    pub bytes: u64,
    /// Errors.
    pub errors: u64,
    /// Connections open at the end of the second.
    pub conns_open: u64,
    /// Median latency, µs (`None` in merged reports: percentiles do not add).
    pub p50_us: Option<f64>,
    /// 99th percentile latency, µs (`None` in merged reports).
    pub p99_us: Option<f64>,
    /// Largest latency, µs.
    pub max_us: f64,
}

#[derive(Default)]
struct Pending {
    messages: u64,
    bytes: u64,
    errors: u64,
    conns_open: u64,
    latency: Option<Histogram<u64>>,
    partial: bool,
}

/// Collects ticks into seconds; prints each second once every running thread
/// has reported it.
pub struct Series {
    /// Per thread: the last second it reported, and whether it has stopped.
    threads: Vec<(Option<u64>, bool)>,
    measure_start: u64,
    progress: bool,
    conns: usize,
    pending: BTreeMap<u64, Pending>,
    done: Vec<SecondStat>,
}

impl Series {
    /// For `threads` threads, measuring after `measure_start`; prints progress if asked.
    pub fn new(threads: usize, measure_start: u64, progress: bool, conns: usize) -> Series {
        Series {
            threads: vec![(None, false); threads],
            measure_start,
            progress,
            conns,
            pending: BTreeMap::new(),
            done: Vec::new(),
        }
    }

    /// Adds one thread's tick.
    pub fn add(&mut self, tick: Tick) {
        let p = self.pending.entry(tick.second).or_default();
        p.messages += tick.messages;
        p.bytes += tick.bytes;
        p.errors += tick.errors;
        p.conns_open += tick.conns_open;
        p.partial |= tick.last;
        match &mut p.latency {
            Some(h) => add_histogram(h, &tick.latency),
            None => p.latency = Some(tick.latency),
        }
        if let Some(t) = self.threads.get_mut(tick.thread) {
            t.0 = Some(tick.second);
            t.1 |= tick.last;
        }
        self.settle(false);
    }

    /// Finishes every complete second (all of them when `all`), in order.
    fn settle(&mut self, all: bool) {
        while let Some(entry) = self.pending.first_entry() {
            let second = *entry.key();
            let complete = self.threads.iter().all(|&(upto, stopped)| stopped || upto >= Some(second));
            if !all && !complete {
                break;
            }
            let p = entry.remove();
            self.finish_second(second, p, all);
        }
    }

    fn finish_second(&mut self, second: u64, p: Pending, at_end: bool) {
        let h = p.latency.unwrap_or_else(crate::stats::new_histogram);
        let start = second_phase(self.measure_start) + second * NANOS_PER_SEC;
        let warmup = start < self.measure_start;
        if self.progress && !at_end && !p.partial {
            eprintln!(
                "[{:>4}s]{} conns {}/{}  msgs/s {}  p99 {}  errors {}",
                (start + NANOS_PER_SEC) / NANOS_PER_SEC,
                if warmup { " warmup" } else { "" },
                p.conns_open,
                self.conns,
                p.messages,
                fmt_ns(h.value_at_quantile(0.99) as f64),
                p.errors
            );
        }
        if !warmup {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
            self.done.push(SecondStat {
                t: (start + NANOS_PER_SEC - self.measure_start) as f64 / 1e9,
                messages: p.messages,
                bytes: p.bytes,
                errors: p.errors,
                conns_open: p.conns_open,
                p50_us: Some(us(0.5)),
                p99_us: Some(us(0.99)),
                max_us: h.max() as f64 / 1e3,
            });
        }
    }

    /// All seconds after warm-up.
    pub fn finish(mut self) -> Vec<SecondStat> {
        self.settle(true);
        self.done
    }
}
