//! Every case against every mode: `support::modes::every_mode!` calls
//! `mode_tests!` once per mode, which makes its module, with one test per case
//! (`modes::serial::echo_all_byte_values`, `modes::fork::...`), so `cargo
//! test --test e2e modes::fork::` runs one mode and `cargo test --test e2e
//! half_close` one case everywhere. A case that cannot apply to a mode
//! (200 clients at once against serial) is absent from its module.

use crate::support::modes::every_mode;

/// Expands to its items when the flag is `true`, to nothing when `false`.
macro_rules! when {
    (true, $($item:item)*) => { $($item)* };
    (false, $($item:item)*) => {};
}

/// The module of tests of one row of the table of modes.
macro_rules! mode_tests {
    ($id:ident, $konst:ident, $name:literal, $concurrent:tt, $forks:tt, $args:expr) => {
        mod $id {
            use nix::sys::signal::Signal;

            use super::cases;
            use crate::support::modes::$konst as MODE;

            #[test]
            fn echo_all_byte_values() {
                cases::echo_all_byte_values(&MODE)
            }
            #[test]
            fn stream_8_mib_while_reading() {
                cases::stream_8_mib_while_reading(&MODE)
            }
            #[test]
            fn one_byte_at_a_time() {
                cases::one_byte_at_a_time(&MODE)
            }
            #[test]
            fn half_close_echoes_everything() {
                cases::half_close_echoes_everything(&MODE)
            }
            #[test]
            fn reset_client_does_not_disturb_the_next() {
                cases::reset_client_does_not_disturb_the_next(&MODE)
            }
            #[test]
            fn sequential_500_connections() {
                cases::sequential_500_connections(&MODE)
            }
            #[test]
            fn socket_fds_are_close_on_exec() {
                cases::socket_fds_are_close_on_exec(&MODE)
            }
            #[test]
            fn sigterm_drains_clients_mid_stream() {
                cases::signal_drains_clients_mid_stream(&MODE, Signal::SIGTERM)
            }
            #[test]
            fn sigint_drains_clients_mid_stream() {
                cases::signal_drains_clients_mid_stream(&MODE, Signal::SIGINT)
            }
            #[test]
            fn sigterm_closes_listener_and_exits_0() {
                cases::sigterm_closes_listener_and_exits_0(&MODE)
            }
            #[test]
            fn grace_period_ends_connections_that_stay_open() {
                cases::grace_period_ends_connections_that_stay_open(&MODE)
            }
            #[test]
            fn second_sigint_stops_at_once() {
                cases::immediate_stop(&MODE, &[Signal::SIGINT, Signal::SIGINT])
            }
            #[test]
            fn sigquit_stops_at_once() {
                cases::immediate_stop(&MODE, &[Signal::SIGQUIT])
            }
            #[test]
            fn signal_storm_loses_nothing() {
                cases::signal_storm_loses_nothing(&MODE)
            }
            #[test]
            fn resets_and_hit_and_run_clients_do_no_harm() {
                cases::resets_and_hit_and_run_clients_do_no_harm(&MODE)
            }
            #[test]
            fn ten_thousand_mixed_connections_leave_no_trace() {
                cases::ten_thousand_mixed_connections_leave_no_trace(&MODE)
            }
            #[test]
            fn bad_flag_exits_2() {
                cases::bad_flag_exits_2(&MODE)
            }
            #[test]
            fn port_in_use_exits_1() {
                cases::port_in_use_exits_1(&MODE)
            }

            when! { $concurrent,
                #[test]
                fn concurrent_200_clients_10_rounds() { cases::concurrent_200_clients_10_rounds(&MODE) }
                #[test]
                fn idle_connection_does_not_block_others() { cases::idle_connection_does_not_block_others(&MODE) }
            }

            when! { $forks,
                #[test]
                fn kill_9_leaves_no_child_alive() { cases::kill_9_leaves_no_child_alive(&MODE) }
            }
        }
    };
}

every_mode!(mode_tests);

/// The test bodies, shared by every mode.
mod cases {
    use std::io::{self, Read, Write};
    use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{mpsc, Arc, Barrier};
    use std::thread;
    use std::time::{Duration, Instant};

    use nix::sys::signal::Signal;

    use crate::support::fail_if_any;
    use crate::support::modes::Mode;
    use crate::support::net::*;
    use crate::support::process::{exit_signal, poll_every, poll_until, raise_nofile, signal_pid, KillOnDrop};
    use crate::support::procfs::{descendants, fd_flags, fds, listening_inodes, socket_inode, still_alive, ProcStat};
    use crate::support::server::{run_to_exit, Server, EXIT_TIMEOUT, SETTLE_TIMEOUT};

    pub fn echo_all_byte_values(mode: &Mode) {
        let server = Server::start(mode, &[]);
        let mut s = server.connect();
        let ascending: Vec<u8> = (0..=255u8).collect();
        let descending: Vec<u8> = (0..=255u8).rev().collect();
        roundtrip(&mut s, &ascending).unwrap_or_else(|e| panic!("all 256 values, ascending: {e}"));
        roundtrip(&mut s, &descending).unwrap_or_else(|e| panic!("all 256 values, descending: {e}"));
        close_cleanly(&mut s).unwrap();
    }

    pub fn stream_8_mib_while_reading(mode: &Mode) {
        let server = Server::start(mode, &[]);
        stream_through(server.connect(), 0x8_0000, 8 << 20, 64 * 1024).unwrap_or_else(|e| panic!("8 MiB stream: {e}"));
    }

    pub fn one_byte_at_a_time(mode: &Mode) {
        let server = Server::start(mode, &[]);
        let mut s = server.connect();
        for i in 0..200u32 {
            // Every letter both ways round, plus the bytes around them.
            let b = if i % 2 == 0 { b'a' + (i / 2 % 26) as u8 } else { (i * 37 % 256) as u8 };
            s.write_all(&[b]).unwrap_or_else(|e| panic!("write byte {i}: {e}"));
            let mut got = [0u8; 1];
            s.read_exact(&mut got).unwrap_or_else(|e| panic!("read reply to byte {i} ({b:#04x}): {e}"));
            assert_eq!(got[0], b.to_ascii_uppercase(), "reply to byte {i} ({b:#04x})");
        }
        close_cleanly(&mut s).unwrap();
    }

