//! The library API the benchmark harness uses: `switchyard_client::run` with a
//! `Config` against the real server, then the report's JSON round trip and
//! merge. Bounded by `messages`; the server is killed by PID on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use switchyard::client::{run, Config, Report};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_returns_a_report_that_round_trips_and_merges() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--mode", "thread", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child);
    let addr = line.split_whitespace().nth(2).expect("listening line").parse().unwrap();
    let cfg = Config { addrs: vec![addr], threads: 2, conns: 3, depth: 2, messages: Some(1000), ..Config::default() };
    let r = run(&cfg).unwrap();
    drop(server);
    assert_eq!(r.messages, 1000);
    assert_eq!(r.bytes, 64_000);
    assert_eq!(r.latency.len(), 1000);
    assert!(r.passed());
    assert!(r.msgs_per_sec > 0.0 && !r.elapsed.is_zero());
    assert!(r.cpu_secs_per_million().is_some());
    let back = Report::from_json(&r.to_json().to_string()).unwrap();
    assert_eq!(back.latency, r.latency);
    assert_eq!(back.errors, r.errors);
    let m = Report::merged([&r, &back]);
    assert_eq!(m.messages, 2000);
    assert_eq!(m.latency.len(), 2000);
}

#[test]
fn run_rejects_a_bad_config() {
    let cfg = Config { size: 0, ..Config::default() };
    assert_eq!(run(&cfg).unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
}
