//! What a server is asked to do: the strategy and its limits. Built by the
//! `server` binary from its flags, or by a program directly.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// A concurrency strategy: how connections get CPU time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One client at a time, served to its end before the next accept.
    Serial,
    /// A new process per connection (fork); the parent only accepts and reaps.
    Fork,
    /// A new thread per connection, capped by --max-conns.
    Thread,
    /// A fixed pool of --threads workers fed by a bounded queue.
    Pool,
    /// One thread, one mio event loop, every connection a state machine.
    Event,
    /// --threads event loops on --threads threads.
    Reactor,
    /// One thread, one io_uring (or --threads rings on as many threads):
    /// completions instead of readiness.
    Uring,
    /// A master that forks --workers processes, each running --worker.
    Prefork,
}

impl Mode {
    /// Every mode, in the order of the docs.
    pub const ALL: [Mode; 8] =
        [Mode::Serial, Mode::Fork, Mode::Thread, Mode::Pool, Mode::Event, Mode::Reactor, Mode::Uring, Mode::Prefork];

    /// The name used on the command line and in the start-up line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Serial => "serial",
            Mode::Fork => "fork",
            Mode::Thread => "thread",
            Mode::Pool => "pool",
            Mode::Event => "event",
            Mode::Reactor => "reactor",
            Mode::Uring => "uring",
            Mode::Prefork => "prefork",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        Mode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| format!("unknown mode `{s}`"))
    }
}

/// What a prefork worker can run: the in-process strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    /// One client at a time per worker (Apache prefork, gunicorn sync).
    Serial,
    /// A thread per connection in each worker (Apache worker MPM).
    Thread,
    /// A thread pool in each worker.
    Pool,
    /// An event loop in each worker (nginx).
    Event,
    /// An io_uring loop in each worker (one ring per worker).
    Uring,
}

impl WorkerMode {
    /// Every worker mode.
    pub const ALL: [WorkerMode; 5] =
        [WorkerMode::Serial, WorkerMode::Thread, WorkerMode::Pool, WorkerMode::Event, WorkerMode::Uring];

    /// The strategy a worker runs.
    pub fn mode(self) -> Mode {
        match self {
            WorkerMode::Serial => Mode::Serial,
            WorkerMode::Thread => Mode::Thread,
            WorkerMode::Pool => Mode::Pool,
            WorkerMode::Event => Mode::Event,
            WorkerMode::Uring => Mode::Uring,
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        self.mode().name()
    }
}

impl std::fmt::Display for WorkerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for WorkerMode {
    type Err = String;
    fn from_str(s: &str) -> Result<WorkerMode, String> {
        WorkerMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown worker mode `{s}` (a worker runs serial, thread, pool, event or uring)"))
    }
}

/// Everything a strategy needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The strategy.
    pub mode: Mode,
    /// Address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// listen(2) backlog.
    pub backlog: i32,
    /// Open connections at most (thread, event, reactor; per process).
    pub max_conns: usize,
    /// Live children at most (fork).
    pub max_children: usize,
    /// Worker threads (pool), event loops (reactor) or rings (uring).
    pub threads: usize,
    /// Accepted connections waiting for a pool worker, at most.
    pub queue: usize,
    /// Close connections with no traffic for this long.
    pub idle_timeout: Option<Duration>,
    /// Refuse a client that waited this long for a worker (serial, pool,
    /// and at the caps of fork, thread, event and reactor).
    pub queue_timeout: Option<Duration>,
    /// How long a graceful stop lets connections finish.
    pub grace: Duration,
    /// TCP_NODELAY on accepted connections.
    pub nodelay: bool,
    /// Unsent output per connection above which the event loops stop
    /// reading it (backpressure).
    pub max_buffer: usize,
    /// Worker processes (prefork).
    pub workers: usize,
    /// The strategy each prefork worker runs.
    pub worker: WorkerMode,
    /// One SO_REUSEPORT socket per prefork worker instead of a shared one.
    pub reuseport: bool,
    /// Replace a prefork worker silent for this long.
    pub worker_timeout: Option<Duration>,
    /// Replace a prefork worker whose resident memory passes this many bytes
    /// (a replacement first, then the worker drains).
    pub max_worker_memory: Option<u64>,
    /// Recycle a prefork worker after this many connections...
    pub max_requests: Option<u64>,
    /// ...plus up to this many more (spreads the restarts).
    pub max_requests_jitter: u64,
    /// Serve Prometheus metrics here.
    pub metrics: Option<SocketAddr>,
    /// SO_SNDBUF and SO_RCVBUF of accepted connections (default: the kernel's).
    pub socket_buffer: Option<usize>,
    /// Open connections per client address at most.
    pub max_conns_per_ip: Option<usize>,
    /// Drop to this user after binding.
    pub user: Option<String>,
    /// ...and this group (default: the user's primary group).
    pub group: Option<String>,
    /// Write the server's pid here once it is bound and has dropped its
    /// privileges; removed when the server exits. [`Server::bind`] refuses
    /// to start when the file names a running server.
    ///
    /// [`Server::bind`]: crate::Server::bind
    pub pid_file: Option<PathBuf>,
    /// Read a PROXY protocol header first on every connection.
    pub proxy: Option<ProxyProtocol>,
}

