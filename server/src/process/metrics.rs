//! `--metrics ADDR`: the scoreboard as Prometheus text over HTTP
//! (`GET /metrics`), served from inside the owner's own poll loop (the
//! prefork master, which never runs threads) by a tiny non-blocking HTTP/1.0
//! responder: read the request head, answer, close. The endpoint does not
//! know what a page holds: when a request for it is complete it says so
//! ([`Metrics::wants_page`]) and the owner renders it ([`render`]).
//!
//! Names (every counter also per worker, labelled `pid`):
//! `switchyard_connections_accepted_total`, `switchyard_connections_active`,
//! `switchyard_bytes_received_total`, `switchyard_bytes_sent_total`,
//! `switchyard_accept_errors_total`, `switchyard_connections_refused_total`,
//! `switchyard_worker_*` (same, per
//! worker), `switchyard_worker_heartbeat_age_seconds`, `switchyard_workers`,
//! `switchyard_worker_spawns_total`, `switchyard_worker_deaths_total`,
//! `switchyard_uptime_seconds`.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use slab::Slab;

use super::scoreboard::{now_ms, Counter, Slot, State};

/// Connections held at most. At the cap the oldest is closed to make room,
/// so a scrape always gets in, however many idle or slow clients hold
/// connections open.
pub(crate) const MAX_CLIENTS: usize = 4096;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Request heads longer than this are refused.
const MAX_HEAD: usize = 8 * 1024;
/// How long after a failed accept the endpoint tries again.
const RETRY: Duration = Duration::from_millis(100);

/// Counters of workers that have exited, so totals never go down.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Retired {
    /// By counter, in the order of [`Counter::ALL`] (the gauges stay 0).
    totals: [u64; Counter::ALL.len()],
}

impl Retired {
    /// Adds an exiting worker's counters.
    pub(crate) fn add(&mut self, s: Slot) {
        for (i, c) in Counter::ALL.into_iter().enumerate() {
            if !c.is_gauge() {
                self.totals[i] += s.get(c);
            }
        }
    }
}

#[derive(Debug)]
struct Client {
    stream: TcpStream,
    head: Vec<u8>,
    /// The request is for the page, which the owner has yet to render.
    wants_page: bool,
    reply: Vec<u8>,
    sent: usize,
    /// Its place in `order`.
    seq: u64,
}

/// The endpoint: a listener and the requests being answered.
#[derive(Debug)]
pub(crate) struct Metrics {
    listener: TcpListener,
    base: Token,
    clients: Slab<Client>,
    /// The clients in the order they came (the order of their head
    /// deadlines): (deadline, key, seq); entries of clients already gone
    /// are skipped when they come up.
    order: std::collections::VecDeque<(Instant, usize, u64)>,
    seq: u64,
    /// When to accept again after a failed accept.
    retry_at: Option<Instant>,
}

