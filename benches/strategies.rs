//! `cargo bench --bench strategies [-- --quick|--full] [--modes a,b] [--out DIR] [--write-docs]`
//!
//! The strategy benchmark harness. For every server mode (one line each in
//! [`MODES`], plus the tokio and C baselines) it starts the release `server`
//! on port 0 in its own process group, drives it with the client library
//! in-process (one client thread, so the server gets the other core), and
//! measures:
//!
//! - closed loop, connections × message size;
//! - fixed rate at 50% of the mode's measured peak (latency under moderate load);
//! - one connection per message (connections per second);
//! - `--work cpu:N` and `--work sleep:MS` (CPU-bound vs IO-bound handlers);
//! - RSS per idle connection and server CPU per message (issue 3);
//! - the client's CPU per message against a minimal mio load generator
//!   (issue 12; `strategies/floor.rs`, `strategies/loadgen.rs`);
//! - the example servers beside nginx and redis-server, driven by wrk and
//!   redis-benchmark (issue 14; `strategies/examples.rs`; `--examples`
//!   alone, `--no-examples` without).
//! - syscalls per message (`strace -c -f` on a short run; `strategies/syscalls.rs`);
//! - the prefork master's accept balance over its workers (`strategies/balance.rs`).
//!
//! Every run is bounded (duration, client timeouts, and a watchdog that
//! kills the server if a run overruns); every server is SIGKILLed with its
//! process group when its run ends, also on panic. Resource figures (server
//! CPU per message, summed over the whole process tree; peak RSS; client CPU
//! per message) lead every table. Output: Markdown on stdout,
//! `<target>/bench/results.json`, SVG plots beside it, and with `--write-docs`
//! `docs/BENCHMARKS.md` + `docs/bench/*.svg` (with `--docs-dir DIR`: the same
//! files in DIR instead, e.g. to check the generator on a quick run); the
//! generated document also renders `docs/bench/c100k.json`, the latest
//! result of `scripts/c100k.sh`. Exit status 1 if any run had verification
//! errors (or could not run).
//!
//! The tokio baseline is this same binary re-executed with `--serve-tokio`
//! (so it is a separate process built in the same profile; see
//! `strategies/tokio_echo.rs`); the C baseline is `benches/c/epoll_echo.c`,
//! compiled here with `cc -O2`.

#[path = "strategies/balance.rs"]
mod balance;
#[path = "strategies/examples.rs"]
mod examples;
#[path = "strategies/floor.rs"]
mod floor;
#[path = "strategies/idle.rs"]
mod idle;
#[path = "strategies/loadgen.rs"]
mod loadgen;
#[path = "strategies/output.rs"]
mod output;
#[path = "strategies/plot.rs"]
mod plot;
#[path = "strategies/procfs.rs"]
mod procfs;
// Where the example programs are built and the tools found: the tests' own module.
#[allow(dead_code)]
#[path = "../tests/e2e/support/programs.rs"]
mod programs;
#[path = "strategies/server.rs"]
mod server;
#[path = "strategies/syscalls.rs"]
mod syscalls;
#[path = "strategies/tokio_echo.rs"]
mod tokio_echo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use server::Server;
use switchyard_client::{Config as ClientConfig, PayloadKind};

