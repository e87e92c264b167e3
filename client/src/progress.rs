//! Per-second view of a run, assembled on the main thread from the ticks the
//! engine threads send: the live progress line on stderr (when asked) and the
//! per-second series of the report, each second with its percentiles and its
//! histograms (so merged reports, plots and interval logs can use them).
//! Called by `engine.rs` while the threads run.

use std::collections::BTreeMap;
use std::io;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::pacing::NANOS_PER_SEC;
use crate::report::fmt_ns;
use crate::stats::{add_histogram, decode_histogram, encode_histogram, new_histogram, second_phase, Hists, Tick};

/// One second of a run, all threads (and, merged, all instances) together.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    /// Median latency (corrected), µs (`None` in merges of reports without histograms).
    pub p50_us: Option<f64>,
    /// 99th percentile latency (corrected), µs.
    pub p99_us: Option<f64>,
    /// Largest latency (corrected), µs.
    pub max_us: f64,
    /// 99th percentile of the uncorrected latency, µs.
    pub uncorrected_p99_us: Option<f64>,
    /// Fixed rate: 99th percentile of the schedule lag, µs.
    pub lag_p99_us: Option<f64>,
    /// Fixed rate: largest schedule lag, µs.
    pub lag_max_us: Option<f64>,
    /// The second's histograms (HdrHistogram V2 + DEFLATE, base64, ns).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histograms: Option<SecondHistograms>,
}

/// The encoded histograms of one second.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecondHistograms {
    /// Corrected latency.
    pub latency: String,
    /// Uncorrected latency.
    pub latency_uncorrected: String,
    /// Schedule lag (empty in closed loop).
    pub lag: String,
}

impl SecondStat {
    /// Second `t` with these counts, its figures computed from `h`.
    pub fn from_hists(t: f64, messages: u64, bytes: u64, errors: u64, conns_open: u64, h: &Hists) -> SecondStat {
        let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e3;
        let some = |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| us(h, q));
        let p99 = us(&h.latency, 0.99);
        let latency = encode_histogram(&h.latency);
        // Closed loop: the uncorrected latency is the corrected one; walk and encode it once.
        let same = h.uncorrected == h.latency;
        SecondStat {
            t,
            messages,
            bytes,
            errors,
            conns_open,
            p50_us: Some(us(&h.latency, 0.5)),
            p99_us: Some(p99),
            max_us: h.latency.max() as f64 / 1e3,
            uncorrected_p99_us: Some(if same { p99 } else { us(&h.uncorrected, 0.99) }),
            lag_p99_us: some(&h.lag, 0.99),
            lag_max_us: some(&h.lag, 1.0),
            histograms: Some(SecondHistograms {
                latency_uncorrected: if same { latency.clone() } else { encode_histogram(&h.uncorrected) },
                latency,
                lag: encode_histogram(&h.lag),
            }),
        }
    }

    /// The second's histograms, if the report has them.
    pub fn hists(&self) -> io::Result<Option<Hists>> {
        let Some(h) = &self.histograms else { return Ok(None) };
        Ok(Some(Hists {
            latency: decode_histogram(&h.latency)?,
            uncorrected: decode_histogram(&h.latency_uncorrected)?,
            lag: decode_histogram(&h.lag)?,
        }))
    }
}

#[derive(Default)]
struct Pending {
    messages: u64,
    warmup_messages: u64,
    bytes: u64,
    errors: u64,
    conns_open: u64,
    hists: Option<Hists>,
    warmup_latency: Option<Histogram<u64>>,
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
        p.warmup_messages += tick.warmup_messages;
        p.bytes += tick.bytes;
        p.errors += tick.errors;
        p.conns_open += tick.conns_open;
        p.partial |= tick.last;
        match &mut p.hists {
            Some(h) => h.add(&tick.hists),
            None => p.hists = Some(tick.hists),
        }
        match &mut p.warmup_latency {
            Some(h) => add_histogram(h, &tick.warmup_latency),
            None => p.warmup_latency = Some(tick.warmup_latency),
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
        let h = p.hists.unwrap_or_default();
        let start = second_phase(self.measure_start) + second * NANOS_PER_SEC;
        let warmup = start < self.measure_start;
        if self.progress && !at_end && !p.partial {
            // Everything that completed in the second, warm-up included.
            let mut all = p.warmup_latency.unwrap_or_else(new_histogram);
            add_histogram(&mut all, &h.latency);
            let lag = if h.lag.is_empty() {
                String::new()
            } else {
                format!("  lag p99 {}", fmt_ns(h.lag.value_at_quantile(0.99) as f64))
            };
            eprintln!(
                "[{:>4}s]{} conns {}/{}  msgs/s {}  p99 {}{lag}  errors {}",
                (start + NANOS_PER_SEC) / NANOS_PER_SEC,
                if warmup { " warmup" } else { "" },
                p.conns_open,
                self.conns,
                p.messages + p.warmup_messages,
                fmt_ns(all.value_at_quantile(0.99) as f64),
                p.errors
            );
        }
        if !warmup {
            let t = (start + NANOS_PER_SEC - self.measure_start) as f64 / 1e9;
            self.done.push(SecondStat::from_hists(t, p.messages, p.bytes, p.errors, p.conns_open, &h));
        }
    }

    /// All seconds after warm-up.
    pub fn finish(mut self) -> Vec<SecondStat> {
        self.settle(true);
        self.done
    }
}