impl Metrics {
    /// Binds `addr` and registers it as `base`; clients get tokens above it.
    pub(crate) fn bind(addr: SocketAddr, registry: &Registry, base: Token) -> io::Result<Metrics> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("metrics: cannot bind {addr}: {e}")))?;
        registry.register(&mut listener, base, Interest::READABLE)?;
        log::info!("metrics on http://{}/metrics", listener.local_addr()?);
        Ok(Metrics { listener, base, clients: Slab::new(), order: Default::default(), seq: 0, retry_at: None })
    }

    /// Whether `token` belongs to this endpoint.
    pub(crate) fn owns(&self, token: Token) -> bool {
        token.0 >= self.base.0 && token.0 <= self.base.0 + MAX_CLIENTS
    }

    /// Binds `addr` if it is given (the `--metrics` flag).
    pub(crate) fn maybe_bind(
        addr: Option<SocketAddr>,
        registry: &Registry,
        base: Token,
    ) -> io::Result<Option<Metrics>> {
        addr.map(|a| Metrics::bind(a, registry, base)).transpose()
    }

    /// Handles a readiness event of one of its tokens.
    pub(crate) fn on_event(&mut self, ev: &Event, registry: &Registry) {
        if ev.token() == self.base {
            self.accept(registry);
            return;
        }
        let key = ev.token().0 - self.base.0 - 1;
        let done = match self.clients.get_mut(key) {
            Some(c) => advance(c).unwrap_or(true),
            None => false,
        };
        if done {
            self.drop_client(key, registry);
        }
    }

    /// When [`Metrics::tick`] is due: a retry after a failed accept, or the
    /// head deadline of the oldest client.
    pub(crate) fn deadline(&mut self) -> Option<Instant> {
        self.drop_stale();
        let head = self.order.front().map(|(t, _, _)| *t);
        [self.retry_at, head].into_iter().flatten().min()
    }

    /// Closes clients whose head is overdue, and accepts again if a failed
    /// accept asked for it.
    pub(crate) fn tick(&mut self, registry: &Registry, now: Instant) {
        loop {
            self.drop_stale();
            match self.order.front() {
                Some(&(t, key, _)) if now >= t => {
                    self.order.pop_front();
                    log::debug!("metrics: a client sent no request within {HEAD_TIMEOUT:?}; closed");
                    self.drop_client(key, registry);
                }
                _ => break,
            }
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.accept(registry);
        }
    }

    /// Forgets the front entries of clients that are gone.
    fn drop_stale(&mut self) {
        while let Some(&(_, key, seq)) = self.order.front() {
            if self.clients.get(key).is_some_and(|c| c.seq == seq) {
                return;
            }
            self.order.pop_front();
        }
    }

    /// Whether a complete request for the page waits for [`Metrics::answer`].
    pub(crate) fn wants_page(&self) -> bool {
        self.clients.iter().any(|(_, c)| c.wants_page)
    }

    /// Answers every request waiting for the page with `page`.
    pub(crate) fn answer(&mut self, page: &str, registry: &Registry) {
        let waiting: Vec<usize> = self.clients.iter().filter(|(_, c)| c.wants_page).map(|(k, _)| k).collect();
        for key in waiting {
            let c = &mut self.clients[key];
            c.wants_page = false;
            c.reply = reply("200 OK", "text/plain; version=0.0.4; charset=utf-8", page);
            if advance(c).unwrap_or(true) {
                self.drop_client(key, registry);
            }
        }
    }

    fn drop_client(&mut self, key: usize, registry: &Registry) {
        if let Some(mut c) = self.clients.try_remove(key) {
            let _ = registry.deregister(&mut c.stream);
        }
    }

    fn accept(&mut self, registry: &Registry) {
        loop {
            if self.clients.len() >= MAX_CLIENTS {
                // Full: the oldest client goes, so that the newest (a
                // scrape, as likely as not) gets in.
                self.drop_stale();
                match self.order.pop_front() {
                    Some((_, key, _)) => self.drop_client(key, registry),
                    None => return,
                }
            }
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let entry = self.clients.vacant_entry();
                    let key = entry.key();
                    let token = Token(self.base.0 + 1 + key);
                    if registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE).is_ok() {
                        self.seq += 1;
                        let seq = self.seq;
                        entry.insert(Client {
                            stream,
                            head: Vec::new(),
                            wants_page: false,
                            reply: Vec::new(),
                            sent: 0,
                            seq,
                        });
                        self.order.push_back((Instant::now() + HEAD_TIMEOUT, key, seq));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // That one connection failed: take the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                // Out of fds, or worse: the listener is edge-triggered, so
                // what waits now would wait for the next arrival; try again
                // soon instead.
                Err(e) => {
                    log::debug!("metrics accept: {e}; retrying in {RETRY:?}");
                    self.retry_at = Some(Instant::now() + RETRY);
                    return;
                }
            }
        }
    }

    /// Stops serving (a stopping master).
    pub(crate) fn close(&mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.listener);
        for mut c in self.clients.drain() {
            let _ = registry.deregister(&mut c.stream);
        }
    }
}

