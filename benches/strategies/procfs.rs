//! What the harness reads about a server from `/proc`, in the units it
//! reports (bytes, seconds): CPU time (user + system) of the server process,
//! its threads, its reaped children (cutime/cstime) and its live
//! descendants; resident memory summed over the process tree.
//!
//! The reading itself is the end-to-end tests' own `/proc` module, included
//! here, so the benchmark and the tests see a server the same way.

// The harness uses the process-tree part; the tests use all of it.
#[allow(dead_code)]
#[path = "../../tests/e2e/support/procfs.rs"]
mod shared;

use std::time::{Duration, Instant};

/// CPU seconds (user + system) used so far by `root`, its threads, its
/// reaped children and its live descendants (and theirs).
pub fn tree_cpu_secs(root: u32) -> f64 {
    shared::tree_cpu(root as i32).as_secs_f64()
}

/// Resident memory now, summed over `root` and its live descendants, in bytes.
pub fn tree_rss(root: u32) -> u64 {
    shared::tree_rss_kib(root as i32) * 1024
}

/// Peak resident memory so far (VmHWM), summed over `root` and its live
/// descendants, in bytes.
pub fn tree_hwm(root: u32) -> u64 {
    shared::tree_hwm_kib(root as i32) * 1024
}

/// The members of the tree and whether any of them is a zombie (exited, not
/// yet reaped).
fn membership(root: u32) -> (Vec<i32>, bool) {
    let tree = shared::tree(root as i32);
    let mut pids: Vec<i32> = tree.iter().map(|p| p.pid).collect();
    pids.sort_unstable();
    (pids, tree.iter().any(shared::ProcStat::is_dead))
}

/// [`tree_cpu_secs`] once the tree has stopped changing: children that are
/// exiting (fork mode, after the client closed) are waited for and reaped,
/// so their time is read once, from the parent's cutime/cstime, and never
/// lost between reading a child and reading its parent. Waits at most `max`.
pub fn settled_tree_cpu_secs(root: u32, max: Duration) -> f64 {
    let deadline = Instant::now() + max;
    let mut prev = membership(root);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = membership(root);
        if (now == prev && !now.1) || Instant::now() >= deadline {
            return tree_cpu_secs(root);
        }
        prev = now;
    }
}

/// The pids of `root`'s process tree now (root first).
pub fn tree_pids(root: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = shared::tree(root as i32).iter().map(|p| p.pid as u32).collect();
    pids.sort_unstable_by_key(|&p| (p != root, p));
    pids
}

/// Whether a tracer is attached to `pid` (`TracerPid` in its status).
pub fn traced(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("TracerPid:")).map(|v| v.trim() != "0"))
        .unwrap_or(false)
}
