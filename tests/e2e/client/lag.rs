//! The client's own schedule lag at a fixed rate: a client stopped for
//! 300 ms (SIGSTOP, then SIGCONT) sends the messages that fell due meanwhile
//! late; that shows up in the lag histogram, the report says the corrected
//! figures include the client's own delay, and `--max-lag` makes it a
//! failure. A run left alone (here with `--spin`) stays within a generous
//! `--max-lag`. Bounded by
//! `--duration`; processes are killed by PID when the test ends.

use std::io::{BufRead, BufReader, Read};
use std::thread;
use std::time::Duration;

use crate::support::client::{client, describe, read_report, spawn_client, text, Running, Server, TempDir};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long the client is stopped: the fault injected, not a synchronisation.
const STALL: Duration = Duration::from_millis(300);

#[test]
fn a_stalled_client_shows_up_as_lag_and_fails_max_lag() {
    let server = Server::start("event");
    let dir = TempDir::new("lag");
    let json = dir.file("r.json");
    let args =
        ["--addr", &server.addr(), "-c", "10", "-t", "1", "--rate", "1000", "-d", "3s", "--max-lag", "50ms", "--json"];
    let mut run = Running(Some(spawn_client(&[&args[..], &[json.as_str(), "--progress"]].concat())));
    // The first progress line: the client is sending.
    let mut err = BufReader::new(run.0.as_mut().unwrap().stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.contains("msgs/s"), "{first}");
    let pid = Pid::from_raw(run.pid() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    thread::sleep(STALL);
    kill(pid, Signal::SIGCONT).unwrap();
    let mut rest = String::new();
    let _ = err.read_to_string(&mut rest);
    let o = run.wait();
    let all = format!("{}\n--- stderr\n{first}{rest}", describe(&o));
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(rest.contains("exceeds --max-lag 50.00ms"), "{all}");
    let out = text(&o.stdout);
    assert!(
        out.contains("schedule lag") && out.contains("the corrected figures include the client's own delay"),
        "{all}"
    );
    let (r, raw) = read_report(&json);
    // The messages due during the stall (~300 of 3,000) left up to 300 ms late.
    let lag_max = r.lag.max() as f64 / 1e6;
    assert!(lag_max >= 250.0, "lag max {lag_max} ms\n{all}");
    assert!(r.lag.value_at_quantile(0.99) >= 50_000_000, "lag p99 {} ns", r.lag.value_at_quantile(0.99));
    // Every measured message was taken up once: one lag value each.
    assert_eq!(r.lag.len(), r.messages + r.unfinished, "{all}");
    // The corrected latency carries the stall too; the lag says it was the client's.
    assert!(r.latency.max() >= 250_000_000);
    assert!(raw.contains("\"lag_check\"") && raw.contains("\"exceeded\": true"), "{raw}");
    assert!(raw.contains("\"lag\": \"HISTF"), "the JSON carries the lag histogram");
}

#[test]
fn a_client_left_alone_stays_within_a_generous_max_lag() {
    let server = Server::start("event");
    let dir = TempDir::new("no-lag");
    let json = dir.file("r.json");
    let o = client(&[
        "--addr",
        &server.addr(),
        "-c",
        "10",
        "-t",
        "1",
        "--rate",
        "500",
        "-d",
        "1s",
        "--max-lag",
        "1s",
        "--spin",
        "50us",
        "--json",
        &json,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    assert_eq!(r.config.spin_secs, 50e-6);
    assert_eq!(r.lag.len(), r.messages + r.unfinished);
    assert!(r.lag.max() < 1_000_000_000, "lag max {} ns", r.lag.max());
}
