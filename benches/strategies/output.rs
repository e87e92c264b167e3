//! The harness's output: Markdown tables (stdout and `docs/BENCHMARKS.md`),
//! `results.json`, and the plots (through `plot.rs`).

use std::fmt::Write as _;
use std::fs;
use std::process::Command;

use serde_json::{json, Value};

use crate::{Results, Row, Sample, Section, BASELINES, WORKS};

/// What the run ran on.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub mem_gib: f64,
    pub kernel: String,
    pub rustc: String,
    pub load: String,
    /// The 1-minute load average at the start.
    pub load1: f64,
    /// The commit the servers were built from.
    pub commit: String,
    /// Files of the tree that differed from the commit (docs/, which the run writes, left out).
    pub uncommitted: Vec<String>,
}

/// What `prog args` printed, untrimmed (empty if it could not run).
fn output_of(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// [`output_of`], trimmed: for one-line answers.
fn cmd(prog: &str, args: &[&str]) -> String {
    output_of(prog, args).trim().to_string()
}

impl Machine {
    pub fn describe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let mem_kb: f64 = fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        let load = fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let root = crate::workspace_root();
        let root = root.to_str().unwrap_or(".");
        let commit = cmd("git", &["-C", root, "rev-parse", "--short", "HEAD"]);
        // Each line is `XY PATH`; X may be a space, so the output is not trimmed.
        let uncommitted = output_of("git", &["-C", root, "status", "--porcelain"])
            .lines()
            .map(|l| l.get(3..).unwrap_or(l).to_string())
            .filter(|path| !path.starts_with("docs/"))
            .collect();
        Machine {
            load1: load.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(0.0),
            commit,
            uncommitted,
            cpu,
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            mem_gib: mem_kb / 1048576.0,
            kernel: cmd("uname", &["-sr"]),
            rustc: cmd("rustc", &["-V"]),
            load,
        }
    }

    /// The commit, and whether the tree was clean.
    pub fn git(&self) -> String {
        match self.uncommitted.len() {
            0 => format!("commit {}, tree clean", self.commit),
            n => format!(
                "commit {} with uncommitted changes in {n} file(s): {}{}",
                self.commit,
                self.uncommitted.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if n > 5 { ", ..." } else { "" }
            ),
        }
    }

    /// What the load average says of the machine: quiet at most 0.5 per
    /// core (nothing else ran), else busy.
    pub fn quiet(&self) -> bool {
        self.load1 <= 0.5 * self.cores as f64
    }

    fn markdown(&self, load_end: &str) -> String {
        let words = if self.quiet() {
            format!("quiet when the run started (1-minute load average {:.2}, at most 0.5 per core)", self.load1)
        } else {
            format!(
                "**busy** when the run started (1-minute load average {:.2} on {} cores: other jobs were running, and \
                 the figures carry their noise)",
                self.load1, self.cores
            )
        };
        format!(
            "{}, {} cores (shared by client and server), {:.0} GiB RAM, {}, {}; the machine was {words}; load \
             averages at the start {}, at the end {load_end} (the run itself keeps both cores busy); sources: {}",
            self.cpu,
            self.cores,
            self.mem_gib,
            self.kernel,
            self.rustc,
            self.load,
            self.git()
        )
    }
}

/// The time now, UTC, as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

fn size_name(size: usize) -> String {
    match size {
        s if s >= 1024 * 1024 && s % (1024 * 1024) == 0 => format!("{} MiB", s / 1024 / 1024),
        s if s >= 1024 && s % 1024 == 0 => format!("{} KiB", s / 1024),
        s => format!("{s} B"),
    }
}

