//! The example programs of `examples/`, each started as its real process
//! (built by cargo from its current sources, see
//! [`support::programs`](crate::support::programs)) on `127.0.0.1:0`, in
//! every mode where it makes sense (the rows of the table of modes), and
//! checked with the standard clients of its protocol where there is one:
//!
//! - [`echo_async`]: the coroutine echo in every strategy;
//! - [`kv`]: `redis-cli` for commands and replies, `redis-benchmark` for
//!   load (with and without pipelining), raw RESP for pipelining, limits
//!   and errors, a store shared by the connections of one process and not
//!   across fork children, expiry; and the RESP parser itself, split at
//!   every byte (proptest, in process);
//! - [`http_hello`]: `curl` (keep-alive, `Connection: close`), `wrk` for
//!   load, raw HTTP for pipelining, malformed and oversized requests, and
//!   heads bounded in time;
//! - [`chat`]: lines between connections on one event loop and across a
//!   reactor's loops, joins and leaves, a client too slow to read, a line
//!   too long, and the modes it refuses.
//!
//! And here, for every example: the flags, signals and graceful stop of
//! `server` work unchanged (`--metrics`, limits, prefork, SIGTERM).
//!
//! `cargo test --test e2e examples::` runs this topic (the examples are
//! built first if they are stale); the tools come from `scripts/setup.sh`.

mod chat;
mod echo_async;
mod http_hello;
mod kv;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::metrics::try_scrape;
use crate::support::modes::{Mode, EVENT, PREFORK_EVENT};
use crate::support::net::{close_cleanly, roundtrip};
use crate::support::process::poll_until;
use crate::support::programs::example;
use crate::support::server::{run_program_to_exit, Launch, Server, EXIT_TIMEOUT};

/// One test per mode: `in_modes!(case; event: EVENT, thread: THREAD)` makes
/// `mod case { #[test] fn event() { super::case(&EVENT) } ... }`, so
/// `cargo test --test e2e examples::kv::shared_store::fork` runs one. A
/// mode is a row of the table of modes or a const of the calling module.
macro_rules! in_modes {
    ($case:ident; $($id:ident: $konst:ident),+ $(,)?) => {
        mod $case {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use crate::support::modes::*;
            $(
                #[test]
                fn $id() {
                    super::$case(&$konst)
                }
            )+
        }
    };
}
pub(crate) use in_modes;

/// Starts example `name` as `name --mode M --listen 127.0.0.1:0 ARGS... EXTRA...`.
pub(crate) fn start(name: &str, mode: &Mode, extra: &[&str]) -> Server {
    Launch::new(mode, extra).program(&example(name)).start()
}

/// SIGTERM once every client has closed: the exit status must be 0
/// within [`EXIT_TIMEOUT`] (a graceful stop would wait `--grace` for a
/// client still connected).
pub(crate) fn stop(mut server: Server) {
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(EXIT_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "after SIGTERM: exit status {status:?}\n{}", server.log());
}

/// Flags every example takes, as `server` does.
const FLAGS: &[&str] = &[
    "--metrics",
    "127.0.0.1:0",
    "--max-conns",
    "64",
    "--max-conns-per-ip",
    "8",
    "--idle-timeout",
    "30",
    "--grace",
    "2",
    "--backlog",
    "64",
];

/// Runs `name` with the flags of `server` in `mode`, makes one exchange,
/// reads the connection in `--metrics`, and stops it with SIGTERM.
fn takes_the_server_flags(name: &str, mode: &Mode, exchange: fn(&Server)) {
    let help = run_program_to_exit(&example(name), &["--help"]);
    assert!(help.status.success(), "{name} --help: {help:?}");
    for flag in ["--mode", "--workers", "--idle-timeout", "--metrics", "--max-conns-per-ip", "--grace"] {
        assert!(help.stdout.contains(flag), "{name} --help lacks {flag}:\n{}", help.stdout);
    }
    assert!(help.stdout.contains(&format!("Usage: {name} ")), "{name} --help:\n{}", help.stdout);
    let bad = run_program_to_exit(&example(name), &["--mode", "nonsense"]);
    assert_eq!(bad.status.code(), Some(2), "a bad flag: {bad:?}");

    let server = start(name, mode, FLAGS);
    exchange(&server);
    let metrics = server.metrics_addr();
    let mut accepted = 0.0;
    let counted = poll_until(Duration::from_secs(5), || {
        accepted = try_scrape(metrics).map(|s| s.value("switchyard_connections_accepted_total")).unwrap_or(0.0);
        accepted >= 1.0
    });
    assert!(counted, "{name}: the connection never showed in --metrics (accepted {accepted})");
    stop(server);
}

#[test]
fn echo_async_takes_the_server_flags() {
    takes_the_server_flags("echo_async", &PREFORK_EVENT, |s| {
        let mut c = s.connect();
        roundtrip(&mut c, b"flags, all of them").unwrap();
        close_cleanly(&mut c).unwrap();
    })
}

#[test]
fn kv_takes_the_server_flags() {
    takes_the_server_flags("kv", &PREFORK_EVENT, |s| {
        let mut c = kv::Resp::connect(s);
        assert_eq!(c.call(&["PING"]), kv::Reply::Simple("PONG".into()));
    })
}

#[test]
fn http_hello_takes_the_server_flags() {
    takes_the_server_flags("http_hello", &PREFORK_EVENT, |s| {
        let r = http_hello::exchange(s, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    })
}

#[test]
fn chat_takes_the_server_flags() {
    // Chat refuses prefork (its workers would be separate rooms).
    takes_the_server_flags("chat", &EVENT, |s| {
        let mut line = String::new();
        BufReader::new(s.connect()).read_line(&mut line).unwrap();
        assert!(line.starts_with("* welcome"), "{line:?}");
    })
}
