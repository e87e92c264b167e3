//! `--proxy-protocol` in every mode and with both handler styles: a PROXY
//! header (v1, v2, v2 `LOCAL`, sent whole or in pieces, with or without
//! data behind it) names the client, whose address the per-address limit
//! and the metrics use; a bad or oversized header closes only its own
//! connection and is counted; a peer outside `--proxy-from` is refused; a
//! connection that sends no header is closed when its time is up.
//! The `haproxy` topic runs servers behind a real HAProxy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ppp::v2;

use crate::support::metrics::scrape;
use crate::support::modes::{per_mode, Mode, EVENT, PREFORK_EVENT, SERIAL, THREAD};
use crate::support::net::{close_cleanly, read_echo, roundtrip};
use crate::support::process::poll_until;
use crate::support::server::Server;

/// A v1 header for a client at `src`.
fn v1(src: &str) -> Vec<u8> {
    let a: SocketAddr = src.parse().unwrap();
    format!("PROXY TCP4 {} 127.0.0.1 {} 7878\r\n", a.ip(), a.port()).into_bytes()
}

/// A v2 header for a client at `src`, with a TLV as balancers send.
fn v2(src: &str) -> Vec<u8> {
    let src: SocketAddr = src.parse().unwrap();
    let dst: SocketAddr = "127.0.0.1:7878".parse().unwrap();
    v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, (src, dst))
        .write_tlv(v2::Type::UniqueId, b"request-42")
        .unwrap()
        .build()
        .unwrap()
}

/// A v2 `LOCAL` header: the balancer speaking for itself (a health check).
fn v2_local() -> Vec<u8> {
    v2::Builder::new(v2::Version::Two | v2::Command::Local, v2::Protocol::Unspecified as u8).build().unwrap()
}

/// The flags of these tests.
fn flags<'a>(more: &[&'a str]) -> Vec<&'a str> {
    let mut f = vec!["--proxy-protocol", "--metrics", "127.0.0.1:0"];
    f.extend_from_slice(more);
    f
}

/// `mode` with one prefork worker: the per-address limit is per process,
/// and these tests look at one.
fn one_process(mode: &Mode) -> Mode {
    let mut args: Vec<&'static str> = Vec::new();
    let mut it = mode.args.iter();
    while let Some(&a) = it.next() {
        if a == "--workers" {
            it.next();
            args.extend(["--workers", "1"]);
        } else {
            args.push(a);
        }
    }
    Mode { args: Box::leak(args.into_boxed_slice()), ..*mode }
}

/// Expects the server to close `s` without echoing a byte.
fn closed_unanswered(s: &mut TcpStream, what: &str, mode: &Mode) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {
            assert!(got.is_empty(), "{}: {what}: the server answered {:?}", mode.name, String::from_utf8_lossy(&got))
        }
        Err(e) => assert!(
            matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe),
            "{}: {what}: not closed: {e}",
            mode.name
        ),
    }
}