fn bytes(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1048576.0)
    } else if b >= 1024.0 {
        format!("{:.0} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// A measured figure beside the limit it is judged against, with
/// `decimals` decimals, or one more where that many would round onto the
/// limit and hide which side of it the figure lies (1.004 against 1.0
/// reads 1.004, not 1.00).
pub(crate) fn against(x: f64, limit: f64, decimals: usize) -> String {
    let shown = format!("{x:.decimals$}");
    if x != limit && shown == format!("{limit:.decimals$}") {
        format!("{x:.0$}", decimals + 1)
    } else {
        shown
    }
}

fn num(v: f64) -> String {
    switchyard_client::report::fmt_count(v.round() as u64)
}

fn us(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `value` and its ratios to the baselines' values (none when missing).
fn ratio(value: f64, shown: String, bases: &[Option<f64>]) -> String {
    let r: Vec<String> = bases
        .iter()
        .map(|b| match b {
            Some(b) if *b > 0.0 && value > 0.0 => {
                let r = value / b;
                // Two decimals, or two significant digits for small ratios (0.0030×, not 0.00×).
                let digits = if r >= 0.1 { 2 } else { (-r.log10()).ceil() as usize + 1 };
                format!("{r:.digits$}×")
            }
            _ => "–".into(),
        })
        .collect();
    format!("{shown} ({})", r.join(", "))
}

impl Results {
    fn base(&self, section: &Section, conns: usize, size: usize, f: fn(&Sample) -> f64) -> Vec<Option<f64>> {
        BASELINES
            .iter()
            .map(|b| {
                self.find(b, section, conns, size)
                    .filter(|r| r.na.is_none() && r.median.failure.is_none())
                    .map(|r| f(&r.median))
            })
            .collect()
    }

    fn base_same_shape(&self, row: &Row, f: fn(&Sample) -> f64) -> Vec<Option<f64>> {
        // Fixed-rate targets differ per mode; compare with the baseline's fixed-rate row at the same conns.
        BASELINES
            .iter()
            .map(|b| {
                self.rows
                    .iter()
                    .find(|r| {
                        r.mode == *b
                            && std::mem::discriminant(&r.section) == std::mem::discriminant(&row.section)
                            && r.conns == row.conns
                            && r.size == row.size
                    })
                    .filter(|r| r.median.failure.is_none())
                    .map(|r| f(&r.median))
            })
            .collect()
    }
}

fn failure_cell(row: &Row) -> Option<String> {
    if let Some(na) = &row.na {
        return Some(format!("n/a ({na})"));
    }
    row.median.failure.as_ref().map(|f| format!("**FAILED**: {f}"))
}

/// The results as Markdown (the body of docs/BENCHMARKS.md and of stdout).
pub fn markdown(res: &Results) -> String {
    let o = &res.opts;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Run: `{}`, {} at {}, {} repeat(s) of {:.1} s + {:.1} s warm-up per figure (medians), total {:.0} s.\n",
        command_line(res),
        if o.quick { "quick" } else { "full" },
        res.started,
        o.repeats,
        o.duration.as_secs_f64(),
        o.warmup.as_secs_f64(),
        res.elapsed.as_secs_f64()
    );
    let _ = writeln!(s, "Machine: {}.\n", res.machine.markdown(&res.load_end));
    let _ = writeln!(
        s,
        "Ratios in parentheses are against the baselines ({}), in that order; `–` where the baseline has no figure. \
         Server CPU is user + system time of the server's whole process tree (threads, live and reaped children) per \
         echoed message, warm-up included; peak RSS is the largest VmRSS summed over the tree (shared pages counted \
         once per process); client CPU is the in-process client's own threads. The client runs one event-loop \
         thread on the same 2 cores.\n",
        BASELINES.join(", ")
    );
    let retried: Vec<String> = res
        .rows
        .iter()
        .filter(|r| r.median.retries > 0)
        .map(|r| format!("{} {}×{} ({})", r.mode, r.conns, r.size, r.median.retries))
        .collect();
    if !retried.is_empty() {
        let _ = writeln!(
            s,
            "Runs measured again after making no progress or timing out (a starved machine; wrong replies are never \
             retried): {}.\n",
            retried.join(", ")
        );
    }
    for (name, why) in &res.unavailable {
        let _ = writeln!(s, "- `{name}`: not measured ({why})");
    }
    if !res.unavailable.is_empty() {
        s.push('\n');
    }

    // Throughput pivots first: one glance per message size.
    let closed: Vec<&Row> = res.rows.iter().filter(|r| r.section == Section::Closed).collect();
    if !closed.is_empty() {
        let _ = writeln!(s, "### Closed loop: throughput (msgs/s) by connections\n");
        for &size in &o.sizes {
            let conns: Vec<usize> =
                o.conns.iter().copied().filter(|&c| closed.iter().any(|r| r.conns == c && r.size == size)).collect();
            if conns.is_empty() {
                continue;
            }
            let _ = writeln!(s, "{} messages:\n", size_name(size));
            let _ = writeln!(
                s,
                "| mode | {} |",
                conns.iter().map(|c| format!("{c} conns")).collect::<Vec<_>>().join(" | ")
            );
            let _ = writeln!(s, "|---|{}", "---:|".repeat(conns.len()));
            for m in res.modes.iter().filter(|m| !m.reconnect_only()) {
                let cells: Vec<String> = conns
                    .iter()
                    .map(|&c| match res.find(m.name, &Section::Closed, c, size) {
                        None => "".into(),
                        Some(r) if r.na.is_some() => "n/a".into(),
                        Some(r) if r.median.failure.is_some() => "FAILED".into(),
                        Some(r) => num(r.median.msgs_per_sec),
                    })
                    .collect();
                let _ = writeln!(s, "| {} | {} |", m.name, cells.join(" | "));
            }
            s.push('\n');
        }

        let _ = writeln!(s, "### Closed loop: resources, throughput and latency\n");
        let _ = writeln!(
            s,
            "| mode | conns | size | server CPU µs/msg | peak RSS | client CPU µs/msg | msgs/s | MB/s | p50 µs | p99 µs |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &closed {
            let lead = format!("| {} | {} | {} |", r.mode, r.conns, size_name(r.size));
            if let Some(f) = failure_cell(r) {
                let _ = writeln!(s, "{lead} {f} | | | | | | |");
                continue;
            }
            let m = &r.median;
            let sec = &r.section;
            let _ = writeln!(
                s,
                "{lead} {} | {} | {} | {} | {:.1} | {} | {} |",
                ratio(
                    m.server_cpu_us_per_msg,
                    us(m.server_cpu_us_per_msg),
                    &res.base(sec, r.conns, r.size, |x| x.server_cpu_us_per_msg)
                ),
                ratio(m.peak_rss, bytes(m.peak_rss), &res.base(sec, r.conns, r.size, |x| x.peak_rss)),
                us(m.client_cpu_us_per_msg),
                ratio(m.msgs_per_sec, num(m.msgs_per_sec), &res.base(sec, r.conns, r.size, |x| x.msgs_per_sec)),
                m.mb_per_sec,
                us(m.p50_us),
                ratio(m.p99_us, us(m.p99_us), &res.base(sec, r.conns, r.size, |x| x.p99_us)),
            );
        }
        s.push('\n');

        // Issue 3: CPU per echoed message, event vs tokio current_thread, 64 B.
        let conns: Vec<usize> = [10, 100, 1000]
            .into_iter()
            .filter(|&c| {
                res.find("event", &Section::Closed, c, 64).is_some()
                    && res.find("tokio-ct", &Section::Closed, c, 64).is_some()
            })
            .collect();
        if !conns.is_empty() {
            let _ =
                writeln!(s, "### Server CPU per echoed message: event vs tokio current_thread (64 B, closed loop)\n");
            let _ = writeln!(s, "| conns | event µs/msg | tokio-ct µs/msg | event / tokio-ct | c-epoll µs/msg |");
            let _ = writeln!(s, "|---:|---:|---:|---:|---:|");
            for c in conns {
                let e =
                    res.find("event", &Section::Closed, c, 64).map(|r| r.median.server_cpu_us_per_msg).unwrap_or(0.0);
                let t = res
                    .find("tokio-ct", &Section::Closed, c, 64)
                    .map(|r| r.median.server_cpu_us_per_msg)
                    .unwrap_or(0.0);
                let cc = res
                    .find("c-epoll", &Section::Closed, c, 64)
                    .map(|r| us(r.median.server_cpu_us_per_msg))
                    .unwrap_or_default();
                let _ =
                    writeln!(s, "| {c} | {} | {} | {:.2}× | {cc} |", us(e), us(t), if t > 0.0 { e / t } else { 0.0 });
            }
            s.push('\n');
        }
    }

    let rate: Vec<&Row> = res.rows.iter().filter(|r| matches!(r.section, Section::Rate(_))).collect();
    if !rate.is_empty() {
        let _ = writeln!(
            s,
            "### Fixed rate at 50% of each mode's closed-loop peak (64 B; latency corrected for coordinated omission)\n"
        );
        let _ =
            writeln!(s, "| mode | conns | target msgs/s | server CPU µs/msg | peak RSS | client CPU µs/msg | achieved msgs/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rate {
            let Section::Rate(target) = r.section else { continue };
            let lead = format!("| {} | {} | {} |", r.mode, r.conns, num(target as f64));
            if let Some(f) = failure_cell(r) {
                let _ = writeln!(s, "{lead} {f} | | | | | | | | |");
                continue;
            }
            let m = &r.median;
            let _ = writeln!(
                s,
                "{lead} {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ratio(
                    m.server_cpu_us_per_msg,
                    us(m.server_cpu_us_per_msg),
                    &res.base_same_shape(r, |x| x.server_cpu_us_per_msg)
                ),
                ratio(m.peak_rss, bytes(m.peak_rss), &res.base_same_shape(r, |x| x.peak_rss)),
                us(m.client_cpu_us_per_msg),
                num(m.msgs_per_sec),
                us(m.p50_us),
                us(m.p90_us),
                ratio(m.p99_us, us(m.p99_us), &res.base_same_shape(r, |x| x.p99_us)),
                us(m.p999_us),
                us(m.max_us),
            );
        }
        s.push('\n');
    }

    let rec: Vec<&Row> = res.rows.iter().filter(|r| r.section == Section::Reconnect).collect();
    if !rec.is_empty() {
        let _ = writeln!(s, "### One connection per message (`--reconnect`, 64 B, closed loop)\n");
        let _ = writeln!(
            s,
            "| mode | slots | server CPU µs/conn | peak RSS | client CPU µs/conn | connections/s | p50 µs | p99 µs |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in &rec {
            let lead = format!("| {} | {} |", r.mode, r.conns);
            if let Some(f) = failure_cell(r) {
                let _ = writeln!(s, "{lead} {f} | | | | | |");
                continue;
            }
            let m = &r.median;
            let _ = writeln!(
                s,
                "{lead} {} | {} | {} | {} | {} | {} |",
                ratio(
                    m.server_cpu_us_per_msg,
                    us(m.server_cpu_us_per_msg),
                    &res.base_same_shape(r, |x| x.server_cpu_us_per_msg)
                ),
                ratio(m.peak_rss, bytes(m.peak_rss), &res.base_same_shape(r, |x| x.peak_rss)),
                us(m.client_cpu_us_per_msg),
                ratio(m.msgs_per_sec, num(m.msgs_per_sec), &res.base_same_shape(r, |x| x.msgs_per_sec)),
                us(m.p50_us),
                us(m.p99_us),
            );
        }
        s.push('\n');
    }

    let work: Vec<&Row> = res.rows.iter().filter(|r| matches!(r.section, Section::Work(_))).collect();
    if !work.is_empty() {
        let _ = writeln!(
            s,
            "### Workload profiles (4 KiB, closed loop): `--work {}` (CPU-bound, 50 xorshift rounds per byte) and `--work {}` (IO-bound, 1 ms blocked per read)\n",
            WORKS[0], WORKS[1]
        );
        let _ = writeln!(s, "The baselines have no `--work` flag; the ratio column compares each mode with event under the same work.\n");
        let _ = writeln!(s, "| mode | conns | work | server CPU µs/msg | peak RSS | client CPU µs/msg | msgs/s (× event) | p50 µs | p99 µs |");
        let _ = writeln!(s, "|---|---:|---|---:|---:|---:|---:|---:|---:|");
        for r in &work {
            let Section::Work(w) = &r.section else { continue };
            let lead = format!("| {} | {} | `{w}` |", r.mode, r.conns);
            if let Some(f) = failure_cell(r) {
                let _ = writeln!(s, "{lead} {f} | | | | | |");
                continue;
            }
            let m = &r.median;
            let ev = res
                .rows
                .iter()
                .find(|x| x.mode == "event" && x.section == r.section)
                .filter(|x| x.median.failure.is_none())
                .map(|x| x.median.msgs_per_sec);
            let _ = writeln!(
                s,
                "{lead} {} | {} | {} | {} | {} | {} |",
                us(m.server_cpu_us_per_msg),
                bytes(m.peak_rss),
                us(m.client_cpu_us_per_msg),
                ratio(m.msgs_per_sec, num(m.msgs_per_sec), &[ev]),
                us(m.p50_us),
                us(m.p99_us),
            );
        }
        s.push('\n');
    }

    if !res.idle.is_empty() {
        let n = res.idle[0].conns;
        let _ = writeln!(s, "### Memory per idle connection ({} connections, one round trip each)\n", num(n as f64));
        let _ = writeln!(s, "| mode | RSS before | RSS after | bytes per connection |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let base = |name: &str| res.idle.iter().find(|r| r.mode == name && r.failure.is_none()).map(|r| r.per_conn());
        let bases: Vec<Option<f64>> = BASELINES.iter().map(|b| base(b)).collect();
        for r in &res.idle {
            match &r.failure {
                Some(f) => {
                    let _ = writeln!(s, "| {} | **FAILED**: {f} | | |", r.mode);
                }
                None => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} |",
                        r.mode,
                        bytes(r.rss_before as f64),
                        bytes(r.rss_after as f64),
                        ratio(r.per_conn(), format!("{:.0}", r.per_conn()), &bases)
                    );
                }
            }
        }
        if let Some(e) = base("event") {
            let _ = writeln!(
                s,
                "\nTarget for event: under 256 B per idle connection — measured {} B: {}.",
                against(e, 256.0, 0),
                if e < 256.0 { "met" } else { "**not met**" }
            );
        }
        s.push('\n');
    }
    handlers_markdown(res, &mut s);
    floor_markdown(res, &mut s);
    syscalls_markdown(res, &mut s);
    uring_markdown(res, &mut s);
    balance_markdown(res, &mut s);
    res.examples.markdown(&mut s);
    s
}

