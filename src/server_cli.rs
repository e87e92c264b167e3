//! The `server` command line: parses flags into a [`Config`], prints one
//! `listening on ...` line on stdout, logs to stderr, and maps errors to exit
//! codes (1: runtime, 2: usage). The `server` binary is [`echo_main`]
//! (uppercase echo, as a state machine or, with `--handler async`, as a
//! coroutine); a program serving a protocol of its own calls [`main`] with
//! its protocol factory or handler and gets every flag, signal and the
//! graceful stop unchanged. clap, anyhow and env_logger live here, not in
//! the server library.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::work::{with_work, Work};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Parser;
use switchyard_common::UpperEcho;
use switchyard_server::{cpus, factory_of, Config, Mode, Server, Service, WorkerMode};

fn mode_names() -> PossibleValuesParser {
    PossibleValuesParser::new(Mode::ALL.map(Mode::name))
}

fn worker_names() -> PossibleValuesParser {
    PossibleValuesParser::new(WorkerMode::ALL.map(WorkerMode::name))
}

/// Uppercase echo over TCP, served by the concurrency strategy you choose.
#[derive(Debug, Parser)]
#[command(name = "server", version, about, long_about = None)]
struct Args {
    /// Concurrency strategy.
    #[arg(long, value_parser = mode_names().map(|s| s.parse::<Mode>().expect("a listed name")), default_value = "thread")]
    mode: Mode,
    /// Address to listen on (port 0 picks a free port; never 0.0.0.0 unless you ask).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// listen(2) backlog.
    #[arg(long, default_value_t = 1024)]
    backlog: i32,
    /// Open connections at most per process (thread, event, reactor); at the cap the server stops accepting.
    #[arg(long, default_value_t = 10_000)]
    max_conns: usize,
    /// Live children at most (fork); at the cap the parent waits for one to exit.
    #[arg(long, default_value_t = 1024)]
    max_children: usize,
    /// Worker threads (pool; default 16), event loops (reactor; default: number of CPUs) or rings (uring; default 1).
    #[arg(long)]
    threads: Option<usize>,
    /// Accepted connections waiting for a pool worker, at most.
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// Close a connection after this many seconds without traffic (default: never).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    idle_timeout: Option<Duration>,
    /// Refuse (close) a client that waited this many seconds for a worker: serial, pool, and at the caps of
    /// fork (--max-children), thread, event and reactor (--max-conns). Default: the idle timeout; 0: forever.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    queue_timeout: Option<Duration>,
    /// Seconds a graceful stop lets open connections finish.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    grace: Duration,
    /// Set TCP_NODELAY on accepted connections (default).
    #[arg(long, overrides_with = "no_nodelay")]
    nodelay: bool,
    /// Leave Nagle's algorithm on.
    #[arg(long)]
    no_nodelay: bool,
    /// Unsent bytes per connection above which the event loops stop reading it.
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    max_buffer: usize,
    /// Worker processes (prefork; default: number of CPUs).
    #[arg(long)]
    workers: Option<usize>,
    /// What each prefork worker runs.
    #[arg(long, value_parser = worker_names().map(|s| s.parse::<WorkerMode>().expect("a listed name")), default_value = "event")]
    worker: WorkerMode,
    /// Prefork: one SO_REUSEPORT socket per worker (kept by the master) instead of one shared listener.
    #[arg(long)]
    reuseport: bool,
    /// Prefork: replace a worker that has not sent a heartbeat for this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    worker_timeout: Option<Duration>,
    /// Prefork: recycle a worker after this many connections.
    #[arg(long, value_name = "N")]
    max_requests: Option<u64>,
    /// Prefork: add up to this many connections to --max-requests per worker, so restarts spread out.
    #[arg(long, value_name = "J", default_value_t = 0)]
    max_requests_jitter: u64,
    /// Serve Prometheus metrics (GET /metrics) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// SO_SNDBUF and SO_RCVBUF of accepted connections (default: the kernel's autotuning).
    #[arg(long, value_name = "BYTES")]
    socket_buffer: Option<usize>,
    /// Open connections per client address at most; the next one is closed at once (per process).
    #[arg(long, value_name = "N")]
    max_conns_per_ip: Option<usize>,
    /// After binding, drop privileges to this user (setgroups, setgid, setuid).
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// With --user: the group to drop to (default: the user's primary group).
    #[arg(long, value_name = "NAME", requires = "user")]
    group: Option<String>,
    /// Benchmarking aid: make handlers compute (cpu:N rounds per byte) or wait (sleep:MS per read).
    #[arg(long, value_name = "cpu:N|sleep:MS")]
    work: Option<Work>,
    /// The uppercase echo as a sans-IO state machine or as an async fn (the `server` binary only).
    #[arg(long, value_name = "STYLE", value_parser = ["sans-io", "async"])]
    handler: Option<String>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("`{s}` is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = Config::new(self.mode);
        c.listen = self.listen;
        c.backlog = self.backlog;
        anyhow::ensure!(self.max_conns > 0, "--max-conns must be at least 1");
        anyhow::ensure!(self.max_children > 0, "--max-children must be at least 1");
        c.max_conns = self.max_conns;
        c.max_children = self.max_children;
        if let Some(t) = self.threads {
            anyhow::ensure!(t > 0, "--threads must be at least 1");
            c.threads = t;
        } else if self.mode == Mode::Reactor {
            c.threads = cpus();
        }
        c.queue = self.queue;
        c.idle_timeout = self.idle_timeout.filter(|d| !d.is_zero());
        c.queue_timeout = self.queue_timeout.or(c.idle_timeout).filter(|d| !d.is_zero());
        c.grace = self.grace;
        c.nodelay = !self.no_nodelay || self.nodelay;
        c.max_buffer = self.max_buffer.max(1024);
        if let Some(w) = self.workers {
            anyhow::ensure!(w > 0, "--workers must be at least 1");
            c.workers = w;
        }
        c.worker = self.worker;
        c.reuseport = self.reuseport;
        c.worker_timeout = self.worker_timeout.filter(|d| !d.is_zero());
        anyhow::ensure!(self.max_requests != Some(0), "--max-requests must be at least 1");
        c.max_requests = self.max_requests;
        c.max_requests_jitter = self.max_requests_jitter;
        c.metrics = self.metrics;
        anyhow::ensure!(self.max_conns_per_ip != Some(0), "--max-conns-per-ip must be at least 1");
        c.max_conns_per_ip = self.max_conns_per_ip;
        c.socket_buffer = self.socket_buffer;
        c.user = self.user;
        c.group = self.group;
        Ok(c)
    }
}

