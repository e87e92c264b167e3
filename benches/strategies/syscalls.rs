//! Syscalls per message: the mechanism beside the CPU figure. A short
//! closed-loop run against a fresh server with `strace -c -f` attached to
//! every process of its tree (and following the threads and children it
//! starts), so every syscall the server makes while it echoes is counted;
//! divided by the messages echoed meanwhile. strace slows the server (it
//! stops it at every syscall), so only the counts are used, never the time.
//! (`/proc/PID/io`'s syscr/syscw were considered and rejected: they count
//! read(2)-family calls only, not recv, send or io_uring_enter.)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_client::Config as ClientConfig;

use crate::{procfs, ModeSpec, Programs};

/// One mode's counts.
#[derive(Clone, Debug, Default)]
pub struct SyscallRow {
    pub mode: &'static str,
    pub conns: usize,
    pub size: usize,
    /// Messages echoed while strace counted.
    pub messages: u64,
    /// Calls by syscall name.
    pub calls: BTreeMap<String, u64>,
    pub failure: Option<String>,
}

impl SyscallRow {
    /// Syscalls per echoed message.
    pub fn per_msg(&self) -> f64 {
        self.calls.values().sum::<u64>() as f64 / self.messages.max(1) as f64
    }

    /// The syscalls that make up most of it, most first, each per message.
    pub fn top(&self, n: usize) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> =
            self.calls.iter().map(|(k, c)| (k.clone(), *c as f64 / self.messages.max(1) as f64)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v.truncate(n);
        v
    }
}

/// Whether strace is on this machine.
pub fn available() -> bool {
    Command::new("strace").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Counts the syscalls of `spec`'s server over `secs` of closed-loop load.
pub fn measure(p: &Programs, spec: &'static ModeSpec, conns: usize, size: usize, secs: f64) -> SyscallRow {
    let mut r = SyscallRow { mode: spec.name, conns, size, ..Default::default() };
    if let Err(e) = try_measure(p, spec, &mut r, secs) {
        r.failure = Some(e);
    }
    r
}

/// Ends the strace we started, by its pid, and waits for its summary.
struct Tracer(Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::SIGINT);
        let _ = self.0.wait();
    }
}

/// An `strace -c -f` of every process of `root`'s tree, once each has its
/// tracer. `-f` follows what is forked after the attach; a process forked
/// between the listing of the tree and the attach (a prefork master forks
/// its workers once it listens) would be traced by nobody, so the tree is
/// listed again once attached, and the attach made again if it grew.
fn attach(root: u32, out: &Path) -> Result<Tracer, String> {
    for _ in 0..5 {
        let pids = procfs::tree_pids(root);
        let mut cmd = Command::new("strace");
        cmd.args(["-c", "-f", "-q", "-o"]).arg(out);
        for pid in &pids {
            cmd.arg("-p").arg(pid.to_string());
        }
        let tracer =
            Tracer(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().map_err(|e| format!("strace: {e}"))?);
        // Attached once every process listed has a tracer (bounded).
        let t0 = Instant::now();
        while !pids.iter().all(|&pid| procfs::traced(pid)) {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err("strace did not attach within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if procfs::tree_pids(root).iter().all(|&pid| procfs::traced(pid)) {
            return Ok(tracer);
        }
    }
    Err("the server's process tree kept changing while strace attached (5 tries)".into())
}

fn try_measure(p: &Programs, spec: &'static ModeSpec, r: &mut SyscallRow, secs: f64) -> Result<(), String> {
    let server = p.start(spec, &[])?;
    let killer = server.killer();
    let _watchdog = killer.arm(Duration::from_secs_f64(secs) + Duration::from_secs(60));
    let out = p.logs.join(format!("{}-{}-strace.txt", spec.name, r.conns));
    let tracer = attach(server.pid, &out)?;
    let cfg = ClientConfig {
        timeout: Duration::from_secs(10),
        ..crate::closed_loop(server.addr, r.conns, r.size, Duration::from_secs_f64(secs), Duration::ZERO)
    };
    let rep = switchyard_client::run(&cfg).map_err(|e| format!("client: {e}"))?;
    // The connections' last syscalls (their closes) are counted too: the
    // tree settles before strace is stopped.
    let _ = procfs::settled_tree_cpu_secs(server.pid, Duration::from_secs(3));
    drop(tracer);
    killer.disarm();
    drop(server);
    if !rep.passed() {
        return Err(format!("verification failed: {:?}", rep.errors));
    }
    r.messages = rep.messages + rep.warmup_messages;
    r.calls = parse(&out)?;
    Ok(())
}

/// The per-syscall call counts of a `strace -c` summary.
fn parse(path: &Path) -> Result<BTreeMap<String, u64>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "% time  seconds  usecs/call  calls  [errors]  syscall"
        if f.len() < 5 || f[0].parse::<f64>().is_err() || f.last() == Some(&"total") {
            continue;
        }
        if let Ok(n) = f[3].parse::<u64>() {
            calls.insert(f[f.len() - 1].to_string(), n);
        }
    }
    if calls.is_empty() {
        return Err(format!("no counts in {}", path.display()));
    }
    Ok(calls)
}
