//! `--hlog FILE`: the interval log is decoded by an independent
//! implementation, `tests/e2e/client/hlog_decode.py` (Python 3, standard library
//! only: base64, zlib, struct), whose per-tag counts must equal the JSON
//! report's totals. The test fails, not skips, without python3 (CI installs
//! it). Runs are bounded by `--duration`; the server is killed by PID.

use std::process::Command;

use crate::support::client::{client, describe, text, Server, TempDir};

/// Runs the decoder on `hlog` and `json`: (exit code, output).
fn decode(hlog: &str, json: &str) -> (Option<i32>, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/client/hlog_decode.py");
    let o = Command::new("python3")
        .args([script, hlog, json])
        .output()
        .unwrap_or_else(|e| panic!("this test needs python3 on the PATH (apt-get install python3): {e}"));
    (o.status.code(), format!("{}{}", text(&o.stdout), text(&o.stderr)))
}

fn run(server: &Server, dir: &TempDir, name: &str, extra: &[&str]) -> (String, String) {
    let (hlog, json) = (dir.file(&format!("{name}.hlog")), dir.file(&format!("{name}.json")));
    let addr = server.addr();
    let args = [&["--addr", &addr, "-c", "8", "-t", "1", "-d", "3s", "--hlog", &hlog, "--json", &json][..], extra];
    let o = client(&args.concat());
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    (hlog, json)
}

#[test]
fn the_interval_log_decodes_independently_to_the_report_totals() {
    let server = Server::start("event");
    let dir = TempDir::new("hlog");
    let (hlog, json) = run(&server, &dir, "rate", &["--rate", "2000", "--arrival", "poisson"]);
    let log = std::fs::read_to_string(&hlog).unwrap();
    for needle in [
        "#[StartTime: ",
        "#[BaseTime: ",
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"",
        "Tag=corrected,0.000,1.000,",
        "Tag=uncorrected,0.000,1.000,",
        "Tag=lag,0.000,1.000,",
        "Tag=corrected,2.000,1.000,",
    ] {
        assert!(log.contains(needle), "{needle} missing from\n{log}");
    }
    let (code, out) = decode(&hlog, &json);
    assert_eq!(code, Some(0), "{out}\n{log}");
    for tag in ["corrected", "uncorrected", "lag"] {
        assert!(out.lines().any(|l| l.starts_with(tag) && l.contains("values in the log")), "{out}");
    }
    // The JSON per-second series has p50/p99/max and the lag for every second.
    let (r, _) = crate::support::client::read_report(&json);
    // Three seconds, and a fourth if a reply due in the third came after the end.
    assert!((3..=4).contains(&r.series.len()), "{:?}", r.series);
    assert!(r.series.iter().all(|s| s.p50_us.is_some() && s.p99_us.is_some() && s.max_us > 0.0));
    assert!(r.series[..3].iter().all(|s| s.lag_p99_us.is_some() && s.lag_max_us.is_some()));

    // The check can fail: a report whose count differs from the log is caught.
    let tampered = dir.file("tampered.json");
    let mut j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let n = j["latency"]["count"].as_u64().unwrap();
    j["latency"]["count"] = (n + 1).into();
    std::fs::write(&tampered, j.to_string()).unwrap();
    let (code, out) = decode(&hlog, &tampered);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("MISMATCH: tag corrected"), "{out}");
}

#[test]
fn a_closed_loop_interval_log_has_no_lag() {
    let server = Server::start("event");
    let dir = TempDir::new("hlog-closed");
    let (hlog, json) = run(&server, &dir, "closed", &[]);
    let (code, out) = decode(&hlog, &json);
    assert_eq!(code, Some(0), "{out}");
    let log = std::fs::read_to_string(&hlog).unwrap();
    assert!(log.contains("Tag=corrected,") && !log.contains("Tag=lag,"), "{log}");
}