/// How a mode's server is started.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// The Switchyard `server` binary with these flags.
    Switchyard(&'static [&'static str]),
    /// The tokio baseline with this runtime flavor.
    Tokio(&'static str),
    /// A C program of `benches/c` (the name, without `.c`), built by the
    /// harness: the epoll baseline, and the process-per-connection one.
    C(&'static str),
    /// A Python program (`python3 SCRIPT ADDR`, the path from the
    /// workspace root): measured one connection per message only.
    Python(&'static str),
}

/// One server configuration under test.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ModeSpec {
    /// Name in tables and plots.
    pub(crate) name: &'static str,
    /// How to start it.
    pub(crate) kind: Kind,
    /// Clients it serves at once (None: as many as connect); beyond that, closed-loop cells are n/a.
    pub(crate) max_clients: Option<usize>,
    /// Why cells beyond `max_clients` are n/a.
    pub(crate) why: &'static str,
    /// Part of the idle-connection memory table.
    pub(crate) idle: bool,
}

const fn mode(name: &'static str, kind: Kind, max_clients: Option<usize>, why: &'static str, idle: bool) -> ModeSpec {
    ModeSpec { name, kind, max_clients, why, idle }
}

impl ModeSpec {
    /// Measured in the one-connection-per-message section only (the
    /// process-per-connection baselines of the fork target: the tutorial's
    /// Python server and the same server in C).
    pub(crate) fn reconnect_only(&self) -> bool {
        matches!(self.kind, Kind::Python(_) | Kind::C(FORK_ECHO))
    }
}

use Kind::{Python, Switchyard as S, Tokio, C};

/// Every mode, one line each. Prefork entries are probed first and skipped if the server lacks them.
#[rustfmt::skip]
pub(crate) const MODES: &[ModeSpec] = &[
    mode("serial", S(&["--mode", "serial"]), Some(1), "serial serves one client at a time", false),
    mode("fork", S(&["--mode", "fork"]), None, "", false),
    mode("thread", S(&["--mode", "thread"]), None, "", true),
    mode("pool", S(&["--mode", "pool", "--threads", "16"]), Some(16), "a pool of 16 threads serves 16 clients at a time", false),
    mode("event", S(&["--mode", "event"]), None, "", true),
    mode("reactor", S(&["--mode", "reactor", "--threads", "2"]), None, "", true),
    mode("uring", S(&["--mode", "uring"]), None, "", true),
    mode("uring-rings", S(&["--mode", "uring", "--threads", "2"]), None, "", true),
    mode("prefork-serial", S(&["--mode", "prefork", "--workers", "2", "--worker", "serial"]), Some(2), "2 serial workers serve 2 clients at a time", false),
    mode("prefork-thread", S(&["--mode", "prefork", "--workers", "2", "--worker", "thread"]), None, "", false),
    mode("prefork-pool", S(&["--mode", "prefork", "--workers", "2", "--worker", "pool", "--threads", "16"]), Some(32), "2 workers x 16 pool threads serve 32 clients at a time", false),
    mode("prefork-event", S(&["--mode", "prefork", "--workers", "2", "--worker", "event"]), None, "", false),
    mode("prefork-uring", S(&["--mode", "prefork", "--workers", "2", "--worker", "uring"]), None, "", false),
    // The echo as a coroutine (`--handler async`), beside the state machine above.
    mode("thread-async", S(&["--mode", "thread", "--handler", "async"]), None, "", true),
    mode("event-async", S(&["--mode", "event", "--handler", "async"]), None, "", true),
    mode("reactor-async", S(&["--mode", "reactor", "--threads", "2", "--handler", "async"]), None, "", true),
    mode("prefork-event-async", S(&["--mode", "prefork", "--workers", "2", "--worker", "event", "--handler", "async"]), None, "", false),
    mode("tokio-ct", Tokio("current_thread"), None, "", true),
    mode("tokio-mt", Tokio("multi_thread"), None, "", true),
    mode("c-epoll", C("epoll_echo"), None, "", true),
    // The tutorial's process-per-connection server, beside fork, and the same in C.
    mode("python-fork", Python("benches/python/fork_echo.py"), None, "", false),
    mode("c-fork", C(FORK_ECHO), None, "", false),
];

/// The C process-per-connection server (`benches/c/fork_echo.c`).
const FORK_ECHO: &str = "fork_echo";

/// The baselines every figure is compared with.
pub(crate) const BASELINES: [&str; 2] = ["tokio-ct", "c-epoll"];

/// Options from the command line (after `--`).
#[derive(Clone, Debug)]
pub(crate) struct Opts {
    pub(crate) quick: bool,
    pub(crate) modes: Option<Vec<String>>,
    pub(crate) out: PathBuf,
    pub(crate) write_docs: bool,
    /// Where `--write-docs` writes (default: the workspace's docs/).
    pub(crate) docs_dir: Option<PathBuf>,
    pub(crate) idle_only: bool,
    /// Only the client-vs-load-generator CPU table.
    pub(crate) floor_only: bool,
    /// The client-vs-load-generator CPU table.
    pub(crate) floor: bool,
    /// Only the example servers against nginx and redis-server.
    pub(crate) examples_only: bool,
    /// The example servers against nginx and redis-server.
    pub(crate) examples: bool,
    pub(crate) idle: bool,
    pub(crate) idle_conns: usize,
    /// Only the syscalls-per-message table.
    pub(crate) syscalls_only: bool,
    /// The syscalls-per-message table.
    pub(crate) syscalls: bool,
    /// Only the prefork accept-balance table.
    pub(crate) balance_only: bool,
    /// The prefork accept-balance table.
    pub(crate) balance: bool,
    /// The server binary measured (default: the one built with this bench).
    pub(crate) server: Option<PathBuf>,
    pub(crate) repeats: usize,
    pub(crate) duration: Duration,
    pub(crate) warmup: Duration,
    pub(crate) conns: Vec<usize>,
    pub(crate) sizes: Vec<usize>,
    pub(crate) args: Vec<String>,
    /// `--conns` or `--sizes` given: run exactly those cells, also with `--quick`.
    pub(crate) cells_given: bool,
}

impl Opts {
    fn parse() -> Result<Opts, String> {
        let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
        let mut o = Opts {
            quick: false,
            modes: None,
            out: target_dir().join("bench"),
            write_docs: false,
            docs_dir: None,
            idle_only: false,
            floor_only: false,
            floor: true,
            examples_only: false,
            examples: true,
            idle: true,
            idle_conns: 10_000,
            syscalls_only: false,
            syscalls: true,
            balance_only: false,
            balance: true,
            server: None,
            repeats: 3,
            duration: Duration::from_millis(1000),
            warmup: Duration::from_millis(400),
            conns: vec![1, 10, 100, 1000],
            sizes: vec![64, 4096, 65536],
            args: args.clone(),
            cells_given: false,
        };
        let mut it = args.into_iter();
        let (mut repeats, mut duration, mut idle_conns) = (None, None, None);
        let (mut conns, mut sizes) = (None, None);
        let list = |s: &str| -> Result<Vec<usize>, String> {
            s.split(',').map(|x| x.trim().parse().map_err(|_| format!("bad number {x}"))).collect()
        };
        while let Some(a) = it.next() {
            let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "--quick" => o.quick = true,
                "--full" => o.quick = false,
                "--modes" => o.modes = Some(val("--modes")?.split(',').map(str::to_string).collect()),
                "--out" => o.out = PathBuf::from(val("--out")?),
                "--write-docs" => o.write_docs = true,
                "--docs-dir" => {
                    o.docs_dir = Some(PathBuf::from(val("--docs-dir")?));
                    o.write_docs = true;
                }
                "--floor" => o.floor_only = true,
                "--no-floor" => o.floor = false,
                "--examples" => o.examples_only = true,
                "--no-examples" => o.examples = false,
                "--conns" => conns = Some(list(&val("--conns")?)?),
                "--sizes" => sizes = Some(list(&val("--sizes")?)?),
                "--idle" => o.idle_only = true,
                "--syscalls" => o.syscalls_only = true,
                "--no-syscalls" => o.syscalls = false,
                "--balance" => o.balance_only = true,
                "--no-balance" => o.balance = false,
                "--server" => o.server = Some(PathBuf::from(val("--server")?)),
                "--no-idle" => o.idle = false,
                "--repeats" => repeats = Some(val("--repeats")?.parse().map_err(|_| "bad --repeats")?),
                "--duration" => duration = Some(val("--duration")?.parse::<f64>().map_err(|_| "bad --duration")?),
                "--idle-conns" => idle_conns = Some(val("--idle-conns")?.parse().map_err(|_| "bad --idle-conns")?),
                "-h" | "--help" => {
                    return Err("usage: cargo bench --bench strategies -- [--quick|--full] [--modes a,b] [--out DIR] \
                                [--write-docs] [--docs-dir DIR] [--idle] [--no-idle] [--floor] [--no-floor] [--examples] [--no-examples] \
                                [--syscalls] [--no-syscalls] [--balance] [--no-balance] [--server PATH] \
                                [--repeats N] [--duration SECS] [--idle-conns N] [--conns 1,10] [--sizes 64,4096]"
                        .into())
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if o.quick {
            o.repeats = 1;
            // A smoke run of every code path (CI), not a measurement.
            o.duration = Duration::from_millis(300);
            o.warmup = Duration::from_millis(100);
            o.conns = vec![1, 10, 100];
            o.sizes = vec![64, 4096];
            o.idle_conns = 1000;
        }
        o.repeats = repeats.unwrap_or(o.repeats).max(1);
        if conns.is_some() || sizes.is_some() {
            o.cells_given = true;
        }
        o.conns = conns.unwrap_or(o.conns);
        o.sizes = sizes.unwrap_or(o.sizes);
        if let Some(d) = duration {
            o.duration = Duration::from_secs_f64(d.max(0.1));
        }
        o.idle_conns = idle_conns.unwrap_or(o.idle_conns).max(1);
        if let Some(m) = &o.modes {
            for name in m {
                if !MODES.iter().any(|s| s.name == name) {
                    return Err(format!("unknown mode {name}"));
                }
            }
        }
        Ok(o)
    }

    /// Whether a closed-loop cell is part of this run.
    fn wants_cell(&self, conns: usize, size: usize) -> bool {
        if !self.quick || self.cells_given {
            return true;
        }
        // The quick subset: three cells that touch every code path (1 client, many, large messages).
        matches!((conns, size), (1, 64) | (10, 64) | (100, 4096))
    }
}

/// The cargo target directory this bench was built in.
pub(crate) fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        let p = PathBuf::from(d);
        return if p.is_absolute() { p } else { workspace_root().join(p) };
    }
    // <target>/<profile>/deps/strategies-HASH
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The workspace (root package) directory.
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One measured run (or the median of several).
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) msgs_per_sec: f64,
    pub(crate) mb_per_sec: f64,
    /// Messages echoed in the whole run, warm-up included (the CPU denominators).
    pub(crate) messages_all: u64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
    pub(crate) server_cpu_us_per_msg: f64,
    pub(crate) client_cpu_us_per_msg: f64,
    pub(crate) peak_rss: f64,
    /// Errors of every kind (refused and connect timeouts included).
    pub(crate) errors: u64,
    /// Why the run failed verification (or could not run).
    pub(crate) failure: Option<String>,
    /// The failure may come from a starved machine (no message at all, or only reply timeouts): retried.
    pub(crate) retryable: bool,
    /// Runs of this figure thrown away as retryable failures before this one.
    pub(crate) retries: u32,
}