/// Syscalls per message beside the CPU figure of the same cell.
fn syscalls_markdown(res: &Results, s: &mut String) {
    if res.syscalls.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "### Syscalls per echoed message (64 B, closed loop, `strace -c -f` on every process of the server)\n"
    );
    let _ = writeln!(
        s,
        "A separate short run per cell with strace attached (it slows the server, so only the counts are used); \
         the CPU column is the closed-loop figure of the same cell above, without strace.\n"
    );
    let _ = writeln!(s, "| mode | conns | syscalls/msg | the most frequent, per message | server CPU µs/msg |");
    let _ = writeln!(s, "|---|---:|---:|---|---:|");
    for r in &res.syscalls {
        if let Some(f) = &r.failure {
            let _ = writeln!(s, "| {} | {} | **FAILED**: {f} | | |", r.mode, r.conns);
            continue;
        }
        let top: Vec<String> = r.top(4).into_iter().map(|(n, v)| format!("{n} {v:.2}")).collect();
        let cpu = res
            .find(r.mode, &Section::Closed, r.conns, r.size)
            .filter(|x| x.na.is_none() && x.median.failure.is_none())
            .map(|x| us(x.median.server_cpu_us_per_msg))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(s, "| {} | {} | {:.2} | {} | {cpu} |", r.mode, r.conns, r.per_msg(), top.join(", "));
    }
    s.push('\n');
}

