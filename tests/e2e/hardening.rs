//! Hardening: what the server does when the machine or the operator pushes
//! back. Load shedding when fds run out (clients are closed at once instead
//! of hanging in the backlog), per-address limits, slow clients that hold
//! every worker, and dropping root privileges after binding.
//!
//! The privilege tests need root: they run where the tests were built and
//! run as root (CI), and show as ignored, "needs root", elsewhere (the
//! `as_root` cfg comes from the root package's `build.rs`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::modes::{Mode, EVENT, FORK, POOL, PREFORK_SERIAL, REACTOR, SERIAL, THREAD, URING};
use crate::support::net::{close_cleanly, describe_mismatch, roundtrip, try_connect_from, upper};
use crate::support::process::{is_root, poll_every};
use crate::support::procfs;
use crate::support::server::{run_to_exit, Launch, Server};

/// How one client fared against a server that is out of fds.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Its byte came back uppercased.
    Served,
    /// The server closed it (EOF or reset) without serving it.
    Shed,
    /// Nothing happened within the bound: it would have hung.
    Hung,
}

fn fate(s: &mut TcpStream, limit: Duration) -> (Fate, Duration) {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 1];
    let f = match s.read(&mut b) {
        Ok(1) if b[0] == b'Q' => Fate::Served,
        Ok(1) => panic!("wrong echo byte {:?}", b[0]),
        Ok(_) => Fate::Shed,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Fate::Hung,
        Err(_) => Fate::Shed, // reset
    };
    (f, start.elapsed())
}

/// With 64 fds the server can hold some 50 connections; of 150 clients the
/// rest must be closed at once (load shedding through the reserve fd), not
/// left waiting in the backlog. Every client is either served or closed
/// within 0.5 s (measured: at most 0.10 s, one accept back-off); none hangs
/// for the 4 s bound.
fn sheds_load_when_out_of_fds(mode: &Mode) {
    let server = Launch::new(mode, &[]).nofile(64).start();
    let mut clients = Vec::new();
    for i in 0..150 {
        match TcpStream::connect_timeout(&server.addr, Duration::from_secs(2)) {
            Ok(mut s) => {
                s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                // A shed connection may already be reset: that is an outcome.
                let _ = s.write_all(b"q");
                clients.push(s);
            }
            Err(e) => panic!("connect {i}: {e}"),
        }
    }
    let mut served = 0;
    let mut shed = 0;
    let mut slowest = Duration::ZERO;
    for (i, c) in clients.iter_mut().enumerate() {
        let (f, took) = fate(c, Duration::from_secs(4));
        match f {
            Fate::Served => served += 1,
            Fate::Shed => {
                shed += 1;
                slowest = slowest.max(took);
            }
            Fate::Hung => panic!(
                "{}: client {i} neither served nor closed within 4 s ({served} served, {shed} shed so far)\n{}",
                mode.name,
                server.log()
            ),
        }
    }
    println!("{}: {served} served, {shed} shed; slowest close {slowest:?}", mode.name);
    assert!(served >= 10, "{}: only {served} clients served with 64 fds", mode.name);
    assert!(shed >= 50, "{}: only {shed} of 150 clients shed with 64 fds", mode.name);
    assert!(slowest < Duration::from_millis(500), "{}: a shed client waited {slowest:?}", mode.name);
    // stderr is drained by a thread: wait (bounded) for the line to arrive.
    let logged =
        poll_every(Duration::from_millis(20), Duration::from_secs(5), || server.log().contains("out of fds: closed"));
    assert!(logged, "no shedding logged:\n{}", server.log());
    // Once the clients leave, the server serves again.
    drop(clients);
    let ok = poll_every(Duration::from_millis(50), Duration::from_secs(10), || {
        let mut s = match TcpStream::connect_timeout(&server.addr, Duration::from_secs(1)) {
            Ok(s) => s,
            Err(_) => return false,
        };
        s.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
        s.write_all(b"q").is_ok() && fate(&mut s, Duration::from_secs(1)).0 == Fate::Served
    });
    assert!(ok, "{}: not serving again after the clients left", mode.name);
}

