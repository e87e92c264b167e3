//! End-to-end tests of the `client` binary: against the real `server`
//! (thread mode) and against deliberately faulty servers written here (one
//! flips a byte, one closes mid-reply), checking the summary, the JSON
//! report, the exit codes and `client merge`. Every run is bounded by
//! `--messages` or a short `--duration`; servers listen on 127.0.0.1:0 and are
//! killed by PID when the test ends, pass or fail.

mod api;
mod coordinated;
mod held;
mod hlog;
mod lag;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Stdio};

use crate::support::client::{client, describe, faulty_server, read_report, text, upper, Server, TempDir};
use switchyard::client::Report;

/// Echoes the uppercase, but flips one bit of byte 1000 of each connection.
fn flip_byte_1000(data: &[u8], offset: u64, _: u64) -> (Vec<u8>, bool) {
    let mut out = upper(data);
    if (offset..offset + data.len() as u64).contains(&1000) {
        out[(1000 - offset) as usize] ^= 0x01;
    }
    (out, false)
}

/// Echoes the uppercase correctly for the first 640 bytes, then sends half
/// of what it read and closes.
fn close_mid_reply(data: &[u8], offset: u64, _: u64) -> (Vec<u8>, bool) {
    let out = upper(data);
    if offset + data.len() as u64 > 640 {
        let keep = (640u64.saturating_sub(offset) as usize).max(data.len() / 2).min(data.len() - 1);
        return (out[..keep].to_vec(), true);
    }
    (out, false)
}

