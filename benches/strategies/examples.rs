//! The example servers beside the servers of other projects (issue 14):
//! `http_hello` (event, reactor, prefork event workers, thread) beside
//! nginx serving the same 13-byte body from `return 200` with 1 and with 2
//! workers, driven by `wrk`; `kv` (event, thread) beside `redis-server` on
//! the same commands, driven by `redis-benchmark`. Each figure: requests
//! per second as the tool reports it, and server CPU per request (user +
//! system time of the server's whole process tree from `/proc`, around the
//! tool's run, divided by the requests it completed).
//!
//! Each repeat starts every contender afresh, one after the other (the
//! repeats interleave, so a slow spell of this shared machine does not
//! land on one contender only); figures are medians. A tool that is not
//! installed skips its section with a note; nginx or redis-server missing
//! skips its rows. Every tool run is bounded in time and every server is
//! killed with its process group when its run ends.

use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::output::against;
use crate::programs::{find_tool, try_example};
use crate::server::Server;
use crate::{median, procfs, Opts};

/// One run of a load tool against one server.
#[derive(Clone, Debug, Default)]
pub(crate) struct Sample {
    pub(crate) rps: f64,
    pub(crate) requests: u64,
    pub(crate) cpu_us_per_req: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// One contender on one test: its repeats.
#[derive(Clone, Debug)]
pub(crate) struct ExampleRow {
    /// `http` or `kv`.
    pub(crate) bench: &'static str,
    pub(crate) server: &'static str,
    /// `GET /`, or a redis-benchmark test (`SET`, `GET`) and its pipelining.
    pub(crate) test: &'static str,
    pub(crate) pipeline: usize,
    pub(crate) samples: Vec<Sample>,
    pub(crate) failure: Option<String>,
}

impl ExampleRow {
    /// The median of `f` over the repeats.
    pub(crate) fn median(&self, f: fn(&Sample) -> f64) -> f64 {
        median(self.samples.iter().map(f).collect())
    }
}

/// What the section measured, how, and what it could not.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExampleResults {
    pub(crate) rows: Vec<ExampleRow>,
    pub(crate) notes: Vec<String>,
    pub(crate) wrk_secs: u64,
    pub(crate) kv_requests: [(usize, u64); 2],
}

