//! `cargo bench --bench seeds`: the seeds' own experiments (the tutorial the
//! project started from), redone in Rust, printed beside the tutorial's
//! Python figures:
//!
//! 1. start 100 processes and 100 threads that each sleep 0.1 s, and join
//!    them (Python: 1.75 s vs 0.12 s);
//! 2. 12 CPU-bound tasks (the tutorial's factorial loop, sized here to take
//!    about a second on one core) in 12 processes and in 12 threads
//!    (Python: 5.67 s vs 30.2 s, threads serialised by the GIL);
//! 3. 12 IO-bound tasks (sleep 2 s) in processes and in threads (the
//!    tutorial gives no figure).
//!
//! Each figure is wall time from the first start to the last join, the
//! median of 3 runs. A process is this bench binary started again with
//! `--task KIND ARG` (`std::process::Command`: fork and exec from the
//! standard library, which is sound from a multi-threaded process, unlike a
//! bare fork that goes on running Rust code); a thread is `std::thread`.
//! Under `cargo test --benches` (no `--bench`) it only says how to run it.

use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The tutorial's figures, seconds (processes, threads).
const PYTHON_SPAWN: (f64, f64) = (1.75, 0.12);
const PYTHON_CPU: (f64, f64) = (5.67, 30.2);

const REPEATS: usize = 3;

/// The factorial loop: `n!` with wrapping multiplication, `rounds` times
/// (the tutorial computes factorials in a loop; a wrapping product keeps
/// the work in registers, so the time is the loop's, not an allocator's).
fn factorial_rounds(n: u64, rounds: u64) -> u64 {
    let mut acc = 0u64;
    for r in 0..rounds {
        let mut f = 1u64;
        for i in 1..=n {
            f = f.wrapping_mul(std::hint::black_box(i) | 1);
        }
        acc = acc.wrapping_add(f ^ r);
    }
    std::hint::black_box(acc)
}

const FACTORIAL_N: u64 = 10_000;

/// Rounds of the factorial loop that take about one second here.
fn calibrate() -> u64 {
    let t = Instant::now();
    let probe = 2_000;
    factorial_rounds(FACTORIAL_N, probe);
    let per_round = t.elapsed().as_secs_f64() / probe as f64;
    ((1.0 / per_round) as u64).max(1)
}

/// One task, in whatever runs it.
fn task(kind: &str, arg: u64) {
    match kind {
        "sleep-ms" => thread::sleep(Duration::from_millis(arg)),
        "factorial" => {
            factorial_rounds(FACTORIAL_N, arg);
        }
        other => panic!("unknown task {other}"),
    }
}

/// `n` tasks in `n` processes, started one after another, then joined.
fn in_processes(n: usize, kind: &str, arg: u64) -> f64 {
    let me = std::env::current_exe().expect("this bench's path");
    let t = Instant::now();
    let children: Vec<_> = (0..n)
        .map(|_| {
            Command::new(&me)
                .args(["--task", kind, &arg.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .expect("start a task process")
        })
        .collect();
    for mut c in children {
        let st = c.wait().expect("wait for a task process");
        assert!(st.success(), "a task process failed: {st}");
    }
    t.elapsed().as_secs_f64()
}

/// `n` tasks in `n` threads, started one after another, then joined.
fn in_threads(n: usize, kind: &'static str, arg: u64) -> f64 {
    let t = Instant::now();
    let threads: Vec<_> = (0..n).map(|_| thread::spawn(move || task(kind, arg))).collect();
    for h in threads {
        h.join().expect("a task thread panicked");
    }
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn runs(f: impl Fn() -> f64) -> (f64, f64, f64) {
    let v: Vec<f64> = (0..REPEATS).map(|_| f()).collect();
    let (lo, hi) = (v.iter().copied().fold(f64::MAX, f64::min), v.iter().copied().fold(0.0, f64::max));
    (median(v), lo, hi)
}

fn fmt((m, lo, hi): (f64, f64, f64)) -> String {
    format!("{m:.3} s ({lo:.3}-{hi:.3})")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--task") {
        let (Some(kind), Some(arg)) = (args.get(2), args.get(3).and_then(|a| a.parse().ok())) else {
            eprintln!("usage: seeds --task sleep-ms|factorial N");
            return ExitCode::from(2);
        };
        task(kind, arg);
        return ExitCode::SUCCESS;
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("seeds: not run under cargo test; use `cargo bench --bench seeds`");
        return ExitCode::SUCCESS;
    }
    let cores = thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let rounds = calibrate();
    let one = runs(|| in_threads(1, "factorial", rounds));
    eprintln!("seeds: {cores} core(s); one factorial task ({rounds} rounds of {FACTORIAL_N}!) takes {}", fmt(one));
    let spawn_p = runs(|| in_processes(100, "sleep-ms", 100));
    let spawn_t = runs(|| in_threads(100, "sleep-ms", 100));
    let cpu_p = runs(|| in_processes(12, "factorial", rounds));
    let cpu_t = runs(|| in_threads(12, "factorial", rounds));
    let io_p = runs(|| in_processes(12, "sleep-ms", 2000));
    let io_t = runs(|| in_threads(12, "sleep-ms", 2000));
    println!("| experiment | Python (the tutorial): processes | threads | Rust: processes | threads | Rust processes / threads |");
    println!("|---|---:|---:|---:|---:|---:|");
    let row = |what: &str, py: Option<(f64, f64)>, p: (f64, f64, f64), t: (f64, f64, f64)| {
        let (pp, pt) = py.map_or(("not given".to_string(), "not given".to_string()), |(a, b)| {
            (format!("{a:.2} s"), format!("{b:.2} s"))
        });
        println!("| {what} | {pp} | {pt} | {} | {} | {:.2}× |", fmt(p), fmt(t), p.0 / t.0);
    };
    row("100 tasks that sleep 0.1 s, started and joined", Some(PYTHON_SPAWN), spawn_p, spawn_t);
    row(
        &format!("12 CPU-bound tasks (factorial loop, {:.2} s each alone), {cores} cores", one.0),
        Some(PYTHON_CPU),
        cpu_p,
        cpu_t,
    );
    row("12 IO-bound tasks (sleep 2 s)", None, io_p, io_t);
    println!(
        "\nMedians of {REPEATS} runs (range in brackets), wall time from the first start to the last join. Ideal for \
         the CPU-bound row: 12 × {:.2} s / {cores} cores = {:.2} s.",
        one.0,
        12.0 * one.0 / cores as f64
    );
    ExitCode::SUCCESS
}