/// The `server` binary: uppercase echo, as a state machine (`--handler
/// sans-io`, the default) or as a coroutine (`--handler async`).
pub fn echo_main() -> ExitCode {
    start(|args| {
        let service = match args.handler.as_deref() {
            Some("async") => crate::echo::upper_echo_with(args.work).into(),
            _ => match args.work {
                Some(w) => with_work(factory_of::<UpperEcho>(), w).into(),
                None => factory_of::<UpperEcho>().into(),
            },
        };
        Ok(service)
    })
}

/// A whole server program for `service` (a protocol factory or a handler):
/// every flag, signal and the graceful stop of `server`. `--work` wraps a
/// protocol (a handler does its own waiting); `--handler` is for the
/// `server` binary only.
pub fn main(service: impl Into<Service>) -> ExitCode {
    let service = service.into();
    start(move |args| {
        anyhow::ensure!(args.handler.is_none(), "--handler: this program serves one handler of its own");
        Ok(match (service, args.work) {
            (s, None) => s,
            (Service::Protocol(f), Some(w)) => with_work(f, w).into(),
            (Service::Handler(_), Some(_)) => anyhow::bail!("--work applies to protocols, not handlers"),
        })
    })
}

/// Parses the flags, makes the service from them, and runs the server.
fn start(service: impl FnOnce(&Args) -> anyhow::Result<Service>) -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = Args::parse();
    let service = match service(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let uring = config.mode == Mode::Uring || (config.mode == Mode::Prefork && config.worker == WorkerMode::Uring);
    if uring && matches!(service, Service::Handler(_)) {
        eprintln!("error: --handler async is not supported with --mode uring (its connections wait on readiness, which an io_uring loop does not have): use --mode event");
        return ExitCode::from(2);
    }
    match run(config, service) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(config: Config, service: Service) -> anyhow::Result<()> {
    let mode = config.mode;
    let describe = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("{e}")
        } else {
            anyhow::Error::new(e).context(format!("{mode} server"))
        }
    };
    let server = Server::bind(config).map_err(describe)?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {} mode={mode} pid={}", server.local_addr(), std::process::id());
        let _ = out.flush();
    }
    server.serve(service).map_err(describe)
}
