//! `examples/chat.rs`: the chat room, where the connections talk to each
//! other.
//!
//! - Five members take turns saying a line; each line reaches every other
//!   member, in order, and never its sender; joins and leaves are
//!   announced; in `event` mode and across the loops of `reactor` mode;
//! - a speaker floods the room while one member reads and one never
//!   does: the speaker is held back, the reader gets every line, and the
//!   stuck member is disconnected once it has been behind for the stall
//!   limit;
//! - a line over the limit gets a notice and a close, and hurts nobody;
//! - SIGTERM with members connected: they are served through the grace,
//!   then closed, and the process exits 0;
//! - the modes it cannot run in are refused at start, with the reason.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{in_modes, start, stop};
use crate::support::modes::{Mode, FORK, POOL, PREFORK_EVENT, SERIAL, THREAD, URING};
use crate::support::programs::example;
use crate::support::server::{run_program_to_exit, Server, EXIT_TIMEOUT};

/// A member: its id (from the welcome line) and its connection.
struct Member {
    id: u64,
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Member {
    fn join(server: &Server) -> Member {
        let w = server.connect();
        let mut r = BufReader::new(w.try_clone().expect("try_clone"));
        let welcome = read_line(&mut r);
        let id = welcome
            .strip_prefix("* welcome, you are guest")
            .and_then(|rest| rest.split(';').next()?.parse().ok())
            .unwrap_or_else(|| panic!("bad welcome {welcome:?}"));
        Member { id, r, w }
    }

    fn say(&mut self, line: &str) {
        self.w.write_all(format!("{line}\n").as_bytes()).expect("say");
    }

    /// Reads lines up to and including the first that `until` accepts
    /// (bounded by the socket's read timeout); all of them.
    fn read_until(&mut self, until: impl Fn(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = read_line(&mut self.r);
            let done = until(&line);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => panic!("the server closed the connection"),
        Ok(_) => line.trim_end_matches('\n').to_string(),
        Err(e) => panic!("read a line: {e}"),
    }
}

fn room(mode: &Mode) {
    let server = start("chat", mode, &[]);
    let mut members: Vec<Member> = Vec::new();
    for _ in 0..5 {
        let m = Member::join(&server);
        for other in &mut members {
            let joined = format!("* guest{} joined", m.id);
            other.read_until(|l| l == joined);
        }
        members.push(m);
    }
    // Rounds: member i speaks, everyone else hears it before the next
    // round, so a line that came back to its sender would show up in the
    // sender's stream before the next round's line.
    for round in 0..2 {
        for i in 0..members.len() {
            let text = format!("round {round}, line of member {i}");
            members[i].say(&text);
            let said = format!("guest{}: {text}", members[i].id);
            for (j, m) in members.iter_mut().enumerate() {
                if j != i {
                    let got = m.read_until(|l| l.starts_with("guest"));
                    assert_eq!(got.last(), Some(&said), "member {j} in round {round}: {got:?}");
                }
            }
        }
    }
    let gone = members.remove(2);
    let left = format!("* guest{} left", gone.id);
    drop(gone);
    for m in &mut members {
        assert_eq!(m.read_until(|_| true), std::slice::from_ref(&left));
    }
    drop(members);
    stop(server);
}

in_modes!(room; event: EVENT, reactor: REACTOR);

/// The most a TCP socket's send buffer grows to here (`tcp_wmem`'s max).
fn send_buffer_max() -> usize {
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap_or_default();
    wmem.split_whitespace().nth(2).and_then(|v| v.parse().ok()).unwrap_or(4 << 20)
}

#[test]
fn a_member_that_never_reads_is_dropped_and_hurts_nobody() {
    let server = start("chat", &crate::support::modes::EVENT, &[]);
    // The stuck member: a small receive window, and it never reads.
    let stuck = {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        sock.connect(&server.addr.into()).expect("connect");
        let w: TcpStream = sock.into();
        w.set_read_timeout(Some(crate::support::net::IO_TIMEOUT)).expect("timeout");
        let mut r = BufReader::new(w.try_clone().expect("try_clone"));
        assert!(read_line(&mut r).starts_with("* welcome"));
        r
    };
    let mut speaker = Member::join(&server);
    let stuck_id = speaker.id - 1;
    let reader = Member::join(&server);
    speaker.read_until(|l| l.ends_with("joined"));
    // More than the kernel can hold for the stuck member (its send buffer
    // at its largest, its window) and the room's mark, twice over.
    let line = "x".repeat(1000);
    let lines = (2 * send_buffer_max() + (1 << 20)) / line.len();
    let listen = thread::spawn(move || {
        let mut reader = reader; // the whole member: both halves close at the end
        let mut heard = 0;
        while heard < lines {
            heard += usize::from(read_line(&mut reader.r).starts_with("guest"));
        }
        heard
    });
    let t0 = Instant::now();
    for _ in 0..lines {
        speaker.say(&line);
    }
    assert_eq!(listen.join().expect("the reading member"), lines, "the reading member missed lines");
    speaker.read_until(|l| l == format!("* guest{stuck_id} left"));
    // Dropped once it had been behind for the stall limit (2 s), not at
    // the first burst.
    let after = t0.elapsed();
    eprintln!("chat: the stuck member was dropped {after:?} after a flood of {lines} lines began");
    assert!((1.9..10.0).contains(&after.as_secs_f64()), "dropped after {after:?}; the stall limit is 2 s");
    // Its stream was cut: what it finally reads ends long before all that
    // was said (then EOF).
    let mut got = Vec::new();
    let mut r = stuck;
    std::io::Read::read_to_end(&mut r, &mut got).expect("the stuck member's stream");
    assert!(got.len() < lines * line.len() / 2, "the stuck member was sent {} bytes", got.len());
    drop((speaker, r));
    stop(server);
}

#[test]
fn a_line_too_long_is_refused_and_hurts_nobody() {
    let server = start("chat", &crate::support::modes::EVENT, &[]);
    let mut a = Member::join(&server);
    let mut b = Member::join(&server);
    a.read_until(|l| l.ends_with("joined"));
    b.w.write_all(&vec![b'y'; 5000]).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut b.r, &mut rest).expect("b's stream");
    assert_eq!(rest, "* line over 4096 bytes: disconnected\n");
    assert_eq!(a.read_until(|_| true), [format!("* guest{} left", b.id)]);
    let mut c = Member::join(&server);
    c.say("still here");
    assert_eq!(a.read_until(|l| l.starts_with("guest")).last().unwrap(), &format!("guest{}: still here", c.id));
    drop((a, c));
    stop(server);
}

#[test]
fn sigterm_serves_members_through_the_grace_then_exits_0() {
    let mut server = start("chat", &crate::support::modes::EVENT, &["--grace", "1"]);
    let mut a = Member::join(&server);
    let mut b = Member::join(&server);
    a.read_until(|l| l.ends_with("joined"));
    let t0 = Instant::now();
    server.signal(Signal::SIGTERM);
    b.say("during the grace");
    assert_eq!(a.read_until(|_| true), [format!("guest{}: during the grace", b.id)]);
    let status = server.wait_exit(EXIT_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "exit status {status:?}");
    assert!(t0.elapsed() >= Duration::from_millis(900), "stopped before the grace was over: {:?}", t0.elapsed());
    let mut rest = String::new();
    assert!(std::io::Read::read_to_string(&mut a.r, &mut rest).is_ok(), "a's connection did not end cleanly");
}

#[test]
fn modes_without_one_shared_loop_are_refused() {
    let cases: [(&Mode, &str); 6] = [
        (&THREAD, "blocks its thread in the socket read"),
        (&POOL, "blocks its thread in the socket read"),
        (&SERIAL, "blocks its thread in the socket read"),
        (&FORK, "processes do not share memory"),
        (&PREFORK_EVENT, "processes do not share memory"),
        (&URING, "waits on readiness, which an io_uring loop does not have"),
    ];
    for (mode, why) in cases {
        let mut args = vec!["--mode", mode.name, "--listen", "127.0.0.1:0"];
        args.extend(mode.args);
        let done = run_program_to_exit(&example("chat"), &args);
        assert_eq!(done.status.code(), Some(2), "chat --mode {}: {done:?}", mode.name);
        let want = format!("error: chat cannot run in {} mode", mode.name);
        assert!(done.stderr.contains(&want) && done.stderr.contains(why), "{}: {}", mode.name, done.stderr);
        assert!(done.stdout.is_empty(), "refused, yet it printed {:?}", done.stdout);
    }
}