/// The PROXY protocol (v1 and v2): every connection opens with a header
/// that names the client, sent by a balancer this server trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocol {
    /// Peers whose headers are believed; connections from elsewhere are
    /// refused.
    pub trusted: Vec<IpNet>,
}

impl ProxyProtocol {
    /// Headers from loopback only (127.0.0.0/8, ::1), the default.
    pub fn loopback() -> ProxyProtocol {
        let net = |s: &str| s.parse::<IpNet>().expect("a valid network");
        ProxyProtocol { trusted: vec![net("127.0.0.0/8"), net("::1/128")] }
    }

    /// Whether a connection from `peer` may send a header (an IPv4 peer
    /// seen through an IPv6 socket counts as itself).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|net| net.contains(&peer))
    }
}

/// The number of CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl Config {
    /// Defaults for `mode` on the default address.
    pub fn new(mode: Mode) -> Config {
        Config {
            mode,
            listen: SocketAddr::from(([127, 0, 0, 1], 7878)),
            backlog: 1024,
            max_conns: 10_000,
            max_children: 1024,
            threads: match mode {
                Mode::Reactor => cpus(),
                Mode::Uring => 1,
                _ => 16,
            },
            queue: 256,
            idle_timeout: None,
            queue_timeout: None,
            grace: Duration::from_secs(30),
            nodelay: true,
            max_buffer: 256 * 1024,
            workers: cpus(),
            worker: WorkerMode::Event,
            reuseport: false,
            worker_timeout: None,
            max_worker_memory: None,
            max_requests: None,
            max_requests_jitter: 0,
            metrics: None,
            user: None,
            group: None,
            max_conns_per_ip: None,
            socket_buffer: None,
            proxy: None,
            pid_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
        }
        for w in WorkerMode::ALL {
            assert_eq!(w.name().parse::<WorkerMode>(), Ok(w));
        }
        assert!("prefork".parse::<WorkerMode>().is_err());
        assert!("fork".parse::<WorkerMode>().is_err());
    }

    #[test]
    fn loopback_is_trusted_by_default_and_nothing_else() {
        let p = ProxyProtocol::loopback();
        for ip in ["127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.1"] {
            assert!(p.trusts(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["128.0.0.1", "10.0.0.1", "::2", "192.168.1.1"] {
            assert!(!p.trusts(ip.parse().unwrap()), "{ip}");
        }
        let lan = ProxyProtocol { trusted: vec!["10.1.0.0/16".parse().unwrap()] };
        assert!(lan.trusts("10.1.200.3".parse().unwrap()) && !lan.trusts("10.2.0.1".parse().unwrap()));
    }
}
