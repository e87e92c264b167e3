//! Prefork mode (issue 4 §8): the master as a
//! supervisor, seen from outside through TCP, signals, `/proc` and its
//! Prometheus endpoint.
//!
//! - kill -9 of a worker under load: respawned within 1 s, only the clients
//!   whose connection lived in that worker notice, no zombie;
//! - kill -9 of the master: every worker dies with it, the port refuses;
//! - SIGTERM mid-stream: every byte echoed, exit 0;
//! - SIGTTIN / SIGTTOU: N → N+1 → N+2 → N+1, never below 1;
//! - SIGHUP ×10 under a reconnecting client: no failed connection, every
//!   worker replaced, no zombie;
//! - a SIGSTOPped worker is replaced after `--worker-timeout`;
//! - `--max-requests` recycles workers without failing a connection;
//! - `/metrics` under load parses and is consistent;
//! - workers that die while booting make the master give up (exit non-zero);
//! - `balance_report` (ignored, ~5 s): how a shared listener and
//!   `--reuseport` spread 10,000 connections over 2 event workers, from 4
//!   client threads and from 1.
//!
//! Which worker holds a connection is found from `/proc`: the server side
//! of a client socket is the `/proc/net/tcp` entry whose ports are the
//! client's swapped, and its inode is open in exactly one worker.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::metrics::{http_get, scrape};
use crate::support::modes::PREFORK;
use crate::support::net::{
    close_cleanly, connection_refused, fill_pattern, read_pattern_to_eof, roundtrip, try_connect, IO_TIMEOUT,
};
use crate::support::process::{poll_every, poll_until, signal_pid, KillOnDrop};
use crate::support::procfs::{self, all_procs, fds, socket_inode, still_alive, tcp_inode, ProcStat};
use crate::support::server::{Launch, Server, EXIT_TIMEOUT, SETTLE_TIMEOUT, START_TIMEOUT};

/// Client timeout of the loops that make many connections: a stuck
/// connection fails after this, not after [`IO_TIMEOUT`].
const SHORT_TIMEOUT: Duration = Duration::from_secs(5);

// ----- helpers ---------------------------------------------------------------

fn start(extra: &[&str]) -> Server {
    Server::start(&PREFORK, extra)
}

/// Live direct children of the master (its workers, draining ones
/// included), oldest first.
fn workers(s: &Server) -> Vec<ProcStat> {
    let mut w: Vec<ProcStat> = all_procs().into_iter().filter(|p| p.ppid == s.pid && !p.is_dead()).collect();
    w.sort_by_key(|p| (p.starttime, p.pid));
    w
}

fn worker_pids(s: &Server) -> BTreeSet<i32> {
    workers(s).iter().map(|p| p.pid).collect()
}

