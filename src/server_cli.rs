//! The `server` command line: parses flags into a [`Config`], prints one
//! `listening on ...` line on stdout, logs to stderr (or `--log-file`,
//! reopened on SIGUSR1), detaches with `--daemon`, and maps errors to exit
//! codes (1: runtime, 2: usage). The `server` binary is [`echo_main`]
//! (uppercase echo, as a state machine or, with `--handler async`, as a
//! coroutine); a program serving a protocol of its own calls [`main`] with
//! its protocol factory or handler (or [`main_with`], to make it from the
//! parsed configuration) and gets every flag, signal and the graceful stop
//! unchanged. clap, anyhow and env_logger live here, not in
//! the server library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::log_file::LogFile;
use crate::work::{with_work, Work};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{CommandFactory, FromArgMatches, Parser};
use switchyard_common::UpperEcho;
use switchyard_server::{
    cpus, daemonize, factory_of, started_by_upgrade, Config, Detached, Mode, ProxyProtocol, Readiness, Server, Service,
    WorkerMode,
};

fn mode_names() -> PossibleValuesParser {
    PossibleValuesParser::new(Mode::ALL.map(Mode::name))
}

fn worker_names() -> PossibleValuesParser {
    PossibleValuesParser::new(WorkerMode::ALL.map(WorkerMode::name))
}