/// What a row of the results is.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Section {
    Closed,
    Rate(u64),
    Reconnect,
    Work(String),
}

/// One configuration of one mode: its repeats and their median.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub(crate) mode: &'static str,
    pub(crate) section: Section,
    pub(crate) conns: usize,
    pub(crate) size: usize,
    /// Not run, and why.
    pub(crate) na: Option<String>,
    pub(crate) samples: Vec<Sample>,
    pub(crate) median: Sample,
}

/// The median of some values (the mean of the middle two for an even count).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_sample(samples: &[Sample]) -> Sample {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.failure.is_none()).collect();
    let m = |f: fn(&Sample) -> f64| median(ok.iter().map(|s| f(s)).collect());
    Sample {
        msgs_per_sec: m(|s| s.msgs_per_sec),
        mb_per_sec: m(|s| s.mb_per_sec),
        messages_all: m(|s| s.messages_all as f64) as u64,
        p50_us: m(|s| s.p50_us),
        p90_us: m(|s| s.p90_us),
        p99_us: m(|s| s.p99_us),
        p999_us: m(|s| s.p999_us),
        max_us: m(|s| s.max_us),
        server_cpu_us_per_msg: m(|s| s.server_cpu_us_per_msg),
        client_cpu_us_per_msg: m(|s| s.client_cpu_us_per_msg),
        peak_rss: m(|s| s.peak_rss),
        errors: samples.iter().map(|s| s.errors).sum(),
        failure: samples.iter().find_map(|s| s.failure.clone()),
        retryable: false,
        retries: samples.iter().map(|s| s.retries).sum(),
    }
}

