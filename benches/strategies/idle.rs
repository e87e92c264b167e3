//! Issue 3: how much resident memory a server spends per idle connection.
//! Open N connections, make one round trip on each (so the server has
//! accepted and served every one of them), and compare the server's VmRSS
//! (summed over its process tree) before and after.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use crate::{procfs, ModeSpec, Programs};

/// The memory a server spent on `conns` idle connections.
#[derive(Clone, Debug, Default)]
pub struct IdleResult {
    pub mode: &'static str,
    pub conns: usize,
    pub rss_before: u64,
    pub rss_after: u64,
    pub failure: Option<String>,
}

impl IdleResult {
    /// RSS growth per connection, bytes.
    pub fn per_conn(&self) -> f64 {
        (self.rss_after as f64 - self.rss_before as f64) / self.conns.max(1) as f64
    }

    /// One line for the progress log.
    pub fn describe(&self) -> String {
        match &self.failure {
            Some(f) => format!("FAILED: {f}"),
            None => format!(
                "RSS {:.1} MiB -> {:.1} MiB: {:.0} B per connection",
                self.rss_before as f64 / 1048576.0,
                self.rss_after as f64 / 1048576.0,
                self.per_conn()
            ),
        }
    }
}

/// Raises this process's open-file limit to the hard limit (the servers inherit it).
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"a")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b[0] != b'A' {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

/// Measures RSS per idle connection of `spec` with `conns` connections.
pub fn measure(p: &Programs, spec: &'static ModeSpec, conns: usize) -> IdleResult {
    let mut r = IdleResult { mode: spec.name, conns, ..Default::default() };
    if let Err(e) = try_measure(p, spec, &mut r) {
        r.failure = Some(e);
    }
    r
}

fn try_measure(p: &Programs, spec: &'static ModeSpec, r: &mut IdleResult) -> Result<(), String> {
    let extra: Vec<String> = match spec.kind {
        crate::Kind::Switchyard(_) => vec!["--max-conns".into(), (r.conns + 100).to_string()],
        _ => vec![],
    };
    let server = p.start(spec, &extra)?;
    let killer = server.killer();
    let _watchdog = killer.arm(Duration::from_secs(120));
    let io = |e: std::io::Error| e.to_string();
    let timeout = Some(Duration::from_secs(10));
    // One connection first, so one-time allocations (buffers, thread-locals) are in the baseline.
    let mut first = TcpStream::connect(server.addr).map_err(io)?;
    first.set_read_timeout(timeout).map_err(io)?;
    round_trip(&mut first).map_err(io)?;
    thread::sleep(Duration::from_millis(200));
    r.rss_before = procfs::tree_rss(server.pid);
    let mut open = Vec::with_capacity(r.conns);
    for i in 0..r.conns {
        let mut s = TcpStream::connect(server.addr).map_err(|e| format!("connection {i}: {e}"))?;
        s.set_read_timeout(timeout).map_err(io)?;
        s.set_nodelay(true).map_err(io)?;
        round_trip(&mut s).map_err(|e| format!("round trip on connection {i}: {e}"))?;
        open.push(s);
    }
    thread::sleep(Duration::from_millis(300));
    r.rss_after = procfs::tree_rss(server.pid);
    killer.disarm();
    drop(open);
    drop(first);
    Ok(())
}