#[test]
fn event_sheds_load_when_out_of_fds() {
    sheds_load_when_out_of_fds(&EVENT);
}

#[test]
fn thread_sheds_load_when_out_of_fds() {
    sheds_load_when_out_of_fds(&THREAD);
}

#[test]
fn reactor_sheds_load_when_out_of_fds() {
    sheds_load_when_out_of_fds(&REACTOR);
}

#[test]
fn uring_sheds_load_when_out_of_fds() {
    sheds_load_when_out_of_fds(&URING);
}

/// `--user nobody`: bound as root, then every uid and gid is nobody's, no
/// supplementary group but nobody's, no capability left (so setuid(0)
/// fails), and it still serves.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn user_flag_drops_root_for_good() {
    assert_root();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    for mode in [EVENT, THREAD] {
        let server = Server::start(&mode, &["--user", "nobody"]);
        let ids = |key: &str| procfs::status_ids(server.pid, key);
        assert_eq!(ids("Uid:"), vec![uid; 4], "{}: real, effective, saved, fs uid", mode.name);
        assert_eq!(ids("Gid:"), vec![gid; 4], "{}: real, effective, saved, fs gid", mode.name);
        assert_eq!(ids("Groups:"), vec![gid], "{}: supplementary groups", mode.name);
        assert_eq!(procfs::status_line(server.pid, "CapEff:"), "CapEff:\t0000000000000000", "{}", mode.name);
        assert_eq!(procfs::status_line(server.pid, "CapPrm:"), "CapPrm:\t0000000000000000", "{}", mode.name);
        let mut c = server.connect();
        roundtrip(&mut c, b"dropped privileges").unwrap();
    }
}

#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn root_without_user_flag_is_warned_about() {
    assert_root();
    let server = Server::start(&EVENT, &[]);
    let warned =
        poll_every(Duration::from_millis(20), Duration::from_secs(5), || server.log().contains("running as root"));
    assert!(warned, "no warning about running as root:\n{}", server.log());
}

/// A root-only test that is not ignored was built as root: it must also
/// run as root, not pass without looking.
fn assert_root() {
    assert!(
        is_root(),
        "built as root (cfg as_root) but run as uid {}: rebuild the tests as this user",
        nix::unistd::Uid::effective()
    );
}

#[test]
fn unknown_user_is_an_error() {
    let done = run_to_exit(&["--listen", "127.0.0.1:0", "--user", "no-such-user-here"]);
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    assert!(done.stderr.contains("no user named no-such-user-here"), "{done:?}");
}

/// A client socket from `source` (any 127.0.0.0/8 address) to `server`.
fn connect_from(source: &str, server: SocketAddr) -> TcpStream {
    try_connect_from(source.parse().unwrap(), server).unwrap_or_else(|e| panic!("connect from {source}: {e}"))
}

/// `--max-conns-per-ip 3`: three connections from 127.0.0.1 are served, the
/// fourth is closed at once (within 0.25 s; measured: under 0.1 ms), another address is unaffected, and closing one
/// of the three makes room again.
fn limits_connections_per_address(mode: &Mode) {
    let server = Server::start(mode, &["--max-conns-per-ip", "3"]);
    let mut three: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", server.addr)).collect();
    for (i, c) in three.iter_mut().enumerate() {
        roundtrip(c, format!("allowed {i}").as_bytes()).unwrap();
    }
    let mut fourth = connect_from("127.0.0.1", server.addr);
    let _ = fourth.write_all(b"q");
    let (f, took) = fate(&mut fourth, Duration::from_secs(3));
    println!("{}: the 4th connection from one address: {f:?} after {took:?}", mode.name);
    assert_eq!(f, Fate::Shed, "{}: the 4th connection from one address was not closed", mode.name);
    assert!(took < AT_ONCE, "{}: the 4th connection was closed only after {took:?}", mode.name);
    let mut other = connect_from("127.0.0.2", server.addr);
    roundtrip(&mut other, b"another address").unwrap();
    for c in three.iter_mut() {
        roundtrip(c, b"still served").unwrap();
    }
    close_cleanly(&mut three.pop().unwrap()).unwrap();
    let again = poll_every(Duration::from_millis(20), Duration::from_secs(5), || {
        let mut c = connect_from("127.0.0.1", server.addr);
        roundtrip(&mut c, b"room again").is_ok()
    });
    assert!(again, "{}: no room for a new connection after one of the three closed", mode.name);
}