    pub fn half_close_echoes_everything(mode: &Mode) {
        let server = Server::start(mode, &[]);
        // A small message, then a few KiB: both fit in the socket buffers,
        // so writing everything before reading cannot deadlock.
        let mut msg = b"Hello, half-closed World! \x00\x7f\x80\xe9\xff zz".to_vec();
        msg.extend((0..16 * 1024u64).map(|i| pattern(7, i)));
        let mut s = server.connect();
        s.write_all(&msg).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_to_eof(&mut s).unwrap();
        assert_eq!(got.len(), msg.len(), "bytes echoed before EOF");
        assert!(got == upper(&msg), "echo after half-close differs from the uppercase of what was sent");
        // A client that sends nothing and half-closes gets a bare EOF.
        let mut quiet = server.connect();
        quiet.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_eof(&mut quiet).unwrap(), b"", "reply to an empty half-closed stream");
    }

    pub fn reset_client_does_not_disturb_the_next(mode: &Mode) {
        let server = Server::start(mode, &[]);
        let base = server.baseline();
        let next_client_is_served = |after: &str| {
            let mut s = server.connect();
            let msg: Vec<u8> = (0..4096u64).map(|i| pattern(11, i)).collect();
            roundtrip(&mut s, &msg).unwrap_or_else(|e| panic!("client after {after}: {e}"));
            close_cleanly(&mut s).unwrap_or_else(|e| panic!("client after {after}: {e}"));
        };

        // 1. Reset while the server's buffers are full: it is blocked
        // writing to (or reading from) a peer that never reads.
        let mut s = server.connect();
        s.set_nonblocking(true).unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        let mut stuffed = 0usize;
        while stuffed < 16 << 20 {
            match s.write(&chunk) {
                Ok(n) => stuffed += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("stuffing write after {stuffed} bytes: {e}"),
            }
        }
        assert!(stuffed > 0, "could not write anything");
        reset(s);
        next_client_is_served("a reset with full buffers");

        // 2. Reset half-way through reading the echo.
        let mut s = server.connect();
        s.write_all(&vec![b'y'; 64 * 1024]).unwrap();
        let mut part = vec![0u8; 1024];
        s.read_exact(&mut part).unwrap();
        assert!(part.iter().all(|&b| b == b'Y'), "echo of 'y' is not 'Y'");
        reset(s);
        next_client_is_served("a reset mid-echo");

        // 3. Reset right after connecting, before sending anything.
        reset(server.connect());
        next_client_is_served("a reset before any byte");

        server.assert_settled(&base);
    }

    pub fn sequential_500_connections(mode: &Mode) {
        let server = Server::start(mode, &[]);
        let base = server.baseline();
        for i in 0..500 {
            let mut s = server.connect();
            let msg = format!("connection {i}: short round trip \u{e9}");
            roundtrip(&mut s, msg.as_bytes()).unwrap_or_else(|e| panic!("connection {i}: {e}"));
            close_cleanly(&mut s).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        }
        server.assert_settled(&base);
    }

    pub fn concurrent_200_clients_10_rounds(mode: &Mode) {
        const CLIENTS: usize = 200;
        const ROUNDS: usize = 10;
        raise_nofile();
        let server = Server::start(mode, &[]);
        let base = server.baseline();
        let addr = server.addr;
        // Every client connects, then all wait until all 200 are connected
        // (200 simultaneous connections), then each runs its rounds.
        let barrier = Arc::new(Barrier::new(CLIENTS));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let barrier = barrier.clone();
                thread::Builder::new()
                    .name(format!("client-{i}"))
                    .stack_size(128 * 1024)
                    .spawn(move || -> Result<(), String> {
                        let conn = try_connect(addr);
                        barrier.wait();
                        let mut s = conn.map_err(|e| format!("client {i}: connect: {e}"))?;
                        for r in 0..ROUNDS {
                            let msg = format!("client {i:03} round {r}: the quick brown fox \u{e9}\u{ff}");
                            roundtrip(&mut s, msg.as_bytes()).map_err(|e| format!("client {i} round {r}: {e}"))?;
                        }
                        close_cleanly(&mut s).map_err(|e| format!("client {i}: {e}"))
                    })
                    .expect("spawn client thread")
            })
            .collect();
        let failures: Vec<String> = clients
            .into_iter()
            .filter_map(|c| match c.join() {
                Ok(r) => r.err(),
                Err(_) => Some("client thread panicked".into()),
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {CLIENTS} clients failed; first ones:\n  {}",
            failures.len(),
            failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n  ")
        );
        server.assert_settled(&base);
    }

    pub fn idle_connection_does_not_block_others(mode: &Mode) {
        let server = Server::start(mode, &[]);
        // One client that never says anything, one that says something and
        // then goes quiet; both stay open while another client is served.
        let mut silent = server.connect();
        let mut quiet = server.connect();
        roundtrip(&mut quiet, b"abc, then silence").unwrap_or_else(|e| panic!("second client (first is idle): {e}"));
        let mut busy = server.connect();
        for r in 0..20 {
            roundtrip(&mut busy, format!("busy round {r}").as_bytes())
                .unwrap_or_else(|e| panic!("client served while two others are idle, round {r}: {e}"));
        }
        close_cleanly(&mut busy).unwrap();
        // The idle ones were kept, not dropped.
        roundtrip(&mut silent, b"late hello").unwrap_or_else(|e| panic!("idle client waking up: {e}"));
        roundtrip(&mut quiet, b"back again").unwrap_or_else(|e| panic!("quiet client waking up: {e}"));
        close_cleanly(&mut silent).unwrap();
        close_cleanly(&mut quiet).unwrap();
    }

    /// SIGUSR1 and SIGWINCH, alternating, at about 1 kHz while clients echo
    /// (signals with a handler that leave the server as it is; SIGUSR2
    /// starts an upgrade, the operations topic's): every blocking call that
    /// a signal interrupts (poll, accept, read, write, waitpid) must be
    /// retried, so no client sees an error and the server survives. Clients keep echoing until 500 of each have been
    /// sent (bounded in rounds and time).
    pub fn signal_storm_loses_nothing(mode: &Mode) {
        const EACH: u64 = 500;
        const STORM: [Signal; 2] = [Signal::SIGUSR1, Signal::SIGWINCH];
        let mut server = Server::start(mode, &[]);
        let clients = if mode.concurrent { 100 } else { 1 };
        // Signals sent so far, of each kind.
        let sent: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let stop = Arc::new(AtomicBool::new(false));
        let pid = server.pid;
        let storm = {
            let (sent, stop) = (sent.clone(), stop.clone());
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                // The server and, in fork and prefork, its children and
                // workers: every process's blocking calls get interrupted.
                let mut targets = vec![pid];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if n.is_multiple_of(50) {
                        targets = std::iter::once(pid).chain(descendants(pid).iter().map(|p| p.pid)).collect();
                    }
                    let kind = (n % 2) as usize;
                    n += 1;
                    if signal_pid(pid, STORM[kind]).is_err() {
                        break;
                    }
                    for &t in &targets[1..] {
                        let _ = signal_pid(t, STORM[kind]);
                    }
                    sent[kind].fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(1)); // paces the storm; not synchronisation
                }
            })
        };
        let stormed = || sent.iter().all(|k| k.load(Ordering::Relaxed) >= EACH);
        let run_client = |i: usize| -> Result<u64, String> {
            let mut c = connect(server.addr);
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut rounds = 0u64;
            while (rounds < 5 || !stormed()) && rounds < 200_000 && Instant::now() < deadline {
                let msg = format!("storm client {i} round {rounds} ").repeat(20);
                roundtrip(&mut c, msg.as_bytes()).map_err(|e| format!("client {i} round {rounds}: {e}"))?;
                rounds += 1;
            }
            Ok(rounds)
        };
        let results: Vec<Result<u64, String>> = thread::scope(|s| {
            let hs: Vec<_> = (0..clients).map(|i| s.spawn(move || run_client(i))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        stop.store(true, Ordering::Relaxed);
        storm.join().unwrap();
        let [usr1, winch] = [0, 1].map(|k| sent[k].load(Ordering::Relaxed));
        let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        let rounds: u64 = results.iter().filter_map(|r| r.as_ref().ok()).sum();
        assert!(server.is_running(), "server died in the storm:\n{}", server.log());
        assert!(
            failures.is_empty(),
            "{} client(s) failed during {usr1} SIGUSR1s and {winch} SIGWINCHs: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
        assert!(usr1 >= EACH && winch >= EACH, "the storm sent only {usr1} SIGUSR1s and {winch} SIGWINCHs");
        assert!(rounds > 0, "no round trip completed");
    }

    /// Hostile clients: 100 that connect and reset at once (SO_LINGER 0,
    /// before or while the server accepts them), then 5 that send 1 MiB and
    /// close without reading (the server's writes hit a closed peer: broken
    /// pipe or reset). Afterwards a normal client is served at once, the
    /// server (and, in fork mode, every child) is fine, no zombie is left.
    pub fn resets_and_hit_and_run_clients_do_no_harm(mode: &Mode) {
        let mut server = Server::start(mode, &[]);
        for _ in 0..100 {
            reset(connect(server.addr));
        }
        let big: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        for _ in 0..5 {
            let mut c = connect(server.addr);
            // The server may reset us mid-write once it sees the close: fine.
            let _ = c.write_all(&big);
            drop(c);
        }
        let started = Instant::now();
        let mut c = connect(server.addr);
        roundtrip(&mut c, b"a normal client after the hostile ones")
            .unwrap_or_else(|e| panic!("normal client not served: {e}\n{}", server.log()));
        assert!(started.elapsed() < Duration::from_secs(5), "normal client waited {:?}", started.elapsed());
        drop(c);
        assert!(server.is_running(), "server died:\n{}", server.log());
        let no_zombies = poll_until(Duration::from_secs(5), || server.zombies().is_empty());
        assert!(no_zombies, "zombie children left: {:?}", server.zombies());
    }

    /// Issue 7 §7, fd and process hygiene at scale: 10,000 connections in
    /// batches of 100 concurrent clients, mixing round trips checked byte for
    /// byte, resets right after connect and mid-stream, hit-and-run clients
    /// (64 KiB, closed unread), clients that send a partial request and go
    /// silent until `--idle-timeout 0.5` closes them, and refusals by
    /// `--max-conns-per-ip 2`. Four times mid-run, while clients are held
    /// open, every socket fd of the server and its descendants must have
    /// O_CLOEXEC in `/proc/PID/fdinfo`; at the end the fd counts of the
    /// server and of each prefork worker are exactly the baseline's, with no
    /// zombie, no extra child or thread and no connection socket left.
    ///
    /// Refusals without hurting the rest of the mix: every connection but
    /// the silent ones comes from its own address of 127.0.0.0/8 (127.1.x.y),
    /// so the per-address limit never sees two of them; the silent ones come
    /// from 127.0.0.1, in eight groups, each opened back to back by one
    /// thread. The limit counts per process, and a process serving one
    /// connection at a time (serial, prefork serial workers) gives its permit
    /// back before it accepts the next, so it never refuses: there a group is
    /// 2 silent clients, which must both be served, then idle-closed, not
    /// refused. In every other mode a group is `processes x 2 + 2` clients
    /// (`processes`: the prefork `--workers`, else 1), more than all the
    /// processes together may admit, so each group must see a refusal (closed
    /// with nothing echoed) and at least 2 served clients. A served silent
    /// client must be closed no sooner than the idle timeout after its
    /// request, and within 10 s of its echo (a bound for a hang, not a
    /// measurement: this machine is shared and can stall for seconds).
    ///
    /// A client that itself stalls for the idle timeout (a busy machine) may
    /// rightly be idle-closed mid-exchange: see [`Pace`]. Those are counted
    /// apart (at most 5% of the run), and a group with one proves nothing.
    pub fn ten_thousand_mixed_connections_leave_no_trace(mode: &Mode) {
        const TOTAL: usize = 10_000;
        const BATCH: usize = 100;
        const PER_IP: usize = 2;
        const IDLE: Duration = Duration::from_millis(500);
        // A group of silent clients in batches 6, 18, ..., 90: eight groups.
        const GROUP_EVERY: usize = 12;
        // Batches in which the fds are inspected while clients are held.
        const CHECKS: [usize; 4] = [15, 40, 65, 95];
        const RUN_LIMIT: Duration = Duration::from_secs(150);
        raise_nofile();
        let idle_flag = IDLE.as_secs_f64().to_string();
        // `--queue-timeout 0`: the default (the idle timeout) would refuse
        // serial's queued clients, which must all be served here; the
        // queue-wait refusals have their own tests (hardening.rs).
        let per_ip = PER_IP.to_string();
        let mut server =
            Server::start(mode, &["--idle-timeout", &idle_flag, "--queue-timeout", "0", "--max-conns-per-ip", &per_ip]);
        let base = server.baseline();
        // Prefork: the connections are the workers'; their fds count too.
        let worker_fds: Vec<(ProcStat, usize)> = base.children.iter().map(|w| (*w, fds(w.pid).len())).collect();
        let addr = server.addr;
        // --max-conns-per-ip counts per process: per prefork worker.
        let processes = mode
            .args
            .iter()
            .position(|&a| a == "--workers")
            .map_or(1, |p| mode.args[p + 1].parse::<usize>().expect("the mode's --workers is a number"));
        let group = if mode.concurrent { processes * PER_IP + 2 } else { 2 };
        // Serial modes serve one held client at a time; a second would wait.
        let held = if mode.concurrent { 8 } else { 1 };

        let started = Instant::now();
        let mut failures = Vec::new();
        let mut done = [0usize; 6];
        let (mut idle_closed, mut refused, mut stalled, mut groups, mut checks) = (0, 0, 0, 0, 0);
        for b in 0..TOTAL / BATCH {
            let silent = if b % GROUP_EVERY == GROUP_EVERY / 2 { group } else { 0 };
            let hold = if CHECKS.contains(&b) { held } else { 0 };
            let kind_of = |i: usize| match (i % BATCH, i % 8) {
                (k, _) if k < silent => Kind::Silent,
                (k, _) if k < hold => Kind::Held,
                (_, 1) => Kind::ResetAtConnect,
                (_, 3) => Kind::ResetMidStream,
                (_, 5) => Kind::HitAndRun,
                _ => Kind::Normal,
            };
            let (results, inspected) = thread::scope(|sc| {
                let (ready_tx, ready_rx) = mpsc::channel::<()>();
                // Dropping a sender lets its held client go (also on a panic here).
                let mut releases = Vec::new();
                let clients: Vec<_> = (b * BATCH..(b + 1) * BATCH)
                    .map(|i| {
                        let kind = kind_of(i);
                        let hold = (kind == Kind::Held).then(|| {
                            let (tx, rx) = mpsc::channel::<()>();
                            releases.push(tx);
                            (ready_tx.clone(), rx)
                        });
                        // Silent clients are opened here, by this one thread,
                        // so each group reaches the server within microseconds.
                        let opened = (kind == Kind::Silent).then(|| open_silent(addr, i));
                        let client = thread::Builder::new()
                            .name(format!("client-{i}"))
                            .stack_size(128 * 1024)
                            .spawn_scoped(sc, move || match opened {
                                Some(opened) => silent_client(opened?, IDLE),
                                None => mixed_client(addr, i, kind, IDLE, hold),
                            })
                            .expect("spawn client thread");
                        (i, kind, client)
                    })
                    .collect();
                let mut inspected = None;
                if hold > 0 {
                    let all_held = (0..hold).all(|_| ready_rx.recv_timeout(IO_TIMEOUT + SETTLE_TIMEOUT).is_ok());
                    let found = socket_fds(&server);
                    releases.clear();
                    checks += 1;
                    inspected = Some(found.connections);
                    if !all_held {
                        failures.push(format!("batch {b}: the {hold} held clients did not all report back"));
                    }
                    if !found.without_cloexec.is_empty() {
                        failures.push(format!(
                            "batch {b}: {} of {} socket fds without O_CLOEXEC: {:?}",
                            found.without_cloexec.len(),
                            found.sockets,
                            found.without_cloexec
                        ));
                    }
                }
                let results: Vec<(usize, Kind, Result<Ending, String>)> = clients
                    .into_iter()
                    .map(|(i, kind, c)| (i, kind, c.join().unwrap_or_else(|_| Err("client thread panicked".into()))))
                    .collect();
                (results, inspected)
            });
            // The inspection saw connections, unless a held client was cut
            // short before it (an error, reported below, or a stall).
            let held_throughout = results.iter().all(|(_, kind, r)| *kind != Kind::Held || r == &Ok(Ending::Done));
            if inspected == Some(0) && held_throughout {
                failures.push(format!(
                    "batch {b}: no connection socket in the server or its children while {hold} clients were held open"
                ));
            }
            let (mut idle_here, mut refused_here, mut stalled_here) = (0, 0, 0);
            for (i, kind, result) in results {
                match result {
                    Ok(Ending::Done) => done[kind as usize] += 1,
                    Ok(Ending::IdleClosed) => idle_here += 1,
                    Ok(Ending::Refused) => refused_here += 1,
                    Ok(Ending::Stalled) if kind == Kind::Silent => stalled_here += 1,
                    Ok(Ending::Stalled) => stalled += 1,
                    Err(e) => failures.push(format!("connection {i} ({kind:?}): {e}")),
                }
            }
            if silent > 0 && stalled_here == 0 {
                groups += 1;
                let what = format!(
                    "batch {b}: of {silent} silent clients from 127.0.0.1, {idle_here} were served and \
                     idle-closed, {refused_here} refused"
                );
                if !mode.concurrent && refused_here > 0 {
                    failures.push(format!(
                        "{what}; a process serving one connection at a time is never at --max-conns-per-ip \
                         {PER_IP} when it accepts"
                    ));
                }
                if mode.concurrent && refused_here == 0 {
                    failures.push(format!(
                        "{what}; {processes} process(es) at --max-conns-per-ip {PER_IP} admit {} at most",
                        processes * PER_IP
                    ));
                }
                if idle_here < PER_IP.min(silent) {
                    failures.push(format!("{what}; the first {PER_IP} from one address must be served"));
                }
            }
            idle_closed += idle_here;
            refused += refused_here;
            stalled += stalled_here;
            if started.elapsed() > RUN_LIMIT {
                failures.push(format!("stopped after batch {b} of {}: {RUN_LIMIT:?} passed", TOTAL / BATCH));
            }
            if !failures.is_empty() {
                break; // one batch's worth of failures tells the story; a hung server would take long
            }
        }
        let elapsed = started.elapsed();
        eprintln!(
            "{}: {TOTAL} connections in {elapsed:.1?}: {} echoed, {} reset at connect, {} reset mid-stream, \
             {} hit-and-run, {idle_closed} idle-closed, {refused} refused, {stalled} stalled clients; \
             {groups} silent groups judged, {checks} fd inspections",
            mode.name,
            done[Kind::Normal as usize] + done[Kind::Held as usize],
            done[Kind::ResetAtConnect as usize],
            done[Kind::ResetMidStream as usize],
            done[Kind::HitAndRun as usize],
        );
        fail_if_any(&failures);
        assert_eq!(done.iter().sum::<usize>() + idle_closed + refused + stalled, TOTAL, "connections accounted for");
        assert!(
            stalled <= TOTAL / 20,
            "{stalled} clients stalled for the idle timeout ({IDLE:?}) and were idle-closed: the machine is too busy \
             for this test to show anything"
        );
        assert!(groups > 0, "every group of silent clients had a stalled client: nothing shown about refusals");
        assert_eq!(checks, CHECKS.len(), "fd inspections");
        assert!(server.is_running(), "server died:\n{}", server.log());
        server.assert_settled(&base);
        for (w, before) in worker_fds {
            let back = poll_until(SETTLE_TIMEOUT, || still_alive(&w) && fds(w.pid).len() == before);
            assert!(back, "worker {} not alive with its {before} baseline fds: now {:?}", w.pid, fds(w.pid));
        }
    }

    /// What one connection of [`ten_thousand_mixed_connections_leave_no_trace`] does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        /// One round trip (1 B to 48 KiB) checked byte for byte, then a clean close.
        Normal,
        /// [`Kind::Normal`], then kept open (and busy) while the fds are inspected.
        Held,
        /// RST right after connecting.
        ResetAtConnect,
        /// 16 KiB sent, the first KiB of the echo read and checked, then RST.
        ResetMidStream,
        /// 64 KiB sent, then closed at once without reading anything.
        HitAndRun,
        /// From 127.0.0.1: a partial request, then silence until the server closes it.
        Silent,
    }

    /// How a connection of that case ended, when nothing went wrong.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Ending {
        /// It did what its kind does.
        Done,
        /// Silent: echoed, then closed by the server's idle timeout.
        IdleClosed,
        /// Silent: closed by the server with nothing echoed (at the per-address limit).
        Refused,
        /// Cut short after the client itself stalled for the idle timeout.
        Stalled,
    }

    /// How long after its echo a silent client may wait for the server to
    /// close it: the idle timeout, plus room for a stalled machine.
    const SILENT_BOUND: Duration = Duration::from_secs(10);

    /// The server's idle clock may run this much ahead of a client's (an
    /// event loop reads whole milliseconds once per wake-up).
    const CLOCK_SLACK: Duration = Duration::from_millis(50);

    /// The longest a client went without handing the server bytes: from
    /// before it connects to the end of its first write, then from the end
    /// of one write to the end of the next. The server never sees a longer
    /// silence, so a client whose longest is below the idle timeout must not
    /// be idle-closed; one that stalled that long (a busy machine) may
    /// rightly be.
    struct Pace {
        last: Instant,
        longest: Duration,
    }

    impl Pace {
        /// Starts timing (call it right before connecting).
        fn new() -> Pace {
            Pace { last: Instant::now(), longest: Duration::ZERO }
        }

        /// `write_all`, timed.
        fn write(&mut self, s: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
            let written = s.write_all(msg);
            let now = Instant::now();
            self.longest = self.longest.max(now - self.last);
            self.last = now;
            written.map_err(|e| format!("write {} bytes: {e}", msg.len()))
        }

        /// Whether the client was ever silent long enough to be idle-closed.
        fn stalled(&self, idle: Duration) -> bool {
            self.longest + CLOCK_SLACK >= idle
        }
    }

    /// Connection `i` of the mix, of `kind` (not silent), from its own
    /// address. A held client, echoed or not, reports on `hold.0`, then
    /// keeps its connection busy until `hold.1` is dropped (bounded).
    fn mixed_client(
        addr: SocketAddr,
        i: usize,
        kind: Kind,
        idle: Duration,
        hold: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
    ) -> Result<Ending, String> {
        let seed = 0x7e57_0000 + i as u64;
        let len = match kind {
            Kind::ResetMidStream => 16 * 1024,
            _ if i.is_multiple_of(64) => 48 * 1024,
            _ => 1 + i * 7919 % 1500,
        };
        let msg: Vec<u8> = (0..len as u64).map(|k| pattern(seed, k)).collect();
        // 127.1.0.1 + i.
        let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + i as u32);
        let mut pace = Pace::new();
        let conn = try_connect_from(source.into(), addr).map_err(|e| format!("connect from {source}: {e}"));
        let result = match kind {
            Kind::Normal => conn.and_then(|mut s| {
                pace.write(&mut s, &msg)?;
                read_echo(&mut s, &msg)?;
                close_cleanly(&mut s)
            }),
            Kind::Held => {
                let (ready, release) = hold.expect("a held client has its channels");
                let echoed = conn.and_then(|mut s| {
                    pace.write(&mut s, &msg)?;
                    read_echo(&mut s, &msg).map(|()| s)
                });
                let _ = ready.send(());
                echoed.and_then(|mut s| {
                    // Busy, so the idle timeout does not close it while the
                    // fds are inspected: a round trip every idle/4 (bounded).
                    for _ in 0..100 {
                        if release.recv_timeout(idle / 4) != Err(mpsc::RecvTimeoutError::Timeout) {
                            break;
                        }
                        pace.write(&mut s, b"still here")?;
                        read_echo(&mut s, b"still here")?;
                    }
                    close_cleanly(&mut s)
                })
            }
            Kind::ResetAtConnect => conn.map(reset),
            Kind::ResetMidStream => conn.and_then(|mut s| {
                pace.write(&mut s, &msg)?;
                let mut part = vec![0u8; 1024];
                s.read_exact(&mut part).map_err(|e| format!("read the first KiB of the echo: {e}"))?;
                check_pattern(seed, 0, &part)?;
                reset(s);
                Ok(())
            }),
            Kind::HitAndRun => conn.and_then(|mut s| match s.write_all(&[b'h'; 64 * 1024]) {
                // Cut short by the server (its idle timeout, should this
                // thread stall mid-write): as good a hit-and-run.
                Err(e) if !matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe) => {
                    Err(format!("write 64 KiB: {e}"))
                }
                _ => Ok(()),
            }),
            Kind::Silent => unreachable!("silent clients are opened by open_silent"),
        };
        match result {
            Ok(()) => Ok(Ending::Done),
            Err(_) if pace.stalled(idle) => Ok(Ending::Stalled),
            Err(e) => Err(e),
        }
    }

    /// A silent client, opened: its socket, its partial request, when that
    /// was sent, and the [`Pace`] of sending it.
    type Opened = (TcpStream, Vec<u8>, Instant, Pace);

    /// Connects silent client `i` from 127.0.0.1 and sends its partial request.
    fn open_silent(addr: SocketAddr, i: usize) -> Result<Opened, String> {
        let mut pace = Pace::new();
        let mut s = try_connect_from(Ipv4Addr::LOCALHOST.into(), addr).map_err(|e| format!("connect: {e}"))?;
        let msg = format!("partial request {i}, never finished: ").into_bytes();
        let sent = Instant::now();
        // Refused at once, the write may fail; the read that follows tells.
        let _ = pace.write(&mut s, &msg);
        Ok((s, msg, sent, pace))
    }

    /// Waits for the fate of an opened silent client. Served, it must get
    /// its request echoed, then an end (EOF or reset) from the idle timeout:
    /// no sooner than `idle` after the request was sent, and within
    /// [`SILENT_BOUND`] of the echo. Refused, it gets an end with nothing echoed.
    fn silent_client((mut s, msg, sent, pace): Opened, idle: Duration) -> Result<Ending, String> {
        let ended = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
            )
        };
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < msg.len() {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if ended(&e) => break,
                Err(e) => return Err(format!("read the echo ({} of {} bytes so far): {e}", got.len(), msg.len())),
            }
        }
        if got.is_empty() {
            return Ok(if pace.stalled(idle) { Ending::Stalled } else { Ending::Refused });
        }
        if got != upper(&msg) {
            return Err(describe_mismatch(&upper(&msg), &got));
        }
        let echoed = Instant::now();
        s.set_read_timeout(Some(SILENT_BOUND)).map_err(|e| format!("set_read_timeout: {e}"))?;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Err(e) if ended(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(n) => return Err(format!("{n} unexpected bytes while silent")),
                Err(e) => {
                    return Err(format!(
                        "not closed {:?} after its echo (idle timeout {idle:?}): {e}",
                        echoed.elapsed()
                    ))
                }
            }
        }
        // The server's idle clock starts at its read of the request, after `sent`.
        let closed_after = sent.elapsed();
        if closed_after + CLOCK_SLACK < idle {
            return Err(format!("closed {closed_after:?} after its request, before the idle timeout {idle:?}"));
        }
        if echoed.elapsed() > SILENT_BOUND {
            return Err(format!("closed only {:?} after its echo (idle timeout {idle:?})", echoed.elapsed()));
        }
        Ok(Ending::IdleClosed)
    }

    /// The socket fds of the server and of its live descendants (fork
    /// children, prefork workers), from `/proc/PID/fd` and `/proc/PID/fdinfo`.
    struct SocketFds {
        /// Processes looked at.
        pids: Vec<i32>,
        /// Socket fds found open (and still open when their flags were read).
        sockets: usize,
        /// Of those, connections (not listening sockets).
        connections: usize,
        /// `pid fd (target) flags` of each socket fd without O_CLOEXEC.
        without_cloexec: Vec<String>,
    }

    fn socket_fds(server: &Server) -> SocketFds {
        const O_CLOEXEC: u32 = 0o2000000;
        let mut pids = vec![server.pid];
        pids.extend(server.live_children().iter().map(|p| p.pid));
        let mut inodes = Vec::new();
        let mut without_cloexec = Vec::new();
        for &pid in &pids {
            for (fd, target) in fds(pid) {
                let Some(inode) = socket_inode(&target) else {
                    continue;
                };
                let Some(flags) = fd_flags(pid, fd) else {
                    continue; // closed since the directory was read
                };
                inodes.push(inode);
                if flags & O_CLOEXEC == 0 {
                    without_cloexec.push(format!("pid {pid} fd {fd} ({target}) flags {flags:o}"));
                }
            }
        }
        // Only now, as reading /proc/net/tcp can take a while with many
        // TIME_WAIT entries (and listening sockets stay what they are).
        let listening = listening_inodes();
        let connections = inodes.iter().filter(|i| !listening.contains(i)).count();
        SocketFds { pids, sockets: inodes.len(), connections, without_cloexec }
    }

    pub fn socket_fds_are_close_on_exec(mode: &Mode) {
        let server = Server::start(mode, &[]);
        // Serial serves one connection at a time: a second would only wait.
        let n = if mode.concurrent { 3 } else { 1 };
        let mut conns: Vec<TcpStream> = (0..n).map(|_| server.connect()).collect();
        for (i, c) in conns.iter_mut().enumerate() {
            roundtrip(c, format!("connection {i}").as_bytes()).unwrap();
        }
        // The server and its children (fork mode: one per connection).
        let found = socket_fds(&server);
        assert!(
            found.sockets > n,
            "found only {} socket fds in {:?}; expected the listener and {n} connection(s)",
            found.sockets,
            found.pids
        );
        assert!(found.without_cloexec.is_empty(), "socket fds without O_CLOEXEC: {:?}", found.without_cloexec);
        for c in &mut conns {
            close_cleanly(c).unwrap();
        }
    }

    /// Clients stream; the server gets `sig` mid-stream; the clients keep
    /// streaming a while, then stop and half-close: everything they sent
    /// comes back, the listener is closed at once, the server exits 0.
    pub fn signal_drains_clients_mid_stream(mode: &Mode, sig: Signal) {
        const CHUNK: usize = 16 * 1024;
        const BEFORE: u64 = 256 * 1024;
        const AFTER: u64 = 256 * 1024;
        // Serial serves one client; others would wait in the backlog and
        // be refused when the listener closes.
        let n = if mode.concurrent { 5 } else { 1 };
        let mut server = Server::start(mode, &[]);
        let stop = Arc::new(AtomicBool::new(false));
        struct Client {
            sent: Arc<AtomicU64>,
            received: Arc<AtomicU64>,
            writer: thread::JoinHandle<Result<u64, String>>,
            reader: thread::JoinHandle<Result<u64, String>>,
        }
        let clients: Vec<Client> = (0..n)
            .map(|i| {
                let seed = 0x5160_0000 + i as u64;
                let mut w = server.connect();
                let mut r = w.try_clone().unwrap();
                let sent = Arc::new(AtomicU64::new(0));
                let received = Arc::new(AtomicU64::new(0));
                let (stop, sent2, received2) = (stop.clone(), sent.clone(), received.clone());
                let writer = thread::spawn(move || -> Result<u64, String> {
                    let mut buf = vec![0u8; CHUNK];
                    let mut off = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        fill_pattern(seed, off, &mut buf);
                        w.write_all(&buf).map_err(|e| format!("client {i}: write at {off}: {e}"))?;
                        off += CHUNK as u64;
                        sent2.store(off, Ordering::SeqCst);
                    }
                    w.shutdown(Shutdown::Write).map_err(|e| format!("client {i}: shutdown(Write): {e}"))?;
                    Ok(off)
                });
                let reader = thread::spawn(move || -> Result<u64, String> {
                    read_pattern_to_eof(&mut r, seed, &received2).map_err(|e| format!("client {i}: {e}"))
                });
                Client { sent, received, writer, reader }
            })
            .collect();

        let mut failures = Vec::new();
        let streaming =
            poll_until(Duration::from_secs(10), || clients.iter().all(|c| c.received.load(Ordering::SeqCst) >= BEFORE));
        if !streaming {
            failures.push(format!("clients never got {BEFORE} bytes echoed before the signal"));
        }
        let at_signal: Vec<u64> = clients.iter().map(|c| c.sent.load(Ordering::SeqCst)).collect();
        server.signal(sig);
        let signalled = Instant::now();

        // The listener closes at once, while the clients are still busy.
        if !poll_every(Duration::from_millis(20), Duration::from_secs(5), || connection_refused(server.addr)) {
            failures.push(format!(
                "new connections still accepted {:?} after {sig}, while clients were streaming",
                signalled.elapsed()
            ));
        }
        // The clients go on streaming after the signal, and are served.
        let kept_going = poll_until(Duration::from_secs(5), || {
            clients.iter().zip(&at_signal).all(|(c, &s)| c.received.load(Ordering::SeqCst) >= s + AFTER)
        });
        if !kept_going {
            let progress: Vec<String> = clients
                .iter()
                .zip(&at_signal)
                .map(|(c, s)| {
                    format!("sent {s}->{}, echoed {}", c.sent.load(Ordering::SeqCst), c.received.load(Ordering::SeqCst))
                })
                .collect();
            failures.push(format!("after {sig}, clients were not echoed {AFTER} more bytes each: {progress:?}"));
        }
        stop.store(true, Ordering::SeqCst);
        for (i, c) in clients.into_iter().enumerate() {
            let sent = c.writer.join().unwrap_or_else(|_| Err(format!("client {i}: writer panicked")));
            let received = c.reader.join().unwrap_or_else(|_| Err(format!("client {i}: reader panicked")));
            match (sent, received) {
                (Ok(s), Ok(r)) if s == r => {}
                (Ok(s), Ok(r)) => failures.push(format!("client {i}: sent {s} bytes, got {r} back before EOF")),
                (s, r) => failures.extend(s.err().into_iter().chain(r.err())),
            }
        }
        match server.wait_exit(EXIT_TIMEOUT) {
            Some(status) if status.code() == Some(0) => {}
            Some(status) => {
                failures.push(format!("after {sig} and every client closed, the server exited with {status}"))
            }
            None => failures.push(format!("server still running {EXIT_TIMEOUT:?} after every client closed")),
        }
        fail_if_any(&failures);
    }

    pub fn sigterm_closes_listener_and_exits_0(mode: &Mode) {
        let mut server = Server::start(mode, &[]);
        let mut s = server.connect();
        roundtrip(&mut s, b"up and running").unwrap();
        close_cleanly(&mut s).unwrap();
        drop(s);
        server.signal(Signal::SIGTERM);
        assert!(
            poll_every(Duration::from_millis(20), Duration::from_secs(5), || { connection_refused(server.addr) }),
            "new connections still accepted 5 s after SIGTERM"
        );
        let status = server.wait_exit(EXIT_TIMEOUT);
        assert!(status.is_some(), "server still running {EXIT_TIMEOUT:?} after SIGTERM with no client");
        assert_eq!(status.unwrap().code(), Some(0), "exit status after SIGTERM: {status:?}");
    }

    /// A client that never closes: after SIGTERM it is still served, and
    /// when `--grace` runs out it gets everything it sent echoed, then EOF
    /// (not before the grace, less a little for the server's clock starting
    /// before this one; not after the grace and the flush grace), and the
    /// server exits 0.
    pub fn grace_period_ends_connections_that_stay_open(mode: &Mode) {
        const GRACE: Duration = Duration::from_secs(1);
        /// After the grace, the server stops reading and gives unsent
        /// replies this long (the server's FLUSH_GRACE).
        const FLUSH_GRACE: Duration = Duration::from_secs(1);
        /// Measured: closed 0.991-1.006 s after the signal.
        const EARLY: Duration = Duration::from_millis(100);
        const LATE: Duration = Duration::from_millis(500);
        let mut server = Server::start(mode, &["--grace", "1"]);
        let mut s = server.connect();
        roundtrip(&mut s, b"before the signal").unwrap();
        server.signal_and_wait_delivery(Signal::SIGTERM);
        let signalled = Instant::now();
        roundtrip(&mut s, b"after the signal, still served")
            .unwrap_or_else(|e| panic!("client during the grace period: {e}"));
        // Unanswered bytes when the grace ends must still come back.
        s.write_all(b"last words").unwrap();
        let rest = read_to_eof(&mut s).unwrap_or_else(|e| panic!("waiting for the grace period to end: {e}"));
        let closed_after = signalled.elapsed();
        assert_eq!(
            String::from_utf8_lossy(&rest),
            "LAST WORDS",
            "echo of bytes sent during the grace period, before EOF"
        );
        println!("{}: grace 1 s, connection closed {closed_after:?} after SIGTERM", mode.name);
        assert!(
            closed_after >= GRACE - EARLY,
            "connection closed {closed_after:?} after SIGTERM, before --grace 1 ran out"
        );
        assert!(
            closed_after <= GRACE + FLUSH_GRACE + LATE,
            "connection closed only {closed_after:?} after SIGTERM, past --grace 1 and the {FLUSH_GRACE:?} flush grace"
        );
        let status = server.wait_exit(EXIT_TIMEOUT);
        assert!(
            status.is_some(),
            "server still running {EXIT_TIMEOUT:?} after the grace period closed its last connection"
        );
        assert_eq!(status.unwrap().code(), Some(0), "exit status after a graceful stop whose grace ran out");
    }

    /// A client stays connected; `signals` (a second SIGINT, or SIGQUIT)
    /// stop the server at once instead of waiting for the (30 s) grace.
    ///
    /// Repeated with fresh servers: a signal that lands between a
    /// server's last look at its signal flags and its next blocking call
    /// is a race, lost only some of the time.
    pub fn immediate_stop(mode: &Mode, signals: &[Signal]) {
        const TRIES: usize = 25;
        let names: Vec<String> = signals.iter().map(|s| s.to_string()).collect();
        let names = names.join(" + ");
        for t in 1..=TRIES {
            let mut server = Server::start(mode, &[]);
            let mut s = server.connect();
            roundtrip(&mut s, b"stay connected").unwrap();
            for &sig in signals {
                server.signal_and_wait_delivery(sig);
            }
            let status = server.wait_exit(Duration::from_secs(5));
            assert!(
                status.is_some(),
                "try {t}/{TRIES}: server still running 5 s after {names} with a client connected; \
                 its threads are in: {}",
                server.where_blocked()
            );
            assert_eq!(exit_signal(&status.unwrap()), None, "try {t}: server died of a signal: {status:?}");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            read_sees_close(&mut s).unwrap_or_else(|e| panic!("try {t}: client after the server stopped: {e}"));
        }
    }

    pub fn kill_9_leaves_no_child_alive(mode: &Mode) {
        let mut server = Server::start(mode, &[]);
        let mut conns: Vec<TcpStream> = (0..5).map(|_| server.connect()).collect();
        for (i, c) in conns.iter_mut().enumerate() {
            roundtrip(c, format!("live connection {i}").as_bytes()).unwrap();
        }
        let children = server.live_children();
        assert!(!children.is_empty(), "no child process found while 5 connections are served");
        // The server's guard cannot find orphans by parent pid once it is
        // dead: whatever happens below, this one kills any left.
        let _children = KillOnDrop(children.clone());
        server.signal(Signal::SIGKILL);
        let killed = Instant::now();
        let status = server.wait_exit(EXIT_TIMEOUT).expect("server survived SIGKILL");
        assert_eq!(exit_signal(&status), Some(Signal::SIGKILL as i32), "server status {status}");
        let gone = poll_until(Duration::from_secs(2).saturating_sub(killed.elapsed()), || {
            children.iter().all(|c| !still_alive(c))
        });
        let alive: Vec<&ProcStat> = children.iter().filter(|c| still_alive(c)).collect();
        assert!(
            gone,
            "{} of {} children still alive 2 s after kill -9 of the server: {alive:?}",
            alive.len(),
            children.len()
        );
        // Nobody holds the connections any more: each client sees its end.
        for (i, c) in conns.iter_mut().enumerate() {
            c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            read_sees_close(c).unwrap_or_else(|e| panic!("connection {i} after its server died: {e}"));
        }
    }

    pub fn bad_flag_exits_2(mode: &Mode) {
        for bad in [&["--no-such-flag"][..], &["--backlog", "lots"], &["--max-conns", "0"]] {
            let mut args = vec!["--mode", mode.name, "--listen", "127.0.0.1:0"];
            args.extend_from_slice(mode.args);
            args.extend_from_slice(bad);
            let done = run_to_exit(&args);
            assert_eq!(
                done.status.code(),
                Some(2),
                "`server {}`: {}; stderr: {}",
                args.join(" "),
                done.status,
                done.stderr
            );
            assert!(!done.stderr.trim().is_empty(), "`server {}` exited 2 without a message", args.join(" "));
            assert!(
                !done.stdout.contains("listening on"),
                "`server {}` started listening: {}",
                args.join(" "),
                done.stdout
            );
        }
    }

    pub fn port_in_use_exits_1(mode: &Mode) {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let mut args = vec!["--mode", mode.name, "--listen", &addr];
        args.extend_from_slice(mode.args);
        let done = run_to_exit(&args);
        drop(taken);
        let want = format!("error: {addr} is already in use");
        assert!(done.stderr.lines().any(|l| l == want), "stderr lacks the line {want:?}:\n{}", done.stderr);
        assert_eq!(done.status.code(), Some(1), "exit status with the port in use: {}", done.status);
        assert!(!done.stdout.contains("listening on"), "server claims to listen: {}", done.stdout);
    }
}
