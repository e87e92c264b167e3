//! Hardening: what the server does when the machine or the operator pushes
//! back. Load shedding when fds run out (clients are closed at once instead
//! of hanging in the backlog), and dropping root privileges after binding.

mod support;

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{poll_every, Mode, Server};

const EVENT: Mode = Mode { name: "event", concurrent: true, forks: false, args: &[] };
const THREAD: Mode = Mode { name: "thread", concurrent: true, forks: false, args: &[] };
const REACTOR: Mode = Mode { name: "reactor", concurrent: true, forks: false, args: &["--threads", "2"] };

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
/// within a second; none hangs for the 4 s bound.
fn sheds_load_when_out_of_fds(mode: &Mode) {
    let server = Server::start_with_nofile(mode, &[], 64);
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
    assert!(slowest < Duration::from_secs(1), "{}: a shed client waited {slowest:?}", mode.name);
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

fn status_line(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    s.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} not in status")).to_string()
}

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// `--user nobody`: bound as root, then every uid and gid is nobody's, no
/// supplementary group but nobody's, no capability left (so setuid(0)
/// fails), and it still serves.
#[test]
fn user_flag_drops_root_for_good() {
    if !is_root() {
        eprintln!("skipped: privilege drop needs the test to run as root");
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody").unwrap().expect("user nobody");
    let (uid, gid) = (nobody.uid.as_raw(), nobody.gid.as_raw());
    for mode in [EVENT, THREAD] {
        let server = Server::start(&mode, &["--user", "nobody"]);
        let ids = |key: &str| -> Vec<u32> {
            status_line(server.pid, key).split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect()
        };
        assert_eq!(ids("Uid:"), vec![uid; 4], "{}: real, effective, saved, fs uid", mode.name);
        assert_eq!(ids("Gid:"), vec![gid; 4], "{}: real, effective, saved, fs gid", mode.name);
        assert_eq!(ids("Groups:"), vec![gid], "{}: supplementary groups", mode.name);
        assert_eq!(status_line(server.pid, "CapEff:"), "CapEff:\t0000000000000000", "{}", mode.name);
        assert_eq!(status_line(server.pid, "CapPrm:"), "CapPrm:\t0000000000000000", "{}", mode.name);
        let mut c = server.connect();
        support::roundtrip(&mut c, b"dropped privileges").unwrap();
    }
}

#[test]
fn root_without_user_flag_is_warned_about() {
    if !is_root() {
        eprintln!("skipped: the warning is for servers started as root");
        return;
    }
    let server = Server::start(&EVENT, &[]);
    let warned =
        poll_every(Duration::from_millis(20), Duration::from_secs(5), || server.log().contains("running as root"));
    assert!(warned, "no warning about running as root:\n{}", server.log());
}

#[test]
fn unknown_user_is_an_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_server"))
        .args(["--listen", "127.0.0.1:0", "--user", "no-such-user-here"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user named no-such-user-here"), "{out:?}");
}

/// A client socket from `source` (any 127.0.0.0/8 address) to `server`.
fn connect_from(source: &str, server: std::net::SocketAddr) -> TcpStream {
    support::try_connect_from(source.parse().unwrap(), server).unwrap_or_else(|e| panic!("connect from {source}: {e}"))
}

/// `--max-conns-per-ip 3`: three connections from 127.0.0.1 are served, the
/// fourth is closed at once, another address is unaffected, and closing one
/// of the three makes room again.
fn limits_connections_per_address(mode: &Mode) {
    let server = Server::start(mode, &["--max-conns-per-ip", "3"]);
    let mut three: Vec<TcpStream> = (0..3).map(|_| connect_from("127.0.0.1", server.addr)).collect();
    for (i, c) in three.iter_mut().enumerate() {
        support::roundtrip(c, format!("allowed {i}").as_bytes()).unwrap();
    }
    let mut fourth = connect_from("127.0.0.1", server.addr);
    let _ = fourth.write_all(b"q");
    let (f, took) = fate(&mut fourth, Duration::from_secs(3));
    assert_eq!(f, Fate::Shed, "{}: the 4th connection from one address was not closed", mode.name);
    assert!(took < Duration::from_secs(1), "{}: the 4th connection was closed only after {took:?}", mode.name);
    let mut other = connect_from("127.0.0.2", server.addr);
    support::roundtrip(&mut other, b"another address").unwrap();
    for c in three.iter_mut() {
        support::roundtrip(c, b"still served").unwrap();
    }
    support::close_cleanly(&mut three.pop().unwrap()).unwrap();
    let again = poll_every(Duration::from_millis(20), Duration::from_secs(5), || {
        let mut c = connect_from("127.0.0.1", server.addr);
        support::roundtrip(&mut c, b"room again").is_ok()
    });
    assert!(again, "{}: no room for a new connection after one of the three closed", mode.name);
}

#[test]
fn per_ip_limit_thread() {
    limits_connections_per_address(&THREAD);
}

#[test]
fn per_ip_limit_pool() {
    limits_connections_per_address(&Mode { name: "pool", concurrent: true, forks: false, args: &[] });
}

#[test]
fn per_ip_limit_fork() {
    limits_connections_per_address(&Mode { name: "fork", concurrent: true, forks: true, args: &[] });
}

#[test]
fn per_ip_limit_event() {
    limits_connections_per_address(&EVENT);
}

#[test]
fn per_ip_limit_reactor() {
    limits_connections_per_address(&REACTOR);
}

/// Slowloris: `slots` clients take every worker and trickle one byte every
/// 3 s; with `--idle-timeout 2` each is cut after 2 s of silence, so a
/// normal client that queued behind them is served within idle timeout + 1 s
/// of connecting, never hung.
fn slowloris_does_not_starve(mode: &Mode, slots: usize) {
    let server = Server::start(mode, &["--idle-timeout", "2"]);
    let mut loris: Vec<TcpStream> = (0..slots).map(|_| server.connect()).collect();
    for (i, c) in loris.iter_mut().enumerate() {
        support::roundtrip(c, format!("l{i}").as_bytes()).unwrap(); // each holds a worker now
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // One byte per client every 3 s, for at most 12 s.
            for _ in 0..4 {
                for c in loris.iter_mut() {
                    let _ = c.write_all(b"x");
                }
                for _ in 0..30 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100)); // pacing the trickle
                }
            }
        })
    };
    let connected = Instant::now();
    let mut normal = server.connect();
    normal.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let served = support::roundtrip(&mut normal, b"a normal client");
    let waited = connected.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickler.join().unwrap();
    served.unwrap_or_else(|e| panic!("{}: normal client not served behind {slots} slow clients: {e}", mode.name));
    println!("{}: normal client served after {waited:?} behind {slots} slow clients", mode.name);
    assert!(waited <= Duration::from_secs(3), "{}: served only after {waited:?} (idle timeout 2 s)", mode.name);
}

#[test]
fn slowloris_pool() {
    slowloris_does_not_starve(
        &Mode { name: "pool", concurrent: true, forks: false, args: &["--threads", "4", "--queue", "8"] },
        4,
    );
}

#[test]
fn slowloris_serial() {
    slowloris_does_not_starve(&Mode { name: "serial", concurrent: false, forks: false, args: &[] }, 1);
}

#[test]
fn slowloris_prefork_serial_workers() {
    slowloris_does_not_starve(
        &Mode { name: "prefork", concurrent: false, forks: true, args: &["--workers", "3", "--worker", "serial"] },
        3,
    );
}