/// The targets of issue 16 ("Past the epoll floor"), met or not, with the
/// measured ratios.
fn uring_markdown(res: &Results, s: &mut String) {
    let cell = |m: &str, section: &Section, c: usize, z: usize| {
        res.find(m, section, c, z).filter(|r| r.na.is_none() && r.median.failure.is_none()).map(|r| r.median.clone())
    };
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let mut lines = Vec::new();
    for conns in [100, 1000] {
        if let (Some(u), Some(c)) =
            (cell("uring", &Section::Closed, conns, 64), cell("c-epoll", &Section::Closed, conns, 64))
        {
            let cpu = u.server_cpu_us_per_msg / c.server_cpu_us_per_msg;
            let rate = u.msgs_per_sec / c.msgs_per_sec;
            lines.push(format!(
                "- uring at {conns} connections, 64 B: server CPU per message at most 0.7× the C epoll server's — \
                 measured {}×: {}; and at least its msgs/s — measured {}×: {}.",
                against(cpu, 0.7, 2),
                verdict(cpu <= 0.7),
                against(rate, 1.0, 2),
                verdict(rate >= 1.0)
            ));
        }
    }
    if let Some(r) = res.idle.iter().find(|r| r.mode == "uring" && r.failure.is_none()) {
        let b = r.per_conn();
        lines.push(format!(
            "- uring: at most 128 B per idle connection — measured {} B: {}.",
            against(b, 128.0, 0),
            verdict(b <= 128.0)
        ));
    }
    for mode in ["event", "uring"] {
        for size in [4096, 65536] {
            for &conns in &res.opts.conns {
                if let (Some(m), Some(t)) =
                    (cell(mode, &Section::Closed, conns, size), cell("tokio-ct", &Section::Closed, conns, size))
                {
                    let x = m.server_cpu_us_per_msg / t.server_cpu_us_per_msg;
                    lines.push(format!(
                        "- {mode} at {} and {conns} connections: server CPU per message at most 1.0× tokio \
                         current_thread's — measured {}×: {}.",
                        size_name(size),
                        against(x, 1.0, 2),
                        verdict(x <= 1.0)
                    ));
                }
            }
        }
    }
    let reconnect = |mode: &str| {
        res.rows
            .iter()
            .find(|r| r.mode == mode && r.section == Section::Reconnect)
            .filter(|r| r.median.failure.is_none() && r.na.is_none())
    };
    if let Some(r) = reconnect("fork") {
        let x = r.median.server_cpu_us_per_msg;
        let python = match reconnect("python-fork") {
            Some(py) => {
                let k = r.median.msgs_per_sec / py.median.msgs_per_sec;
                format!(
                    "measured {}× ({} against {} connections per second of `benches/python/fork_echo.py`, the \
                     same number of client connections): {}",
                    against(k, 10.0, 1),
                    num(r.median.msgs_per_sec),
                    num(py.median.msgs_per_sec),
                    verdict(k >= 10.0)
                )
            }
            None => "not measured in this run (no python-fork row)".to_string(),
        };
        let mut context = Vec::new();
        if let Some(f) = res.fork_floor_us {
            context.push(format!(
                "on this machine a bare fork + `_exit` + `waitpid` of a C program, `benches/c/fork_floor.c`, costs {} \
                 µs of CPU: the floor of any process per connection here",
                us(f)
            ));
        }
        if let Some(c) = reconnect("c-fork") {
            let per_conn = c.median.server_cpu_us_per_msg;
            context.push(format!(
                "the same server in C, `benches/c/fork_echo.c`, spends {} µs per connection, and fork {:.2}× that",
                us(per_conn),
                x / per_conn
            ));
        }
        let floor = if context.is_empty() { String::new() } else { format!(" ({})", context.join("; ")) };
        lines.push(format!(
            "- fork: at most 150 µs of server CPU per connection with `--reconnect` — measured {} µs: {}{floor}; at \
             least 10× the Python process-per-connection server's connections per second — {python}.",
            us(x),
            verdict(x <= 150.0)
        ));
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(s, "### Targets of issue 16 (io_uring, in-place answers, a cheaper fork)\n");
    for l in lines {
        let _ = writeln!(s, "{l}");
    }
    s.push('\n');
}

/// The prefork master's accept balance.
fn balance_markdown(res: &Results, s: &mut String) {
    if res.balance.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "### Prefork accept balance ({} short connections, 2 event workers)\n",
        num(res.balance[0].conns as f64)
    );
    let _ = writeln!(
        s,
        "One connection, one 7-byte message, its echo, close, from 4 client threads at once or from one; per-worker \
         accepted counts from the master's `--metrics` page.\n"
    );
    let _ = writeln!(s, "| listener | client threads | per worker | max/min | seconds |");
    let _ = writeln!(s, "|---|---:|---|---:|---:|");
    for r in &res.balance {
        match &r.failure {
            Some(f) => {
                let _ = writeln!(s, "| {} | {} | **FAILED**: {f} | | |", r.listener, r.threads);
            }
            None => {
                let per: Vec<String> = r.per_worker.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} | {:.1} |",
                    r.listener,
                    r.threads,
                    per.join(" / "),
                    r.max_min(),
                    r.secs
                );
            }
        }
    }
    s.push('\n');
}

