//! Behind a real HAProxy (Debian package `haproxy`, installed by
//! `scripts/setup.sh`): three servers in different modes with
//! `--proxy-protocol`, HAProxy in front with `send-proxy-v2`, health checks
//! every 100 ms, three retries and redispatch. docs/OPERATIONS.md has the
//! same configuration; `scripts/haproxy.sh` runs the same scenario by hand.
//!
//! 1. Two clients through HAProxy for 8 s: 30 held connections from four
//!    source addresses (127.0.0.2-5, closed loop), and one that opens a new
//!    connection per message (127.0.0.6, 200 messages a second).
//! 2. Mid-run the event server is killed (SIGKILL) and, once HAProxy saw it
//!    go, the prefork server is drained (SIGTERM, 30 s grace).
//! 3. The clients' failures are exactly the sessions the killed server had
//!    open (HAProxy's own log: sessions on that server that did not end
//!    normally), no more: new connections are retried elsewhere, the
//!    drained server finishes its clients.
//! 4. Every server's log names the clients' own addresses, not HAProxy's.
//! 5. On the thread server alone, `--max-conns-per-ip 8` is applied to the
//!    client's address: of 12 connections from 127.0.0.7, 4 are refused;
//!    4 from 127.0.0.8 beside them are served; the server's metrics count
//!    two client addresses.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::client::{read_report, spawn_client, TempDir};
use crate::support::metrics::scrape;
use crate::support::modes::{Mode, EVENT, PREFORK_EVENT, THREAD};
use crate::support::process::{poll_until, signal_pid};
use crate::support::server::{Launch, Server};

/// HAProxy, run in the foreground by this test. Its session log (one line
/// per session) goes to an in-memory ring read through the stats socket
/// (`show events sessions`): HAProxy writes a log to a pipe without
/// blocking and drops the line when the pipe is full, so the test could not
/// count sessions on its stdout (docs/OPERATIONS.md and scripts/haproxy.sh
/// log to stdout, which they send to a file). Its warnings come on stderr.
/// Killed when dropped.
struct Haproxy {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    stats: PathBuf,
}

