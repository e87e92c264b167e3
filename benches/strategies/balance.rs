//! The prefork master's accept balance: how a shared listener (every
//! worker waits with EPOLLEXCLUSIVE) and `--reuseport` (one socket per
//! worker) spread short connections over 2 event workers, with 4 client
//! threads at once and with one connection at a time. Per-worker accepted
//! counts come from the master's `--metrics` page
//! (`switchyard_worker_connections_accepted_total{pid}`), read before and
//! after. The measurement of `tests/e2e/prefork.rs`'s `balance_report`,
//! made here so the generated document holds it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Kind, ModeSpec, Programs};

/// One configuration's result.
#[derive(Clone, Debug, Default)]
pub struct BalanceRow {
    pub listener: &'static str,
    pub threads: usize,
    pub conns: usize,
    /// Accepted per worker, in pid order.
    pub per_worker: Vec<u64>,
    pub secs: f64,
    pub failure: Option<String>,
}

impl BalanceRow {
    /// Most over fewest.
    pub fn max_min(&self) -> f64 {
        let max = self.per_worker.iter().copied().max().unwrap_or(0) as f64;
        let min = self.per_worker.iter().copied().min().unwrap_or(0) as f64;
        if min > 0.0 {
            max / min
        } else {
            f64::INFINITY
        }
    }
}

const PREFORK_SHARED: ModeSpec = ModeSpec {
    name: "prefork-event",
    kind: Kind::Switchyard(&["--mode", "prefork", "--workers", "2", "--worker", "event"]),
    max_clients: None,
    why: "",
    idle: false,
};
const PREFORK_REUSEPORT: ModeSpec = ModeSpec {
    name: "prefork-event-reuseport",
    kind: Kind::Switchyard(&["--mode", "prefork", "--workers", "2", "--worker", "event", "--reuseport"]),
    max_clients: None,
    why: "",
    idle: false,
};

/// The four configurations, `conns` connections each.
pub fn measure_all(p: &Programs, conns: usize) -> Vec<BalanceRow> {
    let mut rows = Vec::new();
    for threads in [4, 1] {
        for (listener, spec) in
            [("shared listener (EPOLLEXCLUSIVE)", &PREFORK_SHARED), ("--reuseport", &PREFORK_REUSEPORT)]
        {
            let mut r = BalanceRow { listener, threads, conns, ..Default::default() };
            if let Err(e) = measure(p, spec, &mut r) {
                r.failure = Some(e);
            }
            rows.push(r);
        }
    }
    rows
}

fn measure(p: &Programs, spec: &ModeSpec, r: &mut BalanceRow) -> Result<(), String> {
    // A free port for the metrics endpoint (the server binds it a moment later).
    let maddr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
    let server = p.start(spec, &["--metrics".into(), maddr.to_string()])?;
    let killer = server.killer();
    let _watchdog = killer.arm(Duration::from_secs(120));
    let t0 = Instant::now();
    let before = loop {
        match accepted(maddr) {
            Ok(m) if m.len() == 2 => break m,
            _ if t0.elapsed() > Duration::from_secs(10) => return Err("2 workers not serving within 10 s".into()),
            _ => thread::sleep(Duration::from_millis(20)),
        }
    };
    let started = Instant::now();
    let addr = server.addr;
    let per_thread = r.conns / r.threads;
    let handles: Vec<_> = (0..r.threads)
        .map(|t| {
            thread::spawn(move || -> Result<(), String> {
                for i in 0..per_thread {
                    one_shot(addr).map_err(|e| format!("thread {t}, connection {i}: {e}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| "a client thread panicked".to_string())??;
    }
    r.secs = started.elapsed().as_secs_f64();
    let after = accepted(maddr)?;
    r.per_worker = after.iter().map(|(pid, n)| n - before.get(pid).copied().unwrap_or(0)).collect();
    let total: u64 = r.per_worker.iter().sum();
    if total != (per_thread * r.threads) as u64 {
        return Err(format!("workers counted {total} connections for {}", per_thread * r.threads));
    }
    killer.disarm();
    Ok(())
}

/// One connection, one message, its echo, close.
fn one_shot(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"balance")?;
    let mut got = [0u8; 7];
    s.read_exact(&mut got)?;
    if &got != b"BALANCE" {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

/// `switchyard_worker_connections_accepted_total` by worker pid.
fn accepted(maddr: SocketAddr) -> Result<BTreeMap<u32, u64>, String> {
    let mut s = TcpStream::connect(maddr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut page = String::new();
    s.read_to_string(&mut page).map_err(|e| e.to_string())?;
    let prefix = "switchyard_worker_connections_accepted_total{pid=\"";
    Ok(page
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (pid, value) = rest.split_once("\"} ")?;
            Some((pid.parse().ok()?, value.trim().parse::<f64>().ok()? as u64))
        })
        .collect())
}