/// The two handler styles side by side: each mode that has a `-async` twin
/// (the same strategy with `--handler async`), cell by cell, with the ratio
/// async / sans-IO, and the targets of the handler issue.
fn handlers_markdown(res: &Results, s: &mut String) {
    let pairs: Vec<(&str, String)> = res
        .modes
        .iter()
        .filter_map(|m| {
            let twin = format!("{}-async", m.name);
            res.modes.iter().any(|t| t.name == twin).then_some((m.name, twin))
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    let _ = writeln!(s, "### Handler styles: the state machine against the `async fn`\n");
    let _ = writeln!(
        s,
        "The same strategy serving the uppercase echo as a sans-IO `Protocol` and as a coroutine (`--handler async`: \
         `handler::upper_echo`, on the event loop's own executor or under `block_on`), from the closed-loop rows \
         above; ratios are async / sans-IO (below 1: the coroutine costs less).\n"
    );
    let _ = writeln!(
        s,
        "| mode | conns | size | server CPU µs/msg: sans-IO | async | async / sans-IO | msgs/s: sans-IO | async |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let cell = |m: &str, section: &Section, c: usize, z: usize| {
        res.find(m, section, c, z).filter(|r| r.na.is_none() && r.median.failure.is_none()).map(|r| r.median.clone())
    };
    for (plain, twin) in &pairs {
        for &size in &res.opts.sizes {
            for &conns in &res.opts.conns {
                let (Some(a), Some(b)) =
                    (cell(plain, &Section::Closed, conns, size), cell(twin, &Section::Closed, conns, size))
                else {
                    continue;
                };
                let _ = writeln!(
                    s,
                    "| {plain} | {conns} | {} | {} | {} | {:.2}× | {} | {} |",
                    size_name(size),
                    us(a.server_cpu_us_per_msg),
                    us(b.server_cpu_us_per_msg),
                    b.server_cpu_us_per_msg / a.server_cpu_us_per_msg,
                    num(a.msgs_per_sec),
                    num(b.msgs_per_sec)
                );
            }
        }
    }
    s.push('\n');
    let _ = writeln!(s, "With handlers that wait or compute (`--work`, 4 KiB messages; the async echo awaits a timer for `sleep:MS` and sends `cpu:N` to its offload pool):\n");
    let _ =
        writeln!(s, "| mode | work | msgs/s: sans-IO | async | async / sans-IO | server CPU µs/msg: sans-IO | async |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    for (plain, twin) in &pairs {
        for work in crate::WORKS {
            let section = Section::Work(work.to_string());
            let (Some(a), Some(b)) = (
                res.rows.iter().find(|r| r.mode == *plain && r.section == section),
                res.rows.iter().find(|r| r.mode == twin.as_str() && r.section == section),
            ) else {
                continue;
            };
            if a.median.failure.is_some() || b.median.failure.is_some() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {plain} ({} conns) | `{work}` | {} | {} | {:.1}× | {} | {} |",
                a.conns,
                num(a.median.msgs_per_sec),
                num(b.median.msgs_per_sec),
                b.median.msgs_per_sec / a.median.msgs_per_sec,
                us(a.median.server_cpu_us_per_msg),
                us(b.median.server_cpu_us_per_msg)
            );
        }
    }
    s.push('\n');
    // The targets (floors, not ceilings).
    let closed = |m: &str| cell(m, &Section::Closed, 100, 64);
    if let (Some(a), Some(b)) = (closed("event"), closed("event-async")) {
        let x = b.server_cpu_us_per_msg / a.server_cpu_us_per_msg;
        let _ = writeln!(
            s,
            "- Target: the async echo on the event loop within 1.15× the sans-IO echo's server CPU per message at 100 \
             connections, 64 B — measured {}×: {}.",
            against(x, 1.15, 2),
            if x <= 1.15 { "met" } else { "**not met**" }
        );
    }
    if let Some(r) = res.idle.iter().find(|r| r.mode == "event-async" && r.failure.is_none()) {
        let b = r.per_conn();
        let _ = writeln!(
            s,
            "- Target: under 1 KiB per idle connection for the async echo on the event loop — measured {} B: {} \
             (what each byte is: docs/ARCHITECTURE.md, \"Two handler styles\").",
            against(b, 1024.0, 0),
            if b < 1024.0 { "met" } else { "**not met**" }
        );
    }
    let work = |m: &str| {
        res.rows
            .iter()
            .find(|r| r.mode == m && r.section == Section::Work("sleep:1".into()))
            .filter(|r| r.median.failure.is_none())
            .map(|r| (r.conns, r.median.msgs_per_sec))
    };
    if let (Some((c, a)), Some((_, b))) = (work("event"), work("event-async")) {
        let x = b / a;
        let _ = writeln!(
            s,
            "- Target: with `--work sleep:1`, the async event mode at least 5× the sans-IO event mode's msgs/s at {c} \
             connections — measured {}×: {}.",
            against(x, 5.0, 1),
            if x >= 5.0 { "met" } else { "**not met**" }
        );
    }
    s.push('\n');
}

/// Issue 12: the client's CPU per message against the minimal load generator.
fn floor_markdown(res: &Results, s: &mut String) {
    if res.floor.is_empty() {
        return;
    }
    let secs = res.floor[0].secs;
    let _ = writeln!(
        s,
        "### Client CPU per message against a minimal load generator ({} conns, {} B, closed loop, same server)\n",
        crate::floor::CONNS,
        crate::floor::SIZE
    );
    let _ = writeln!(
        s,
        "The `client` binary (`-t 1`) and `benches/strategies/loadgen.rs` (one thread, mio, a fixed buffer per \
         connection, bytes compared, one clock read per reply) take turns against one server (the first of a pair alternates), {} pair(s) of {secs:.0} s \
         runs; CPU is each process's whole user + system time (`getrusage` of the reaped child) per message it \
         completed. Medians; the ratio is the median of the pairwise ratios (their range in brackets).\n",
        res.floor[0].client.len()
    );
    let _ = writeln!(
        s,
        "| server | client CPU µs/msg | loadgen CPU µs/msg | client / loadgen | client msgs/s | loadgen msgs/s | server CPU µs/msg (client) | server CPU µs/msg (loadgen) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &res.floor {
        if let Some(f) = &r.failure {
            let _ = writeln!(s, "| {} | **FAILED**: {f} | | | | | | |", r.server);
            continue;
        }
        let (cc, lc) = r.medians(|t| t.cpu_us_per_msg);
        let (cr, lr) = r.medians(|t| t.msgs_per_sec);
        let (cs, ls) = r.medians(|t| t.server_cpu_us_per_msg);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2}× ({:.2}–{:.2}) | {} | {} | {} | {} |",
            r.server,
            us(cc),
            us(lc),
            r.ratio(),
            r.ratios().into_iter().fold(f64::MAX, f64::min),
            r.ratios().into_iter().fold(0.0, f64::max),
            num(cr),
            num(lr),
            us(cs),
            us(ls)
        );
    }
    if let Some(r) = res.floor.iter().find(|r| r.failure.is_none()) {
        let x = r.ratio();
        let _ = writeln!(
            s,
            "\nTarget (issue 12): client / loadgen at most 1.00 — measured {}× against {}: {}.",
            against(x, 1.0, 2),
            r.server,
            if x <= 1.0 { "met" } else { "**not met**" }
        );
    }
    s.push('\n');
}