/// Waits (bounded) for exactly `n` workers and one successful round trip.
fn wait_serving(s: &Server, n: usize) {
    assert!(
        poll_until(START_TIMEOUT, || workers(s).len() == n),
        "expected {n} workers within {START_TIMEOUT:?}, have {:?}",
        workers(s)
    );
    let mut c = s.connect();
    roundtrip(&mut c, b"hello, prefork").unwrap_or_else(|e| panic!("first round trip: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("first close: {e}"));
}

/// One short connection: connect, one round trip of `msg`, clean close.
fn one_shot(addr: SocketAddr, msg: &[u8]) -> Result<(), String> {
    crate::support::net::one_shot(addr, msg, SHORT_TIMEOUT)
}

/// The pid of the worker holding the server side of `client`, from
/// `/proc/net/tcp` (the entry with the client's ports swapped) and the
/// workers' fd tables.
fn owner_of(s: &Server, client: &TcpStream) -> Option<i32> {
    let inode = tcp_inode(s.addr.port(), client.local_addr().ok()?.port())?;
    let holders: Vec<i32> = workers(s)
        .iter()
        .map(|w| w.pid)
        .filter(|&pid| fds(pid).iter().any(|(_, t)| socket_inode(t) == Some(inode)))
        .collect();
    match holders[..] {
        [pid] => Some(pid),
        _ => None,
    }
}

/// Message `round` of client `id`: 1..=2048 bytes of its pattern stream.
fn message(id: u64, round: u64) -> Vec<u8> {
    let len = 1 + ((id * 7919 + round * 104_729) % 2048) as usize;
    let mut m = vec![0u8; len];
    fill_pattern(id, round * 4096, &mut m);
    m
}

// ----- 1. kill -9 of a worker under load ------------------------------------

/// 8 clients echo on persistent connections; one worker holding some of
/// them is SIGKILLed. The master must be back to `n` workers within 1 s;
/// exactly the clients whose connection lived in that worker fail, the
/// others go on; no zombie.
fn kill_9_one_worker_under_load(n: usize, extra: &[&str]) {
    // 8 clients; more (up to 24) while they all sit in one worker.
    const CLIENTS: u64 = 8;
    const MAX_CLIENTS: u64 = 24;
    let n_str = n.to_string();
    let mut args = vec!["--workers", &n_str];
    args.extend_from_slice(extra);
    let s = start(&args);
    wait_serving(&s, n);

    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Arc<Vec<AtomicU64>> = Arc::new((0..MAX_CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let failed: Arc<Vec<AtomicBool>> = Arc::new((0..MAX_CLIENTS).map(|_| AtomicBool::new(false)).collect());
    let (tx, rx) = mpsc::channel();
    let mut clients = Vec::new();
    // Which worker holds which client. Each client connects while the
    // earlier ones are busy echoing, which spreads them over the workers.
    let mut owner: BTreeMap<u64, i32> = BTreeMap::new();
    let mut by_worker: BTreeMap<i32, Vec<u64>> = BTreeMap::new();
    for id in 0..MAX_CLIENTS {
        if id >= CLIENTS && by_worker.len() >= 2 {
            break;
        }
        let (stop, my_rounds, my_failed, tx, addr) = (stop.clone(), rounds.clone(), failed.clone(), tx.clone(), s.addr);
        clients.push(thread::spawn(move || -> Result<u64, String> {
            let deadline = Instant::now() + Duration::from_secs(60);
            let run = || -> Result<u64, String> {
                let mut c = try_connect(addr).map_err(|e| format!("connect: {e}"))?;
                roundtrip(&mut c, b"first").map_err(|e| format!("first round trip: {e}"))?;
                let _ = tx.send((id, c.try_clone().map_err(|e| format!("try_clone: {e}"))?));
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && round < 1_000_000 {
                    roundtrip(&mut c, &message(id, round)).map_err(|e| format!("round trip {round}: {e}"))?;
                    round += 1;
                    my_rounds[id as usize].store(round, Ordering::Relaxed);
                }
                close_cleanly(&mut c).map_err(|e| format!("close after {round} round trips: {e}"))?;
                Ok(round)
            };
            let r = run();
            if r.is_err() {
                my_failed[id as usize].store(true, Ordering::Relaxed);
            }
            r
        }));
        let (got, c) = rx.recv_timeout(IO_TIMEOUT).expect("the client connected and made a first round trip");
        assert_eq!(got, id);
        let mut pid = None;
        poll_until(SETTLE_TIMEOUT, || {
            pid = owner_of(&s, &c);
            pid.is_some()
        });
        let pid = pid.unwrap_or_else(|| panic!("no single worker holds client {id}'s connection"));
        owner.insert(id, pid);
        by_worker.entry(pid).or_default().push(id);
        assert!(
            poll_until(IO_TIMEOUT, || rounds[id as usize].load(Ordering::Relaxed) >= 3
                || failed[id as usize].load(Ordering::Relaxed)),
            "client {id} made no progress"
        );
    }
    drop(tx);
    let count = clients.len() as u64;
    assert!(
        by_worker.len() >= 2,
        "all {count} connections landed in one worker ({by_worker:?}); workers {:?}",
        worker_pids(&s)
    );
    // The worker with the fewest connections (at least one) dies.
    let (&victim, victims) = by_worker.iter().min_by_key(|(_, ids)| ids.len()).expect("a worker");
    let victims: BTreeSet<u64> = victims.iter().copied().collect();
    assert!(
        poll_until(IO_TIMEOUT, || rounds[..count as usize].iter().all(|r| r.load(Ordering::Relaxed) >= 10)
            || failed.iter().any(|f| f.load(Ordering::Relaxed))),
        "clients made no progress before the kill"
    );
    assert!(!failed.iter().any(|f| f.load(Ordering::Relaxed)), "a client failed before the kill");
    let before: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::Relaxed)).collect();

    let killed_at = Instant::now();
    signal_pid(victim, Signal::SIGKILL).expect("kill -9 the worker");
    let respawned = poll_until(Duration::from_secs(1).saturating_sub(killed_at.elapsed()), || {
        let w = worker_pids(&s);
        w.len() == n && !w.contains(&victim)
    });
    let took = killed_at.elapsed();
    assert!(respawned, "{took:?} after kill -9 of worker {victim}: workers {:?}, expected {n}", workers(&s));

    // The other clients go on: 20 more round trips each.
    let survivors: Vec<u64> = (0..count).filter(|id| !victims.contains(id)).collect();
    poll_until(IO_TIMEOUT, || {
        survivors.iter().all(|&id| rounds[id as usize].load(Ordering::Relaxed) >= before[id as usize] + 20)
            || survivors.iter().any(|&id| failed[id as usize].load(Ordering::Relaxed))
    });
    stop.store(true, Ordering::Relaxed);
    let results: Vec<Result<u64, String>> =
        clients.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("client panicked".into()))).collect();
    for &id in &survivors {
        match &results[id as usize] {
            Ok(r) => {
                assert!(*r >= before[id as usize] + 20, "client {id} (worker {}) made only {r} round trips", owner[&id])
            }
            Err(e) => panic!(
                "client {id}, whose connection was on worker {} (not the killed {victim}), failed: {e}",
                owner[&id]
            ),
        }
    }
    for &id in &victims {
        assert!(
            results[id as usize].is_err(),
            "client {id} was on the killed worker {victim} yet finished: {:?}",
            results[id as usize]
        );
    }
    assert!(!survivors.is_empty(), "no client continued");
    assert!(poll_until(Duration::from_secs(1), || s.zombies().is_empty()), "zombies: {:?}", s.zombies());
    let line =
        format!("worker {victim} killed by SIGKILL (the kernel OOM killer does this; check dmesg); replacing it");
    assert!(s.wait_log_line(&line, SETTLE_TIMEOUT).is_some(), "no log line {line:?}");
    let mut c = s.connect();
    roundtrip(&mut c, b"after the respawn").unwrap_or_else(|e| panic!("round trip after the respawn: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("close after the respawn: {e}"));
    eprintln!(
        "kill -9 worker {victim}: {} of {count} clients on it ({by_worker:?}), {n} workers again after {took:?}",
        victims.len()
    );
}

/// Serial workers serve one client each, so 8 clients on 8 workers: clients
/// echo on every worker.
#[test]
fn kill_9_serial_worker_while_8_clients_echo_on_all_workers() {
    kill_9_one_worker_under_load(8, &["--worker", "serial"]);
}

#[test]
fn kill_9_event_worker_while_8_clients_echo() {
    kill_9_one_worker_under_load(4, &["--worker", "event"]);
}

#[test]
fn kill_9_event_worker_reuseport_while_8_clients_echo() {
    kill_9_one_worker_under_load(4, &["--worker", "event", "--reuseport"]);
}

#[test]
fn kill_9_thread_worker_while_8_clients_echo() {
    kill_9_one_worker_under_load(4, &["--worker", "thread", "--reuseport"]);
}

// ----- 2. kill -9 of the master -----------------------------------------------

fn kill_9_master(extra: &[&str]) {
    let mut s = start(extra);
    wait_serving(&s, 3);
    let ws = workers(&s);
    let _guard = KillOnDrop(ws.clone());
    let killed_at = Instant::now();
    s.signal(Signal::SIGKILL);
    assert!(s.wait_exit(EXIT_TIMEOUT).is_some(), "master still running after SIGKILL");
    let all_dead =
        poll_until(Duration::from_secs(2).saturating_sub(killed_at.elapsed()), || ws.iter().all(|w| !still_alive(w)));
    let alive: Vec<&ProcStat> = ws.iter().filter(|w| still_alive(w)).collect();
    assert!(all_dead, "workers alive {:?} after kill -9 of the master: {alive:?}", killed_at.elapsed());
    assert!(connection_refused(s.addr), "{} accepts connections after the master and its workers died", s.addr);
}

#[test]
fn kill_9_master_kills_every_worker() {
    kill_9_master(&["--workers", "3", "--worker", "event"]);
}

#[test]
fn kill_9_master_kills_every_worker_reuseport() {
    kill_9_master(&["--workers", "3", "--worker", "thread", "--reuseport"]);
}

// ----- 3. SIGTERM mid-stream ------------------------------------------------

/// 4 clients have half of 1 MiB echoed; SIGTERM; the port stops accepting;
/// then the clients send the second half, shut their write side and read
/// to EOF: every byte comes back uppercased, and the master exits 0.
fn sigterm_mid_stream(extra: &[&str]) {
    const CLIENTS: u64 = 4;
    const TOTAL: u64 = 1 << 20;
    const HALF: u64 = TOTAL / 2;
    let mut s = start(extra);
    wait_serving(&s, 2);
    let go = Arc::new(AtomicBool::new(false));
    let echoed: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let (go, echoed, addr) = (go.clone(), echoed.clone(), s.addr);
        clients.push(thread::spawn(move || -> Result<(), String> {
            let seed = 0x7e57 + id;
            let c = try_connect(addr).map_err(|e| format!("connect: {e}"))?;
            let mut w = c.try_clone().map_err(|e| format!("try_clone: {e}"))?;
            let writer = thread::spawn(move || -> Result<(), String> {
                let mut buf = vec![0u8; 16 * 1024];
                let mut off = 0u64;
                while off < TOTAL {
                    if off == HALF && !poll_until(IO_TIMEOUT, || go.load(Ordering::Relaxed)) {
                        return Err("never told to go on".into());
                    }
                    let len = (buf.len() as u64).min(TOTAL - off).min(if off < HALF { HALF - off } else { TOTAL });
                    fill_pattern(seed, off, &mut buf[..len as usize]);
                    w.write_all(&buf[..len as usize]).map_err(|e| format!("write at {off}: {e}"))?;
                    off += len;
                }
                w.shutdown(Shutdown::Write).map_err(|e| format!("shutdown(Write): {e}"))
            });
            let mut r = c;
            let read = read_pattern_to_eof(&mut r, seed, &echoed[id as usize]);
            if read.is_err() {
                let _ = r.shutdown(Shutdown::Both);
            }
            let wrote = writer.join().map_err(|_| "writer panicked".to_string())?;
            let off = read?;
            wrote?;
            if off != TOTAL {
                return Err(format!("EOF after {off} echoed bytes of {TOTAL}"));
            }
            Ok(())
        }));
    }
    assert!(
        poll_until(IO_TIMEOUT, || echoed.iter().all(|e| e.load(Ordering::Relaxed) >= HALF)),
        "first halves not echoed: {:?}",
        echoed.iter().map(|e| e.load(Ordering::Relaxed)).collect::<Vec<_>>()
    );
    s.signal(Signal::SIGTERM);
    let refused = poll_every(Duration::from_millis(20), SETTLE_TIMEOUT, || connection_refused(s.addr));
    go.store(true, Ordering::Relaxed);
    for (id, c) in clients.into_iter().enumerate() {
        c.join().expect("client thread").unwrap_or_else(|e| panic!("client {id} after SIGTERM: {e}"));
    }
    assert!(refused, "port still accepting {SETTLE_TIMEOUT:?} after SIGTERM");
    let status = s
        .wait_exit(EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("master still running {EXIT_TIMEOUT:?} after SIGTERM and every client done"));
    assert_eq!(status.code(), Some(0), "master exit status after SIGTERM: {status}");
}

#[test]
fn sigterm_mid_stream_loses_no_byte_event() {
    sigterm_mid_stream(&["--workers", "2", "--worker", "event"]);
}

#[test]
fn sigterm_mid_stream_loses_no_byte_thread() {
    sigterm_mid_stream(&["--workers", "2", "--worker", "thread"]);
}

#[test]
fn sigterm_mid_stream_loses_no_byte_pool_reuseport() {
    sigterm_mid_stream(&["--workers", "2", "--worker", "pool", "--reuseport"]);
}

// ----- 4. TTIN / TTOU ------------------------------------------------------------

#[test]
fn ttin_twice_then_ttou_once() {
    let s = start(&["--workers", "2", "--worker", "event"]);
    wait_serving(&s, 2);
    for want in [3, 4] {
        s.signal_and_wait_delivery(Signal::SIGTTIN);
        assert!(
            poll_until(SETTLE_TIMEOUT, || workers(&s).len() == want),
            "after SIGTTIN: {:?}, expected {want} workers",
            workers(&s)
        );
    }
    let four = workers(&s);
    s.signal_and_wait_delivery(Signal::SIGTTOU);
    assert!(
        poll_until(SETTLE_TIMEOUT, || workers(&s).len() == 3),
        "after SIGTTOU: {:?}, expected 3 workers",
        workers(&s)
    );
    let now = worker_pids(&s);
    let gone: Vec<&ProcStat> = four.iter().filter(|w| !now.contains(&w.pid)).collect();
    let oldest = four.iter().map(|w| w.starttime).min().expect("workers");
    assert!(
        gone.len() == 1 && gone[0].starttime == oldest,
        "SIGTTOU should drain the oldest worker: had {four:?}, gone {gone:?}"
    );
    // And it stays there (a short fixed window: asserting a non-event).
    let mut seen = Vec::new();
    let changed = poll_every(Duration::from_millis(20), Duration::from_millis(500), || {
        seen = workers(&s);
        seen.len() != 3
    });
    assert!(!changed, "worker count left 3 after SIGTTOU: {seen:?}");
    let mut c = s.connect();
    roundtrip(&mut c, b"three workers").unwrap_or_else(|e| panic!("round trip: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("close: {e}"));
}

#[test]
fn ttou_never_below_one_worker() {
    let s = start(&["--workers", "1", "--worker", "event"]);
    wait_serving(&s, 1);
    // The same processes: pid and start time (the state letter changes).
    let ids = |w: Vec<ProcStat>| -> Vec<(i32, u64)> { w.iter().map(|p| (p.pid, p.starttime)).collect() };
    let only = ids(workers(&s));
    s.signal_and_wait_delivery(Signal::SIGTTOU);
    s.signal_and_wait_delivery(Signal::SIGTTOU);
    // Asserting that nothing happens: watch for a fixed window.
    let mut seen = only.clone();
    let changed = poll_every(Duration::from_millis(10), Duration::from_millis(1500), || {
        seen = ids(workers(&s));
        seen != only
    });
    assert!(!changed, "SIGTTOU with one worker: workers (pid, start time) went from {only:?} to {seen:?}");
    let mut c = s.connect();
    roundtrip(&mut c, b"still one").unwrap_or_else(|e| panic!("round trip: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("close: {e}"));
}

// ----- 5. HUP under load -------------------------------------------------------

/// A client making a new connection per round trip runs through 10
/// rolling restarts (each SIGHUP sent once every worker of the previous
/// generation is gone): no connection fails.
fn hup_under_load(extra: &[&str]) {
    const N: usize = 2;
    let s = start(extra);
    wait_serving(&s, N);
    let original = worker_pids(&s);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let hammer = {
        let (stop, done, errors, addr) = (stop.clone(), done.clone(), errors.clone(), s.addr);
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(90);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 500_000 {
                if let Err(e) = one_shot(addr, &message(i, i)) {
                    let mut errs = errors.lock().unwrap();
                    errs.push(format!("connection {i}: {e}"));
                    if errs.len() >= 5 {
                        return;
                    }
                }
                i += 1;
                done.store(i, Ordering::Relaxed);
            }
        })
    };
    let mut generation = original.clone();
    for hup in 1..=10 {
        let at = done.load(Ordering::Relaxed);
        assert!(
            poll_until(IO_TIMEOUT, || done.load(Ordering::Relaxed) >= at + 20 || !errors.lock().unwrap().is_empty()),
            "the client made no progress before HUP {hup}"
        );
        s.signal_and_wait_delivery(Signal::SIGHUP);
        let t = Instant::now();
        let mut now = BTreeSet::new();
        let replaced = poll_until(Duration::from_secs(10), || {
            now = worker_pids(&s);
            now.len() == N && now.is_disjoint(&generation)
        });
        assert!(replaced, "HUP {hup}: workers {now:?} {:?} later (previous generation {generation:?})", t.elapsed());
        generation = now;
    }
    let at = done.load(Ordering::Relaxed);
    poll_until(IO_TIMEOUT, || done.load(Ordering::Relaxed) >= at + 20 || !errors.lock().unwrap().is_empty());
    stop.store(true, Ordering::Relaxed);
    hammer.join().expect("client thread");
    let errors = errors.lock().unwrap().clone();
    let total = done.load(Ordering::Relaxed);
    assert!(errors.is_empty(), "{} of {total} connections failed across 10 HUPs: {errors:#?}", errors.len());
    let last = worker_pids(&s);
    assert!(last.is_disjoint(&original), "original workers {original:?} still there: {last:?}");
    assert_eq!(last.len(), N, "workers after 10 HUPs: {last:?}");
    assert!(poll_until(Duration::from_secs(1), || s.zombies().is_empty()), "zombies: {:?}", s.zombies());
    eprintln!("10 HUPs: {total} connections, none failed");
}

#[test]
fn hup_ten_times_under_load_fails_no_connection() {
    hup_under_load(&["--workers", "2", "--worker", "event"]);
}

#[test]
fn hup_ten_times_under_load_fails_no_connection_reuseport() {
    hup_under_load(&["--workers", "2", "--worker", "event", "--reuseport"]);
}

#[test]
fn hup_ten_times_under_load_fails_no_connection_serial() {
    hup_under_load(&["--workers", "2", "--worker", "serial"]);
}

// ----- 6. --worker-timeout --------------------------------------------------------

#[test]
fn stopped_worker_is_replaced_after_worker_timeout() {
    const N: usize = 2;
    let s = start(&["--workers", "2", "--worker", "event", "--worker-timeout", "2", "--metrics", "127.0.0.1:0"]);
    wait_serving(&s, N);
    let maddr = s.metrics_addr();
    let deaths_before = scrape(maddr).value("switchyard_worker_deaths_total");
    let victim = workers(&s)[0];
    let stopped_at = Instant::now();
    signal_pid(victim.pid, Signal::SIGSTOP).expect("SIGSTOP a worker");
    let bound = Duration::from_secs(2 + 3);
    let replaced = poll_until(bound, || {
        let w = worker_pids(&s);
        !still_alive(&victim) && w.len() == N && !w.contains(&victim.pid)
    });
    let took = stopped_at.elapsed();
    assert!(
        replaced,
        "{took:?} after SIGSTOP of worker {}: now {:?}, workers {:?}, master log about it: {:#?}",
        victim.pid,
        procfs::proc_stat(victim.pid),
        workers(&s),
        s.log().lines().filter(|l| l.contains(&format!("worker {}", victim.pid))).collect::<Vec<_>>()
    );
    // Silent means no heartbeat for 2 s; its last one was at most 1 s
    // before the stop.
    assert!(took >= Duration::from_secs(1), "worker {} replaced after only {took:?}", victim.pid);
    let m = scrape(maddr);
    let deaths = m.value("switchyard_worker_deaths_total");
    assert!(deaths > deaths_before, "deaths_total {deaths_before} before, {deaths} after\n{}", m.text);
    assert_eq!(m.value("switchyard_workers"), N as f64, "{}", m.text);
    assert!(s.log_line_containing("--worker-timeout").is_some(), "no log line about the worker timeout");
    assert!(poll_until(Duration::from_secs(1), || s.zombies().is_empty()), "zombies: {:?}", s.zombies());
    let mut c = s.connect();
    roundtrip(&mut c, b"after the timeout").unwrap_or_else(|e| panic!("round trip: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("close: {e}"));
    eprintln!("stopped worker {} replaced after {took:?}", victim.pid);
}

// ----- 7. --max-requests --------------------------------------------------------

#[test]
fn max_requests_recycles_workers_without_failing_a_connection() {
    const N: usize = 2;
    const CONNS: u64 = 200;
    const MOST: u64 = 20 + 5;
    let s = start(&[
        "--workers",
        "2",
        "--worker",
        "event",
        "--max-requests",
        "20",
        "--max-requests-jitter",
        "5",
        "--metrics",
        "127.0.0.1:0",
    ]);
    assert!(poll_until(START_TIMEOUT, || workers(&s).len() == N), "workers: {:?}", workers(&s));
    let original = worker_pids(&s);
    let maddr = s.metrics_addr();
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..CONNS {
        if let Err(e) = one_shot(s.addr, &message(i, 1)) {
            failures.push(format!("connection {i}: {e}"));
            if failures.len() >= 3 {
                break;
            }
        }
    }
    let took = started.elapsed();
    assert!(failures.is_empty(), "with --max-requests: {failures:#?}");
    // Steady state: no worker draining any more.
    let mut m = scrape(maddr);
    poll_every(Duration::from_millis(20), SETTLE_TIMEOUT, || {
        m = scrape(maddr);
        m.value("switchyard_workers") == N as f64 && workers(&s).len() == N
    });
    let spawns = m.value("switchyard_worker_spawns_total");
    let deaths = m.value("switchyard_worker_deaths_total");
    // Each worker serves at most 25 connections: 200 need at least 8.
    let least = (CONNS / MOST) as f64;
    assert!(spawns >= least, "spawns_total {spawns} < {least} for {CONNS} connections\n{}", m.text);
    assert!(deaths >= spawns - N as f64, "deaths_total {deaths}, spawns_total {spawns}\n{}", m.text);
    assert_eq!(m.value("switchyard_connections_accepted_total"), CONNS as f64, "\n{}", m.text);
    for (pid, n) in m.per_pid("switchyard_worker_connections_accepted_total") {
        assert!(n <= MOST as f64, "worker {pid} accepted {n} connections, more than {MOST}");
    }
    let now = worker_pids(&s);
    assert_ne!(now, original, "no worker was recycled");
    assert_eq!(now.len(), N, "workers: {now:?}");
    assert!(poll_until(Duration::from_secs(1), || s.zombies().is_empty()), "zombies: {:?}", s.zombies());
    eprintln!(
        "--max-requests 20 --max-requests-jitter 5: {CONNS} connections in {took:?}, {spawns} spawns, {deaths} deaths"
    );
}

// ----- 8. metrics under load ------------------------------------------------------

#[test]
fn metrics_scrape_under_load_is_consistent() {
    const N: usize = 3;
    const CLIENTS: u64 = 4;
    const SCRAPES: u32 = 300;
    let s = start(&["--workers", "3", "--worker", "event", "--metrics", "127.0.0.1:0"]);
    wait_serving(&s, N);
    let maddr = s.metrics_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let (stop, done, errors, addr) = (stop.clone(), done.clone(), errors.clone(), s.addr);
        clients.push(thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 200_000 {
                match one_shot(addr, &message(id, i)) {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(format!("client {id} connection {i}: {e}"));
                        return;
                    }
                }
                i += 1;
            }
        }));
    }
    let progress =
        |n: u64| poll_until(IO_TIMEOUT, || done.load(Ordering::Relaxed) >= n || !errors.lock().unwrap().is_empty());
    assert!(progress(50), "clients made no progress");
    let mut last_accepted = 0.0;
    // The first successful connection of wait_serving counts too.
    let mut inconsistent = Vec::new();
    for round in 0..SCRAPES {
        let completed = done.load(Ordering::Relaxed) + 1;
        let m = scrape(maddr);
        let accepted = m.value("switchyard_connections_accepted_total");
        let per = m.per_pid("switchyard_worker_connections_accepted_total");
        let sum: f64 = per.values().sum();
        if accepted != sum {
            inconsistent.push(format!("scrape {round}: accepted_total {accepted}, per-worker sum {sum} ({per:?})"));
        }
        assert_eq!(m.value("switchyard_workers"), N as f64, "workers gauge\n{}", m.text);
        assert!(accepted >= completed as f64, "accepted_total {accepted} < {completed} completed connections");
        assert!(accepted >= last_accepted, "accepted_total went from {last_accepted} down to {accepted}");
        last_accepted = accepted;
        let pids: BTreeSet<i32> = per.keys().copied().collect();
        assert_eq!(pids, worker_pids(&s), "per-worker pids of the metrics vs /proc\n{}", m.text);
        for name in [
            "switchyard_worker_connections_active",
            "switchyard_worker_bytes_received_total",
            "switchyard_worker_bytes_sent_total",
            "switchyard_worker_accept_errors_total",
            "switchyard_worker_heartbeat_age_seconds",
        ] {
            let got: BTreeSet<i32> = m.per_pid(name).keys().copied().collect();
            assert_eq!(got, pids, "{name} pids\n{}", m.text);
        }
        for (pid, age) in m.per_pid("switchyard_worker_heartbeat_age_seconds") {
            assert!((0.0..=3.0).contains(&age), "worker {pid} heartbeat age {age} s\n{}", m.text);
        }
        for name in [
            "switchyard_connections_active",
            "switchyard_bytes_received_total",
            "switchyard_bytes_sent_total",
            "switchyard_accept_errors_total",
        ] {
            m.value(name);
        }
        assert_eq!(m.value("switchyard_worker_spawns_total"), N as f64, "\n{}", m.text);
        assert_eq!(m.value("switchyard_worker_deaths_total"), 0.0, "\n{}", m.text);
        assert!(m.value("switchyard_uptime_seconds") > 0.0, "\n{}", m.text);
        assert!(progress(completed + 10), "clients stalled");
    }
    let (code, _, body) = http_get(maddr, "/nope").unwrap_or_else(|e| panic!("GET /nope: {e}"));
    assert_eq!(code, 404, "GET /nope answered {code}: {body}");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "client errors while scraping: {errors:#?}");
    assert!(
        inconsistent.is_empty(),
        "accepted_total is not the sum of the per-worker values in {} of {SCRAPES} scrapes, first ones: {:#?}",
        inconsistent.len(),
        &inconsistent[..inconsistent.len().min(5)]
    );
}

