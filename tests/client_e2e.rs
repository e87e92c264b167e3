//! End-to-end tests of the `client` binary: against the real `server`
//! (thread mode) and against deliberately faulty servers written here (one
//! flips a byte, one closes mid-reply), checking the summary, the JSON
//! report, the exit codes and `client merge`. Every run is bounded by
//! `--messages` or a short `--duration`; servers listen on 127.0.0.1:0 and are
//! killed by PID when the test ends, pass or fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread;

use switchyard::client::Report;
use switchyard::common::upper::to_upper;

/// A `server` process, killed (SIGKILL) and reaped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(mode: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(["--mode", mode, "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server");
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).expect("read the listening line");
        let addr = line.split_whitespace().nth(2).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first line from server: {line:?}")
        });
        Server { child, addr }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("switchyard-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_client")).args(args).stdin(Stdio::null()).output().expect("run client")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn describe(o: &Output) -> String {
    format!("status {:?}\n--- stdout\n{}--- stderr\n{}", o.status, text(&o.stdout), text(&o.stderr))
}

fn read_report(path: &str) -> (Report, String) {
    let json = std::fs::read_to_string(path).expect("JSON report written");
    (Report::from_json(&json).expect("JSON report parses"), json)
}

/// A faulty server: each connection's replies go through `reply`, which gets
/// the bytes read, the connection's offset of their first byte, and returns
/// what to write plus whether to close afterwards.
fn faulty_server(reply: fn(&[u8], u64) -> (Vec<u8>, bool)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut offset = 0u64;
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let (out, close) = reply(&buf[..n], offset);
                    offset += n as u64;
                    if s.write_all(&out).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Echoes the uppercase, but flips one bit of byte 1000 of each connection.
fn flip_byte_1000(data: &[u8], offset: u64) -> (Vec<u8>, bool) {
    let mut out = to_upper(data);
    if (offset..offset + data.len() as u64).contains(&1000) {
        out[(1000 - offset) as usize] ^= 0x01;
    }
    (out, false)
}

/// Echoes the uppercase correctly for the first 640 bytes, then sends half
/// of what it read and closes.
fn close_mid_reply(data: &[u8], offset: u64) -> (Vec<u8>, bool) {
    let out = to_upper(data);
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
fn rate_below_conns_warns() {
    let server = Server::start("thread");
    let o = client(&["--addr", &server.addr(), "-c", "4", "-t", "1", "--rate", "2", "-d", "1s"]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(text(&o.stderr).contains("below --conns"), "{}", describe(&o));
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
fn two_instances_at_once_merge_to_the_sums() {
    let server = Server::start("thread");
    let dir = TempDir::new("merge");
    let (a, b, m) = (dir.file("a.json"), dir.file("b.json"), dir.file("m.json"));
    let spawn = |n: &str, json: &str| {
        Command::new(env!("CARGO_BIN_EXE_client"))
            .args(["--addr", &server.addr(), "-c", "2", "-t", "1", "-n", n, "-d", "30s", "--json", json])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (ca, cb) = (spawn("1500", &a), spawn("2500", &b));
    let (oa, ob) = (ca.wait_with_output().unwrap(), cb.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success(), "{}\n{}", describe(&oa), describe(&ob));
    let o = client(&["merge", &a, &b, "--json", &m]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    assert!(text(&o.stdout).contains("2 instances merged"), "{}", describe(&o));
    let (ra, _) = read_report(&a);
    let (rb, _) = read_report(&b);
    let (rm, _) = read_report(&m);
    assert_eq!(rm.instances, 2);
    assert_eq!(rm.messages, 4000);
    assert_eq!(rm.messages, ra.messages + rb.messages);
    assert_eq!(rm.bytes, ra.bytes + rb.bytes);
    assert_eq!(rm.latency.len(), 4000);
    assert_eq!(rm.latency.max(), ra.latency.max().max(rb.latency.max()));
    assert_eq!(rm.conns_established, 4);
    assert!((rm.msgs_per_sec - (ra.msgs_per_sec + rb.msgs_per_sec)).abs() < 1e-6 * rm.msgs_per_sec);
    assert!((rm.client_cpu_secs - (ra.client_cpu_secs + rb.client_cpu_secs)).abs() < 1e-9);
    // Added histograms: every value of either run is in the merge.
    let mut sum = ra.latency.clone();
    sum.add(&rb.latency).unwrap();
    assert_eq!(rm.latency, sum);
}

#[test]
fn bad_arguments_exit_2() {
    for args in [&["--bogus"][..], &["--size", "0", "-n", "1"], &["--duration", "ten"], &["merge"]] {
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
fn black_hole(_: &[u8], _: u64) -> (Vec<u8>, bool) {
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