/// The latest `scripts/c100k.sh` result (`docs/bench/c100k.json`), as Markdown.
pub fn c100k_markdown(root: &std::path::Path) -> String {
    let path = root.join("docs/bench/c100k.json");
    let Some(v) = fs::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) else {
        return format!("No result yet: run `scripts/c100k.sh` (it writes `{}`).", "docs/bench/c100k.json");
    };
    let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let txt = |k: &str| v[k].as_str().unwrap_or("?").to_string();
    let lat = |k: &str, q: &str| v[k][q].as_f64().map(us).unwrap_or_else(|| "–".into());
    let mut s = String::new();
    let _ = writeln!(s, "`{}` on commit {} ({}), {}.\n", txt("command"), txt("commit"), txt("date"), txt("machine"));
    let _ = writeln!(s, "| target conns | held to the end | errors | server RSS per conn | server RSS | msgs/s | p50 µs | p99 µs | max µs | lag p99 µs | limit |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} B | {} | {} | {} | {} | {} | {} | {} |",
        num(f("target")),
        num(f("held")),
        num(f("errors")),
        num(v["server"]["rss_per_conn_bytes"].as_f64().unwrap_or(0.0)),
        bytes(v["server"]["rss_bytes"].as_f64().unwrap_or(0.0)),
        num(f("msgs_per_sec")),
        lat("latency_us", "p50"),
        lat("latency_us", "p99"),
        lat("latency_us", "max"),
        lat("lag_us", "p99"),
        txt("limit")
    );
    let _ = writeln!(
        s,
        "\n{} server workers (`--mode prefork --worker event`), {} client instances (one source address each, \
         127.0.0.2 upwards), {} msgs/s in total over every connection for {} s (uniform arrivals, round robin over \
         the connections); server RSS is the sum over the server's process tree while every connection was held.",
        v["server"]["workers"], v["instances"], v["rate"], v["hold_secs"]
    );
    s
}

