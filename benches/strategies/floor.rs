//! The client's CPU per message against its floor (issue 12): the `client`
//! binary and the minimal mio load generator (`loadgen.rs`, this bench
//! binary re-executed with `--loadgen`) take turns, each as its own process,
//! against the same server: closed loop, 100 connections, 64 B messages,
//! one client event-loop thread. Each process's CPU (user + system, its
//! whole life) comes from `getrusage(RUSAGE_CHILDREN)` around its wait,
//! divided by every message it completed (the client's warm-up and final
//! checks included); the server's CPU per message is read from `/proc`
//! around each run, to show both loaded it alike.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{median, procfs, ModeSpec, Opts, Programs};

/// Connections and message size of the comparison.
pub const CONNS: usize = 100;
pub const SIZE: usize = 64;

/// One process's run.
#[derive(Clone, Debug, Default)]
pub struct ToolRun {
    pub cpu_us_per_msg: f64,
    pub msgs_per_sec: f64,
    pub server_cpu_us_per_msg: f64,
}

/// The comparison against one server.
#[derive(Clone, Debug, Default)]
pub struct FloorRow {
    pub server: &'static str,
    pub secs: f64,
    pub client: Vec<ToolRun>,
    pub loadgen: Vec<ToolRun>,
    pub failure: Option<String>,
}

impl FloorRow {
    /// The median of `f` over the client's runs and over the load generator's.
    pub fn medians(&self, f: fn(&ToolRun) -> f64) -> (f64, f64) {
        (median(self.client.iter().map(f).collect()), median(self.loadgen.iter().map(f).collect()))
    }

    /// The pairwise ratios client / loadgen of CPU per message.
    pub fn ratios(&self) -> Vec<f64> {
        self.client.iter().zip(&self.loadgen).map(|(c, l)| c.cpu_us_per_msg / l.cpu_us_per_msg).collect()
    }

    /// Their median.
    pub fn ratio(&self) -> f64 {
        median(self.ratios())
    }
}

/// CPU seconds (user + system) of the children reaped so far.
fn children_cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    getrusage(UsageWho::RUSAGE_CHILDREN).map(|u| tv(u.user_time()) + tv(u.system_time())).unwrap_or(0.0)
}

/// Runs `cmd` to its end; (its CPU seconds, its stdout).
fn run_child(mut cmd: Command) -> Result<(f64, String), String> {
    let before = children_cpu();
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
    let cpu = children_cpu() - before;
    if !out.status.success() {
        return Err(format!(
            "{:?} exited with {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((cpu, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn messages_of(json: &str, keys: &[&str]) -> Result<u64, String> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).map_err(|e| format!("bad JSON: {e}"))?;
    keys.iter().map(|k| v[k].as_u64().ok_or(format!("no {k} in the JSON"))).sum()
}

fn one(p: &Programs, server_pid: u32, tool: &str, secs: f64, addr: &str) -> Result<ToolRun, String> {
    let mut cmd;
    if tool == "client" {
        cmd = Command::new(env!("CARGO_BIN_EXE_client"));
        cmd.args(["--addr", addr, "-c", &CONNS.to_string(), "-t", "1", "-s", &SIZE.to_string()]);
        cmd.args(["-d", &format!("{secs}s"), "-q", "--json", "-"]);
    } else {
        cmd = Command::new(&p.me);
        cmd.args([crate::loadgen::FLAG, addr, &CONNS.to_string(), &SIZE.to_string(), &secs.to_string()]);
    }
    let s0 = procfs::tree_cpu_secs(server_pid);
    let (cpu, out) = run_child(cmd)?;
    let s1 = procfs::settled_tree_cpu_secs(server_pid, Duration::from_secs(1));
    let messages = if tool == "client" {
        messages_of(&out, &["messages", "warmup_messages", "checks"])?
    } else {
        messages_of(&out, &["messages"])?
    };
    if messages == 0 {
        return Err(format!("{tool}: no message completed"));
    }
    Ok(ToolRun {
        cpu_us_per_msg: cpu * 1e6 / messages as f64,
        msgs_per_sec: messages as f64 / secs,
        server_cpu_us_per_msg: (s1 - s0) * 1e6 / messages as f64,
    })
}

/// Client and load generator in turn against one `spec` server.
pub fn measure(p: &Programs, spec: &'static ModeSpec, o: &Opts) -> FloorRow {
    let secs = if o.quick { 1.0 } else { 3.0 };
    // Pairs: this shared machine's noise moves single runs by ±30% (where
    // the scheduler puts client and server on the two cores changes the
    // epoll_wait calls per message up to twelvefold between runs), so more
    // pairs than the other figures' repeats.
    let pairs = if o.quick { 2 } else { o.repeats.max(9) };
    let mut row = FloorRow { server: spec.name, secs, ..Default::default() };
    let server = match p.start(spec, &[]) {
        Ok(s) => s,
        Err(e) => {
            row.failure = Some(e);
            return row;
        }
    };
    let killer = server.killer();
    let _watchdog = killer.arm(Duration::from_secs_f64((secs + 10.0) * 2.0 * pairs as f64 + 30.0));
    let addr = server.addr.to_string();
    for pair in 0..pairs {
        // The order alternates, so that whatever the first run of a pair
        // meets (a server that has just served the other tool's connections,
        // a page cache or CPU frequency in some state) falls on both alike.
        let order = if pair % 2 == 0 { ["client", "loadgen"] } else { ["loadgen", "client"] };
        for tool in order {
            match one(p, server.pid, tool, secs, &addr) {
                Ok(r) if tool == "client" => row.client.push(r),
                Ok(r) => row.loadgen.push(r),
                Err(e) => {
                    row.failure = Some(e);
                    return row;
                }
            }
        }
    }
    row
}