#[test]
fn per_ip_limit_thread() {
    limits_connections_per_address(&THREAD);
}

#[test]
fn per_ip_limit_pool() {
    limits_connections_per_address(&POOL);
}

#[test]
fn per_ip_limit_fork() {
    limits_connections_per_address(&FORK);
}

#[test]
fn per_ip_limit_event() {
    limits_connections_per_address(&EVENT);
}

#[test]
fn per_ip_limit_reactor() {
    limits_connections_per_address(&REACTOR);
}

#[test]
fn per_ip_limit_uring() {
    limits_connections_per_address(&URING);
}

/// "At once": measured under 0.2 ms; anything a timer does takes seconds.
const AT_ONCE: Duration = Duration::from_millis(250);

/// The earliest and latest a normal client behind slow clients that hold
/// every worker may be served (slowloris: the first slow client is cut by
/// `--idle-timeout 2`) or refused (fast trickle: `--queue-timeout` 2 s),
/// after connecting. Measured: served 2.000-2.014 s, refused 2.001-2.114 s.
const BEHIND_EARLIEST: Duration = Duration::from_millis(1900);
const BEHIND_LATEST: Duration = Duration::from_millis(2500);

/// Slow clients that hold every worker of a server (`slots` of them) and
/// trickle one byte each every `period`, for at most 12 s.
struct Loris {
    stop: Arc<AtomicBool>,
    trickler: Option<thread::JoinHandle<Vec<Slow>>>,
}

/// One slow client: its socket and every byte it sent that the server has
/// not echoed yet (each echo is read back in full before the next write of
/// the test, or at the end).
struct Slow {
    socket: TcpStream,
    unanswered: Vec<u8>,
}

impl Loris {
    fn start(server: &Server, slots: usize, period: Duration) -> Loris {
        let mut loris: Vec<Slow> = (0..slots)
            .map(|i| {
                let mut socket = server.connect();
                roundtrip(&mut socket, format!("l{i}").as_bytes()).unwrap(); // it holds a worker now
                Slow { socket, unanswered: Vec::new() }
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let trickler = {
            let stop = stop.clone();
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(12);
                let mut n = 0u8;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    // Letters and other bytes in turn, so the echo shows what was uppercased.
                    let b = [b'a' + n % 26, b'0' + n % 10, b'x'][usize::from(n % 3)];
                    n = n.wrapping_add(1);
                    for c in loris.iter_mut() {
                        if c.socket.write_all(&[b]).is_ok() {
                            c.unanswered.push(b);
                        }
                    }
                    let next = Instant::now() + period;
                    while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                        thread::sleep(Duration::from_millis(50)); // pacing the trickle
                    }
                }
                loris
            })
        };
        Loris { stop, trickler: Some(trickler) }
    }

    /// Stops trickling; the slow clients, still open.
    fn stop(mut self) -> Vec<Slow> {
        self.stop.store(true, Ordering::Relaxed);
        self.trickler.take().unwrap().join().unwrap()
    }
}