// ----- 9. workers dying at boot ------------------------------------------------------

/// An address-space limit (`ulimit -v 32000`: the master needs about
/// 5 MB) lets the master run but makes a `--worker pool --threads 100000`
/// worker fail every time while it starts its threads, before it serves
/// anything. The master must give up and exit non-zero instead of
/// respawning forever: the test fails once 25 workers died (with a
/// backoff between boot failures a correct master gives up long before),
/// or after 10 s.
#[test]
fn workers_dying_at_boot_make_the_master_exit_nonzero() {
    const DEATHS: usize = 25;
    let mut s = Launch::new(&PREFORK, &["--workers", "1", "--worker", "pool", "--threads", "100000"])
        .ulimit("-v 32000")
        .start();
    let deaths = |s: &Server| {
        let log = s.log();
        log.lines()
            .filter(|l| l.contains("worker ") && (l.contains(" exited with ") || l.contains(" killed by ")))
            .count()
    };
    let bound = Duration::from_secs(10);
    let started = Instant::now();
    let mut status = None;
    poll_every(Duration::from_millis(20), bound, || {
        status = s.wait_exit(Duration::ZERO);
        status.is_some() || deaths(&s) >= DEATHS
    });
    let status = status.unwrap_or_else(|| {
        panic!(
            "master still running {:?} after start, {} workers died at boot and it keeps respawning them",
            started.elapsed(),
            deaths(&s)
        )
    });
    assert!(!status.success(), "master exited with {status} after its workers failed to boot");
}