fn headers_name_the_client(mode: &Mode) {
    let mode = &one_process(mode);
    let server = Server::start(mode, &flags(&["--max-conns-per-ip", "1"]));
    let m = server.metrics_addr();
    let n = mode.name;

    // v1, the data in the same write as the header.
    let mut c = server.connect();
    c.write_all(&[v1("192.0.2.1:40001"), b"v1 and data at once".to_vec()].concat()).unwrap();
    read_echo(&mut c, b"v1 and data at once").unwrap_or_else(|e| panic!("{n}: v1: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("{n}: v1: {e}"));

    // v2 (with a TLV), the data after it.
    let mut c = server.connect();
    c.write_all(&v2("192.0.2.2:40002")).unwrap();
    roundtrip(&mut c, b"v2 then data").unwrap_or_else(|e| panic!("{n}: v2: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("{n}: v2: {e}"));

    // A health check's LOCAL header: served as the socket's own peer.
    let mut c = server.connect();
    c.write_all(&v2_local()).unwrap();
    roundtrip(&mut c, b"local").unwrap_or_else(|e| panic!("{n}: v2 LOCAL: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("{n}: v2 LOCAL: {e}"));

    // A header in three pieces, the data in the last.
    let mut c = server.connect();
    c.set_nodelay(true).unwrap();
    let h = v2("192.0.2.3:40003");
    c.write_all(&h[..5]).unwrap();
    c.flush().unwrap();
    c.write_all(&h[5..20]).unwrap();
    c.write_all(&[&h[20..], b"pieces"].concat()).unwrap();
    read_echo(&mut c, b"pieces").unwrap_or_else(|e| panic!("{n}: header in pieces: {e}"));
    close_cleanly(&mut c).unwrap_or_else(|e| panic!("{n}: header in pieces: {e}"));

    // With one client held (where the mode serves several at once), bad
    // headers: each closes its own connection only.
    let mut held = mode.concurrent.then(|| {
        let mut a = server.connect();
        a.write_all(&v1("198.51.100.7:50000")).unwrap();
        roundtrip(&mut a, b"held").unwrap_or_else(|e| panic!("{n}: held: {e}"));
        a
    });
    let mut bad = server.connect();
    bad.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    closed_unanswered(&mut bad, "no PROXY header", mode);
    let mut huge = server.connect();
    let mut h = v2("192.0.2.4:40004");
    h[14..16].copy_from_slice(&5000u16.to_be_bytes());
    huge.write_all(&h[..16]).unwrap();
    closed_unanswered(&mut huge, "a v2 header declaring 5,000 bytes", mode);

    if let Some(a) = &mut held {
        roundtrip(a, b"still served").unwrap_or_else(|e| panic!("{n}: held, after the bad headers: {e}"));
        // The limit counts the header's address, not the balancer's.
        let mut same = server.connect();
        same.write_all(&[v1("198.51.100.7:50001"), b"q".to_vec()].concat()).unwrap();
        closed_unanswered(&mut same, "a 2nd connection of a client at --max-conns-per-ip 1", mode);
        let mut other = server.connect();
        other.write_all(&v1("198.51.100.8:50000")).unwrap();
        roundtrip(&mut other, b"another client").unwrap_or_else(|e| panic!("{n}: another client: {e}"));
        // (Fork: a child's permit is held until the child is reaped.)
        let two = poll_until(Duration::from_secs(5), || scrape(m).value("switchyard_client_addresses") == 2.0);
        assert!(two, "{n}: two clients held, but {}", scrape(m).text);
        close_cleanly(&mut other).unwrap();
        close_cleanly(a).unwrap();
    }
    let counted = poll_until(Duration::from_secs(5), || scrape(m).value("switchyard_proxy_header_errors_total") >= 2.0);
    let page = scrape(m);
    assert!(counted, "{n}: bad headers not counted: {}", page.text);
    assert_eq!(page.value("switchyard_proxy_header_errors_total"), 2.0, "{n}");
    let refused = if mode.concurrent { 1.0 } else { 0.0 };
    assert_eq!(page.value("switchyard_connections_refused_total"), refused, "{n}: {}", page.text);
}

/// Where the peer is not in `--proxy-from`, even a good header is refused.
fn untrusted_peers_are_refused(mode: &Mode) {
    let server = Server::start(mode, &flags(&["--proxy-from", "10.0.0.0/8", "--proxy-from", "192.0.2.1"]));
    let mut c = server.connect();
    c.write_all(&[v1("192.0.2.9:40000"), b"q".to_vec()].concat()).unwrap();
    closed_unanswered(&mut c, "a header from 127.0.0.1, outside --proxy-from", mode);
    assert!(
        server.wait_log_line("not in --proxy-from", Duration::from_secs(5)).is_some(),
        "{}: no log line for the refusal",
        mode.name
    );
    let page = scrape(server.metrics_addr());
    assert_eq!(page.value("switchyard_connections_refused_total"), 1.0, "{}: {}", mode.name, page.text);
    assert_eq!(page.value("switchyard_proxy_header_errors_total"), 0.0, "{}", mode.name);
}

per_mode!(headers_name_the_client, untrusted_peers_are_refused);

/// A connection that sends no header is closed when `HEADER_TIMEOUT` (5 s)
/// ends, not before 4.9 s nor after 7 s, and counted; meanwhile (where the
/// mode serves several at once) others are served.
fn a_silent_connection_is_closed_when_its_time_is_up(mode: &Mode) {
    let server = Server::start(mode, &flags(&[]));
    let mut silent = server.connect();
    let start = Instant::now();
    if mode.concurrent {
        let mut c = server.connect();
        c.write_all(&v1("192.0.2.1:40000")).unwrap();
        roundtrip(&mut c, b"served beside a silent one").unwrap_or_else(|e| panic!("{}: {e}", mode.name));
        close_cleanly(&mut c).unwrap();
    }
    closed_unanswered(&mut silent, "a connection that sends no header", mode);
    let took = start.elapsed();
    println!("{}: a connection without a header closed after {took:?}", mode.name);
    assert!(
        took >= Duration::from_millis(4900) && took < Duration::from_secs(7),
        "{}: closed after {took:?}",
        mode.name
    );
    assert_eq!(scrape(server.metrics_addr()).value("switchyard_proxy_header_errors_total"), 1.0, "{}", mode.name);
}

#[test]
fn silent_connection_serial() {
    a_silent_connection_is_closed_when_its_time_is_up(&SERIAL);
}

#[test]
fn silent_connection_thread() {
    a_silent_connection_is_closed_when_its_time_is_up(&THREAD);
}

#[test]
fn silent_connection_event() {
    a_silent_connection_is_closed_when_its_time_is_up(&EVENT);
}

#[test]
fn silent_connection_prefork_event() {
    a_silent_connection_is_closed_when_its_time_is_up(&PREFORK_EVENT);
}