/// Uppercase echo over TCP, served by the concurrency strategy you choose.
///
/// Every flag can also come from the environment variable shown beside it
/// (`SWITCHYARD_MODE=event`, `SWITCHYARD_NODELAY=false`); a flag given on the
/// command line wins over the environment.
#[derive(Debug, Parser)]
#[command(name = "server", version)]
struct Args {
    /// Concurrency strategy.
    #[arg(long, env = "SWITCHYARD_MODE", value_parser = mode_names().map(|s| s.parse::<Mode>().expect("a listed name")), default_value = "thread")]
    mode: Mode,
    /// Address to listen on (port 0 picks a free port; never 0.0.0.0 unless you ask).
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// listen(2) backlog.
    #[arg(long, env = "SWITCHYARD_BACKLOG", default_value_t = 1024)]
    backlog: i32,
    /// Open connections at most per process (thread, event, reactor); at the cap the server stops accepting.
    #[arg(long, env = "SWITCHYARD_MAX_CONNS", default_value_t = 10_000)]
    max_conns: usize,
    /// Live children at most (fork); at the cap the parent waits for one to exit.
    #[arg(long, env = "SWITCHYARD_MAX_CHILDREN", default_value_t = 1024)]
    max_children: usize,
    /// Worker threads (pool; default 16), event loops (reactor; default: number of CPUs) or rings (uring; default 1).
    #[arg(long, env = "SWITCHYARD_THREADS")]
    threads: Option<usize>,
    /// Accepted connections waiting for a pool worker, at most.
    #[arg(long, env = "SWITCHYARD_QUEUE", default_value_t = 256)]
    queue: usize,
    /// Close a connection after this many seconds without traffic (default: never).
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    idle_timeout: Option<Duration>,
    /// Refuse (close) a client that waited this many seconds for a worker: serial, pool, and at the caps of
    /// fork (--max-children), thread, event and reactor (--max-conns). Default: the idle timeout; 0: forever.
    #[arg(long, env = "SWITCHYARD_QUEUE_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    queue_timeout: Option<Duration>,
    /// Seconds a graceful stop lets open connections finish.
    #[arg(long, env = "SWITCHYARD_GRACE", value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    grace: Duration,
    /// Set TCP_NODELAY on accepted connections (default).
    #[arg(long, env = "SWITCHYARD_NODELAY", overrides_with = "no_nodelay")]
    nodelay: bool,
    /// Leave Nagle's algorithm on.
    #[arg(long, env = "SWITCHYARD_NO_NODELAY")]
    no_nodelay: bool,
    /// Unsent bytes per connection above which the event loops stop reading it.
    #[arg(long, env = "SWITCHYARD_MAX_BUFFER", value_name = "BYTES", default_value_t = 256 * 1024)]
    max_buffer: usize,
    /// Worker processes (prefork; default: number of CPUs).
    #[arg(long, env = "SWITCHYARD_WORKERS")]
    workers: Option<usize>,
    /// What each prefork worker runs.
    #[arg(long, env = "SWITCHYARD_WORKER", value_parser = worker_names().map(|s| s.parse::<WorkerMode>().expect("a listed name")), default_value = "event")]
    worker: WorkerMode,
    /// Prefork: one SO_REUSEPORT socket per worker (kept by the master) instead of one shared listener.
    #[arg(long, env = "SWITCHYARD_REUSEPORT")]
    reuseport: bool,
    /// Prefork: replace a worker that has not sent a heartbeat for this many seconds.
    #[arg(long, env = "SWITCHYARD_WORKER_TIMEOUT", value_name = "SECS", value_parser = parse_secs)]
    worker_timeout: Option<Duration>,
    /// Prefork: replace a worker whose resident memory passes this many MiB (a replacement first, then it drains;
    /// each worker's limit is spread up to 10% below, so workers do not recycle together).
    #[arg(long, env = "SWITCHYARD_MAX_WORKER_MEMORY", value_name = "MIB")]
    max_worker_memory: Option<u64>,
    /// Prefork: recycle a worker after this many connections.
    #[arg(long, env = "SWITCHYARD_MAX_REQUESTS", value_name = "N")]
    max_requests: Option<u64>,
    /// Prefork: add up to this many connections to --max-requests per worker, so restarts spread out.
    #[arg(long, env = "SWITCHYARD_MAX_REQUESTS_JITTER", value_name = "J", default_value_t = 0)]
    max_requests_jitter: u64,
    /// Serve Prometheus metrics (GET /metrics) on this address.
    #[arg(long, env = "SWITCHYARD_METRICS", value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// SO_SNDBUF and SO_RCVBUF of accepted connections (default: the kernel's autotuning).
    #[arg(long, env = "SWITCHYARD_SOCKET_BUFFER", value_name = "BYTES")]
    socket_buffer: Option<usize>,
    /// Open connections per client address at most; the next one is closed at once (per process).
    #[arg(long, env = "SWITCHYARD_MAX_CONNS_PER_IP", value_name = "N")]
    max_conns_per_ip: Option<usize>,
    /// Every connection opens with a PROXY protocol header (v1 or v2, as HAProxy's send-proxy sends) naming the client; a missing or bad one closes that connection.
    #[arg(long, env = "SWITCHYARD_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// With --proxy-protocol: a network whose peers may send headers (repeat, or comma-separate in the variable); others are refused [default: 127.0.0.0/8 and ::1].
    #[arg(long, env = "SWITCHYARD_PROXY_FROM", value_name = "CIDR", value_delimiter = ',', requires = "proxy_protocol", value_parser = parse_cidr)]
    proxy_from: Vec<ipnet::IpNet>,
    /// After binding, drop privileges to this user (setgroups, setgid, setuid).
    #[arg(long, env = "SWITCHYARD_USER", value_name = "NAME")]
    user: Option<String>,
    /// With --user: the group to drop to (default: the user's primary group).
    #[arg(long, env = "SWITCHYARD_GROUP", value_name = "NAME", requires = "user")]
    group: Option<String>,
    /// Benchmarking aid: make handlers compute (cpu:N rounds per byte) or wait (sleep:MS per read).
    #[arg(long, env = "SWITCHYARD_WORK", value_name = "cpu:N|sleep:MS")]
    work: Option<Work>,
    /// The uppercase echo as a sans-IO state machine or as an async fn (the `server` binary only).
    #[arg(long, env = "SWITCHYARD_HANDLER", value_name = "STYLE", value_parser = ["sans-io", "async"])]
    handler: Option<String>,
    /// Write the server's pid here once it listens; removed on exit. Refused if it names a running server.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Detach (fork, setsid, fork, chdir /, streams on /dev/null); returns once the server listens.
    #[arg(long)]
    daemon: bool,
    /// Append logs here instead of stderr (every process); SIGUSR1 reopens it (logrotate).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

/// A network (`10.0.0.0/8`), or one address (`10.0.0.1`, a /32 or /128).
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{s}` is neither a network (10.0.0.0/8) nor an address"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("`{s}` is not a number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Args {
    fn to_config(&self) -> anyhow::Result<Config> {
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
        anyhow::ensure!(self.max_worker_memory != Some(0), "--max-worker-memory must be at least 1 (MiB)");
        c.max_worker_memory = self.max_worker_memory.map(|m| m << 20);
        anyhow::ensure!(self.max_requests != Some(0), "--max-requests must be at least 1");
        c.max_requests = self.max_requests;
        c.max_requests_jitter = self.max_requests_jitter;
        c.metrics = self.metrics;
        anyhow::ensure!(self.max_conns_per_ip != Some(0), "--max-conns-per-ip must be at least 1");
        c.max_conns_per_ip = self.max_conns_per_ip;
        c.socket_buffer = self.socket_buffer;
        c.user = self.user.clone();
        c.group = self.group.clone();
        if self.proxy_protocol {
            c.proxy = Some(match self.proxy_from.is_empty() {
                true => ProxyProtocol::loopback(),
                false => ProxyProtocol { trusted: self.proxy_from.clone() },
            });
        }
        // Absolute: a daemon runs in `/`.
        c.pid_file = self.pid_file.as_deref().map(std::path::absolute).transpose()?;
        Ok(c)
    }
}

/// The `server` binary: uppercase echo, as a state machine (`--handler
/// sans-io`, the default) or as a coroutine (`--handler async`).
pub fn echo_main() -> ExitCode {
    start(None, |args, _| {
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
    main_with(move |_| Ok(service))
}

/// [`main`] for a program whose service depends on the flags: `make` is
/// given the parsed [`Config`] and returns the service, or the reason it
/// cannot serve with that configuration (printed as `error: REASON`, exit
/// 2, before anything is bound). A program that cannot work in some modes
/// refuses them here (the chat example refuses the ones without a shared
/// event loop), and one can size itself from the limits (the HTTP
/// example bounds a request head's time by `--idle-timeout`).
pub fn main_with<S: Into<Service>>(make: impl FnOnce(&Config) -> Result<S, String>) -> ExitCode {
    start(Some(OWN_ABOUT), move |args, config| {
        anyhow::ensure!(args.handler.is_none(), "--handler: this program serves one handler of its own");
        let service = make(config).map_err(anyhow::Error::msg)?.into();
        Ok(match (service, args.work) {
            (s, None) => s,
            (Service::Protocol(f), Some(w)) => with_work(f, w).into(),
            (Service::Handler(_), Some(_)) => anyhow::bail!("--work applies to protocols, not handlers"),
        })
    })
}

/// What `--help` says of a program serving a service of its own.
const OWN_ABOUT: &str = "Serves this program's protocol over TCP with the concurrency strategy you choose \
                         (the flags, signals and graceful stop of Switchyard's `server`).";

/// Parses the flags (`--help` names the program and, if given, tells
/// `about`), makes the service from them, and runs the server (detached
/// first, with `--daemon`).
fn start(about: Option<&'static str>, service: impl FnOnce(&Args, &Config) -> anyhow::Result<Service>) -> ExitCode {
    let mut command = Args::command();
    if let Some(name) = std::env::args_os().next().as_deref().map(std::path::Path::new).and_then(|p| p.file_name()) {
        command = command.bin_name(name.to_string_lossy());
    }
    if let Some(about) = about {
        command = command.about(about);
    }
    let args = Args::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let usage = |e: anyhow::Error| {
        eprintln!("error: {e:#}");
        ExitCode::from(2)
    };
    // A binary upgrade's successor of a daemon is detached already (its
    // parent is the daemon), and inherits its sockets the systemd way.
    let args_daemon_successor = args.daemon && started_by_upgrade();
    let (daemon, log_path) = (args.daemon && !args_daemon_successor, args.log_file.clone());
    if daemon {
        if let Err(e) = refuse_daemon_under_systemd() {
            return usage(e);
        }
    }
    let made = args.to_config().and_then(|config| Ok((service(&args, &config)?, config)));
    let (service, config) = match made {
        Ok(made) => made,
        Err(e) => return usage(e),
    };
    let log = match log_path.as_deref().map(LogFile::open).transpose() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --log-file {}: {e}", log_path.unwrap_or_default().display());
            return ExitCode::from(1);
        }
    };
    let uring = config.mode == Mode::Uring || (config.mode == Mode::Prefork && config.worker == WorkerMode::Uring);
    if uring && matches!(service, Service::Handler(_)) {
        eprintln!("error: --handler async is not supported with --mode uring (its connections wait on readiness, which an io_uring loop does not have): use --mode event");
        return ExitCode::from(2);
    }
    init_logging(log.as_ref());
    // Before anything starts a thread: daemonize forks.
    let readiness = if daemon {
        match daemonize() {
            Ok(Detached::Daemon(r)) => {
                if let Some(l) = &log {
                    if let Err(e) = l.capture_stderr() {
                        log::warn!("standard error to {}: {e}", l.path().display());
                    }
                }
                Some(r)
            }
            Ok(Detached::Parent(Ok(line))) => {
                print_line(&line);
                return ExitCode::SUCCESS;
            }
            Ok(Detached::Parent(Err(e))) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("error: --daemon: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        if args_daemon_successor {
            // Where the daemon it replaces lives: no directory kept busy.
            if let Err(e) = std::env::set_current_dir("/") {
                log::warn!("--daemon: chdir /: {e}");
            }
        }
        None
    };
    match run(config, service, log, readiness) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// systemd starts a service in the foreground and watches that process:
/// a daemon that forks away from it breaks socket activation and readiness.
fn refuse_daemon_under_systemd() -> anyhow::Result<()> {
    for (var, what) in [("LISTEN_FDS", "socket activation"), ("NOTIFY_SOCKET", "a notify service")] {
        if std::env::var_os(var).is_some() {
            anyhow::bail!(
                "--daemon under systemd ({what}: {var} is set): systemd wants the server in the foreground; drop --daemon"
            );
        }
    }
    Ok(())
}

/// env_logger (`RUST_LOG`, default `info`) to stderr or to the log file.
/// Every line names its process: fork and prefork servers write one
/// stream from several.
fn init_logging(file: Option<&Arc<LogFile>>) {
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    logger.format(|buf, record| {
        let style = buf.default_level_style(record.level());
        writeln!(
            buf,
            "[{} {style}{:<5}{style:#} {} {}] {}",
            buf.timestamp_millis(),
            record.level(),
            std::process::id(),
            record.target(),
            record.args()
        )
    });
    if let Some(f) = file {
        logger.target(env_logger::Target::Pipe(Box::new(f.writer()))).write_style(env_logger::WriteStyle::Never);
    }
    logger.init();
}

fn run(
    config: Config,
    service: Service,
    log: Option<Arc<LogFile>>,
    readiness: Option<Readiness>,
) -> anyhow::Result<()> {
    let mode = config.mode;
    let describe = |e: std::io::Error| {
        if matches!(e.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AlreadyExists) {
            anyhow::anyhow!("{e}")
        } else {
            anyhow::Error::new(e).context(format!("{mode} server"))
        }
    };
    let server = match Server::bind(config) {
        Ok(s) => s,
        Err(e) => {
            let e = describe(e);
            if let Some(r) = readiness {
                r.failed(&format!("{e:#}"));
            }
            return Err(e);
        }
    };
    let server = match log {
        Some(l) => server.on_reopen(move || l.reopen()),
        None => server,
    };
    let mut line = format!("listening on {} mode={mode} pid={}", server.local_addr(), std::process::id());
    if let Some(from) = server.inherited() {
        line.push_str(&format!(" (socket from {from})"));
    }
    match readiness {
        Some(r) => r.ready(&line),
        None => print_line(&line),
    }
    server.serve(service).map_err(describe)
}

/// The start-up line on stdout, flushed (scripts wait for it).
fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
