//! What the harness reads about a server from `/proc`: CPU time (user +
//! system) of the server process, its threads, its reaped children
//! (cutime/cstime) and its live descendants; resident memory summed over the
//! process tree.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second of the `/proc/PID/stat` times.
fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of `/proc/PID/stat` after the command name (field 3 is index 0).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    // Field 3 (state) is a letter; keep positions by mapping it to 0.
    Some(rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
}

/// Every process's parent, from one scan of `/proc`.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else { return map };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(f) = stat_fields(pid) {
            // Field 4 (ppid) is index 1.
            map.insert(pid, f[1] as u32);
        }
    }
    map
}

/// `root` and all its live descendants.
pub fn tree(root: u32) -> Vec<u32> {
    let parents = parents();
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        out.extend(parents.iter().filter(|(_, &pp)| pp == p).map(|(&c, _)| c));
        i += 1;
    }
    out
}

/// CPU seconds (user + system) used so far by `root`, its threads, its
/// reaped children and its live descendants (and theirs).
pub fn tree_cpu_secs(root: u32) -> f64 {
    let ticks: u64 = tree(root)
        .into_iter()
        .filter_map(stat_fields)
        // utime, stime, cutime, cstime: fields 14..=17, indices 11..=14.
        .map(|f| f.get(11..15).map(|t| t.iter().sum::<u64>()).unwrap_or(0))
        .sum();
    ticks as f64 / ticks_per_sec()
}

/// A `kB` line of `/proc/PID/status`, in bytes.
pub fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    let kb: u64 = line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Resident memory now, summed over `root` and its live descendants.
pub fn tree_rss(root: u32) -> u64 {
    tree(root).into_iter().filter_map(|p| status_bytes(p, "VmRSS")).sum()
}

/// Peak resident memory so far (VmHWM), summed over `root` and its live descendants.
pub fn tree_hwm(root: u32) -> u64 {
    tree(root).into_iter().filter_map(|p| status_bytes(p, "VmHWM")).sum()
}

/// The live members of the tree and whether any of them is a zombie (exited, not yet reaped).
fn membership(root: u32) -> (Vec<u32>, bool) {
    let mut pids = tree(root);
    pids.sort_unstable();
    let zombie = pids.iter().any(|p| {
        fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
            .unwrap_or(false)
    });
    (pids, zombie)
}

/// [`tree_cpu_secs`] once the tree has stopped changing: children that are
/// exiting (fork mode, after the client closed) are waited for and reaped,
/// so their time is read once, from the parent's cutime/cstime, and never
/// lost between reading a child and reading its parent. Waits at most `max`.
pub fn settled_tree_cpu_secs(root: u32, max: std::time::Duration) -> f64 {
    let deadline = std::time::Instant::now() + max;
    let mut prev = membership(root);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = membership(root);
        if (now == prev && !now.1) || std::time::Instant::now() >= deadline {
            return tree_cpu_secs(root);
        }
        prev = now;
    }
}
