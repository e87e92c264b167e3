//! What a run measured: [`Report`], built by `engine.rs` from the threads'
//! recorders, merged by `merge.rs`, and turned into a human summary, a JSON
//! document (with the full histograms, HdrHistogram V2 + DEFLATE, base64), an
//! `.hgrm` percentile distribution or (through `hlog.rs`) an interval log by
//! `cli.rs` or a benchmark harness.

use std::io;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::config::{fmt_wall, unix_secs, Config, DEFAULT_PERCENTILES};
use crate::engine::Plan;
use crate::progress::SecondStat;
use crate::stats::{decode_histogram, encode_histogram, new_histogram, Errors, Hists, Outcomes, Recorder};

/// The configuration a report came from, as recorded in its JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunInfo {
    /// Server addresses.
    pub addrs: Vec<String>,
    /// Source addresses bound.
    pub source_ips: Vec<String>,
    /// Connections (summed over merged instances).
    pub conns: u64,
    /// Event-loop threads (summed over merged instances).
    pub threads: u64,
    /// Bytes per message.
    pub size: u64,
    /// Payload kind.
    pub payload: String,
    /// Messages in flight per connection.
    pub depth: u64,
    /// Target messages per second (closed loop: none).
    pub rate: Option<u64>,
    /// Fixed rate: how send times are spread (`uniform` or `poisson`).
    pub arrival: String,
    /// Seed of the Poisson schedule.
    pub seed: u64,
    /// `--start-at`, Unix seconds.
    pub start_at_unix: Option<f64>,
    /// `--max-lag`, s.
    pub max_lag_secs: Option<f64>,
    /// `--spin`, s.
    pub spin_secs: f64,
    /// One connection per message.
    pub reconnect: bool,
    /// Measured duration asked for, s.
    pub duration_secs: Option<f64>,
    /// Message count asked for.
    pub messages: Option<u64>,
    /// Warm-up, s.
    pub warmup_secs: f64,
    /// Connection ramp (from the start of the run), s.
    pub ramp_secs: f64,
    /// Connect and reply timeout, s.
    pub timeout_secs: f64,
    /// New connections per second.
    pub connect_rate: u64,
    /// TCP_NODELAY.
    pub nodelay: bool,
}

impl RunInfo {
    fn of(cfg: &Config, threads: usize, plan: &Plan) -> RunInfo {
        RunInfo {
            addrs: cfg.addrs.iter().map(|a| a.to_string()).collect(),
            source_ips: cfg.source_ips.iter().map(|a| a.to_string()).collect(),
            conns: cfg.conns as u64,
            threads: threads as u64,
            size: cfg.size as u64,
            payload: cfg.payload.to_string(),
            depth: cfg.effective_depth() as u64,
            rate: cfg.rate,
            arrival: cfg.arrival.to_string(),
            seed: cfg.seed,
            start_at_unix: cfg.start_at.map(unix_secs),
            max_lag_secs: cfg.max_lag.map(|d| d.as_secs_f64()),
            spin_secs: cfg.spin.as_secs_f64(),
            reconnect: cfg.reconnect,
            duration_secs: cfg.effective_duration().map(|d| d.as_secs_f64()),
            messages: cfg.messages,
            warmup_secs: cfg.warmup.as_secs_f64(),
            ramp_secs: plan.ramp_ns as f64 / 1e9,
            timeout_secs: cfg.timeout.as_secs_f64(),
            connect_rate: cfg.connect_rate,
            nodelay: cfg.nodelay,
        }
    }
}

/// The wall-clock measuring window of one client instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Window {
    /// Measuring started (after warm-up), Unix seconds.
    pub start_unix: f64,
    /// Measuring ended, Unix seconds.
    pub end_unix: f64,
}

impl Window {
    /// Its length, s.
    pub fn secs(&self) -> f64 {
        (self.end_unix - self.start_unix).max(0.0)
    }