// ----- balance ---------------------------------------------------------------------

/// 10,000 short connections from `threads` threads; per-worker accepted
/// counts.
fn balance(extra: &[&str], threads: u64) -> (BTreeMap<i32, f64>, Duration) {
    const CONNS: u64 = 10_000;
    let mut args = vec!["--workers", "2", "--worker", "event", "--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let s = start(&args);
    wait_serving(&s, 2);
    let maddr = s.metrics_addr();
    let before = scrape(maddr).per_pid("switchyard_worker_connections_accepted_total");
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let addr = s.addr;
            thread::spawn(move || -> Result<(), String> {
                for i in 0..CONNS / threads {
                    one_shot(addr, b"balance").map_err(|e| format!("thread {t} connection {i}: {e}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread").unwrap_or_else(|e| panic!("{e}"));
    }
    let took = started.elapsed();
    let after = scrape(maddr).per_pid("switchyard_worker_connections_accepted_total");
    let per: BTreeMap<i32, f64> = after.iter().map(|(p, n)| (*p, n - before.get(p).copied().unwrap_or(0.0))).collect();
    assert_eq!(per.values().sum::<f64>(), CONNS as f64, "per-worker counts {per:?}");
    (per, took)
}

#[test]
#[ignore = "prints the figures for the docs: cargo test --test e2e prefork::balance_report -- --ignored --nocapture"]
fn balance_report() {
    for (label, extra, threads) in [
        ("shared listener", &[][..], 4),
        ("--reuseport", &["--reuseport"][..], 4),
        ("shared listener", &[][..], 1),
        ("--reuseport", &["--reuseport"][..], 1),
    ] {
        let (per, took) = balance(extra, threads);
        let max = per.values().copied().fold(f64::MIN, f64::max);
        let min = per.values().copied().fold(f64::MAX, f64::min);
        eprintln!(
            "balance, 2 event workers, {label}, {threads} client thread(s): per worker {:?}, max/min {:.2}, {took:?}",
            per.values().collect::<Vec<_>>(),
            max / min
        );
        // One client at a time leaves a shared EPOLLEXCLUSIVE listener's
        // first idle worker taking nearly everything (seen: 9,955 to 45):
        // figures only. With 4 clients both workers must get some.
        if threads > 1 {
            assert!(per.values().all(|&n| n > 0.0), "{label}: a worker got no connection: {per:?}");
        }
    }
}