/// Paths of the programs under test.
pub(crate) struct Programs {
    pub(crate) server: PathBuf,
    pub(crate) me: PathBuf,
    /// The C programs of [`MODES`] that compiled.
    pub(crate) c: Vec<(&'static str, PathBuf)>,
    pub(crate) logs: PathBuf,
}

impl Programs {
    /// The command line of `spec` with `extra` flags (Switchyard modes only).
    pub(crate) fn command(&self, spec: &ModeSpec, extra: &[String]) -> Result<(PathBuf, Vec<String>), String> {
        let listen = "127.0.0.1:0".to_string();
        Ok(match spec.kind {
            Kind::Switchyard(flags) => {
                let mut a: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
                a.extend(["--listen".to_string(), listen]);
                a.extend(extra.iter().cloned());
                (self.server.clone(), a)
            }
            Kind::Tokio(flavor) => {
                (self.me.clone(), vec![tokio_echo::SERVE_FLAG.to_string(), flavor.to_string(), listen])
            }
            Kind::C(name) => {
                let exe =
                    self.c.iter().find(|(n, _)| *n == name).ok_or(format!("benches/c/{name}.c did not compile"))?;
                (exe.1.clone(), vec![listen])
            }
            Kind::Python(script) => {
                (PathBuf::from("python3"), vec![workspace_root().join(script).to_string_lossy().into_owned(), listen])
            }
        })
    }

    /// Starts `spec`'s server.
    pub(crate) fn start(&self, spec: &ModeSpec, extra: &[String]) -> Result<Server, String> {
        let (prog, args) = self.command(spec, extra)?;
        Server::start(&prog, &args, &self.logs.join(format!("{}.log", spec.name))).map_err(|e| e.to_string())
    }
}

/// Compiles `benches/c/NAME.c` with `cc -O2` into `out/NAME`.
fn compile(name: &str, out: &Path) -> Result<PathBuf, String> {
    let src = workspace_root().join(format!("benches/c/{name}.c"));
    let exe = out.join(name);
    let st =
        Command::new("cc").args(["-O2", "-Wall", "-o"]).arg(&exe).arg(&src).status().map_err(|e| format!("cc: {e}"))?;
    if !st.success() {
        return Err(format!("cc -O2 {} failed: {st}", src.display()));
    }
    Ok(exe)
}

/// One load test against one freshly started server.
pub(crate) struct Run<'a> {
    pub(crate) spec: &'a ModeSpec,
    pub(crate) conns: usize,
    pub(crate) size: usize,
    pub(crate) rate: Option<u64>,
    pub(crate) reconnect: bool,
    pub(crate) work: Option<String>,
}

