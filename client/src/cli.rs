//! The `client` command line: `client [flags]` runs a load test through
//! [`crate::run`] and prints its summary (plus JSON, `.hgrm` and `.hlog`
//! files if asked); `client merge a.json b.json ...` adds reports of
//! instances that ran together and checks that their windows overlap;
//! `client plot report.json -o run.svg` draws one. Exit codes: 0 passed, 1 a
//! wrong, broken-off or missing reply, a held connection lost, a lag above
//! `--max-lag`, non-overlapping windows with `merge --strict`, or no message
//! completed, 2 bad arguments. The `client` binary (root package,
//! `src/bin/client.rs`) is just a call to [`main`]; `anyhow` lives only here.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{cpus, fmt_wall, parse_duration, parse_start_at, Config, DEFAULT_SEED};
use crate::pacing::Arrival;
use crate::payload::PayloadKind;
use crate::report::Report;

/// Load tester for uppercase echo servers: checks every byte of every reply
/// and measures latency with HDR histograms.
#[derive(Debug, Parser)]
#[command(name = "client", version, about, long_about = None, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add the JSON reports of client instances that ran at the same time.
    Merge(MergeArgs),
    /// Draw a JSON report (or a merge): messages per second, latency per second, lag.
    Plot(PlotArgs),
}

#[derive(Debug, Args)]
struct PlotArgs {
    /// A JSON report written with `--json` (or by `client merge --json`).
    report: PathBuf,
    /// The SVG file to write.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
    /// The plot's title [default: the report's first line].
    #[arg(long)]
    title: Option<String>,
}

#[derive(Debug, Args)]
struct MergeArgs {
    /// JSON reports written with `--json`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Write the merged report as JSON to FILE (`-` for stdout).
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Write the merged latency distribution (.hgrm) to FILE.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Write the merged interval log (HdrHistogram .hlog) to FILE.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,
    /// Percentiles to show, e.g. 50,99,99.9 (default: those of the first report).
    #[arg(long, value_delimiter = ',')]
    percentiles: Option<Vec<f64>>,
    /// Fail (exit 1) unless the measuring windows overlap for at least 90% of the longest.
    #[arg(long)]
    strict: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Server address; repeat to spread connections over several servers.
    #[arg(long = "addr", value_name = "HOST:PORT", value_parser = parse_addr)]
    addrs: Vec<SocketAddr>,
    /// Source address to bind (e.g. 127.0.0.2); repeat to rotate over several.
    #[arg(long = "source-ip", value_name = "IP")]
    source_ips: Vec<IpAddr>,
    /// Event-loop threads [default: number of CPUs].
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Connections (with --reconnect: concurrent connection slots).
    #[arg(long, short = 'c', default_value_t = 16)]
    conns: usize,
    /// Bytes per message.
    #[arg(long, short = 's', default_value_t = 64)]
    size: usize,
    /// Message bytes: text, binary or random.
    #[arg(long, default_value = "random", value_parser = parse_payload)]
    payload: PayloadKind,
    /// Messages in flight per connection (more than 1 pipelines).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Fixed rate: messages per second in total, spread round robin over the
    /// free connections (latency then counts from each message's scheduled
    /// time). Without it: closed loop.
    #[arg(long, short = 'r')]
    rate: Option<u64>,
    /// Fixed rate: evenly spaced sends (uniform) or exponential gaps (poisson).
    #[arg(long, default_value = "uniform", value_parser = parse_arrival)]
    arrival: Arrival,
    /// Seed of the poisson schedule (the same seed, the same send times).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Start the warm-up (then measuring) at this wall-clock time, so that
    /// several instances measure the same window: +SECS from now, Unix
    /// seconds, or RFC 3339 (2026-01-01T12:00:00Z). Connections ramp up before it.
    #[arg(long, value_name = "TIME", value_parser = parse_start_at)]
    start_at: Option<std::time::SystemTime>,
    /// Fixed rate: fail (exit 1) if the p99 of the client's own schedule lag
    /// exceeds this (without it: a warning above 10% of the corrected p99).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_lag: Option<Duration>,
    /// Fixed rate: wake this long before each send and busy-poll until it is
    /// due: less schedule lag for more client CPU (e.g. 20us; best with a core to spare).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0")]
    spin: Duration,
    /// A new connection for every message (connect, send, read, close).
    #[arg(long)]
    reconnect: bool,
    /// How long to measure, e.g. 10s, 500ms, 2m [default: 10s unless --messages].
    #[arg(long, short = 'd', value_parser = parse_duration)]
    duration: Option<Duration>,
    /// How many messages to measure in total.
    #[arg(long, short = 'n')]
    messages: Option<u64>,
    /// Time at the start left out of the statistics.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    warmup: Duration,
    /// New connections per second, in total.
    #[arg(long, default_value_t = 10_000)]
    connect_rate: u64,
    /// Connect and reply timeout.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// Leave Nagle's algorithm on (TCP_NODELAY is set by default).
    #[arg(long)]
    no_nodelay: bool,
    /// Percentiles to report.
    #[arg(long, value_delimiter = ',', default_value = "50,90,99,99.9,99.99,100")]
    percentiles: Vec<f64>,
    /// Write the report as JSON to FILE (`-` for stdout; the summary then goes to stderr).
    #[arg(long, value_name = "FILE")]
    json: Option<String>,
    /// Write the latency distribution in HdrHistogram's .hgrm text format to FILE.
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Write an HdrHistogram interval log (.hlog): one histogram per second,
    /// tagged corrected, uncorrected and (fixed rate) lag.
    #[arg(long, value_name = "FILE")]
    hlog: Option<PathBuf>,
    /// No progress line.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Progress line even when stderr is not a terminal.
    #[arg(long)]
    progress: bool,
}

