//! The `client` command line: `client [flags]` runs a load test through
//! [`crate::run`] and prints its summary (plus JSON and `.hgrm` files if
//! asked); `client merge a.json b.json ...` adds reports of instances that ran
//! together. Exit codes: 0 passed, 1 a wrong, broken-off or missing reply
//! or no message completed, 2 bad arguments. The `client` binary (root package,
//! `src/bin/client.rs`) is just a call to [`main`]; `anyhow` lives only here.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{cpus, parse_duration, Config};
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
    /// Percentiles to show, e.g. 50,99,99.9 (default: those of the first report).
    #[arg(long, value_delimiter = ',')]
    percentiles: Option<Vec<f64>>,
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
    /// Fixed rate: messages per second in total (latency then counts from each
    /// message's scheduled time). Without it: closed loop.
    #[arg(long, short = 'r')]
    rate: Option<u64>,
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

/// Prints the summary and writes the files asked for; returns the exit code.
fn finish(report: &Report, json: Option<&str>, hgrm: Option<&PathBuf>) -> anyhow::Result<ExitCode> {
    let summary = report.summary();
    if json == Some("-") {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    if let Some(dest) = json {
        write_out(dest, &(serde_json::to_string_pretty(&report.to_json())? + "\n"))?;
    }
    if let Some(path) = hgrm {
        std::fs::write(path, report.hgrm()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if report.passed() {
        return Ok(ExitCode::SUCCESS);
    }
    let e = &report.errors;
    let mut why = Vec::new();
    if e.mismatch > 0 {
        why.push(format!("{} replies were not the uppercase of what was sent", e.mismatch));
    }
    if e.eof_mid_reply > 0 {
        why.push(format!("connections closed by the server in the middle of a reply: {}", e.eof_mid_reply));
    }
    if e.reply_timeout > 0 {
        why.push(format!("{} replies did not arrive within the timeout", e.reply_timeout));
    }
    if e.closed_idle > 0 {
        why.push(format!("connections closed by the server while the client still used them: {}", e.closed_idle));
    }
    if e.reset > 0 {
        why.push(format!("connections reset: {}", e.reset));
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
    eprintln!("client: FAILED: {}", why.join("; "));
    Ok(ExitCode::from(1))
}

fn run_test(args: RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = args.config();
    if let Err(e) = cfg.validate() {
        eprintln!("client: {e}");
        return Ok(ExitCode::from(2));
    }
    if let Some(r) = cfg.rate {
        if r < cfg.conns as u64 {
            eprintln!(
                "client: warning: --rate {r} is below --conns {}: {} connections get no messages and stay closed",
                cfg.conns,
                cfg.conns as u64 - r
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
    finish(&report, args.json.as_deref(), args.hgrm.as_ref())
}

fn merge(args: MergeArgs) -> anyhow::Result<ExitCode> {
    let mut reports = Vec::new();
    for f in &args.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        reports.push(Report::from_json(&text).with_context(|| format!("{} is not a client report", f.display()))?);
    }
    let mut merged = Report::merged(&reports);
    if let Some(p) = args.percentiles {
        merged.percentiles = p;
    }
    finish(&merged, args.json.as_deref(), args.hgrm.as_ref())
}

/// The whole `client` program.
pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Merge(m)) => merge(m),
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