/// Slowloris: `slots` clients take every worker and trickle one byte every
/// 3 s; with `--idle-timeout 2` each is cut after 2 s of silence, so a
/// normal client that queued behind them is served 1.9-2.5 s after
/// connecting: never hung, and not before (it waited behind them). (`--queue-timeout 5` keeps the queue-wait
/// limit out of this test: see `fast_trickle_...` for that.)
fn slowloris_does_not_starve(mode: &Mode, extra: &[&str], slots: usize) {
    let args: Vec<&str> = extra.iter().copied().chain(["--idle-timeout", "2", "--queue-timeout", "5"]).collect();
    let server = Server::start(mode, &args);
    let loris = Loris::start(&server, slots, Duration::from_secs(3));
    let connected = Instant::now();
    let mut normal = server.connect();
    normal.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let served = roundtrip(&mut normal, b"a normal client");
    let waited = connected.elapsed();
    loris.stop();
    served.unwrap_or_else(|e| panic!("{}: normal client not served behind {slots} slow clients: {e}", mode.name));
    println!("{}: normal client served after {waited:?} behind {slots} slow clients", mode.name);
    assert!(waited <= BEHIND_LATEST, "{}: served only after {waited:?} (idle timeout 2 s)", mode.name);
    assert!(
        waited >= BEHIND_EARLIEST,
        "{}: served after {waited:?}, before any of the {slots} slow clients was cut: they did not hold every worker",
        mode.name
    );
}

/// Slow clients trickling *faster* than the idle timeout are never cut, and
/// hold every worker. Normal clients behind them (`waiting` of them) must not
/// hang: with `--idle-timeout 2` (and so the default `--queue-timeout 2`)
/// each is refused, its connection closed, 1.9-2.5 s after connecting:
/// never hung, and not before the limit. The slow clients keep being served
/// meanwhile: every byte they trickled comes back, uppercased, in order.
fn fast_trickle_gets_normal_clients_refused_not_hung(mode: &Mode, extra: &[&str], slots: usize, waiting: usize) {
    let args: Vec<&str> = extra.iter().copied().chain(["--idle-timeout", "2"]).collect();
    let server = Server::start(mode, &args);
    let loris = Loris::start(&server, slots, Duration::from_millis(500));
    let connected = Instant::now();
    let mut normal: Vec<TcpStream> = (0..waiting).map(|_| server.connect()).collect();
    for c in &mut normal {
        c.write_all(b"q").unwrap();
    }
    let fates: Vec<(Fate, Duration)> = normal
        .iter_mut()
        .map(|c| {
            let (f, _) = fate(c, Duration::from_secs(3));
            (f, connected.elapsed())
        })
        .collect();
    let mut loris = loris.stop();
    println!("{}: {waiting} normal client(s) behind {slots} fast-trickling clients: {fates:?}", mode.name);
    // Closed deliberately, and said so (not by a crash or another limit).
    let said = server.wait_log_line("over --queue-timeout", Duration::from_secs(2));
    assert!(said.is_some(), "{}: no refusal logged; log:\n{}", mode.name, server.log());
    for (f, waited) in fates {
        assert_eq!(f, Fate::Shed, "{}: a normal client behind busy workers must be refused, not {f:?}", mode.name);
        assert!(waited <= BEHIND_LATEST, "{}: refused only after {waited:?}", mode.name);
        assert!(waited >= BEHIND_EARLIEST, "{}: refused after {waited:?}, before the limit", mode.name);
    }
    // The slow clients were never disturbed: one last byte, then the echo of
    // everything they trickled, exactly.
    for (i, c) in loris.iter_mut().enumerate() {
        // Written at once, then every 0.5 s while the normal clients waited 2 s.
        assert!(c.unanswered.len() >= 3, "{}: slow client {i} trickled only {:?}", mode.name, c.unanswered);
        let mut sent = std::mem::take(&mut c.unanswered);
        sent.push(b'!');
        c.socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.socket.write_all(b"!").unwrap_or_else(|e| panic!("{}: slow client {i}: {e}", mode.name));
        let mut got = vec![0u8; sent.len()];
        c.socket.read_exact(&mut got).unwrap_or_else(|e| {
            panic!("{}: slow client {i}, reading the echo of its {} bytes: {e}", mode.name, sent.len())
        });
        let want = upper(&sent);
        assert!(got == want, "{}: slow client {i}: {}", mode.name, describe_mismatch(&want, &got));
    }
}