fn measure(p: &Programs, o: &Opts, r: &Run) -> Sample {
    match try_measure(p, o, r) {
        Ok(s) => s,
        Err(e) => Sample { failure: Some(e), ..Default::default() },
    }
}

fn try_measure(p: &Programs, o: &Opts, r: &Run) -> Result<Sample, String> {
    let extra: Vec<String> = match &r.work {
        Some(w) => vec!["--work".into(), w.clone()],
        None => vec![],
    };
    let mut server = p.start(r.spec, &extra)?;
    let cfg = ClientConfig {
        rate: r.rate,
        reconnect: r.reconnect,
        ..closed_loop(server.addr, r.conns, r.size, o.duration, o.warmup)
    };
    // Peak memory of the whole process tree, sampled while the run lasts.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), server.pid);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(procfs::tree_rss(pid), Ordering::Relaxed);
                thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let cpu0 = procfs::tree_cpu_secs(server.pid);
    let killer = server.killer();
    let ramp = Duration::from_secs_f64(r.conns as f64 / 10_000.0);
    let _watchdog = killer.arm(o.warmup + o.duration + ramp + cfg.timeout * 3 + Duration::from_secs(15));
    let result = switchyard_client::run(&cfg);
    killer.disarm();
    let cpu1 = procfs::settled_tree_cpu_secs(server.pid, Duration::from_secs(3));
    let hwm = procfs::tree_hwm(server.pid);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let alive = server.alive();
    drop(server);
    let rep = result.map_err(|e| format!("client: {e}"))?;
    let all = (rep.messages + rep.warmup_messages).max(1);
    let q = |h: &switchyard_client::Histogram<u64>, x: f64| h.value_at_quantile(x) as f64 / 1e3;
    let mut failure = None;
    let e = &rep.errors;
    // Wrong, broken-off or dropped replies are the server's fault; no progress at all, or replies that only
    // came late, can also be a starved machine (other jobs), so those runs are retried.
    let retryable = e.mismatch == 0 && e.reset == 0 && e.eof_mid_reply == 0 && e.closed_idle == 0 && alive;
    if !rep.passed() {
        failure = Some(format!("verification failed: {:?}, {} messages", rep.errors, rep.messages));
    } else if !alive {
        failure = Some("the server died during the run".into());
    }
    Ok(Sample {
        msgs_per_sec: rep.msgs_per_sec,
        mb_per_sec: rep.mb_per_sec,
        messages_all: all,
        p50_us: q(&rep.latency, 0.5),
        p90_us: q(&rep.latency, 0.9),
        p99_us: q(&rep.latency, 0.99),
        p999_us: q(&rep.latency, 0.999),
        max_us: rep.latency.max() as f64 / 1e3,
        server_cpu_us_per_msg: (cpu1 - cpu0) * 1e6 / all as f64,
        client_cpu_us_per_msg: rep.client_cpu_secs * 1e6 / all as f64,
        peak_rss: peak.load(Ordering::Relaxed).max(hwm) as f64,
        errors: rep.errors.total(),
        failure,
        retryable,
        retries: 0,
    })
}