/// Advances one request: reads its head, then sends the reply (once there
/// is one); true when the connection is finished.
fn advance(c: &mut Client) -> io::Result<bool> {
    if c.reply.is_empty() {
        if c.wants_page {
            return Ok(false);
        }
        let mut buf = [0u8; 2048];
        loop {
            match c.stream.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => c.head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if c.head.len() > MAX_HEAD {
                break;
            }
        }
        let complete = c.head.windows(4).any(|w| w == b"\r\n\r\n") || c.head.windows(2).any(|w| w == b"\n\n");
        if !complete && c.head.len() <= MAX_HEAD {
            return Ok(false);
        }
        match route(&c.head) {
            Some(r) => c.reply = r,
            None => {
                c.wants_page = true;
                return Ok(false);
            }
        }
    }
    while c.sent < c.reply.len() {
        match c.stream.write(&c.reply[c.sent..]) {
            Ok(n) => c.sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The reply to a request head, or `None` for a request of the page.
fn route(head: &[u8]) -> Option<Vec<u8>> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if head.len() > MAX_HEAD {
        Some(reply("431 Request Header Fields Too Large", "text/plain", "request head too large\n"))
    } else if method != "GET" {
        Some(reply("405 Method Not Allowed", "text/plain", "only GET\n"))
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        None
    } else {
        Some(reply("404 Not Found", "text/plain", "try /metrics\n"))
    }
}

fn reply(status: &str, ctype: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The page of a single-process server (or a fork parent, whose children
/// count into the same shared slot).
pub(crate) fn render_process(slot: Slot) -> String {
    let uptime = Duration::from_millis(now_ms().saturating_sub(slot.started_ms()));
    let me = std::process::id();
    render(&[WorkerLine { pid: me, slot, rss: rss_bytes(me), busy: None }], &Supervision::default(), uptime)
}

/// The resident memory of process `pid` (`/proc/PID/statm`), in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as u64;
    Some(pages * page)
}

/// One worker (or the one process) on the page.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerLine {
    /// Its pid.
    pub(crate) pid: u32,
    /// Its counters.
    pub(crate) slot: Slot,
    /// Its resident memory, if known.
    pub(crate) rss: Option<u64>,
    /// The share of the last moments its loop was not waiting, if measured.
    pub(crate) busy: Option<f64>,
}

/// What a supervisor adds to the page.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Supervision {
    /// Counters of workers that have exited.
    pub(crate) retired: Retired,
    /// Workers started.
    pub(crate) spawns: u64,
    /// Workers that exited.
    pub(crate) deaths: u64,
    /// Rolling restarts given up because a new worker died before serving.
    pub(crate) reload_failures: u64,
}

/// One worker's counters, each read once, so that a page's totals always
/// equal the sum of its per-worker lines.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    pid: u32,
    values: [u64; Counter::ALL.len()],
    silent_ms: u64,
    serving: bool,
}

/// The counters of a page, in the order of [`Counter::ALL`].
const COUNTERS: [(&str, &str, &str); Counter::ALL.len()] = [
    ("connections_accepted_total", "counter", "Connections accepted."),
    ("connections_active", "gauge", "Connections open now."),
    ("bytes_received_total", "counter", "Bytes received from clients."),
    ("bytes_sent_total", "counter", "Bytes sent to clients."),
    ("accept_errors_total", "counter", "Failed accept calls."),
    (
        "connections_refused_total",
        "counter",
        "Connections closed unserved (--max-conns-per-ip, --queue-timeout, out of fds).",
    ),
    ("handler_errors_total", "counter", "Connection handlers that returned an error or panicked."),
    (
        "proxy_header_errors_total",
        "counter",
        "Connections closed for their PROXY header (malformed, missing, late, too long).",
    ),
    (
        "client_addresses",
        "gauge",
        "Client addresses with a connection open now, the PROXY header's when there is one (with --max-conns-per-ip).",
    ),
];