    /// A wall-clock time `secs` Unix seconds, as RFC 3339.
    pub fn fmt(secs: f64) -> String {
        fmt_wall(UNIX_EPOCH + Duration::from_secs_f64(secs.max(0.0)))
    }
}

/// What a load test (or several, merged) measured.
#[derive(Clone, Debug)]
pub struct Report {
    /// The configuration.
    pub config: RunInfo,
    /// Client instances merged into this report (1 for a single run).
    pub instances: u64,
    /// Measured time (after warm-up; merged: the common window, or the
    /// longest run if the windows do not overlap).
    pub elapsed: Duration,
    /// Messages completed after warm-up.
    pub messages: u64,
    /// Bytes echoed after warm-up (each counted once).
    pub bytes: u64,
    /// Messages per second (merged: the sum over the common window).
    pub msgs_per_sec: f64,
    /// Megabytes (10^6 bytes) echoed per second.
    pub mb_per_sec: f64,
    /// Messages completed during warm-up.
    pub warmup_messages: u64,
    /// Final checks answered (one per held connection, not measured).
    pub checks: u64,
    /// Messages outstanding when the run stopped.
    pub unfinished: u64,
    /// Fixed rate: messages that found every connection busy and waited for one.
    pub waited_for_conn: u64,
    /// Connections attempted.
    pub conns_attempted: u64,
    /// Connections established.
    pub conns_established: u64,
    /// What became of the connections.
    pub outcomes: Outcomes,
    /// Latency from the scheduled send time, ns (coordinated-omission corrected).
    pub latency: Histogram<u64>,
    /// Latency from the actual send time, ns.
    pub latency_uncorrected: Histogram<u64>,
    /// Fixed rate: how late the client took up each message against its schedule, ns.
    pub lag: Histogram<u64>,
    /// Connect latency, ns.
    pub connect_latency: Histogram<u64>,
    /// Errors by kind.
    pub errors: Errors,
    /// CPU time the client used (all its threads), s.
    pub client_cpu_secs: f64,
    /// Target rate in messages per second (fixed-rate runs).
    pub target_rate: Option<f64>,
    /// One entry per second after warm-up.
    pub series: Vec<SecondStat>,
    /// The measuring window of each instance (one for a single run).
    pub windows: Vec<Window>,
    /// Percentiles to show.
    pub percentiles: Vec<f64>,
}

