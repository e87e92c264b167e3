//! Held connections (`--conns N` opens and keeps N connections whatever the
//! rate): counted against the server's own count of open connections (its
//! `--metrics` gauge and its ESTABLISHED sockets in `/proc`), and the two ways
//! a server can lose a held connection: closing it (`--idle-timeout`), or
//! keeping it without ever answering (a faulty server written here), which
//! the final check finds. Every run is bounded by `--duration` and timeouts;
//! servers are killed by PID when the test ends.

use std::time::Duration;

use crate::support::client::{
    describe, established, faulty_server, metric, poll_until, raise_nofile, read_report, spawn_client, text, upper,
    Running, Server, TempDir,
};

#[test]
fn two_thousand_connections_at_a_low_rate_are_all_held_and_the_server_counts_them() {
    raise_nofile();
    let server = Server::with(&["--mode", "event", "--max-conns", "5000", "--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics_addr();
    let dir = TempDir::new("held");
    let json = dir.file("r.json");
    let run = Running(Some(spawn_client(&[
        "--addr",
        &server.addr(),
        "-c",
        "2000",
        "-t",
        "2",
        "--rate",
        "100",
        "-d",
        "4s",
        "--connect-rate",
        "10000",
        "--json",
        &json,
        "-q",
    ])));
    // While the run lasts the server has exactly 2,000 open connections, by
    // its own count and by the kernel's.
    let mut seen = (0.0, 0);
    let held = poll_until(Duration::from_secs(20), || {
        seen = (metric(metrics, "switchyard_connections_active").unwrap_or(-1.0), established(server.pid()));
        seen == (2000.0, 2000)
    });
    let o = run.wait();
    assert!(held, "the server counted (metrics, established) = {seen:?}, not 2000\n{}", describe(&o));
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, raw) = read_report(&json);
    // 100 msgs/s for 4 s: at most ~400 messages for 2,000 connections, so
    // most carried none; every one was held and answered the final check.
    assert!(r.messages <= 410 && r.messages >= 300, "{} messages\n{}", r.messages, describe(&o));
    assert_eq!((r.conns_established, r.outcomes.held, r.checks), (2000, 2000, 2000), "{}", describe(&o));
    assert_eq!(r.outcomes.closed_by_server + r.outcomes.unanswered + r.outcomes.failed_to_connect, 0);
    assert!(text(&o.stdout).contains("2,000 held to the end"), "{}", describe(&o));
    assert!(raw.contains("\"connections\"") && raw.contains("\"held\": 2000"), "{raw}");
    // And the client closed them all at the end.
    let closed = poll_until(Duration::from_secs(10), || metric(metrics, "switchyard_connections_active") == Some(0.0));
    assert!(closed, "the server still counts {:?} connections", metric(metrics, "switchyard_connections_active"));
}

#[test]
fn connections_the_server_closes_while_held_are_counted_and_fail_the_run() {
    let server = Server::with(&["--mode", "event", "--idle-timeout", "1"]);
    let dir = TempDir::new("idle-closed");
    let json = dir.file("r.json");
    // 2 msgs/s over 20 connections: each waits ~10 s between messages, far
    // beyond the server's 1 s idle timeout.
    let o = crate::support::client::client(&[
        "--addr",
        &server.addr(),
        "-c",
        "20",
        "-t",
        "1",
        "--rate",
        "2",
        "-d",
        "3s",
        "--json",
        &json,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(text(&o.stderr).contains("closed by the server while the client still held them"), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert!(r.outcomes.closed_by_server >= 15, "{:?}\n{}", r.outcomes, describe(&o));
    assert_eq!(r.outcomes.held + r.outcomes.closed_by_server + r.outcomes.unanswered, 20, "{:?}", r.outcomes);
}

/// Answers the connections it accepted first, third, fifth...; reads the
/// others and never answers (as a server that lost track of them would).
fn answers_every_other(data: &[u8], _: u64, n: u64) -> (Vec<u8>, bool) {
    (if n.is_multiple_of(2) { upper(data) } else { Vec::new() }, false)
}

#[test]
fn connections_kept_but_never_answered_fail_the_final_check() {
    let addr = faulty_server(answers_every_other).to_string();
    let dir = TempDir::new("unanswered");
    let json = dir.file("r.json");
    let o = crate::support::client::client(&[
        "--addr",
        &addr,
        "-c",
        "10",
        "-t",
        "1",
        "--rate",
        "1",
        "-d",
        "1s",
        "--timeout",
        "500ms",
        "--json",
        &json,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(text(&o.stderr).contains("5 connections unanswered"), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!((r.outcomes.held, r.outcomes.unanswered), (5, 5), "{:?}\n{}", r.outcomes, describe(&o));
    assert_eq!(r.conns_established, 10);
}