/// The in-process client of every measurement: one thread, closed loop,
/// random payloads, depth 1, for `duration` after `warmup`.
pub(crate) fn closed_loop(
    addr: SocketAddr,
    conns: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
) -> ClientConfig {
    ClientConfig {
        addrs: vec![addr],
        threads: 1,
        conns,
        size,
        payload: PayloadKind::Random,
        depth: 1,
        duration: Some(duration),
        messages: None,
        warmup,
        connect_rate: 10_000,
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn run_row(p: &Programs, o: &Opts, r: &Run, section: Section) -> Row {
    let mut samples = Vec::new();
    for _ in 0..o.repeats {
        let mut s = measure(p, o, r);
        let mut retries = 0;
        while s.failure.is_some() && s.retryable && retries < MAX_RETRIES {
            retries += 1;
            eprintln!("  {:<15} retrying ({}; load {})", r.spec.name, s.failure.as_deref().unwrap_or(""), load());
            s = measure(p, o, r);
        }
        s.retries = retries;
        let failed = s.failure.is_some();
        samples.push(s);
        if failed {
            break; // a failure is reported; repeating it only costs time
        }
    }
    let median = median_sample(&samples);
    let label = match &section {
        Section::Closed => String::new(),
        Section::Rate(x) => format!(" rate {x}/s"),
        Section::Reconnect => " reconnect".into(),
        Section::Work(w) => format!(" work {w}"),
    };
    eprintln!(
        "  {:<15} {:>5} conns {:>6} B{label}: {:>10.0} msgs/s  server {:>7.2} µs/msg  p99 {:>9.1} µs{}",
        r.spec.name,
        r.conns,
        r.size,
        median.msgs_per_sec,
        median.server_cpu_us_per_msg,
        median.p99_us,
        median.failure.as_deref().map(|f| format!("  FAILED: {f}")).unwrap_or_default()
    );
    Row { mode: r.spec.name, section, conns: r.conns, size: r.size, na: None, samples, median }
}

/// Times a figure is measured again after a retryable failure.
const MAX_RETRIES: u32 = 2;

/// The 1-minute load average.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?").to_string()
}

fn na_row(spec: &ModeSpec, section: Section, conns: usize, size: usize, why: String) -> Row {
    Row { mode: spec.name, section, conns, size, na: Some(why), samples: vec![], median: Sample::default() }
}

/// Checks that a mode starts and echoes correctly; the reason if not.
fn probe(p: &Programs, spec: &ModeSpec) -> Result<(), String> {
    let server = p.start(spec, &[])?;
    let cfg = ClientConfig {
        addrs: vec![server.addr],
        threads: 1,
        conns: 1,
        messages: Some(200),
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let killer = server.killer();
    let _watchdog = killer.arm(Duration::from_secs(20));
    let rep = switchyard_client::run(&cfg).map_err(|e| e.to_string());
    killer.disarm();
    let rep = rep?;
    if rep.passed() && rep.messages == 200 {
        Ok(())
    } else {
        Err(format!("probe failed: {} messages, errors {:?}", rep.messages, rep.errors))
    }
}

/// Everything a run produced.
pub(crate) struct Results {
    pub(crate) opts: Opts,
    pub(crate) modes: Vec<&'static ModeSpec>,
    pub(crate) unavailable: Vec<(&'static str, String)>,
    pub(crate) rows: Vec<Row>,
    pub(crate) idle: Vec<idle::IdleResult>,
    pub(crate) floor: Vec<floor::FloorRow>,
    pub(crate) examples: examples::ExampleResults,
    pub(crate) syscalls: Vec<syscalls::SyscallRow>,
    pub(crate) balance: Vec<balance::BalanceRow>,
    /// What a bare fork + `_exit` + `waitpid` costs here (`benches/c/fork_floor.c`),
    /// µs of CPU: the median of three runs.
    pub(crate) fork_floor_us: Option<f64>,
    pub(crate) started: String,
    /// The load averages when the run ended.
    pub(crate) load_end: String,
    pub(crate) elapsed: Duration,
    pub(crate) machine: output::Machine,
}

impl Results {
    /// The median row of `mode` in `section` at `conns` × `size`.
    pub(crate) fn find(&self, mode: &str, section: &Section, conns: usize, size: usize) -> Option<&Row> {
        self.rows.iter().find(|r| r.mode == mode && &r.section == section && r.conns == conns && r.size == size)
    }
}

/// The median CPU µs per fork + `_exit` + `waitpid` of three runs of
/// `benches/c/fork_floor.c` with `forks` each (None, with a warning, if it
/// cannot be built or run).
fn fork_floor(out: &Path, forks: u32) -> Option<f64> {
    let exe = compile("fork_floor", out).map_err(|e| eprintln!("warning: {e}")).ok()?;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let o = Command::new(&exe).arg(forks.to_string()).output().ok()?;
        let line = String::from_utf8_lossy(&o.stdout).into_owned();
        // "fork_floor: N forks, X us of CPU each (...), Y us wall each"
        let x = line.split(", ").nth(1).and_then(|f| f.split_whitespace().next()).and_then(|x| x.parse::<f64>().ok());
        match x {
            Some(x) if o.status.success() => runs.push(x),
            _ => {
                eprintln!("warning: fork_floor: {}{}", line.trim(), String::from_utf8_lossy(&o.stderr).trim());
                return None;
            }
        }
    }
    let m = median(runs);
    eprintln!(
        "  fork floor (benches/c/fork_floor.c, {forks} forks, 3 runs): {m:.1} µs of CPU per fork + _exit + waitpid"
    );
    Some(m)
}

/// Connections used by the fixed-rate, reconnect and work runs of `spec`.
fn small_conns(spec: &ModeSpec) -> usize {
    spec.max_clients.unwrap_or(10).min(10)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(loadgen::FLAG) {
        return loadgen::main_with(&args[2..]);
    }
    if args.get(1).map(String::as_str) == Some(tokio_echo::SERVE_FLAG) {
        let (Some(flavor), Some(addr)) = (args.get(2), args.get(3).and_then(|a| a.parse::<SocketAddr>().ok())) else {
            eprintln!("usage: {} {} FLAVOR ADDR", args[0], tokio_echo::SERVE_FLAG);
            return ExitCode::from(2);
        };
        return match tokio_echo::serve(flavor, addr) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tokio echo: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` (or `--all-targets`) runs bench targets without `--bench`, as a
        // test; the harness is minutes of load on a quiet machine, so it only runs under `cargo bench`.
        println!("strategies: not run under cargo test; use `cargo bench --bench strategies [-- --quick]`");
        return ExitCode::SUCCESS;
    }
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run_all(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("strategies: FAILED: some runs had verification errors or could not run (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("strategies: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_all(opts: Opts) -> Result<bool, String> {
    let t0 = Instant::now();
    let started = output::utc_now();
    let machine = output::Machine::describe();
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let logs = opts.out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    idle::raise_nofile();
    let mut c = Vec::new();
    for spec in MODES {
        if let Kind::C(name) = spec.kind {
            match compile(name, &opts.out) {
                Ok(exe) => c.push((name, exe)),
                Err(e) => eprintln!("warning: {e}"),
            }
        }
    }
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let server = opts.server.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_server")));
    let p = Programs { server, me, c, logs };
    eprintln!(
        "strategies: {} mode, load {}, results in {}",
        if opts.quick { "quick" } else { "full" },
        machine.load,
        opts.out.display()
    );

    let mut modes = Vec::new();
    let mut unavailable = Vec::new();
    for spec in MODES {
        if opts.examples_only || opts.modes.as_ref().is_some_and(|m| !m.iter().any(|n| n == spec.name)) {
            continue;
        }
        match probe(&p, spec) {
            Ok(()) => modes.push(spec),
            Err(e) => {
                eprintln!("  {}: not available ({e})", spec.name);
                unavailable.push((spec.name, e));
            }
        }
    }
    let mut rows = Vec::new();
    let mut idle_results = Vec::new();
    let mut fork_floor_us = None;
    let only = opts.idle_only || opts.floor_only || opts.examples_only || opts.syscalls_only || opts.balance_only;
    if !only {
        eprintln!("closed loop ({} repeats of {:?} + {:?} warm-up):", opts.repeats, opts.duration, opts.warmup);
        for &size in &opts.sizes {
            for &conns in &opts.conns {
                if !opts.wants_cell(conns, size) {
                    continue;
                }
                for spec in modes.iter().filter(|s| !s.reconnect_only()) {
                    if spec.max_clients.is_some_and(|m| conns > m) {
                        rows.push(na_row(spec, Section::Closed, conns, size, spec.why.to_string()));
                        continue;
                    }
                    let r = Run { spec, conns, size, rate: None, reconnect: false, work: None };
                    rows.push(run_row(&p, &opts, &r, Section::Closed));
                }
            }
        }
        eprintln!("fixed rate at 50% of each mode's closed-loop peak (64 B):");
        for spec in modes.iter().filter(|s| !s.reconnect_only()) {
            let conns = small_conns(spec);
            let peak = rows
                .iter()
                .find(|r| r.mode == spec.name && r.section == Section::Closed && r.conns == conns && r.size == 64)
                .map(|r| r.median.msgs_per_sec)
                .unwrap_or(0.0);
            let peak = if peak > 0.0 {
                peak
            } else {
                let r = Run { spec, conns, size: 64, rate: None, reconnect: false, work: None };
                measure(&p, &opts, &r).msgs_per_sec
            };
            let rate = ((peak / 2.0) as u64).max(conns as u64);
            let r = Run { spec, conns, size: 64, rate: Some(rate), reconnect: false, work: None };
            rows.push(run_row(&p, &opts, &r, Section::Rate(rate)));
        }
        eprintln!("reconnect per message (64 B):");
        for spec in &modes {
            let r = Run { spec, conns: small_conns(spec), size: 64, rate: None, reconnect: true, work: None };
            rows.push(run_row(&p, &opts, &r, Section::Reconnect));
        }
        if modes.iter().any(|m| m.name == "fork") {
            fork_floor_us = fork_floor(&opts.out, if opts.quick { 200 } else { 2000 });
        }
        eprintln!("work profiles (4 KiB messages):");
        for spec in &modes {
            for work in WORKS {
                if !matches!(spec.kind, Kind::Switchyard(_)) {
                    continue;
                }
                let r = Run {
                    spec,
                    conns: small_conns(spec),
                    size: 4096,
                    rate: None,
                    reconnect: false,
                    work: Some(work.into()),
                };
                rows.push(run_row(&p, &opts, &r, Section::Work(work.into())));
            }
        }
    }
    if (opts.idle && !only) || opts.idle_only {
        eprintln!("idle connections ({} per server):", opts.idle_conns);
        for spec in modes.iter().filter(|s| s.idle) {
            let r = idle::measure(&p, spec, opts.idle_conns);
            eprintln!("  {:<15} {}", spec.name, r.describe());
            idle_results.push(r);
        }
    }
    let mut floor_rows = Vec::new();
    if (opts.floor && !only) || opts.floor_only {
        let servers: &[&str] = if opts.quick { &["event"] } else { &["event", "c-epoll"] };
        for spec in modes.iter().filter(|s| servers.contains(&s.name)) {
            eprintln!(
                "client vs minimal load generator ({} conns, {} B, closed loop) on {}:",
                floor::CONNS,
                floor::SIZE,
                spec.name
            );
            let r = floor::measure(&p, spec, &opts);
            let (c, l) = r.medians(|t| t.cpu_us_per_msg);
            match &r.failure {
                Some(f) => eprintln!("  FAILED: {f}"),
                None => eprintln!("  client {c:.2} µs/msg, loadgen {l:.2} µs/msg: {:.2}×", r.ratio()),
            }
            floor_rows.push(r);
        }
    }
    let examples = if (opts.examples && !only) || opts.examples_only {
        examples::measure_all(&opts, &p.logs)
    } else {
        examples::ExampleResults::default()
    };
    let mut syscall_rows = Vec::new();
    if (opts.syscalls && !only) || opts.syscalls_only {
        if syscalls::available() {
            let (cells, secs): (&[usize], f64) = if opts.quick { (&[100], 0.3) } else { (&[100, 1000], 1.0) };
            eprintln!("syscalls per message (strace -c -f, 64 B, closed loop, {secs} s):");
            for &conns in cells {
                for spec in modes.iter().filter(|s| s.max_clients.is_none_or(|m| conns <= m) && !s.reconnect_only()) {
                    let r = syscalls::measure(&p, spec, conns, 64, secs);
                    match &r.failure {
                        Some(f) => eprintln!("  {:<15} {conns:>5} conns: FAILED: {f}", spec.name),
                        None => eprintln!("  {:<15} {conns:>5} conns: {:.2} syscalls/msg", spec.name, r.per_msg()),
                    }
                    syscall_rows.push(r);
                }
            }
        } else {
            eprintln!("warning: no strace: the syscalls-per-message table is left out");
        }
    }
    let mut balance_rows = Vec::new();
    if (opts.balance && !only) || opts.balance_only {
        let conns = if opts.quick { 2_000 } else { 10_000 };
        eprintln!("prefork accept balance ({conns} short connections, 2 event workers):");
        for r in balance::measure_all(&p, conns) {
            match &r.failure {
                Some(f) => eprintln!("  {}, {} thread(s): FAILED: {f}", r.listener, r.threads),
                None => eprintln!(
                    "  {}, {} thread(s): {:?}, max/min {:.2}",
                    r.listener,
                    r.threads,
                    r.per_worker,
                    r.max_min()
                ),
            }
            balance_rows.push(r);
        }
    }
    let results = Results {
        opts: opts.clone(),
        examples,
        modes,
        unavailable,
        rows,
        idle: idle_results,
        floor: floor_rows,
        syscalls: syscall_rows,
        balance: balance_rows,
        fork_floor_us,
        load_end: output::Machine::describe().load,
        started,
        elapsed: t0.elapsed(),
        machine,
    };
    let ok = results.rows.iter().all(|r| r.median.failure.is_none())
        && results.idle.iter().all(|r| r.failure.is_none())
        && results.floor.iter().all(|r| r.failure.is_none())
        && results.examples.rows.iter().all(|r| r.failure.is_none())
        && results.syscalls.iter().all(|r| r.failure.is_none())
        && results.balance.iter().all(|r| r.failure.is_none());
    output::write_all(&results)?;
    eprintln!("strategies: done in {:.0} s", t0.elapsed().as_secs_f64());
    Ok(ok)
}

/// The `--work` profiles: CPU-bound (about 200 µs of compute per 4 KiB message) and IO-bound (1 ms blocked per read).
pub(crate) const WORKS: [&str; 2] = ["cpu:50", "sleep:1"];