/// Percentiles of one histogram, in µs, as written to JSON.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct LatencyJson {
    count: u64,
    min_us: f64,
    mean_us: f64,
    stdev_us: f64,
    max_us: f64,
    percentiles_us: std::collections::BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct RateJson {
    target: f64,
    achieved: f64,
    shortfall: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct LagJson {
    threshold_us: f64,
    threshold_from: String,
    exceeded: bool,
    waited_for_conn: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct HistogramsJson {
    encoding: String,
    unit: String,
    latency: String,
    latency_uncorrected: String,
    lag: String,
    connect: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct WindowJson {
    start_unix: f64,
    end_unix: f64,
    start: String,
    end: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct ReportJson {
    tool: String,
    instances: u64,
    config: RunInfo,
    windows: Vec<WindowJson>,
    elapsed_secs: f64,
    messages: u64,
    bytes: u64,
    msgs_per_sec: f64,
    mb_per_sec: f64,
    warmup_messages: u64,
    checks: u64,
    unfinished: u64,
    conns_attempted: u64,
    conns_established: u64,
    connections: Outcomes,
    rate: Option<RateJson>,
    errors: Errors,
    errors_total: u64,
    latency: LatencyJson,
    latency_uncorrected: LatencyJson,
    lag: Option<LatencyJson>,
    lag_check: Option<LagJson>,
    connect_latency: LatencyJson,
    client_cpu_secs: f64,
    client_cpu_secs_per_million_msgs: Option<f64>,
    percentiles: Vec<f64>,
    series: Vec<SecondStat>,
    histograms: HistogramsJson,
}

/// The name of a percentile in JSON: `p50`, `p99.9`, `p100`.
fn pname(p: f64) -> String {
    format!("p{p}")
}

fn latency_json(h: &Histogram<u64>, percentiles: &[f64]) -> LatencyJson {
    let us = |ns: u64| ns as f64 / 1e3;
    LatencyJson {
        count: h.len(),
        min_us: us(if h.is_empty() { 0 } else { h.min() }),
        mean_us: h.mean() / 1e3,
        stdev_us: h.stdev() / 1e3,
        max_us: us(h.max()),
        percentiles_us: percentiles.iter().map(|&p| (pname(p), us(h.value_at_percentile(p)))).collect(),
    }
}

/// How the schedule lag compares with its threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LagCheck {
    /// The lag's 99th percentile, ns.
    pub p99_ns: u64,
    /// The threshold, ns.
    pub threshold_ns: u64,
    /// The threshold is `--max-lag` (a failure), not 10% of the corrected p99 (a warning).
    pub explicit: bool,
}

impl LagCheck {
    /// Whether the lag is above the threshold.
    pub fn exceeded(&self) -> bool {
        self.p99_ns > self.threshold_ns
    }
}

/// A duration in nanoseconds with a unit that fits: `850ns`, `12.3µs`, `4.56ms`, `1.23s`.
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0}ns")
    } else if ns < 1e6 {
        format!("{:.1}µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2}ms", ns / 1e6)
    } else {
        format!("{:.2}s", ns / 1e9)
    }
}