#[test]
fn closed_loop_verifies_every_reply_and_writes_json_and_hgrm() {
    let server = Server::start("thread");
    let dir = TempDir::new("closed");
    let (json, hgrm) = (dir.file("r.json"), dir.file("r.hgrm"));
    let o = client(&[
        "--addr",
        &server.addr(),
        "-c",
        "4",
        "-t",
        "2",
        "-n",
        "3000",
        "-d",
        "30s",
        "--json",
        &json,
        "--hgrm",
        &hgrm,
        "--payload",
        "text",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let out = text(&o.stdout);
    assert!(out.contains("messages     3,000"), "{out}");
    assert!(out.contains("errors       none"), "{out}");
    let (r, raw) = read_report(&json);
    assert_eq!(r.messages, 3000);
    assert_eq!(r.bytes, 3000 * 64);
    assert_eq!(r.latency.len(), 3000);
    assert_eq!(r.errors.total(), 0);
    assert_eq!((r.conns_established, r.conns_attempted), (4, 4));
    assert_eq!(r.connect_latency.len(), 4);
    assert!(r.msgs_per_sec > 0.0 && r.elapsed.as_secs_f64() > 0.0);
    assert!(r.client_cpu_secs > 0.0);
    assert_eq!(r.config.conns, 4);
    assert_eq!(r.config.payload, "text");
    for key in ["\"p99.9\"", "\"client_cpu_secs_per_million_msgs\"", "\"series\"", "\"mismatch\": 0", "\"latency\": \""]
    {
        assert!(raw.contains(key), "{key} missing from {raw}");
    }
    let h = std::fs::read_to_string(&hgrm).unwrap();
    assert!(h.contains("Percentile") && h.contains("#[Mean") && h.contains("Total count    =         3000"), "{h}");
}

#[test]
fn pipelined_messages_larger_than_socket_buffers_do_not_deadlock() {
    let server = Server::start("thread");
    let dir = TempDir::new("big");
    let json = dir.file("r.json");
    let o = client(&[
        "--addr",
        &server.addr(),
        "-c",
        "2",
        "-t",
        "1",
        "--size",
        "300000",
        "--depth",
        "4",
        "-n",
        "40",
        "--payload",
        "binary",
        "-d",
        "60s",
        "--json",
        &json,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!(r.messages, 40);
    assert_eq!(r.bytes, 40 * 300_000);
    assert_eq!(r.config.depth, 4);
}

#[test]
fn fixed_rate_reports_target_and_corrected_latency() {
    let server = Server::start("thread");
    let dir = TempDir::new("rate");
    let json = dir.file("r.json");
    let o = client(&["--addr", &server.addr(), "-c", "3", "-t", "1", "--rate", "300", "-d", "1s", "--json", &json]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, raw) = read_report(&json);
    // 300 msgs/s split 100/100/100 for one second: at most 300, at least a
    // few fewer if connecting took a moment.
    assert!((280..=300).contains(&r.messages), "{} messages\n{}", r.messages, describe(&o));
    assert_eq!(r.target_rate, Some(300.0));
    assert!(raw.contains("\"target\": 300.0"), "{raw}");
    assert_eq!(r.latency.len(), r.latency_uncorrected.len());
    // Latency from the scheduled time is never below that from the send time.
    assert!(r.latency.max() >= r.latency_uncorrected.max());
    assert!(text(&o.stdout).contains("uncorrected"));
}

#[test]
fn a_rate_below_conns_still_holds_every_connection() {
    let server = Server::start("thread");
    let dir = TempDir::new("rate-below");
    let json = dir.file("r.json");
    let o = client(&["--addr", &server.addr(), "-c", "4", "-t", "1", "--rate", "2", "-d", "1s", "--json", &json]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    // Two messages in one second over four connections: at least two carried
    // none, and all four were held open and answered the final check.
    assert!(r.messages <= 2, "{}", describe(&o));
    assert_eq!((r.conns_established, r.outcomes.held, r.checks), (4, 4, 4), "{}", describe(&o));
    assert!(text(&o.stdout).contains("4 held to the end"), "{}", describe(&o));
}

#[test]
fn reconnect_opens_one_connection_per_message() {
    let server = Server::start("thread");
    let dir = TempDir::new("reconnect");
    let json = dir.file("r.json");
    let o = client(&["--addr", &server.addr(), "-c", "2", "-t", "1", "--reconnect", "-n", "60", "--json", &json]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!(r.messages, 60);
    assert_eq!(r.conns_established, 60);
    assert_eq!(r.connect_latency.len(), 60);
}

#[test]
fn warmup_is_left_out_of_the_statistics() {
    let server = Server::start("thread");
    let dir = TempDir::new("warmup");
    let json = dir.file("r.json");
    let o =
        client(&["--addr", &server.addr(), "-c", "2", "-t", "1", "--warmup", "300ms", "-n", "500", "--json", &json]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!(r.messages, 500);
    assert_eq!(r.latency.len(), 500);
    assert!(r.warmup_messages > 0, "{}", describe(&o));
}

#[test]
fn a_flipped_byte_is_a_mismatch_and_exit_1() {
    let addr = faulty_server(flip_byte_1000).to_string();
    let dir = TempDir::new("flip");
    let json = dir.file("r.json");
    let o = client(&["--addr", &addr, "-c", "1", "-t", "1", "-n", "100", "-d", "20s", "--json", &json]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(text(&o.stderr).contains("not the uppercase"), "{}", describe(&o));
    let (r, _) = read_report(&json);
    // Byte 1000 is in message 15 (64-byte messages): exactly one bad reply.
    assert_eq!(r.errors.mismatch, 1, "{}", describe(&o));
    assert_eq!(r.messages, 100);
}

#[test]
fn a_reply_cut_short_is_eof_mid_reply_and_exit_1() {
    let addr = faulty_server(close_mid_reply).to_string();
    let dir = TempDir::new("eof");
    let json = dir.file("r.json");
    let o = client(&["--addr", &addr, "-c", "1", "-t", "1", "-n", "100", "-d", "20s", "--json", &json]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(text(&o.stderr).contains("in the middle of a reply"), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!(r.errors.eof_mid_reply, 1, "{}", describe(&o));
    assert_eq!(r.errors.mismatch, 0);
    assert_eq!(r.messages, 10, "the first 640 bytes were 10 good replies");
}

#[test]
fn a_refused_connection_is_reported_not_a_panic() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}"); // the listener is gone: connections are refused
    let o = client(&["--addr", &addr, "-c", "2", "-t", "1", "-n", "10"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(err.contains("connection refused") && !err.contains("panicked"), "{}", describe(&o));
    assert!(text(&o.stdout).contains("refused 2"), "{}", describe(&o));
}

#[test]
fn a_server_that_dies_mid_run_gives_a_report() {
    let mut server = Server::start("thread");
    let mut c = Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--addr", &server.addr(), "-c", "2", "-t", "1", "-d", "20s", "--progress"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first progress line: the load is running.
    let mut err = BufReader::new(c.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    let o = c.wait_with_output().unwrap();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{line}{rest}\n{out}");
    assert!(line.contains("conns"), "{line}");
    assert!(out.contains("messages") && !rest.contains("panicked"), "{rest}\n{out}");
    assert!(rest.contains("FAILED"), "{rest}");
}

#[test]
fn bad_arguments_exit_2() {
    for args in [
        &["--bogus"][..],
        &["--size", "0", "-n", "1"],
        &["--duration", "ten"],
        &["merge"],
        &["--arrival", "gaussian"],
        &["--start-at", "tomorrow"],
        &["--start-at", "2001-01-01T00:00:00Z", "-n", "1"],
        &["--max-lag", "soon"],
        &["--seed", "-1"],
        &["--spin", "soon"],
        &["plot", "r.json"],
    ] {
        let o = client(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", describe(&o));
    }
}

#[test]
fn several_servers_and_source_addresses() {
    let (s1, s2) = (Server::start("thread"), Server::start("pool"));
    let dir = TempDir::new("multi");
    let json = dir.file("r.json");
    let o = client(&[
        "--addr",
        &s1.addr(),
        "--addr",
        &s2.addr(),
        "--source-ip",
        "127.0.0.1",
        "--source-ip",
        "127.0.0.2",
        "-c",
        "4",
        "-t",
        "2",
        "-n",
        "400",
        "--json",
        &json,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!(r.messages, 400);
    assert_eq!(r.config.addrs.len(), 2);
    assert_eq!(r.config.source_ips, vec!["127.0.0.1".to_string(), "127.0.0.2".to_string()]);
}

#[test]
fn a_duration_run_has_a_per_second_series_that_adds_up() {
    let server = Server::start("thread");
    let dir = TempDir::new("series");
    let json = dir.file("r.json");
    let o = client(&["--addr", &server.addr(), "-c", "2", "-t", "1", "-d", "2s", "--rate", "500", "--json", &json]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert!((1.99..2.01).contains(&r.elapsed.as_secs_f64()), "{:?}", r.elapsed);
    assert!((2..=3).contains(&r.series.len()), "{:?}", r.series);
    assert_eq!(r.series.iter().map(|s| s.messages).sum::<u64>(), r.messages);
    assert!((r.series[0].t - 1.0).abs() < 1e-9, "{:?}", r.series);
    // 250 msgs/s on each connection: each whole second holds about 500.
    assert!((480..=520).contains(&r.series[1].messages), "{:?}", r.series);
    assert!(r.series[1].p99_us.is_some());
}

#[test]
fn many_connections_on_two_threads() {
    let server = Server::start("thread");
    let dir = TempDir::new("many");
    let json = dir.file("r.json");
    let o = client(&["--addr", &server.addr(), "-c", "400", "-t", "2", "-n", "4000", "-d", "30s", "--json", &json]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!((r.messages, r.conns_established, r.config.threads), (4000, 400, 2));
}

#[test]
fn a_flipped_byte_is_found_in_the_right_pipelined_message() {
    let addr = faulty_server(flip_byte_1000).to_string();
    let dir = TempDir::new("flip-pipelined");
    let json = dir.file("r.json");
    let o = client(&[
        "--addr", &addr, "-c", "1", "-t", "1", "--size", "100", "--depth", "8", "-n", "50", "-d", "20s", "--json",
        &json,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    let (r, _) = read_report(&json);
    // Byte 1000 is the first byte of message 10: one bad reply of 50.
    assert_eq!((r.errors.mismatch, r.messages), (1, 50), "{}", describe(&o));
}

#[test]
fn reconnect_at_a_fixed_rate() {
    let server = Server::start("thread");
    let dir = TempDir::new("reconnect-rate");
    let json = dir.file("r.json");
    let o = client(&[
        "--addr",
        &server.addr(),
        "-c",
        "2",
        "-t",
        "1",
        "--reconnect",
        "--rate",
        "100",
        "-d",
        "1s",
        "--json",
        &json,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert!((90..=100).contains(&r.messages), "{}", describe(&o));
    assert_eq!(r.conns_established, r.messages + r.warmup_messages);
    assert_eq!(r.target_rate, Some(100.0));
}

#[test]
fn json_to_stdout_moves_the_summary_to_stderr() {
    let server = Server::start("thread");
    let o = client(&["--addr", &server.addr(), "-c", "2", "-t", "1", "-n", "100", "--json", "-"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let r = Report::from_json(&text(&o.stdout)).expect("stdout is the JSON report");
    assert_eq!(r.messages, 100);
    assert!(text(&o.stderr).contains("messages     100"), "{}", describe(&o));
}

/// Reads and never answers.
fn black_hole(_: &[u8], _: u64, _: u64) -> (Vec<u8>, bool) {
    (Vec::new(), false)
}

#[test]
fn a_reply_that_never_comes_is_a_reply_timeout_and_exit_1() {
    let addr = faulty_server(black_hole).to_string();
    let dir = TempDir::new("black-hole");
    let json = dir.file("r.json");
    let o = client(&["--addr", &addr, "-c", "2", "-t", "1", "-n", "10", "--timeout", "300ms", "--json", &json]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(text(&o.stderr).contains("within the timeout"), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!((r.errors.reply_timeout, r.messages), (2, 0), "{}", describe(&o));
}

#[test]
fn plot_draws_a_report_and_a_merge() {
    let server = Server::start("thread");
    let dir = TempDir::new("plot");
    let (json, merged, svg, svg2) = (dir.file("r.json"), dir.file("m.json"), dir.file("r.svg"), dir.file("m.svg"));
    let o = client(&["--addr", &server.addr(), "-c", "4", "-t", "1", "--rate", "400", "-d", "2s", "--json", &json]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let o = client(&["plot", &json, "-o", &svg]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let s = std::fs::read_to_string(&svg).expect("the SVG is written");
    assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"), "{}", &s[..s.len().min(200)]);
    for label in ["messages per second", "latency, corrected", "p99", "max", "schedule lag", "lag p99"] {
        assert!(s.contains(label), "{label} missing from the plot");
    }
    assert!(s.matches("<polyline").count() >= 7, "one line per series");
    // A merge plots the same way.
    let o = client(&["merge", &json, &json, "--json", &merged]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let o = client(&["plot", &merged, "-o", &svg2, "--title", "two instances"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(std::fs::read_to_string(&svg2).unwrap().contains("two instances"));
    // A missing report is an error, not a panic.
    let o = client(&["plot", &dir.file("none.json"), "-o", &svg]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
}