/// The exposition text for `workers`, plus the supervisor's figures.
pub(crate) fn render(workers: &[WorkerLine], sup: &Supervision, uptime: Duration) -> String {
    let snaps: Vec<Snapshot> = workers
        .iter()
        .map(|w| Snapshot {
            pid: w.pid,
            values: Counter::ALL.map(|c| w.slot.get(c)),
            silent_ms: w.slot.silent_ms(),
            serving: w.slot.state() == State::Running,
        })
        .collect();
    let base = sup.retired.totals;
    let mut out = String::with_capacity(4096);
    for (i, (name, kind, help)) in COUNTERS.iter().enumerate() {
        let _ = writeln!(out, "# HELP switchyard_{name} {help}\n# TYPE switchyard_{name} {kind}");
        let total: u64 = snaps.iter().map(|s| s.values[i]).sum::<u64>() + base[i];
        let _ = writeln!(out, "switchyard_{name} {total}");
        let wname = match name.strip_prefix("connections_") {
            Some(rest) => format!("worker_connections_{rest}"),
            None => format!("worker_{name}"),
        };
        let _ = writeln!(out, "# HELP switchyard_{wname} {help} (per worker)\n# TYPE switchyard_{wname} {kind}");
        for s in &snaps {
            let _ = writeln!(out, "switchyard_{wname}{{pid=\"{}\"}} {}", s.pid, s.values[i]);
        }
    }
    let _ = writeln!(out, "# HELP switchyard_worker_heartbeat_age_seconds Time since the worker's last heartbeat.\n# TYPE switchyard_worker_heartbeat_age_seconds gauge");
    for s in &snaps {
        let _ = writeln!(
            out,
            "switchyard_worker_heartbeat_age_seconds{{pid=\"{}\"}} {:.3}",
            s.pid,
            s.silent_ms as f64 / 1000.0
        );
    }
    let _ = writeln!(out, "# HELP switchyard_worker_serving Whether the worker is set up and serving (0 while it boots or drains).\n# TYPE switchyard_worker_serving gauge");
    for s in &snaps {
        let _ = writeln!(out, "switchyard_worker_serving{{pid=\"{}\"}} {}", s.pid, u8::from(s.serving));
    }
    let _ = writeln!(
        out,
        "# HELP switchyard_worker_rss_bytes Resident memory of the worker.\n# TYPE switchyard_worker_rss_bytes gauge"
    );
    for w in workers {
        if let Some(rss) = w.rss {
            let _ = writeln!(out, "switchyard_worker_rss_bytes{{pid=\"{}\"}} {rss}", w.pid);
        }
    }
    let _ = writeln!(out, "# HELP switchyard_worker_busy_ratio Share of the last half second the worker's loop was not waiting for events (serial workers: serving a client).\n# TYPE switchyard_worker_busy_ratio gauge");
    for w in workers {
        if let Some(busy) = w.busy {
            let _ = writeln!(out, "switchyard_worker_busy_ratio{{pid=\"{}\"}} {busy:.3}", w.pid);
        }
    }
    let _ = writeln!(
        out,
        "# HELP switchyard_workers Worker processes alive.\n# TYPE switchyard_workers gauge\nswitchyard_workers {}",
        workers.len()
    );
    let _ = writeln!(out, "# HELP switchyard_worker_spawns_total Workers started.\n# TYPE switchyard_worker_spawns_total counter\nswitchyard_worker_spawns_total {}", sup.spawns);
    let _ = writeln!(out, "# HELP switchyard_worker_deaths_total Workers that exited.\n# TYPE switchyard_worker_deaths_total counter\nswitchyard_worker_deaths_total {}", sup.deaths);
    let _ = writeln!(out, "# HELP switchyard_reload_failures_total Rolling restarts given up because a new worker died before serving.\n# TYPE switchyard_reload_failures_total counter\nswitchyard_reload_failures_total {}", sup.reload_failures);
    let _ = writeln!(out, "# HELP switchyard_uptime_seconds Seconds since the server started.\n# TYPE switchyard_uptime_seconds gauge\nswitchyard_uptime_seconds {:.3}", uptime.as_secs_f64());
    out
}