/// An integer with thousands separators (`1,234,567`).
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// Builds the report of one run from its threads' recorders.
    pub(crate) fn from_run(
        cfg: &Config,
        threads: usize,
        plan: &Plan,
        recs: &[Recorder],
        series: Vec<SecondStat>,
        main_cpu: f64,
    ) -> Report {
        let mut r = Report::empty();
        r.config = RunInfo::of(cfg, threads, plan);
        r.instances = 1;
        r.percentiles = cfg.percentiles.clone();
        r.target_rate = cfg.rate.map(|x| x as f64);
        r.series = series;
        r.client_cpu_secs = main_cpu;
        let warmup = plan.measure_start_ns;
        let mut end = 0;
        let mut hists = Hists::default();
        for rec in recs {
            r.messages += rec.messages;
            r.bytes += rec.bytes;
            r.warmup_messages += rec.warmup_messages;
            r.checks += rec.checks;
            r.unfinished += rec.unfinished;
            r.waited_for_conn += rec.waited_for_conn;
            r.conns_attempted += rec.conns_attempted;
            r.conns_established += rec.conns_established;
            r.outcomes.add(&rec.outcomes);
            r.errors.add(&rec.errors);
            r.client_cpu_secs += rec.cpu_secs;
            hists.add(&rec.hists);
            crate::stats::add_histogram(&mut r.connect_latency, &rec.connect);
            // A thread that ran out of work ended at its last reply.
            end = end.max(if cfg.messages.is_some() { rec.last_completion_ns.max(warmup) } else { rec.end_ns });
        }
        (r.latency, r.latency_uncorrected, r.lag) = (hists.latency, hists.uncorrected, hists.lag);
        if let Some(d) = plan.deadline_ns {
            end = end.min(d);
        }
        r.elapsed = Duration::from_nanos(end.saturating_sub(warmup));
        // A thread's last, partial tick may come after the window with nothing in it.
        let window_end = r.elapsed.as_secs_f64();
        while r.series.last().is_some_and(|s| s.messages == 0 && s.errors == 0 && s.t - 1.0 >= window_end - 1e-9) {
            r.series.pop();
        }
        let start = unix_secs(plan.wall(warmup));
        r.windows = vec![Window { start_unix: start, end_unix: start + r.elapsed.as_secs_f64() }];
        r.recompute_rates();
        r
    }

    /// A report of nothing (the identity of merging).
    pub fn empty() -> Report {
        Report {
            config: RunInfo::default(),
            instances: 0,
            elapsed: Duration::ZERO,
            messages: 0,
            bytes: 0,
            msgs_per_sec: 0.0,
            mb_per_sec: 0.0,
            warmup_messages: 0,
            checks: 0,
            unfinished: 0,
            waited_for_conn: 0,
            conns_attempted: 0,
            conns_established: 0,
            outcomes: Outcomes::default(),
            latency: new_histogram(),
            latency_uncorrected: new_histogram(),
            lag: new_histogram(),
            connect_latency: new_histogram(),
            errors: Errors::default(),
            client_cpu_secs: 0.0,
            target_rate: None,
            series: Vec::new(),
            windows: Vec::new(),
            percentiles: DEFAULT_PERCENTILES.to_vec(),
        }
    }

    pub(crate) fn recompute_rates(&mut self) {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.msgs_per_sec = self.messages as f64 / secs;
            self.mb_per_sec = self.bytes as f64 / secs / 1e6;
        }
    }

    /// Client CPU seconds per million messages (`None` if none completed).
    pub fn cpu_secs_per_million(&self) -> Option<f64> {
        (self.messages > 0).then(|| self.client_cpu_secs * 1e6 / self.messages as f64)
    }

    /// Whether a fixed-rate run fell more than 3% short of its target.
    pub fn rate_shortfall(&self) -> bool {
        self.target_rate.is_some_and(|t| self.msgs_per_sec < 0.97 * t)
    }

    /// At a fixed rate, the schedule lag against its threshold: `--max-lag`,
    /// or else 10% of the corrected p99.
    pub fn lag_check(&self) -> Option<LagCheck> {
        if self.target_rate.is_none() || self.lag.is_empty() {
            return None;
        }
        let p99_ns = self.lag.value_at_quantile(0.99);
        Some(match self.config.max_lag_secs {
            Some(s) => LagCheck { p99_ns, threshold_ns: (s * 1e9) as u64, explicit: true },
            None => LagCheck { p99_ns, threshold_ns: self.latency.value_at_quantile(0.99) / 10, explicit: false },
        })
    }

    /// Whether the run passed: some message completed, no reply was wrong,
    /// none was broken off (reset or EOF mid-reply) or missing, every held
    /// connection answered its final check, and the lag stayed within
    /// `--max-lag` if given. The CLI exits 0 then.
    pub fn passed(&self) -> bool {
        self.messages > 0
            && self.errors.verification_failures() == 0
            && self.outcomes.unanswered == 0
            && !self.lag_check().is_some_and(|l| l.explicit && l.exceeded())
    }

    /// The report as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        let lag = self.lag_check();
        let j = ReportJson {
            tool: "switchyard-client".into(),
            instances: self.instances,
            config: self.config.clone(),
            windows: self
                .windows
                .iter()
                .map(|w| WindowJson {
                    start_unix: w.start_unix,
                    end_unix: w.end_unix,
                    start: Window::fmt(w.start_unix),
                    end: Window::fmt(w.end_unix),
                })
                .collect(),
            elapsed_secs: self.elapsed.as_secs_f64(),
            messages: self.messages,
            bytes: self.bytes,
            msgs_per_sec: self.msgs_per_sec,
            mb_per_sec: self.mb_per_sec,
            warmup_messages: self.warmup_messages,
            checks: self.checks,
            unfinished: self.unfinished,
            conns_attempted: self.conns_attempted,
            conns_established: self.conns_established,
            connections: self.outcomes,
            rate: self.target_rate.map(|t| RateJson {
                target: t,
                achieved: self.msgs_per_sec,
                shortfall: self.rate_shortfall(),
            }),
            errors: self.errors,
            errors_total: self.errors.total(),
            latency: latency_json(&self.latency, &self.percentiles),
            latency_uncorrected: latency_json(&self.latency_uncorrected, &self.percentiles),
            lag: self.target_rate.map(|_| latency_json(&self.lag, &self.percentiles)),
            lag_check: lag.map(|l| LagJson {
                threshold_us: l.threshold_ns as f64 / 1e3,
                threshold_from: if l.explicit { "--max-lag" } else { "10% of the corrected p99" }.into(),
                exceeded: l.exceeded(),
                waited_for_conn: self.waited_for_conn,
            }),
            connect_latency: latency_json(&self.connect_latency, &self.percentiles),
            client_cpu_secs: self.client_cpu_secs,
            client_cpu_secs_per_million_msgs: self.cpu_secs_per_million(),
            percentiles: self.percentiles.clone(),
            series: self.series.clone(),
            histograms: HistogramsJson {
                encoding: "HdrHistogram V2 + DEFLATE, base64".into(),
                unit: "ns".into(),
                latency: encode_histogram(&self.latency),
                latency_uncorrected: encode_histogram(&self.latency_uncorrected),
                lag: encode_histogram(&self.lag),
                connect: encode_histogram(&self.connect_latency),
            },
        };
        serde_json::to_value(j).expect("a report serializes")
    }

    /// Reads a report back from the JSON of [`Report::to_json`]; the
    /// histograms are decoded, the percentiles recomputed from them.
    pub fn from_json(text: &str) -> io::Result<Report> {
        let j: ReportJson = serde_json::from_str(text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if j.tool != "switchyard-client" {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not a switchyard-client report"));
        }
        Ok(Report {
            config: j.config,
            instances: j.instances.max(1),
            elapsed: Duration::from_secs_f64(j.elapsed_secs.max(0.0)),
            messages: j.messages,
            bytes: j.bytes,
            msgs_per_sec: j.msgs_per_sec,
            mb_per_sec: j.mb_per_sec,
            warmup_messages: j.warmup_messages,
            checks: j.checks,
            unfinished: j.unfinished,
            waited_for_conn: j.lag_check.map(|l| l.waited_for_conn).unwrap_or(0),
            conns_attempted: j.conns_attempted,
            conns_established: j.conns_established,
            outcomes: j.connections,
            latency: decode_histogram(&j.histograms.latency)?,
            latency_uncorrected: decode_histogram(&j.histograms.latency_uncorrected)?,
            lag: decode_histogram(&j.histograms.lag)?,
            connect_latency: decode_histogram(&j.histograms.connect)?,
            errors: j.errors,
            client_cpu_secs: j.client_cpu_secs,
            target_rate: j.rate.map(|r| r.target),
            series: j.series,
            windows: j.windows.iter().map(|w| Window { start_unix: w.start_unix, end_unix: w.end_unix }).collect(),
            percentiles: if j.percentiles.is_empty() { DEFAULT_PERCENTILES.to_vec() } else { j.percentiles },
        })
    }

    fn percentile_line(&self, h: &Histogram<u64>) -> String {
        self.percentiles
            .iter()
            .map(|&p| {
                let name = if p >= 100.0 { "max".to_string() } else { format!("p{p}") };
                format!("{name} {}", fmt_ns(h.value_at_percentile(p) as f64))
            })
            .collect::<Vec<_>>()
            .join("  ")
    }

    /// Two lines: mean, stdev (and min); then the percentiles.
    fn histogram_lines(&self, s: &mut String, label: &str, h: &Histogram<u64>, min: bool) {
        use std::fmt::Write as _;
        let min = if min { format!("  min {}", fmt_ns(h.min() as f64)) } else { String::new() };
        let _ = writeln!(s, "  {label:<12} mean {}  stdev {}{min}", fmt_ns(h.mean()), fmt_ns(h.stdev()));
        let _ = writeln!(s, "               {}", self.percentile_line(h));
    }

    /// One line: the instance's window, messages, rate, p99 and errors (as `client merge` lists its inputs).
    pub fn brief(&self) -> String {
        let window = match self.windows.first() {
            Some(w) => format!("{} to {}", Window::fmt(w.start_unix), Window::fmt(w.end_unix)),
            None => "no window".into(),
        };
        format!(
            "{window}, {} msgs, {:.1} msgs/s, p99 {}, max {}, {} errors",
            fmt_count(self.messages),
            self.msgs_per_sec,
            fmt_ns(self.latency.value_at_quantile(0.99) as f64),
            fmt_ns(self.latency.max() as f64),
            fmt_count(self.errors.total())
        )
    }

    /// What became of the connections, as one line (not for `--reconnect`).
    fn connections_line(&self) -> String {
        let o = &self.outcomes;
        let mut s = format!(
            "{} held to the end (answered the final check), {} closed by the server, {} unanswered, {} failed to connect",
            fmt_count(o.held),
            fmt_count(o.closed_by_server),
            fmt_count(o.unanswered),
            fmt_count(o.failed_to_connect)
        );
        let causes: Vec<String> = o
            .connect_errors
            .pairs()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {}", fmt_count(*n)))
            .collect();
        if !causes.is_empty() {
            s += &format!(" ({})", causes.join(", "));
        }
        if o.not_opened > 0 {
            s += &format!(", {} not opened (the run ended during the ramp)", fmt_count(o.not_opened));
        }
        if o.other > 0 {
            s += &format!(", {} closed after other errors", fmt_count(o.other));
        }
        s
    }

    /// The human summary printed by the CLI.
    pub fn summary(&self) -> String {
        use std::fmt::Write as _;
        let c = &self.config;
        let mut s = String::new();
        let rate = |r: u64| {
            let poisson =
                if c.arrival == "poisson" { format!(", poisson arrivals (seed {})", c.seed) } else { String::new() };
            format!("fixed rate {r} msgs/s{poisson}")
        };
        let mode = match (c.reconnect, c.rate) {
            (true, Some(r)) => format!("reconnect per message, {}", rate(r)),
            (true, None) => "reconnect per message, closed loop".into(),
            (false, Some(r)) => rate(r),
            (false, None) => "closed loop".into(),
        };
        let inst = if self.instances > 1 { format!("{} instances merged, ", self.instances) } else { String::new() };
        let _ = writeln!(
            s,
            "{inst}{} conns on {} threads, {} B {} messages, depth {}, {mode}, against {}",
            c.conns,
            c.threads,
            c.size,
            c.payload,
            c.depth,
            c.addrs.join(" ")
        );
        if c.start_at_unix.is_some() || self.instances > 1 {
            if let (Some(a), Some(b)) = (
                self.windows.iter().map(|w| w.start_unix).reduce(f64::max),
                self.windows.iter().map(|w| w.end_unix).reduce(f64::min),
            ) {
                let what = if self.instances > 1 { "common window" } else { "window" };
                let _ = writeln!(s, "  {what:<12} {} to {}", Window::fmt(a), Window::fmt(b.max(a)));
            }
        }
        let warm = if c.warmup_secs > 0.0 {
            format!(" (after {:.2}s warm-up, {} messages)", c.warmup_secs, fmt_count(self.warmup_messages))
        } else {
            String::new()
        };
        let _ = writeln!(s, "  elapsed      {:.3}s{warm}", self.elapsed.as_secs_f64());
        let _ = writeln!(
            s,
            "  messages     {} ({:.1} msgs/s, {:.2} MB/s)",
            fmt_count(self.messages),
            self.msgs_per_sec,
            self.mb_per_sec
        );
        if let Some(t) = self.target_rate {
            let flag = if self.rate_shortfall() { "  SHORTFALL: the target rate was not reached" } else { "" };
            let _ = writeln!(s, "  rate         target {t:.0} msgs/s, achieved {:.1} msgs/s{flag}", self.msgs_per_sec);
        }
        let label = if self.target_rate.is_some() { "latency (corrected)" } else { "latency" };
        if self.latency.is_empty() {
            let _ = writeln!(s, "  {label:<12} no replies");
        } else {
            self.histogram_lines(&mut s, label, &self.latency, true);
        }
        if self.target_rate.is_some() && !self.latency_uncorrected.is_empty() {
            self.histogram_lines(&mut s, "uncorrected", &self.latency_uncorrected, false);
        }
        if let Some(l) = self.lag_check() {
            self.histogram_lines(&mut s, "schedule lag", &self.lag, false);
            if l.exceeded() {
                let against = if l.explicit {
                    format!("above --max-lag {}", fmt_ns(l.threshold_ns as f64))
                } else {
                    format!("above 10% of the corrected p99 ({})", fmt_ns(l.threshold_ns as f64 * 10.0))
                };
                let _ = writeln!(
                    s,
                    "  LAG          the client's own lag (p99 {}) is {against}: the corrected figures include the client's own delay",
                    fmt_ns(l.p99_ns as f64)
                );
            }
        }
        if self.waited_for_conn > 0 {
            let _ = writeln!(
                s,
                "  busy conns   {} messages found every connection busy and waited for one (the server's delay: in the corrected latency, not in the lag)",
                fmt_count(self.waited_for_conn)
            );
        }
        let k = &self.connect_latency;
        let _ = writeln!(
            s,
            "  connect      {} established / {} attempted; mean {}  p99 {}  max {}",
            fmt_count(self.conns_established),
            fmt_count(self.conns_attempted),
            fmt_ns(k.mean()),
            fmt_ns(k.value_at_quantile(0.99) as f64),
            fmt_ns(k.max() as f64)
        );
        if !c.reconnect {
            let _ = writeln!(s, "  connections  {}", self.connections_line());
        }
        let errs: Vec<String> =
            self.errors.pairs().iter().filter(|(_, n)| *n > 0).map(|(k, n)| format!("{k} {}", fmt_count(*n))).collect();
        let _ = writeln!(s, "  errors       {}", if errs.is_empty() { "none".into() } else { errs.join(", ") });
        if self.unfinished > 0 {
            let _ = writeln!(s, "  unfinished   {} messages outstanding at the end", fmt_count(self.unfinished));
        }
        let per_m = self.cpu_secs_per_million().map(|x| format!(", {x:.2}s per million messages")).unwrap_or_default();
        let _ = writeln!(s, "  client CPU   {:.2}s{per_m}", self.client_cpu_secs);
        s
    }

    /// The standard HdrHistogram percentile distribution of the (corrected)
    /// latency, values in milliseconds.
    pub fn hgrm(&self) -> String {
        use std::fmt::Write as _;
        let h = &self.latency;
        let ms = |v: u64| v as f64 / 1e6;
        // As HdrHistogram computes it: the power of two above 2 * 10^sigfig.
        let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
        let mut s = String::new();
        let _ = writeln!(s, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
        let mut total = 0u64;
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                total += v.count_since_last_iteration();
                let q = v.quantile_iterated_to();
                if q < 1.0 {
                    let inv = 1.0 / (1.0 - q);
                    let _ = writeln!(s, "{:>12.3} {:>2.12} {:>10} {:>14.2}", ms(v.value_iterated_to()), q, total, inv);
                } else {
                    let _ = writeln!(s, "{:>12.3} {:>2.12} {:>10}", ms(v.value_iterated_to()), q, total);
                }
            }
        }
        let _ = writeln!(s, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", h.mean() / 1e6, h.stdev() / 1e6);
        let _ = writeln!(s, "#[Max     = {:>12.3}, Total count    = {:>12}]", ms(h.max()), h.len());
        let _ = writeln!(s, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), sub_buckets);
        s
    }
}