#[test]
fn slowloris_pool() {
    slowloris_does_not_starve(&POOL, &["--threads", "4", "--queue", "8"], 4);
}

#[test]
fn slowloris_serial() {
    slowloris_does_not_starve(&SERIAL, &[], 1);
}

#[test]
fn slowloris_prefork_serial_workers() {
    slowloris_does_not_starve(&Mode { args: &["--workers", "3", "--worker", "serial"], ..PREFORK_SERIAL }, &[], 3);
}

#[test]
fn fast_trickle_serial() {
    fast_trickle_gets_normal_clients_refused_not_hung(&SERIAL, &[], 1, 2);
}

#[test]
fn fast_trickle_pool() {
    fast_trickle_gets_normal_clients_refused_not_hung(&POOL, &["--threads", "3", "--queue", "8"], 3, 2);
}

/// With a queue-wait limit the pool's queue is the only waiting room: a
/// client that finds it full is refused at once, and the queued one within
/// the limit. None waits first in the backlog and then again in the queue.
#[test]
fn fast_trickle_pool_full_queue() {
    let server = Server::start(&POOL, &["--threads", "2", "--queue", "1", "--idle-timeout", "2"]);
    let loris = Loris::start(&server, 2, Duration::from_millis(500));
    let connected = Instant::now();
    let mut queued = server.connect();
    queued.write_all(b"q").unwrap();
    // The acceptor has taken `queued` once a metrics-free probe can tell:
    // the next client finds the queue full and is refused at once.
    let mut busy = server.connect();
    let _ = busy.write_all(b"q");
    let (f_busy, t_busy) = fate(&mut busy, Duration::from_secs(3));
    let (f_queued, _) = fate(&mut queued, Duration::from_secs(3));
    let t_queued = connected.elapsed();
    loris.stop();
    println!("pool, full queue: the client finding it full {f_busy:?} after {t_busy:?}, the queued one {f_queued:?} after {t_queued:?}");
    assert_eq!((f_busy, f_queued), (Fate::Shed, Fate::Shed), "both refused");
    assert!(t_busy < AT_ONCE, "refused at once when the queue is full, not after {t_busy:?}");
    assert!(
        (BEHIND_EARLIEST..=BEHIND_LATEST).contains(&t_queued),
        "the queued client is refused at the 2 s limit, not after {t_queued:?}"
    );
}

#[test]
fn fast_trickle_prefork_serial_workers() {
    fast_trickle_gets_normal_clients_refused_not_hung(
        &Mode { args: &["--workers", "2", "--worker", "serial"], ..PREFORK_SERIAL },
        &[],
        2,
        2,
    );
}

#[test]
fn fast_trickle_thread_at_max_conns() {
    fast_trickle_gets_normal_clients_refused_not_hung(&THREAD, &["--max-conns", "2"], 2, 2);
}

#[test]
fn fast_trickle_fork_at_max_children() {
    fast_trickle_gets_normal_clients_refused_not_hung(&FORK, &["--max-children", "2"], 2, 2);
}

#[test]
fn fast_trickle_event_at_max_conns() {
    fast_trickle_gets_normal_clients_refused_not_hung(&EVENT, &["--max-conns", "2"], 2, 2);
}

#[test]
fn fast_trickle_reactor_at_max_conns() {
    fast_trickle_gets_normal_clients_refused_not_hung(&REACTOR, &["--max-conns", "2"], 2, 2);
}

#[test]
fn fast_trickle_uring_at_max_conns() {
    fast_trickle_gets_normal_clients_refused_not_hung(&URING, &["--max-conns", "2"], 2, 2);
}