impl Haproxy {
    fn start(cfg: &str, dir: &TempDir) -> Haproxy {
        let bin = ["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("haproxy is not installed: run scripts/setup.sh (Debian package haproxy)");
        let path = dir.file("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let mut child = Command::new(bin)
            .args(["-db", "-f", &path])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haproxy");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Haproxy { child, log, stats: PathBuf::from(dir.file("admin.sock")) }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The sessions HAProxy logged.
    fn sessions(&self) -> Vec<Session> {
        self.command("show events sessions")
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.strip_prefix("SESSION ")?.split_whitespace().collect();
                let [client, server, state, up, down] = f[..] else { return None };
                Some(Session {
                    client: client.parse().ok()?,
                    server: server.to_string(),
                    state: state.to_string(),
                    up: up.parse().ok()?,
                    down: down.parse().ok()?,
                })
            })
            .collect()
    }

    /// What the stats socket answers to `command` (empty if it cannot).
    fn command(&self, command: &str) -> String {
        let Ok(mut s) = UnixStream::connect(&self.stats) else { return String::new() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(format!("{command}\n").as_bytes()).is_err() {
            return String::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// `show stat`: each backend server's status (UP, DOWN, ...).
    fn status(&self) -> Vec<(String, String)> {
        self.command("show stat")
            .lines()
            .filter(|l| l.starts_with("servers,") && !l.starts_with("servers,BACKEND"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((f.get(1)?.to_string(), f.get(17)?.to_string()))
            })
            .collect()
    }

    fn status_of(&self, server: &str) -> String {
        self.status().into_iter().find(|(s, _)| s == server).map(|(_, st)| st).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One line of HAProxy's log.
#[derive(Debug, Clone)]
struct Session {
    client: SocketAddr,
    server: String,
    /// Termination state (`--` normal, `SD` the server closed mid-data, ...).
    state: String,
    /// Bytes from the client, and to it.
    up: u64,
    down: u64,
}

/// A free port on 127.0.0.1 (bound and released for HAProxy to bind).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The configuration (docs/OPERATIONS.md shows the same, with names, logging
/// to stdout).
fn config(front: SocketAddr, backends: &[(&str, SocketAddr)], stats: &str) -> String {
    let mut cfg = format!(
        "global
    log ring@sessions local0
    stats socket {stats} level admin
    maxconn 4096

ring sessions
    format raw
    size 4194304
    maxlen 512

defaults
    mode tcp
    log global
    log-format \"SESSION %ci:%cp %s %ts %U %B\"
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1

frontend switchyard
    bind {front}
    default_backend servers

backend servers
    balance roundrobin
"
    );
    for (name, addr) in backends {
        cfg.push_str(&format!("    server {name} {addr} send-proxy-v2 check inter 100ms fall 1 rise 1\n"));
    }
    cfg
}

fn start_backend(mode: &Mode, extra: &[&str]) -> Server {
    let mut flags = vec!["--proxy-protocol", "--metrics", "127.0.0.1:0", "--grace", "30"];
    flags.extend_from_slice(extra);
    Launch::new(mode, &flags).env("RUST_LOG", "info,switchyard_server::net::proxy=debug").start()
}

/// Connections open on a server now.
fn active(s: &Server) -> f64 {
    scrape(s.metrics_addr()).value("switchyard_connections_active")
}

#[test]
fn behind_haproxy_only_the_killed_servers_sessions_fail() {
    let dir = TempDir::new("haproxy");
    let killed = start_backend(&EVENT, &[]);
    let drained = start_backend(&PREFORK_EVENT, &[]);
    let survivor = start_backend(&THREAD, &["--max-conns-per-ip", "8"]);
    let front = free_port();
    let stats = dir.file("admin.sock");
    let backends = [("event", killed.addr), ("prefork", drained.addr), ("thread", survivor.addr)];
    let hap = Haproxy::start(&config(front, &backends, &stats), &dir);
    let up = poll_until(Duration::from_secs(10), || {
        let st = hap.status();
        st.len() == 3 && st.iter().all(|(_, s)| s == "UP")
    });
    assert!(up, "HAProxy never saw its three servers up: {:?}\n{}", hap.status(), hap.lines().join("\n"));

    // 1. The clients.
    let front_s = front.to_string();
    let (held_json, reconnect_json) = (dir.file("held.json"), dir.file("reconnect.json"));
    let mut held = spawn_client(&[
        "--addr",
        &front_s,
        "-c",
        "30",
        "-t",
        "1",
        "-d",
        "8s",
        "-q",
        "--json",
        &held_json,
        "--source-ip",
        "127.0.0.2",
        "--source-ip",
        "127.0.0.3",
        "--source-ip",
        "127.0.0.4",
        "--source-ip",
        "127.0.0.5",
    ]);
    let mut fresh = spawn_client(&[
        "--addr",
        &front_s,
        "--reconnect",
        "-c",
        "2",
        "-r",
        "200",
        "-t",
        "1",
        "-d",
        "8s",
        "-q",
        "--json",
        &reconnect_json,
        "--source-ip",
        "127.0.0.6",
    ]);
    let all = [&killed, &drained, &survivor];
    let opened = poll_until(Duration::from_secs(5), || all.iter().map(|s| active(s)).sum::<f64>() >= 30.0);
    assert!(opened, "the 30 held connections did not reach the servers");
    // 2. Kill one, then drain another once HAProxy saw the first go.
    signal_pid(killed.pid, Signal::SIGKILL).unwrap();
    let down = poll_until(Duration::from_secs(5), || hap.status_of("event").starts_with("DOWN"));
    assert!(down, "HAProxy did not mark the killed server down: {:?}", hap.status());
    let before = scrape(survivor.metrics_addr()).value("switchyard_connections_accepted_total");
    let progressed = poll_until(Duration::from_secs(5), || {
        scrape(survivor.metrics_addr()).value("switchyard_connections_accepted_total") >= before + 50.0
    });
    assert!(progressed, "no new connections after the kill");
    drained.signal(Signal::SIGTERM);
    let down = poll_until(Duration::from_secs(5), || hap.status_of("prefork").starts_with("DOWN"));
    assert!(down, "HAProxy did not mark the drained server down: {:?}", hap.status());
    assert!(
        held.try_wait().unwrap().is_none() && fresh.try_wait().unwrap().is_none(),
        "the clients ended before the kill and the drain were done: the machine is too slow for this test's 8 s"
    );
    let (held_out, fresh_out) = (held.wait_with_output().unwrap(), fresh.wait_with_output().unwrap());
    let (h, _) = read_report(&held_json);
    let (f, _) = read_report(&reconnect_json);

    // 3. Exactly the killed server's open sessions failed.
    let expected_lines = (h.conns_attempted + f.conns_attempted) as usize;
    let logged = poll_until(Duration::from_secs(10), || hap.sessions().len() >= expected_lines);
    let sessions = hap.sessions();
    assert!(
        logged,
        "HAProxy logged {} sessions, the clients opened {} and {} ({}):\n{}",
        sessions.len(),
        h.conns_attempted,
        f.conns_attempted,
        {
            let mut by: std::collections::BTreeMap<(String, String), usize> = Default::default();
            for s in &sessions {
                *by.entry((s.client.ip().to_string(), s.server.clone())).or_default() += 1;
            }
            format!(
                "{} logged per client address and server: {by:?}; still open in HAProxy: {}",
                hap.command("show info").lines().filter(|l| l.starts_with("DroppedLogs")).collect::<Vec<_>>().join(" "),
                hap.command("show sess")
            )
        },
        hap.lines().join("\n")
    );
    // Open on the killed server when it died: every session of the held
    // client there (it holds its connections to the end), and those of the
    // reconnecting client that had not had their whole echo (one that had
    // it closes normally). HAProxy's termination state cannot tell: a
    // killed process's socket may close with a FIN ("--").
    let reconnecting: std::net::IpAddr = "127.0.0.6".parse().unwrap();
    let cut: Vec<&Session> =
        sessions.iter().filter(|s| s.server == "event" && (s.client.ip() != reconnecting || s.down < s.up)).collect();
    let elsewhere: Vec<&Session> =
        sessions.iter().filter(|s| s.server != "event" && (s.down != s.up || s.state != "--")).collect();
    let failures = h.errors.total() + f.errors.total();
    println!(
        "held: {} messages, {} errors; reconnecting: {} connections, {} errors; sessions cut on the killed server: {}",
        h.messages,
        h.errors.total(),
        f.conns_attempted,
        f.errors.total(),
        cut.len()
    );
    assert!(!cut.is_empty(), "the killed server had no session open: the test proved nothing");
    assert!(elsewhere.is_empty(), "sessions on the other servers not ended normally: {elsewhere:?}");
    assert_eq!(
        failures,
        cut.len() as u64,
        "client failures vs the killed server's sessions (held {:?}, reconnecting {:?})\n{}\n{}",
        h.errors,
        f.errors,
        String::from_utf8_lossy(&held_out.stderr),
        String::from_utf8_lossy(&fresh_out.stderr)
    );
    assert_eq!(
        h.outcomes.closed_by_server + f.outcomes.closed_by_server,
        failures,
        "{:?} {:?}",
        h.outcomes,
        f.outcomes
    );
    // The drained server finished its clients and left.
    let mut drained = drained;
    assert!(drained.wait_exit(Duration::from_secs(20)).is_some_and(|s| s.success()), "{}", drained.log());

    // 4. The logs name the clients, not HAProxy: every client address is
    // named by some server (which server a held connection went to is
    // HAProxy's round robin over connections opened at once), and the
    // reconnecting client, whose connections go everywhere, by each.
    let servers = [("event", &killed), ("prefork", &drained), ("thread", &survivor)];
    let named = |s: &Server, n: u8| {
        s.log_line_containing(&format!("127.0.0.{n}:")).filter(|l| l.contains("PROXY v2 header from 127.0.0.1:"))
    };
    for n in 2..=6 {
        assert!(
            servers.iter().any(|(_, s)| named(s, n).is_some()),
            "no server's log names client 127.0.0.{n} after its PROXY header"
        );
    }
    for (name, s) in &servers[1..] {
        assert!(named(s, 6).is_some(), "{name}: no log line names the reconnecting client 127.0.0.6");
    }

    // 5. The per-address limit applies to the client's address.
    let (many_json, few_json) = (dir.file("many.json"), dir.file("few.json"));
    let many = spawn_client(&[
        "--addr",
        &front_s,
        "-c",
        "12",
        "-t",
        "1",
        "-d",
        "3s",
        "-q",
        "--json",
        &many_json,
        "--source-ip",
        "127.0.0.7",
    ]);
    let few = spawn_client(&[
        "--addr",
        &front_s,
        "-c",
        "4",
        "-t",
        "1",
        "-d",
        "3s",
        "-q",
        "--json",
        &few_json,
        "--source-ip",
        "127.0.0.8",
    ]);
    let m = survivor.metrics_addr();
    let two = poll_until(Duration::from_secs(3), || scrape(m).value("switchyard_client_addresses") == 2.0);
    let page = scrape(m);
    let (_, _) = (many.wait_with_output().unwrap(), few.wait_with_output().unwrap());
    assert!(two, "the survivor never counted the two client addresses: {}", page.text);
    let (many, _) = read_report(&many_json);
    let (few, _) = read_report(&few_json);
    assert_eq!(many.errors.total(), 4, "12 connections from one client at --max-conns-per-ip 8: {:?}", many.errors);
    assert_eq!(few.errors.total(), 0, "another client beside it: {:?}", few.errors);
    assert_eq!(scrape(m).value("switchyard_connections_refused_total"), 4.0);
    assert_eq!(scrape(m).value("switchyard_proxy_header_errors_total"), 0.0);
}
