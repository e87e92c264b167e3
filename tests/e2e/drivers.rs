//! Property tests of both drivers over real sockets: random payloads (up to
//! 1 MiB, and one 8 MiB case per driver) written in random chunks with
//! random pauses, through shrunken socket buffers, come back as their exact
//! ASCII uppercase; UTF-8 split anywhere passes through unchanged.
//!
//! Buffers: the client's SO_SNDBUF/SO_RCVBUF are 4 KiB; the server's are
//! 16 KiB (`--socket-buffer 16384`) for the large cases. At 4 KiB on the
//! server side Linux loopback itself slows to about 50 KB/s (measured with
//! both drivers and a Python client alike), so with 4 KiB on both ends the
//! cases are kept to 64 KiB; 16 KiB still turns nearly every server write
//! partial.
//!
//! `thread` mode exercises the blocking driver, `event` the non-blocking
//! one. One server per test function serves every generated case.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::support::modes::{Mode, EVENT, EVENT_ASYNC, THREAD, THREAD_ASYNC};
use crate::support::net::upper;
use crate::support::server::Server;

/// One generated case: what to send and how to cut it.
#[derive(Debug, Clone)]
struct Case {
    payload: Vec<u8>,
    chunks: Vec<usize>,
    pause_every: usize,
}

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Cases of at most `max` bytes (at least 256 KiB) or, with `small`, at
/// most 64 KiB.
fn cases(small: bool) -> impl Strategy<Value = Case> {
    let len = if small {
        prop_oneof![1 => 0usize..4096, 1 => 4096usize..=65_536].boxed()
    } else {
        prop_oneof![4 => 0usize..4096, 3 => 4096usize..262_144, 1 => 262_144usize..=1024 * 1024].boxed()
    };
    let text = "héllo wörld ∂ƒ ß 😀 abc XYZ 0123 ".to_string();
    let reps = if small { 1usize..1500 } else { 1usize..4000 };
    let payload = prop_oneof![
        3 => (any::<u64>(), len).prop_map(|(seed, n)| bytes_of(seed, n)),
        1 => reps.prop_map(move |reps| text.repeat(reps).into_bytes()),
    ];
    (payload, prop::collection::vec(1usize..70_000, 1..24), 1usize..16)
        .prop_map(|(payload, chunks, pause_every)| Case { payload, chunks, pause_every })
}

fn small_buffers(addr: std::net::SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_send_buffer_size(4096).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.set_tcp_nodelay(true).unwrap();
    sock.connect_timeout(&addr.into(), Duration::from_secs(5)).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Sends `case` (a writer thread) while reading everything back.
fn run_case(server: &Server, case: &Case) -> Result<(), TestCaseError> {
    let s = small_buffers(server.addr);
    let mut reader = s.try_clone().unwrap();
    let writer = {
        let (mut s, case) = (s, case.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut at = 0;
            for (i, n) in case.chunks.iter().cycle().enumerate() {
                if at >= case.payload.len() {
                    break;
                }
                let end = (at + n).min(case.payload.len());
                s.write_all(&case.payload[at..end])?;
                at = end;
                if i % case.pause_every == 0 {
                    std::thread::sleep(Duration::from_micros(300)); // a random-ish gap between writes
                }
            }
            s.shutdown(std::net::Shutdown::Write)
        })
    };
    let mut got = Vec::with_capacity(case.payload.len());
    let read = reader.read_to_end(&mut got);
    let wrote = writer.join().unwrap();
    prop_assert!(wrote.is_ok(), "write failed: {:?}", wrote);
    prop_assert!(read.is_ok(), "read failed: {:?}", read);
    prop_assert_eq!(got.len(), case.payload.len(), "length");
    let want = upper(&case.payload);
    if got != want {
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        return Err(TestCaseError::fail(format!("first difference at byte {i} of {}", want.len())));
    }
    if let Ok(text) = std::str::from_utf8(&case.payload) {
        let out = std::str::from_utf8(&got).map_err(|e| TestCaseError::fail(format!("UTF-8 broken: {e}")))?;
        prop_assert_eq!(out, text.to_ascii_uppercase());
    }
    Ok(())
}

fn property(mode: &Mode) {
    let server = Server::start(mode, &["--socket-buffer", "16384"]);
    let mut runner = TestRunner::new(Config { cases: 16, failure_persistence: None, ..Config::default() });
    let result = runner.run(&cases(false), |case| run_case(&server, &case));
    if let Err(e) = result {
        panic!("{}: {e}\nserver log:\n{}", mode.name, server.log());
    }
    // The largest size the issue asks for, once, cut in random places.
    let chunks = prop::collection::vec(1usize..70_000, 1..24);
    let mut runner = TestRunner::new(Config { cases: 1, failure_persistence: None, ..Config::default() });
    let big = (any::<u64>(), chunks).prop_map(|(seed, chunks)| Case {
        payload: bytes_of(seed, 8 * 1024 * 1024),
        chunks,
        pause_every: 8,
    });
    if let Err(e) = runner.run(&big, |case| run_case(&server, &case)) {
        panic!("{} (8 MiB): {e}\nserver log:\n{}", mode.name, server.log());
    }
    // 4 KiB socket buffers on both ends, as the issue asks, with payloads
    // small enough for loopback at that size.
    let server = Server::start(mode, &["--socket-buffer", "4096"]);
    let mut runner = TestRunner::new(Config { cases: 8, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&cases(true), |case| run_case(&server, &case)) {
        panic!("{} (4 KiB server buffers): {e}\nserver log:\n{}", mode.name, server.log());
    }
}

#[test]
fn blocking_driver_echoes_any_split() {
    property(&THREAD);
}

#[test]
fn nonblocking_driver_echoes_any_split() {
    property(&EVENT);
}

/// The same through a handler's `Connection`: over the blocking socket side
/// (`block_on`, thread mode) the coroutine echo gives the sans-IO echo's bytes
/// for any split.
#[test]
fn async_handler_on_a_blocking_socket_echoes_any_split() {
    property(&THREAD_ASYNC);
}

/// ... and on the event loop's executor.
#[test]
fn async_handler_on_the_event_loop_echoes_any_split() {
    property(&EVENT_ASYNC);
}