/// How a contender is started.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// The example program with these flags.
    Example(&'static str, &'static [&'static str]),
    /// nginx with this many workers.
    Nginx(usize),
    Redis,
}

struct Contender {
    name: &'static str,
    kind: Kind,
}

const fn c(name: &'static str, kind: Kind) -> Contender {
    Contender { name, kind }
}

const HTTP: &[Contender] = &[
    c("event", Kind::Example("http_hello", &["--mode", "event"])),
    c("reactor", Kind::Example("http_hello", &["--mode", "reactor", "--threads", "2"])),
    c("prefork-event", Kind::Example("http_hello", &["--mode", "prefork", "--workers", "2", "--worker", "event"])),
    c("thread", Kind::Example("http_hello", &["--mode", "thread"])),
    c("nginx-1", Kind::Nginx(1)),
    c("nginx-2", Kind::Nginx(2)),
];

const KV: &[Contender] = &[
    c("event", Kind::Example("kv", &["--mode", "event"])),
    c("thread", Kind::Example("kv", &["--mode", "thread"])),
    c("redis-server", Kind::Redis),
];

/// wrk's connections and threads.
pub(crate) const WRK_CONNS: usize = 100;
/// redis-benchmark's clients.
pub(crate) const KV_CLIENTS: usize = 50;
/// The redis-benchmark tests, in the order run on one server.
const KV_TESTS: [&str; 2] = ["SET", "GET"];

/// A free loopback port for a server that cannot take port 0 (it is free
/// when picked; the server binds it a moment later).
fn free_port() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// Starts `kind`.
fn start(kind: Kind, out: &Path, logs: &Path, name: &str) -> Result<Server, String> {
    let log = logs.join(format!("example-{name}.log"));
    let strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match kind {
        Kind::Example(program, flags) => {
            let mut args = strings(flags);
            args.extend(strings(&["--listen", "127.0.0.1:0"]));
            Server::start(&try_example(program)?, &args, &log).map_err(|e| e.to_string())
        }
        Kind::Nginx(workers) => {
            let addr = free_port()?;
            let dir = out.join(format!("nginx-{workers}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let d = dir.display();
            // keepalive_requests: nginx closes a keep-alive connection after
            // 1000 requests by default; the example never does.
            let conf = format!(
                "worker_processes {workers};\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  \
                 keepalive_requests 100000000;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 server {{\n    listen {addr};\n    location / {{ default_type text/plain; return 200 \"Hello, World!\"; }}\n  \
                 }}\n}}\n"
            );
            let path = dir.join("nginx.conf");
            std::fs::write(&path, conf).map_err(|e| e.to_string())?;
            let nginx = find_tool("nginx").ok_or("nginx is not installed")?;
            let args = vec![
                "-p".into(),
                d.to_string(),
                "-e".into(),
                format!("{d}/error.log"),
                "-c".into(),
                path.display().to_string(),
            ];
            Server::start_external(&nginx, &args, addr, &log).map_err(|e| e.to_string())
        }
        Kind::Redis => {
            let addr = free_port()?;
            let dir = out.join("redis-server");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let redis = find_tool("redis-server").ok_or("redis-server is not installed")?;
            let args = strings(&["--bind", "127.0.0.1", "--port", &addr.port().to_string(), "--save", ""]);
            let mut args = [args, strings(&["--appendonly", "no", "--daemonize", "no", "--dir"])].concat();
            args.push(dir.display().to_string());
            Server::start_external(&redis, &args, addr, &log).map_err(|e| e.to_string())
        }
    }
}

/// Runs `cmd` to its end within `timeout` (killed after it): its stdout.
fn run_tool(mut cmd: Command, timeout: Duration) -> Result<String, String> {
    let what = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let drain = |mut p: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = p.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped")));
    let err = drain(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} still running after {timeout:?}: killed"));
        }
        thread::sleep(Duration::from_millis(20));
    };
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if !status.success() {
        return Err(format!("{what} exited with {status}: {}{}", err.trim(), out.trim()));
    }
    Ok(out)
}

/// A wrk latency such as `1.23ms`, `456.00us` or `1.02s`, in milliseconds.
fn wrk_ms(s: &str) -> Option<f64> {
    let (v, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = v.parse().ok()?;
    Some(match unit {
        "us" => v / 1e3,
        "ms" => v,
        "s" => v * 1e3,
        "m" => v * 6e4,
        _ => return None,
    })
}

/// `wrk -t1 -c100 -dSECS --latency`: requests, rate, p50 and p99.
fn wrk(addr: SocketAddr, secs: u64) -> Result<Sample, String> {
    let wrk = find_tool("wrk").ok_or("wrk is not installed")?;
    let mut cmd = Command::new(wrk);
    cmd.args(["-t1", &format!("-c{WRK_CONNS}"), &format!("-d{secs}s"), "--latency", "--timeout", "5s"]);
    cmd.arg(format!("http://{addr}/"));
    let out = run_tool(cmd, Duration::from_secs(secs + 30))?;
    if out.contains("Socket errors") || out.contains("Non-2xx") {
        return Err(format!("wrk saw errors:\n{out}"));
    }
    let field = |prefix: &str| out.lines().find_map(|l| l.trim().strip_prefix(prefix).map(str::trim));
    let requests = out.lines().find_map(|l| l.trim().split_once(" requests in ")?.0.parse().ok());
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok());
    let p50 = field("50%").and_then(wrk_ms);
    let p99 = field("99%").and_then(wrk_ms);
    match (requests, rps, p50, p99) {
        (Some(requests), Some(rps), Some(p50_ms), Some(p99_ms)) => {
            Ok(Sample { rps, requests, cpu_us_per_req: 0.0, p50_ms, p99_ms })
        }
        _ => Err(format!("unexpected wrk output:\n{out}")),
    }
}

/// `redis-benchmark -t TEST -n N -c 50 -P P --csv`.
fn redis_benchmark(addr: SocketAddr, test: &str, requests: u64, pipeline: usize) -> Result<Sample, String> {
    let tool = find_tool("redis-benchmark").ok_or("redis-benchmark is not installed")?;
    let mut cmd = Command::new(tool);
    cmd.args(["-h", "127.0.0.1", "-p", &addr.port().to_string(), "-t", &test.to_ascii_lowercase()]);
    cmd.args(["-n", &requests.to_string(), "-c", &KV_CLIENTS.to_string(), "-P", &pipeline.to_string(), "--csv"]);
    let out = run_tool(cmd, Duration::from_secs(120))?;
    let line = out.lines().find(|l| l.starts_with(&format!("\"{test}\","))).ok_or(format!("no {test} in:\n{out}"))?;
    let f: Vec<f64> = line.split(',').skip(1).filter_map(|v| v.trim_matches('"').parse().ok()).collect();
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let [rps, _, _, p50_ms, _, p99_ms, _] = f[..] else { return Err(format!("unexpected CSV line {line}")) };
    Ok(Sample { rps, requests, cpu_us_per_req: 0.0, p50_ms, p99_ms })
}

/// One tool run against a running server, with the server's CPU around it.
fn measured(server: &Server, run: impl FnOnce() -> Result<Sample, String>) -> Result<Sample, String> {
    let cpu0 = procfs::tree_cpu_secs(server.pid);
    let mut s = run()?;
    let cpu1 = procfs::settled_tree_cpu_secs(server.pid, Duration::from_secs(1));
    s.cpu_us_per_req = (cpu1 - cpu0) * 1e6 / s.requests.max(1) as f64;
    Ok(s)
}

fn row<'a>(
    rows: &'a mut Vec<ExampleRow>,
    bench: &'static str,
    server: &'static str,
    test: &'static str,
    pipeline: usize,
) -> &'a mut ExampleRow {
    if let Some(i) =
        rows.iter().position(|r| r.bench == bench && r.server == server && r.test == test && r.pipeline == pipeline)
    {
        return &mut rows[i];
    }
    rows.push(ExampleRow { bench, server, test, pipeline, samples: vec![], failure: None });
    rows.last_mut().expect("just pushed")
}

