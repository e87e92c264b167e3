//! The accept policy's error table (docs/ARCHITECTURE.md, "The accept
//! policy and its error table"), a test per row, in every mode: the
//! fault-injection shim (`support/faults.c`) makes the server's own
//! accept(2), setsockopt(2) or hand-over fail at a real client's accept
//! (`when=pending`: only calls made while a client waits count), and the
//! client, the counters and the log show the row's behaviour.
//!
//! Counters are per process: in prefork each worker has its own calls, so a
//! fault that is injected once happens once per worker that accepts (at
//! most `--workers`). Clients come one at a time, each waiting for its
//! answer, so every outcome belongs to one client.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::metrics::try_scrape;
use crate::support::modes::{per_mode, Mode};
use crate::support::modes::{EVENT, FORK, PREFORK_EVENT, PREFORK_REUSEPORT, PREFORK_THREAD, REACTOR, THREAD};
use crate::support::net::upper;
use crate::support::process::poll_until;
use crate::support::server::{Launch, Server, SETTLE_TIMEOUT};

/// What one client saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Its message came back uppercased.
    Served,
    /// The server closed it unserved (EOF or reset), this long after it connected.
    Closed(Duration),
}

/// One client: connect, send, read the answer (at most 10 s).
fn client(server: &Server, i: usize) -> Result<Seen, String> {
    let started = Instant::now();
    let mut s = TcpStream::connect(server.addr).map_err(|e| format!("client {i}: connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = format!("client {i} asks");
    // A write to a connection the server already closed may fail: that is
    // a close too.
    let _ = s.write_all(msg.as_bytes());
    let want = upper(msg.as_bytes());
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < want.len() {
        match s.read(&mut buf) {
            Ok(0) => return Ok(Seen::Closed(started.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset) => {
                return Ok(Seen::Closed(started.elapsed()))
            }
            Err(e) => return Err(format!("client {i}: neither served nor closed after {:?}: {e}", started.elapsed())),
        }
    }
    if got != want {
        return Err(format!("client {i}: got {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(Seen::Served)
}

/// The processes of a mode that accept: the workers of a prefork master,
/// else the one process.
fn acceptors(mode: &Mode) -> usize {
    mode.args.windows(2).find(|w| w[0] == "--workers").map_or(1, |w| w[1].parse().expect("--workers N"))
}

/// A server of `mode` with the faults of `spec`.
///
/// The kernel's own accepts (uring's multishot accept, armed while the cap
/// leaves room for a whole backlog) cannot be faulted from user space: a
/// uring server gets `--max-conns 1000`, below a backlog's worth (1024), so
/// it accepts with accept(2) as the event loop does, which the shim
/// reaches. The policy's judgement of the kernel's accepts is unit-tested
/// (`net::accept`) and meets a real EMFILE in `limits::uring_emfile_does_not_spin`.
fn start(mode: &Mode, spec: &str) -> Server {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    if mode.name == "uring" || mode.args.contains(&"uring") {
        args.extend(["--max-conns", "1000"]);
    }
    Launch::new(mode, &args).faults(spec).start()
}

/// A counter of the server, once it reached `at_least` (bounded wait: the
/// counter is bumped before the client is answered, so it is there already
/// unless it is wrong). A scrape may itself meet an injected fault (the
/// endpoint's accept, or its connection's registration, in the process that
/// serves it): it is tried again.
fn counter(server: &Server, name: &str, at_least: f64) -> f64 {
    let mut v = f64::NAN;
    poll_until(Duration::from_secs(3), || {
        if let Ok(page) = try_scrape(server.metrics_addr()) {
            v = page.value(name);
        }
        v >= at_least
    });
    v
}

/// Clients one after another until `served` of them in a row were served
/// (at most `served + acceptors + 3` clients); returns what each saw.
fn clients_until_served(server: &Server, served: usize, mode: &Mode) -> Vec<Seen> {
    let most = served + acceptors(mode) + 3;
    let mut seen = Vec::new();
    for i in 1..=most {
        let s = client(server, i).unwrap_or_else(|e| panic!("{}: {e}\n{}", mode.name, server.log()));
        seen.push(s);
        if seen.iter().rev().take_while(|s| **s == Seen::Served).count() == served {
            return seen;
        }
    }
    panic!("{}: {most} clients, not {served} served in a row: {seen:?}\n{}", mode.name, server.log());
}

/// Clients closed unserved, checking each was closed at once, not held.
fn closed_at_once(seen: &[Seen], mode: &Mode) -> usize {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Closed(after) => {
                assert!(
                    *after < Duration::from_secs(1),
                    "{}: a client was closed {after:?} after it connected",
                    mode.name
                );
                Some(())
            }
            Seen::Served => None,
        })
        .count()
}

mod cases {
    use super::*;

    /// `EINTR`: accept again at once, not counted.
    pub fn interrupted_accepts_are_retried_and_not_counted(mode: &Mode) {
        let server = start(mode, "accept4:EINTR:when=pending:every=1:count=3");
        let seen = clients_until_served(&server, 3, mode);
        assert_eq!(seen, [Seen::Served; 3], "{}: interrupted accepts lost clients\n{}", mode.name, server.log());
        assert_eq!(
            counter(&server, "switchyard_accept_errors_total", 0.0),
            0.0,
            "{}: EINTR counted as an error",
            mode.name
        );
    }

    /// `ECONNABORTED` (a connection that failed before it was ours):
    /// skipped, counted, the next accepted; no client is lost.
    pub fn connection_level_errors_are_skipped_and_counted(mode: &Mode) {
        let server = start(mode, "accept4:ECONNABORTED:when=pending:every=1:count=3");
        let seen = clients_until_served(&server, 3, mode);
        assert_eq!(seen, [Seen::Served; 3], "{}: a skip lost a client\n{}", mode.name, server.log());
        // Each accepting process fails its first 3 accepts of a waiting
        // client (prefork workers race for a client: one that finds it gone
        // has still counted its call).
        let errors = counter(&server, "switchyard_accept_errors_total", 3.0);
        let most = 3 * acceptors(mode);
        assert!(
            errors >= 3.0 && errors <= most as f64,
            "{}: {errors} accept errors counted for 3 injected per accepting process (at most {most})",
            mode.name
        );
    }

    /// `EMFILE`: the waiting client is shed (accepted and closed at once
    /// through the reserve fd; a client that arrives while the shed runs
    /// goes with it), accepting pauses, then serving resumes.
    pub fn fd_exhaustion_sheds_the_waiting_clients_and_backs_off(mode: &Mode) {
        let server = start(mode, "accept4:EMFILE:when=pending:count=1");
        let seen = clients_until_served(&server, 3, mode);
        assert!(matches!(seen[0], Seen::Closed(_)), "{}: the first client was not shed: {seen:?}", mode.name);
        let shed = closed_at_once(&seen, mode);
        let errors = counter(&server, "switchyard_accept_errors_total", 1.0);
        assert!(
            errors >= 1.0 && errors <= acceptors(mode) as f64,
            "{}: {errors} accept errors for one EMFILE per process",
            mode.name
        );
        assert_eq!(
            counter(&server, "switchyard_connections_refused_total", shed as f64),
            shed as f64,
            "{}: every shed client counts as refused",
            mode.name
        );
        assert!(
            server.wait_log_line("out of fds: closed", SETTLE_TIMEOUT).is_some(),
            "{}: no shedding logged\n{}",
            mode.name,
            server.log()
        );
    }

    /// Anything else (`EINVAL` here): an error logged, accepting pauses and
    /// is retried; the client waits the back-off and is served.
    pub fn unexpected_errors_back_off_and_are_retried(mode: &Mode) {
        let server = start(mode, "accept4:EINVAL:when=pending:count=1");
        let started = Instant::now();
        let seen = clients_until_served(&server, 3, mode);
        assert_eq!(seen, [Seen::Served; 3], "{}: a client was lost to a retried error\n{}", mode.name, server.log());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{}: three clients took {:?}",
            mode.name,
            started.elapsed()
        );
        let errors = counter(&server, "switchyard_accept_errors_total", 1.0);
        assert!(errors >= 1.0 && errors <= acceptors(mode) as f64, "{}: {errors} accept errors", mode.name);
        let line = server.wait_log_line("accept: Invalid argument", SETTLE_TIMEOUT);
        assert!(
            line.as_deref().is_some_and(|l| l.contains("ERROR") && l.contains("retrying in 100ms")),
            "{}: the unexpected error is not logged as an error with its retry: {line:?}\n{}",
            mode.name,
            server.log()
        );
    }

    /// `setsockopt(TCP_NODELAY)` fails on an accepted socket: that socket
    /// is closed, the server goes on.
    pub fn a_socket_that_cannot_be_set_up_is_closed_alone(mode: &Mode) {
        let server = start(mode, "setsockopt_nodelay:EINVAL:count=1");
        let seen = clients_until_served(&server, 3, mode);
        assert!(matches!(seen[0], Seen::Closed(_)), "{}: the first client was served: {seen:?}", mode.name);
        let closed = closed_at_once(&seen, mode);
        assert!(closed <= acceptors(mode), "{}: {closed} clients closed for one fault per process", mode.name);
        assert_eq!(counter(&server, "switchyard_accept_errors_total", closed as f64), closed as f64, "{}", mode.name);
    }

    /// The hand-over fails (no child, no thread, no poll registration):
    /// that connection is closed with a warning, the server goes on.
    pub fn a_failed_hand_over_closes_that_connection_only(mode: &Mode, spec: &str, logged: &str) {
        let server = start(mode, spec);
        let seen = clients_until_served(&server, 3, mode);
        assert!(matches!(seen[0], Seen::Closed(_)), "{}: the first client was served: {seen:?}", mode.name);
        let closed = closed_at_once(&seen, mode);
        assert!(closed <= acceptors(mode), "{}: {closed} clients closed for one fault per process", mode.name);
        assert_eq!(counter(&server, "switchyard_accept_errors_total", closed as f64), closed as f64, "{}", mode.name);
        let mut active = f64::NAN;
        let settled = poll_until(Duration::from_secs(3), || {
            if let Ok(page) = try_scrape(server.metrics_addr()) {
                active = page.value("switchyard_connections_active");
            }
            active == 0.0
        });
        assert!(settled, "{}: {active} connections still count as open", mode.name);
        assert!(
            server.wait_log_line(logged, SETTLE_TIMEOUT).is_some(),
            "{}: no {logged:?} in the log\n{}",
            mode.name,
            server.log()
        );
    }
}

// The row tests of one mode (`accept_errors::<row>::<case>`).
use cases::{
    a_socket_that_cannot_be_set_up_is_closed_alone, connection_level_errors_are_skipped_and_counted,
    fd_exhaustion_sheds_the_waiting_clients_and_backs_off, interrupted_accepts_are_retried_and_not_counted,
    unexpected_errors_back_off_and_are_retried,
};
per_mode!(
    interrupted_accepts_are_retried_and_not_counted,
    connection_level_errors_are_skipped_and_counted,
    fd_exhaustion_sheds_the_waiting_clients_and_backs_off,
    unexpected_errors_back_off_and_are_retried,
    a_socket_that_cannot_be_set_up_is_closed_alone,
);

/// The hand-over row, in every mode that hands connections over (serial and
/// the pool have no hand-over that can fail: serial serves inline, the pool
/// queues).
mod hand_over {
    use super::*;

    const FORK_FAILS: &str = "fork:EAGAIN:count=1";
    const THREAD_FAILS: &str = "pthread_create:EAGAIN:count=1";
    const REGISTER_FAILS: &str = "epoll_ctl_add:ENOMEM:when=connected:count=1";

    #[test]
    fn fork() {
        cases::a_failed_hand_over_closes_that_connection_only(&FORK, FORK_FAILS, "fork: Resource temporarily");
    }
    #[test]
    fn thread() {
        cases::a_failed_hand_over_closes_that_connection_only(
            &THREAD,
            THREAD_FAILS,
            "cannot spawn a connection thread",
        );
    }
    #[test]
    fn event() {
        cases::a_failed_hand_over_closes_that_connection_only(&EVENT, REGISTER_FAILS, "cannot register the connection");
    }
    #[test]
    fn reactor() {
        cases::a_failed_hand_over_closes_that_connection_only(
            &REACTOR,
            REGISTER_FAILS,
            "cannot register the connection",
        );
    }
    #[test]
    fn prefork_event() {
        cases::a_failed_hand_over_closes_that_connection_only(
            &PREFORK_EVENT,
            REGISTER_FAILS,
            "cannot register the connection",
        );
    }
    #[test]
    fn prefork_reuseport() {
        cases::a_failed_hand_over_closes_that_connection_only(
            &PREFORK_REUSEPORT,
            REGISTER_FAILS,
            "cannot register the connection",
        );
    }
    #[test]
    fn prefork_thread() {
        cases::a_failed_hand_over_closes_that_connection_only(
            &PREFORK_THREAD,
            THREAD_FAILS,
            "cannot spawn a connection thread",
        );
    }
}
