//! Coordinated instances: two clients started with the same `--start-at`
//! measure the same wall-clock window, their JSON says so, and `client
//! merge` adds them (the merged rate is the sum over the common window);
//! instances that ran one after the other are warned about, and fail with
//! `merge --strict`. Runs are bounded by `--duration` or `--messages`;
//! processes are killed by PID when the test ends.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::client::{client, describe, read_report, spawn_client, text, Running, Server, TempDir};

#[test]
fn two_instances_with_start_at_measure_the_same_window_and_merge_to_the_sums() {
    let server = Server::start("event");
    let dir = TempDir::new("coordinated");
    let (a, b, m) = (dir.file("a.json"), dir.file("b.json"), dir.file("m.json"));
    // One absolute start time for both, 1.5 s ahead (they ramp up before it).
    let at = (SystemTime::now() + Duration::from_millis(1500)).duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let at_s = format!("{at:.3}");
    let spawn = |rate: &str, json: &str| {
        Running(Some(spawn_client(&[
            "--addr",
            &server.addr(),
            "-c",
            "4",
            "-t",
            "1",
            "--rate",
            rate,
            "-d",
            "2s",
            "--start-at",
            &at_s,
            "--json",
            json,
        ])))
    };
    let (ca, cb) = (spawn("400", &a), spawn("600", &b));
    let (oa, ob) = (ca.wait(), cb.wait());
    assert!(oa.status.success() && ob.status.success(), "{}\n{}", describe(&oa), describe(&ob));
    let (ra, raw) = read_report(&a);
    let (rb, _) = read_report(&b);
    assert!(raw.contains("\"windows\"") && raw.contains("\"start_unix\""), "{raw}");
    // Each window starts at the agreed time (to a few ms) and lasts 2 s.
    for r in [&ra, &rb] {
        let w = r.windows[0];
        assert!((w.start_unix - at).abs() < 0.05, "window {w:?}, start-at {at}");
        assert!((w.secs() - 2.0).abs() < 0.01, "{w:?}");
    }
    let o = client(&["merge", &a, &b, "--json", &m]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let out = text(&o.stdout);
    // Each instance's line, then the merged report with its common window.
    assert!(out.contains(&format!("{a}: ")) && out.contains(&format!("{b}: ")), "{out}");
    assert!(out.contains("2 instances merged") && out.contains("common window"), "{out}");
    assert!(!text(&o.stderr).contains("warning"), "{}", describe(&o));
    let (rm, _) = read_report(&m);
    assert_eq!(rm.messages, ra.messages + rb.messages);
    assert_eq!(rm.windows.len(), 2);
    let mut sum = ra.latency.clone();
    sum.add(&rb.latency).unwrap();
    assert_eq!(rm.latency, sum);
    // Over the common window (nearly all of both), the rates add up: 1,000 msgs/s.
    assert!((rm.msgs_per_sec - 1000.0).abs() < 20.0, "merged {} msgs/s", rm.msgs_per_sec);
    assert!((rm.msgs_per_sec - (ra.msgs_per_sec + rb.msgs_per_sec)).abs() < 0.02 * rm.msgs_per_sec);
    // The per-second series of the merge carries the added seconds' percentiles.
    assert!(rm.series.iter().all(|s| s.p99_us.is_some()), "{:?}", rm.series);
    let second: u64 = rm.series.iter().map(|s| s.messages).sum();
    assert_eq!(second, rm.messages);
}

#[test]
fn windows_that_do_not_overlap_are_a_warning_and_fail_with_strict() {
    let server = Server::start("event");
    let dir = TempDir::new("apart");
    let (a, b) = (dir.file("a.json"), dir.file("b.json"));
    // One after the other: b starts after a has ended.
    for json in [&a, &b] {
        let o = client(&["--addr", &server.addr(), "-c", "2", "-t", "1", "-n", "500", "--json", json]);
        assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    }
    let o = client(&["merge", &a, &b]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("warning: the measuring windows do not overlap:") && err.contains(" s from the first end"),
        "{err}"
    );
    let o = client(&["merge", &a, &b, "--strict"]);
    assert_eq!(o.status.code(), Some(1), "{}", describe(&o));
    assert!(text(&o.stderr).contains("FAILED: the measuring windows do not overlap"), "{}", describe(&o));
}

#[test]
fn a_closed_loop_instance_sends_nothing_before_start_at() {
    let server = Server::start("event");
    let dir = TempDir::new("closed-start");
    let json = dir.file("r.json");
    let started = SystemTime::now();
    let o =
        client(&["--addr", &server.addr(), "-c", "2", "-t", "1", "-d", "500ms", "--start-at", "+1", "--json", &json]);
    assert_eq!(o.status.code(), Some(0), "{}", describe(&o));
    let (r, _) = read_report(&json);
    let start = r.windows[0].start_unix - started.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((0.9..1.2).contains(&start), "the window started {start} s after launch");
    // Nothing was sent before it: no warm-up messages, and every message is in the window.
    assert_eq!(r.warmup_messages, 0);
    assert_eq!(r.series.iter().map(|s| s.messages).sum::<u64>(), r.messages);
}