/// `IP:PORT` or `HOST:PORT` (the first address the name resolves to).
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("`{s}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{s}` resolves to no address"))
}

fn parse_payload(s: &str) -> Result<PayloadKind, String> {
    s.parse()
}

fn parse_arrival(s: &str) -> Result<Arrival, String> {
    s.parse()
}

impl RunArgs {
    fn config(&self) -> Config {
        Config {
            addrs: if self.addrs.is_empty() { Config::default().addrs } else { self.addrs.clone() },
            source_ips: self.source_ips.clone(),
            threads: self.threads.unwrap_or_else(cpus),
            conns: self.conns,
            size: self.size,
            payload: self.payload,
            depth: self.depth,
            rate: self.rate,
            arrival: self.arrival,
            seed: self.seed,
            start_at: self.start_at,
            max_lag: self.max_lag,
            spin: self.spin,
            reconnect: self.reconnect,
            duration: self.duration,
            messages: self.messages,
            warmup: self.warmup,
            connect_rate: self.connect_rate,
            timeout: self.timeout,
            nodelay: !self.no_nodelay,
            progress: !self.quiet && (self.progress || std::io::stderr().is_terminal()),
            percentiles: self.percentiles.clone(),
        }
    }
}

/// Writes `text` to `dest` (`-` is stdout).
fn write_out(dest: &str, text: &str) -> anyhow::Result<()> {
    if dest == "-" {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    } else {
        std::fs::write(dest, text).with_context(|| format!("cannot write {dest}"))?;
    }
    Ok(())
}

/// The files a run or a merge writes.
struct Outputs<'a> {
    json: Option<&'a str>,
    hgrm: Option<&'a PathBuf>,
    hlog: Option<&'a PathBuf>,
}

