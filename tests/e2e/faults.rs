//! The syscall fault-injection shim itself (`support/faults.c`): its faults
//! reach the real server binary, at exactly the calls its spec names.

use std::time::Duration;

use crate::support::metrics::scrape;
use crate::support::modes::{FORK, THREAD};
use crate::support::net::{close_cleanly, roundtrip};
use crate::support::process::{poll_until, run_bounded};
use crate::support::server::{Launch, Server};

/// What the server's `--metrics` says of its accept errors.
fn accept_errors(server: &Server) -> f64 {
    scrape(server.metrics_addr()).value("switchyard_accept_errors_total")
}

/// `accept4` fails with ECONNABORTED at its calls 1, 2 and 3. The server
/// (thread mode: one blocking acceptor) skips and counts each; once a
/// client has been served, its accept error counter is exactly 3, where
/// the same server without the shim counts 0.
#[test]
fn accept4_econnaborted_three_times_is_counted_three_times() {
    let plain = Server::start(&THREAD, &["--metrics", "127.0.0.1:0"]);
    let faulty = Launch::new(&THREAD, &["--metrics", "127.0.0.1:0"])
        .faults("accept4:ECONNABORTED:first=1:every=1:count=3")
        .start();
    for server in [&plain, &faulty] {
        let mut c = server.connect();
        roundtrip(&mut c, b"served after the injected faults").unwrap_or_else(|e| panic!("round trip: {e}"));
        close_cleanly(&mut c).unwrap_or_else(|e| panic!("close: {e}"));
    }
    assert_eq!(accept_errors(&plain), 0.0, "accept errors without the shim\n{}", plain.log());
    // The counter is bumped before the connection is served; the scrape
    // sees it at once, but a late one would show here as a wrong figure.
    let mut errors = 0.0;
    poll_until(Duration::from_secs(2), || {
        errors = accept_errors(&faulty);
        errors >= 3.0
    });
    assert_eq!(errors, 3.0, "accept errors with accept4 failing 3 times\n{}", faulty.log());
}

/// `fork:EAGAIN:first=2:every=2:count=2`: fork mode forks once per
/// connection, and its fork calls 2 and 4 fail (the server closes that
/// connection unserved), call 6 no longer does (count 2): of six clients
/// one after another, exactly the 2nd and the 4th go unserved.
#[test]
fn fork_fails_at_exactly_the_calls_the_spec_names() {
    let server = Launch::new(&FORK, &[]).faults("fork:EAGAIN:first=2:every=2:count=2").start();
    let served: Vec<bool> = (1..=6)
        .map(|i| {
            let mut c = server.connect();
            roundtrip(&mut c, format!("client {i}").as_bytes()).is_ok()
        })
        .collect();
    assert_eq!(served, [true, false, true, false, true, true], "which clients were served\n{}", server.log());
    // The log arrives through a pipe: wait (bounded) for the lines.
    let failed = || server.log().matches("fork: Resource temporarily unavailable").count();
    poll_until(Duration::from_secs(2), || failed() >= 2);
    assert_eq!(failed(), 2, "fork failures logged\n{}", server.log());
}

/// A spec the shim cannot read stops the process before `main`, saying why,
/// instead of running it without the faults a test asked for.
#[test]
fn a_bad_spec_stops_the_server_with_a_message() {
    for (spec, why) in [
        ("accept4:ENOSUCHERRNO", "unknown errno name"),
        ("acept4:EMFILE", "unknown function"),
        ("accept4:EMFILE:first=0", "expected first=N (N >= 1)"),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_server"));
        cmd.args(["--mode", "thread", "--listen", "127.0.0.1:0"]);
        crate::support::faults::inject(&mut cmd, spec);
        let done = run_bounded(cmd, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(done.status.code(), Some(127), "{spec}: {done:?}");
        assert!(done.stderr.contains(why), "{spec}: stderr lacks {why:?}: {done:?}");
        assert!(!done.stdout.contains("listening on"), "{spec}: the server started: {done:?}");
    }
}
