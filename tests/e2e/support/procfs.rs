//! A server seen from outside through `/proc`: its process tree (fork
//! children, prefork workers, zombies), CPU time, resident memory, threads,
//! open fds and their flags, listening sockets, pending signals.
//!
//! Shared: the end-to-end tests use it as `support::procfs`, and the strategy
//! benchmark includes this very file (`benches/strategies/procfs.rs`), so
//! both read `/proc` the same way. It depends on `std` and `libc` only.

use std::collections::HashSet;
use std::fs;
use std::time::Duration;

/// One `/proc/PID/stat` line, the fields the tests and benches use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// State letter (R, S, D, Z, X, ...).
    pub state: char,
    /// Start time in clock ticks after boot (tells a reused pid apart).
    pub starttime: u64,
    /// CPU time of the process, every thread, user plus system (`utime +
    /// stime`), in clock ticks.
    pub cpu_ticks: u64,
    /// CPU time of its reaped children (`cutime + cstime`), in clock ticks.
    pub children_cpu_ticks: u64,
}

impl ProcStat {
    /// A zombie (exited, not reaped) or a dead entry.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: the
    // fields that follow start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field N of the whole line is f[N - 3].
    let num = |n: usize| -> Option<u64> { f.get(n - 3)?.parse().ok() };
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        starttime: num(22)?,
        cpu_ticks: num(14)? + num(15)?,
        children_cpu_ticks: num(16)? + num(17)?,
    })
}

/// Every process visible in `/proc`.
pub fn all_procs() -> Vec<ProcStat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter_map(proc_stat).collect()
}

/// The descendants of `root`, recursively (not `root` itself), zombies
/// included, from one scan of `/proc`.
pub fn descendants(root: i32) -> Vec<ProcStat> {
    let procs = all_procs();
    let mut tree: HashSet<i32> = HashSet::from([root]);
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for p in &procs {
            if tree.contains(&p.ppid) && !tree.contains(&p.pid) {
                tree.insert(p.pid);
                out.push(*p);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// `root` (if it still exists) and all its descendants, zombies included.
pub fn tree(root: i32) -> Vec<ProcStat> {
    proc_stat(root).into_iter().chain(descendants(root)).collect()
}

/// Whether `p` (same pid, same start time) is still a live process.
pub fn still_alive(p: &ProcStat) -> bool {
    proc_stat(p.pid).is_some_and(|now| now.starttime == p.starttime && !now.is_dead())
}

/// Clock ticks per second of the `/proc/PID/stat` times.
fn ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    }
}

/// CPU time used so far by `root`, its threads, its reaped children and its
/// live descendants (and theirs). One clock tick (10 ms) is the resolution.
pub fn tree_cpu(root: i32) -> Duration {
    let ticks: u64 = tree(root).iter().map(|p| p.cpu_ticks + p.children_cpu_ticks).sum();
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / ticks_per_sec())
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...) in KiB; `None`
/// when the process is gone (or has no such line: a zombie).
pub fn status_kib(pid: i32, key: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// Resident memory now (`VmRSS`), in KiB, summed over `root` and its
/// descendants.
pub fn tree_rss_kib(root: i32) -> u64 {
    tree(root).iter().filter_map(|p| status_kib(p.pid, "VmRSS")).sum()
}

/// Peak resident memory so far (`VmHWM`), in KiB, summed over `root` and its
/// descendants.
pub fn tree_hwm_kib(root: i32) -> u64 {
    tree(root).iter().filter_map(|p| status_kib(p.pid, "VmHWM")).sum()
}

/// Number of threads of `pid`.
pub fn thread_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// Open fds of `pid` as (fd, link target), in fd order.
pub fn fds(pid: i32) -> Vec<(i32, String)> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = fs::read_link(e.path()).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
            Some((fd, target))
        })
        .collect();
    out.sort();
    out
}

/// The `flags:` field of `/proc/PID/fdinfo/FD` (octal), if the fd is open.
pub fn fd_flags(pid: i32, fd: i32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let line = text.lines().find(|l| l.starts_with("flags:"))?;
    u32::from_str_radix(line["flags:".len()..].trim(), 8).ok()
}

/// Inode of a `socket:[N]` link target.
pub fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Inodes of the TCP sockets in LISTEN state (this network namespace).
pub fn listening_inodes() -> HashSet<u64> {
    let mut out = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                if let Some(inode) = f.get(9).and_then(|i| i.parse().ok()) {
                    out.insert(inode);
                }
            }
        }
    }
    out
}

/// The inode of the IPv4 TCP socket from local port `local` to remote port
/// `remote`, from `/proc/net/tcp`.
pub fn tcp_inode(local: u16, remote: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (l, r) = (port_of(f.get(1)?)?, port_of(f.get(2)?)?);
        (l == local && r == remote).then(|| f.get(9)?.parse().ok()).flatten()
    })
}

/// Whether signal number `signo`, sent to the whole process `pid`, is still
/// pending (not yet delivered to any thread), from `ShdPnd` in
/// `/proc/PID/status`.
pub fn signal_pending(pid: i32, signo: i32) -> bool {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("ShdPnd:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    mask & (1 << (signo - 1)) != 0
}

/// The identities of `/proc/PID/status` line `key` (`Uid:`, `Gid:`,
/// `Groups:`): its numbers, in order.
pub fn status_ids(pid: i32, key: &str) -> Vec<u32> {
    status_line(pid, key).split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect()
}

/// Line `key` of `/proc/PID/status` (for example `CapEff:`), whole; empty
/// when absent.
pub fn status_line(pid: i32, key: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines().find(|l| l.starts_with(key)).unwrap_or_default().to_string()
}

/// Where each thread of the processes `pids` is blocked, as `pid/tid:
/// syscall (wchan)` (for failure messages).
pub fn where_blocked(pids: &[i32]) -> String {
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let read = |f: &str| fs::read_to_string(task.path().join(f)).unwrap_or_default();
            let syscall = read("syscall");
            let nr = syscall.split_whitespace().next().unwrap_or("?").to_string();
            out.push(format!(
                "{pid}/{}: {} ({})",
                task.file_name().to_string_lossy(),
                syscall_name(&nr),
                read("wchan")
            ));
        }
    }
    out.join(", ")
}

/// A readable name for the x86-64 syscall numbers a blocked server sits in.
fn syscall_name(nr: &str) -> String {
    let name = match (cfg!(target_arch = "x86_64"), nr) {
        (true, "0") => "read",
        (true, "1") => "write",
        (true, "7") => "poll",
        (true, "44") => "sendto",
        (true, "45") => "recvfrom",
        (true, "61") => "wait4",
        (true, "202") => "futex",
        (true, "232") => "epoll_wait",
        (true, "281") => "epoll_pwait",
        (true, "288") => "accept4",
        (true, "426") => "io_uring_enter",
        (true, "441") => "epoll_pwait2",
        (_, "running") => "running",
        _ => return format!("syscall {nr}"),
    };
    name.to_string()
}