/// Prints the summary and writes the files asked for; returns the reasons
/// the run failed (none: it passed).
fn finish(report: &Report, out: &Outputs) -> anyhow::Result<Vec<String>> {
    let summary = report.summary();
    if out.json == Some("-") {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if let Some(dest) = out.json {
        write_out(dest, &(serde_json::to_string_pretty(&report.to_json())? + "\n"))?;
    }
    if let Some(path) = out.hgrm {
        std::fs::write(path, report.hgrm()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = out.hlog {
        let mut f = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        crate::hlog::write(report, &mut f).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let e = &report.errors;
    let mut why = Vec::new();
    if e.mismatch > 0 {
        why.push(format!("{} replies were not the uppercase of what was sent", e.mismatch));
    }
    if e.eof_mid_reply > 0 {
        why.push(format!("connections closed by the server in the middle of a reply: {}", e.eof_mid_reply));
    }
    if e.reply_timeout > 0 || report.outcomes.unanswered > 0 {
        why.push(format!(
            "{} replies did not arrive within the timeout ({} connections unanswered)",
            e.reply_timeout, report.outcomes.unanswered
        ));
    }
    if e.closed_idle > 0 {
        why.push(format!("connections closed by the server while the client still held them: {}", e.closed_idle));
    }
    if e.reset > 0 {
        why.push(format!("connections reset: {}", e.reset));
    }
    if let Some(l) = report.lag_check().filter(|l| l.explicit && l.exceeded()) {
        why.push(format!(
            "the client's schedule lag (p99 {}) exceeds --max-lag {}: the corrected latency includes the client's own delay",
            crate::report::fmt_ns(l.p99_ns as f64),
            crate::report::fmt_ns(l.threshold_ns as f64)
        ));
    }
    if report.messages == 0 {
        let cause = if e.refused > 0 {
            format!(
                " (connection refused {} times: is the server running at {}?)",
                e.refused,
                report.config.addrs.join(" ")
            )
        } else if e.connect_timeout > 0 {
            format!(" ({} connects timed out)", e.connect_timeout)
        } else {
            String::new()
        };
        why.push(format!("no message completed{cause}"));
    }
    Ok(why)
}

/// The exit code for the reasons of [`finish`].
fn verdict(why: Vec<String>) -> ExitCode {
    if why.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("client: FAILED: {}", why.join("; "));
    ExitCode::from(1)
}

fn run_test(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config();
    if let Err(e) = cfg.validate() {
        eprintln!("client: {e}");
        return Ok(ExitCode::from(2));
    }
    if let Some(at) = cfg.start_at {
        let threads = cfg.threads.min(cfg.conns);
        let ramp = Duration::from_nanos(crate::engine::ramp_ns(&cfg, threads));
        let ahead = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        if ramp > ahead {
            eprintln!(
                "client: warning: the connection ramp ({:.2}s at --connect-rate {}) ends {:.2}s after --start-at {}: \
                 the warm-up starts before every connection is open",
                ramp.as_secs_f64(),
                cfg.connect_rate,
                (ramp - ahead).as_secs_f64(),
                fmt_wall(at)
            );
        }
    }
    let report = crate::run(&cfg).context("the load test could not run")?;
    if report.rate_shortfall() {
        eprintln!(
            "client: warning: achieved {:.1} msgs/s, short of the target {} msgs/s",
            report.msgs_per_sec,
            cfg.rate.unwrap_or(0)
        );
    }
    let out = Outputs { json: args.json.as_deref(), hgrm: args.hgrm.as_ref(), hlog: args.hlog.as_ref() };
    Ok(verdict(finish(&report, &out)?))
}

fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for f in &args.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        reports.push(Report::from_json(&text).with_context(|| format!("{} is not a client report", f.display()))?);
    }
    // Each instance's line on stderr when the JSON goes to stdout, as the summary does.
    let lines: Vec<String> =
        args.files.iter().zip(&reports).map(|(f, r)| format!("{}: {}", f.display(), r.brief())).collect();
    if args.json.as_deref() == Some("-") {
        lines.iter().for_each(|l| eprintln!("{l}"));
    } else {
        lines.iter().for_each(|l| println!("{l}"));
    }
    let mut merged = Report::merged(&reports);
    if let Some(p) = args.percentiles {
        merged.percentiles = p;
    }
    let problem = crate::merge::overlap(&merged.windows).and_then(|o| o.problem());
    if let Some(p) = &problem {
        eprintln!("client: {}{p}", if args.strict { "" } else { "warning: " });
    }
    let out = Outputs { json: args.json.as_deref(), hgrm: args.hgrm.as_ref(), hlog: args.hlog.as_ref() };
    let mut why = finish(&merged, &out)?;
    if args.strict {
        why.extend(problem);
    }
    Ok(verdict(why))
}

fn plot(args: PlotArgs) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(&args.report).with_context(|| format!("cannot read {}", args.report.display()))?;
    let r = Report::from_json(&text).with_context(|| format!("{} is not a client report", args.report.display()))?;
    let title = args.title.unwrap_or_else(|| r.summary().lines().next().unwrap_or_default().to_string());
    crate::plot::svg(&r, &title, &args.output).with_context(|| format!("cannot draw {}", args.output.display()))?;
    println!("wrote {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// The whole `client` program.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Merge(m)) => merge(m),
        Some(Command::Plot(p)) => plot(p),
        None => run_test(cli.run),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("client: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