/// Criterion's mean estimate (ns per iteration) of one benchmark of `cargo bench --bench upper`, and when it ran.
fn criterion_ns(dir: &std::path::Path, id: &str) -> Option<(f64, std::time::SystemTime)> {
    let path = dir.join(id).join("new/estimates.json");
    let text = fs::read_to_string(&path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    Some((v["mean"]["point_estimate"].as_f64()?, fs::metadata(&path).ok()?.modified().ok()?))
}

/// The micro-benchmark tables from criterion's last `cargo bench --bench upper` in this target dir, if any.
pub fn micro_markdown() -> Option<String> {
    let dir = crate::target_dir().join("criterion");
    let sizes = [("64B", 64.0), ("4KiB", 4096.0), ("64KiB", 65536.0), ("1MiB", 1048576.0)];
    let funcs = ["memcpy", "upper_into", "upper_in_place", "is_upper_of"];
    let mut s = String::new();
    let mut oldest: Option<std::time::SystemTime> = None;
    let mut seen = |t: std::time::SystemTime| oldest = Some(oldest.map_or(t, |o| o.min(t)));
    let _ = writeln!(s, "| routine | {} |", sizes.iter().map(|z| z.0).collect::<Vec<_>>().join(" | "));
    let _ = writeln!(s, "|---|{}", "---:|".repeat(sizes.len()));
    let mut any = false;
    for f in funcs {
        let cells: Vec<String> = sizes
            .iter()
            .map(|(name, bytes)| match criterion_ns(&dir, &format!("upper/{f}/{name}")) {
                Some((ns, t)) => {
                    any = true;
                    seen(t);
                    format!("{:.1} GB/s", bytes / ns)
                }
                None => "–".into(),
            })
            .collect();
        let _ = writeln!(s, "| `{f}` | {} |", cells.join(" | "));
    }
    if !any {
        return None;
    }
    let _ = writeln!(s, "\n| `UpperEcho::on_read` (BytesMut in, BytesMut out, drained) | ns per message |\n|---|---:|");
    for name in ["64B", "4KiB"] {
        for (variant, label) in
            [("UpperEcho", ""), ("UpperEcho_output_shifted_2KiB", ", output buffer shifted by 2 KiB")]
        {
            if let Some((ns, t)) = criterion_ns(&dir, &format!("on_read/{variant}/{name}")) {
                seen(t);
                let _ = writeln!(s, "| {name}{label} | {ns:.1} |");
            }
        }
    }
    let when = oldest
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| cmd("date", &["-u", "-d", &format!("@{}", d.as_secs()), "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default();
    Some(format!(
        "Criterion means from `cargo bench --bench upper` on this machine ({when}); GB/s = 10^9 bytes per second.\n\n{s}"
    ))
}

fn command_line(res: &Results) -> String {
    let args = res.opts.args.join(" ");
    if args.is_empty() {
        "cargo bench --bench strategies".into()
    } else {
        format!("cargo bench --bench strategies -- {args}")
    }
}

fn sample_json(s: &Sample) -> Value {
    json!({
        "msgs_per_sec": s.msgs_per_sec,
        "mb_per_sec": s.mb_per_sec,
        "messages_incl_warmup": s.messages_all,
        "latency_us": {"p50": s.p50_us, "p90": s.p90_us, "p99": s.p99_us, "p99.9": s.p999_us, "max": s.max_us},
        "server_cpu_us_per_msg": s.server_cpu_us_per_msg,
        "client_cpu_us_per_msg": s.client_cpu_us_per_msg,
        "peak_rss_bytes": s.peak_rss,
        "errors": s.errors,
        "failure": s.failure,
        "retries": s.retries,
    })
}

fn results_json(res: &Results) -> Value {
    let rows: Vec<Value> = res
        .rows
        .iter()
        .map(|r| {
            let (section, rate, work) = match &r.section {
                Section::Closed => ("closed_loop", None, None),
                Section::Rate(x) => ("fixed_rate", Some(*x), None),
                Section::Reconnect => ("reconnect", None, None),
                Section::Work(w) => ("work", None, Some(w.clone())),
            };
            json!({
                "mode": r.mode, "section": section, "conns": r.conns, "size": r.size,
                "target_rate": rate, "work": work, "na": r.na,
                "median": if r.na.is_none() { sample_json(&r.median) } else { Value::Null },
                "repeats": r.samples.iter().map(sample_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    let idle: Vec<Value> = res
        .idle
        .iter()
        .map(|r| {
            json!({"mode": r.mode, "conns": r.conns, "rss_before": r.rss_before, "rss_after": r.rss_after,
                   "bytes_per_conn": r.per_conn(), "failure": r.failure})
        })
        .collect();
    let m = &res.machine;
    json!({
        "started": res.started,
        "elapsed_secs": res.elapsed.as_secs_f64(),
        "quick": res.opts.quick,
        "repeats": res.opts.repeats,
        "duration_secs": res.opts.duration.as_secs_f64(),
        "warmup_secs": res.opts.warmup.as_secs_f64(),
        "machine": {"cpu": m.cpu, "cores": m.cores, "mem_gib": m.mem_gib, "kernel": m.kernel, "rustc": m.rustc, "load": m.load, "load_end": res.load_end, "commit": m.commit, "uncommitted": m.uncommitted},
        "syscalls": res.syscalls.iter().map(|r| json!({"mode": r.mode, "conns": r.conns, "size": r.size, "messages": r.messages, "calls": r.calls, "per_msg": r.per_msg(), "failure": r.failure})).collect::<Vec<_>>(),
        "balance": res.balance.iter().map(|r| json!({"listener": r.listener, "threads": r.threads, "conns": r.conns, "per_worker": r.per_worker, "secs": r.secs, "failure": r.failure})).collect::<Vec<_>>(),
        "modes": res.modes.iter().map(|m| m.name).collect::<Vec<_>>(),
        "fork_floor_us": res.fork_floor_us,
        "unavailable": res.unavailable.iter().map(|(n, w)| json!({"mode": n, "why": w})).collect::<Vec<_>>(),
        "rows": rows,
        "idle": idle,
        "examples": res.examples.json(),
        "cpu_floor": res.floor.iter().map(|r| {
            let run = |t: &crate::floor::ToolRun| json!({"cpu_us_per_msg": t.cpu_us_per_msg, "msgs_per_sec": t.msgs_per_sec, "server_cpu_us_per_msg": t.server_cpu_us_per_msg});
            json!({"server": r.server, "conns": crate::floor::CONNS, "size": crate::floor::SIZE, "secs": r.secs,
                   "client": r.client.iter().map(run).collect::<Vec<_>>(), "loadgen": r.loadgen.iter().map(run).collect::<Vec<_>>(),
                   "ratio": if r.failure.is_none() { json!(r.ratio()) } else { Value::Null }, "failure": r.failure})
        }).collect::<Vec<_>>(),
    })
}

/// Writes stdout, results.json, the plots, and (with `--write-docs`) docs/.
pub fn write_all(res: &Results) -> Result<(), String> {
    let md = markdown(res);
    println!("{md}");
    let out = &res.opts.out;
    let json_path = out.join("results.json");
    let text = serde_json::to_string_pretty(&results_json(res)).map_err(|e| e.to_string())?;
    fs::write(&json_path, text).map_err(|e| format!("{}: {e}", json_path.display()))?;
    let plots = crate::plot::all(res, out)?;
    eprintln!("wrote {} and {} plots in {}", json_path.display(), plots.len(), out.display());
    if res.opts.write_docs {
        let root = crate::workspace_root();
        let docs = res.opts.docs_dir.clone().unwrap_or_else(|| root.join("docs"));
        let bench = docs.join("bench");
        fs::create_dir_all(&bench).map_err(|e| e.to_string())?;
        for p in &plots {
            let name = p.file_name().expect("plot file name");
            fs::copy(p, bench.join(name)).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let template = root.join("benches/strategies/BENCHMARKS.template.md");
        let t = fs::read_to_string(&template).map_err(|e| format!("{}: {e}", template.display()))?;
        let figures: String = plots
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .map(|n| format!("![{n}](bench/{n})\n\n"))
            .collect();
        let doc = t
            .replace("{{MACHINE}}", &res.machine.markdown(&res.load_end))
            .replace("{{STARTED}}", &res.started)
            .replace("{{COMMAND}}", &command_line(res))
            .replace("{{ELAPSED}}", &format!("{:.0}", res.elapsed.as_secs_f64()))
            .replace("{{FIGURES}}", &figures)
            .replace("{{RESULTS}}", &md)
            .replace("{{C100K}}", &c100k_markdown(&root))
            .replace(
                "{{MICRO}}",
                &micro_markdown().unwrap_or_else(|| "No criterion results were found in the target directory.".into()),
            );
        let path = docs.join("BENCHMARKS.md");
        fs::write(&path, doc).map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("wrote {} and {}", path.display(), bench.display());
    }
    Ok(())
}