/// Whether a contender can run here; the note if not.
fn available(kind: Kind) -> Result<(), String> {
    let (tool, package) = match kind {
        Kind::Example(name, _) => return try_example(name).map(|_| ()),
        Kind::Nginx(_) => ("nginx", "nginx"),
        Kind::Redis => ("redis-server", "redis-server"),
    };
    find_tool(tool).map(|_| ()).ok_or(format!("`{tool}` is not installed (Debian package {package}; scripts/setup.sh)"))
}

/// Runs both comparisons.
pub(crate) fn measure_all(o: &Opts, logs: &Path) -> ExampleResults {
    let out: PathBuf = o.out.join("examples");
    let _ = std::fs::create_dir_all(&out);
    let wrk_secs = if o.quick { 1 } else { 3 };
    let kv_requests = if o.quick { [(1, 50_000), (16, 500_000)] } else { [(1, 200_000), (16, 2_000_000)] };
    let mut res = ExampleResults { wrk_secs, kv_requests, ..Default::default() };
    let sections: [(&'static str, &[Contender], &str, &str); 2] =
        [("http", HTTP, "wrk", "wrk"), ("kv", KV, "redis-benchmark", "redis-tools")];
    for (bench, contenders, tool, package) in sections {
        if find_tool(tool).is_none() {
            res.notes.push(format!(
                "The {bench} comparison was not measured: `{tool}` is not installed (Debian package {package}; \
                 scripts/setup.sh installs it)."
            ));
            continue;
        }
        let mut runnable = Vec::new();
        for c in contenders {
            match available(c.kind) {
                Ok(()) => runnable.push(c),
                Err(why) => res.notes.push(format!("`{}` ({bench}) was not measured: {why}.", c.name)),
            }
        }
        let loads: Vec<(&'static str, usize, u64)> = match bench {
            "http" => vec![("GET /", 1, 0)],
            _ => kv_requests.iter().flat_map(|&(p, n)| KV_TESTS.map(|t| (t, p, n))).collect(),
        };
        eprintln!("example servers ({bench}, {} repeats):", o.repeats);
        for _ in 0..o.repeats {
            for c in &runnable {
                for pipelines in loads.chunk_by(|a, b| a.1 == b.1) {
                    let server = match start(c.kind, &out, logs, c.name) {
                        Ok(s) => s,
                        Err(e) => {
                            for &(test, p, _) in pipelines {
                                row(&mut res.rows, bench, c.name, test, p).failure.get_or_insert(e.clone());
                            }
                            continue;
                        }
                    };
                    let killer = server.killer();
                    let _watchdog = killer.arm(Duration::from_secs(300));
                    // SET before GET on one server: the GETs find the value.
                    for &(test, p, n) in pipelines {
                        let r = row(&mut res.rows, bench, c.name, test, p);
                        if r.failure.is_some() {
                            continue;
                        }
                        let got = measured(&server, || match bench {
                            "http" => wrk(server.addr, wrk_secs),
                            _ => redis_benchmark(server.addr, test, n, p),
                        });
                        match got {
                            Ok(s) => {
                                eprintln!(
                                    "  {bench} {:<14} {test:<6} -P {p:<2} {:>10.0} req/s  server {:>6.2} µs/req",
                                    c.name, s.rps, s.cpu_us_per_req
                                );
                                r.samples.push(s);
                            }
                            Err(e) => {
                                eprintln!("  {bench} {} {test}: FAILED: {e}", c.name);
                                r.failure = Some(e);
                            }
                        }
                    }
                    killer.disarm();
                }
            }
        }
    }
    res
}

// ----- output -------------------------------------------------------------------

fn fmt_us(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

impl ExampleResults {
    fn find(&self, bench: &str, server: &str, test: &str, pipeline: usize) -> Option<&ExampleRow> {
        self.rows
            .iter()
            .find(|r| r.bench == bench && r.server == server && r.test == test && r.pipeline == pipeline)
            .filter(|r| r.failure.is_none() && !r.samples.is_empty())
    }

    /// The section of docs/BENCHMARKS.md.
    pub(crate) fn markdown(&self, s: &mut String) {
        if self.rows.is_empty() && self.notes.is_empty() {
            return;
        }
        let _ = writeln!(s, "### Example servers beside nginx and redis-server\n");
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !self.notes.is_empty() {
            s.push('\n');
        }
        let table = |s: &mut String, bench: &str, base: &str| {
            let _ = writeln!(
                s,
                "| server | test | requests/s (× {base}) | server CPU µs/request (× {base}) | p50 ms | p99 ms | repeats |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
            for r in self.rows.iter().filter(|r| r.bench == bench) {
                let test =
                    if bench == "kv" { format!("`{}` -P {}", r.test, r.pipeline) } else { format!("`{}`", r.test) };
                if let Some(f) = &r.failure {
                    let _ = writeln!(s, "| {} | {test} | **FAILED**: {} | | | | |", r.server, f.replace('\n', " "));
                    continue;
                }
                let b = self.find(bench, base, r.test, r.pipeline);
                let x = |f: fn(&Sample) -> f64| match b {
                    Some(b) => format!(" ({:.2}×)", r.median(f) / b.median(f)),
                    None => String::new(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {test} | {:.0}{} | {}{} | {:.3} | {:.3} | {} |",
                    r.server,
                    r.median(|x| x.rps),
                    x(|x| x.rps),
                    fmt_us(r.median(|x| x.cpu_us_per_req)),
                    x(|x| x.cpu_us_per_req),
                    r.median(|x| x.p50_ms),
                    r.median(|x| x.p99_ms),
                    r.samples.len()
                );
            }
            s.push('\n');
        };
        if self.rows.iter().any(|r| r.bench == "http") {
            let _ = writeln!(
                s,
                "`http_hello` (`GET /`, 13-byte body, keep-alive) against nginx answering `return 200 \"Hello, World!\"` \
                 (access log off), `wrk -t1 -c{WRK_CONNS} -d{}s --latency`; requests/s as wrk reports it, server CPU \
                 per request over the process tree (nginx: master and workers). Ratios against nginx with one \
                 worker.\n",
                self.wrk_secs
            );
            table(s, "http", "nginx-1");
            if let (Some(e), Some(n)) =
                (self.find("http", "event", "GET /", 1), self.find("http", "nginx-1", "GET /", 1))
            {
                let (rps, cpu) = (
                    e.median(|x| x.rps) / n.median(|x| x.rps),
                    e.median(|x| x.cpu_us_per_req) / n.median(|x| x.cpu_us_per_req),
                );
                let _ = writeln!(
                    s,
                    "- Target: `event` at least as many requests/s as nginx with one worker, at no more server CPU per \
                     request — measured {}× the requests/s at {}× the CPU per request: {}.\n",
                    against(rps, 1.0, 2),
                    against(cpu, 1.0, 2),
                    verdict(rps >= 1.0 && cpu <= 1.0)
                );
            }
        }
        if self.rows.iter().any(|r| r.bench == "kv") {
            let n: Vec<String> = self.kv_requests.iter().map(|(p, n)| format!("`-n {n}` at `-P {p}`")).collect();
            let _ = writeln!(
                s,
                "`kv` against `redis-server` (no persistence), `redis-benchmark -c {KV_CLIENTS} -t set` then `-t get` on \
                 one fresh server ({}); requests/s as redis-benchmark reports it, server CPU per request over the \
                 process tree (redis-server's background threads included). Ratios against redis-server.\n",
                n.join(", ")
            );
            table(s, "kv", "redis-server");
            for test in KV_TESTS {
                if let (Some(e), Some(r)) =
                    (self.find("kv", "event", test, 1), self.find("kv", "redis-server", test, 1))
                {
                    let x = e.median(|x| x.cpu_us_per_req) / r.median(|x| x.cpu_us_per_req);
                    let _ = writeln!(
                        s,
                        "- Target: `event` within 1.2× redis-server's server CPU per request on `{test}` (`-P 1`) — \
                         measured {}×: {}.",
                        against(x, 1.2, 2),
                        verdict(x <= 1.2)
                    );
                }
            }
            s.push('\n');
        }
    }

    /// The rows as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        let rows: Vec<serde_json::Value> = self
            .rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "bench": r.bench, "server": r.server, "test": r.test, "pipeline": r.pipeline, "failure": r.failure,
                    "rps": r.median(|x| x.rps), "server_cpu_us_per_request": r.median(|x| x.cpu_us_per_req),
                    "repeats": r.samples.iter().map(|x| serde_json::json!({
                        "rps": x.rps, "requests": x.requests, "server_cpu_us_per_request": x.cpu_us_per_req,
                        "p50_ms": x.p50_ms, "p99_ms": x.p99_ms,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({"rows": rows, "notes": self.notes, "wrk_secs": self.wrk_secs})
    }
}
