//! `examples/http_hello.rs`: the minimal HTTP/1.1 server, checked with
//! `curl` and `wrk`, and with raw requests for what those never send.
//!
//! - `curl`: `GET /` is `Hello, World!` with its length and a `Date`; one
//!   connection serves several requests (curl says it re-used it);
//!   `Connection: close` is answered in kind; `HEAD`, a 404, a 405, and
//!   HTTP/1.0 (which closes); in every strategy;
//! - raw: pipelined requests answered in order, a body skipped (whole or
//!   in pieces), HTTP/1.0 keep-alive, and each bad request with its status
//!   and a close after the answers it was owed: malformed 400, too many
//!   headers or too long a head 431, too long a request line 414, too big
//!   a body 413, `Transfer-Encoding` 501; a connection open meanwhile is
//!   served;
//! - heads bounded in time by `--idle-timeout 1`: a client trickling its
//!   head (never idle) gets 408 about a second after its first byte; one
//!   that stops mid-head is closed by the idle timeout; a head in two
//!   halves within the limit is served;
//! - `wrk` for a second: every response a 2xx, no socket error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::{in_modes, start, stop};
use crate::support::modes::Mode;
use crate::support::process::run_bounded;
use crate::support::programs::tool;
use crate::support::server::Server;

const HELLO: &str = "Hello, World!";

/// Writes `request` on a new connection and reads until the server closes.
pub(crate) fn exchange(server: &Server, request: &[u8]) -> String {
    let mut c = server.connect();
    c.write_all(request).expect("write the request");
    read_all(&mut c)
}

fn read_all(c: &mut TcpStream) -> String {
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap_or_else(|e| panic!("read to EOF after {:?}: {e}", String::from_utf8_lossy(&out)));
    String::from_utf8_lossy(&out).into_owned()
}

/// One parsed response: status code, headers (name lowercased), body.
#[derive(Debug)]
struct Response {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Splits a stream of responses (bodies by Content-Length; `head_only`:
/// the responses to HEAD have none) with `httparse`.
fn responses(mut raw: &[u8], head_only: &[bool]) -> Vec<Response> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut r = httparse::Response::new(&mut headers);
        let head = match r.parse(raw) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("bad response {:?} at {:?}", other, String::from_utf8_lossy(raw)),
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
            .collect();
        let len: usize = headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
        let len = if head_only.get(out.len()).copied().unwrap_or(false) { 0 } else { len };
        let body = String::from_utf8_lossy(&raw[head..head + len]).into_owned();
        out.push(Response { code: r.code.unwrap_or(0), headers, body });
        raw = &raw[head + len..];
    }
    out
}

/// `curl ARGS... URL...`, bounded: (stdout, stderr).
fn curl(server: &Server, args: &[&str], paths: &[&str]) -> (String, String) {
    let mut cmd = Command::new(tool("curl", "curl"));
    cmd.args(["-sS", "--max-time", "10"]).args(args);
    cmd.args(paths.iter().map(|p| format!("http://{}{p}", server.addr)));
    let done = run_bounded(cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert!(done.status.success(), "curl {args:?} {paths:?}: {done:?}");
    (done.stdout, done.stderr)
}

fn curl_session(mode: &Mode) {
    let server = start("http_hello", mode, &[]);
    let (out, _) = curl(&server, &["-i"], &["/"]);
    let r = &responses(out.as_bytes(), &[])[0];
    assert_eq!((r.code, r.body.as_str()), (200, HELLO), "{out}");
    assert_eq!(r.header("content-length"), Some("13"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(r.header("date").is_some_and(|d| d.ends_with(" GMT")), "{out}");
    assert_eq!(r.header("connection"), None, "HTTP/1.1 keeps the connection by default");

    // Keep-alive: three requests, one connection.
    let (out, err) = curl(&server, &["-v"], &["/", "/missing", "/?q=1"]);
    assert_eq!(out, format!("{HELLO}Not Found{HELLO}"));
    assert_eq!(err.matches("Re-using existing connection").count(), 2, "curl opened new connections:\n{err}");

    let (out, _) = curl(&server, &["-i", "-H", "Connection: close"], &["/"]);
    let r = &responses(out.as_bytes(), &[])[0];
    assert_eq!((r.code, r.header("connection")), (200, Some("close")), "{out}");

    let (out, _) = curl(&server, &["-I"], &["/"]);
    let r = &responses(out.as_bytes(), &[true])[0];
    assert_eq!((r.code, r.header("content-length"), r.body.as_str()), (200, Some("13"), ""), "{out}");

    let (out, _) = curl(&server, &["-i", "-X", "POST", "-d", "some=body"], &["/"]);
    let r = &responses(out.as_bytes(), &[])[0];
    assert_eq!((r.code, r.header("allow")), (405, Some("GET, HEAD")), "{out}");

    let (out, err) = curl(&server, &["-i", "-v", "--http1.0"], &["/"]);
    let r = &responses(out.as_bytes(), &[])[0];
    assert_eq!((r.code, r.header("connection")), (200, Some("close")), "{out}");
    assert!(!err.contains("left intact"), "HTTP/1.0 without keep-alive must close:\n{err}");
    stop(server);
}

in_modes!(curl_session;
    serial: SERIAL, fork: FORK, thread: THREAD, pool: POOL, event: EVENT, reactor: REACTOR,
    uring: URING, uring_rings: URING_RINGS,
    prefork_event: PREFORK_EVENT, prefork_serial: PREFORK_SERIAL, prefork_thread: PREFORK_THREAD,
    prefork_pool: PREFORK_POOL, prefork_uring: PREFORK_URING,
);

/// Sends `request`, expects the responses with these status codes in this
/// order and then the close; the last one says `Connection: close`.
fn expect_statuses(server: &Server, request: &[u8], codes: &[u16]) -> Vec<Response> {
    let raw = exchange(server, request);
    let got = responses(raw.as_bytes(), &[]);
    assert_eq!(got.iter().map(|r| r.code).collect::<Vec<_>>(), codes, "for {:?}", String::from_utf8_lossy(request));
    assert_eq!(got.last().and_then(|r| r.header("connection")), Some("close"), "{raw}");
    got
}

fn raw_requests(mode: &Mode) {
    let server = start("http_hello", mode, &[]);
    let mut bystander = if mode.concurrent { Some(server.connect()) } else { None };

    // Pipelined, answered in order, the last one closes.
    let pipelined = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n\
HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let raw = exchange(&server, pipelined);
    let got = responses(raw.as_bytes(), &[false, false, true, false]);
    let summary: Vec<(u16, &str)> = got.iter().map(|r| (r.code, r.body.as_str())).collect();
    assert_eq!(summary, [(200, HELLO), (404, "Not Found"), (200, ""), (200, HELLO)], "{raw}");

    // Bodies are skipped, whole or in pieces.
    expect_statuses(
        &server,
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        &[405, 200],
    );
    let mut c = server.connect();
    c.write_all(b"PUT /upload HTTP/1.1\r\nContent-Length: 100000\r\n\r\n").unwrap();
    for piece in vec![b'z'; 100_000].chunks(10_000) {
        c.write_all(piece).unwrap();
    }
    c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let codes: Vec<u16> = responses(read_all(&mut c).as_bytes(), &[]).iter().map(|r| r.code).collect();
    assert_eq!(codes, [405, 200]);

    // HTTP/1.0: closes by default, keeps the connection when asked.
    expect_statuses(&server, b"GET / HTTP/1.0\r\n\r\n", &[200]);
    let got = expect_statuses(
        &server,
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n",
        &[200, 200],
    );
    assert_eq!(got[0].header("connection"), Some("keep-alive"));

    // Bad requests: the answers owed before them, their status, the close.
    let many_headers: String = (0..70).map(|i| format!("X-H{i}: v\r\n")).collect();
    let long_header = format!("X-Long: {}\r\n", "v".repeat(9000));
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
    let bad: [(String, &[u16]); 7] = [
        ("GET / HTTP/1.1\r\n\r\nGARBAGE\r\n\r\n".into(), &[200, 400]),
        ("GET / HTTP/1.1\r\nContent-Length: abc\r\n\r\n".into(), &[400]),
        (format!("GET / HTTP/1.1\r\n{many_headers}\r\n"), &[431]),
        (format!("GET / HTTP/1.1\r\n{long_header}\r\n"), &[431]),
        (long_line, &[414]),
        ("POST / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n".into(), &[413]),
        ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(), &[501]),
    ];
    for (request, codes) in bad {
        expect_statuses(&server, request.as_bytes(), codes);
    }

    if let Some(c) = bystander.as_mut() {
        c.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        let got = responses(read_all(c).as_bytes(), &[]);
        assert_eq!((got.len(), got[0].code), (1, 200), "the bystander");
    }
    stop(server);
}

in_modes!(raw_requests; serial: SERIAL, thread: THREAD, event: EVENT, uring: URING, prefork_event: PREFORK_EVENT);

fn heads_bounded_in_time(mode: &Mode) {
    let server = start("http_hello", mode, &["--idle-timeout", "1"]);

    // A trickler is never idle, but its head takes too long: 408.
    let mut c = server.connect();
    let mut reader = c.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    let t0 = Instant::now();
    let read = thread::spawn(move || {
        let got = read_all(&mut reader);
        let _ = tx.send(());
        (got, t0.elapsed())
    });
    c.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
    for _ in 0..40 {
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() || c.write_all(b"z").is_err() {
            break;
        }
    }
    let (got, after) = read.join().unwrap();
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "the trickler got {got:?}");
    eprintln!("http_hello ({}): the trickler got 408 {after:?} after its first byte", mode.name);
    assert!((0.95..2.5).contains(&after.as_secs_f64()), "408 after {after:?}, the limit is 1 s");

    // One that stops mid-head: the idle timeout closes it, unanswered.
    let mut c = server.connect();
    let t0 = Instant::now();
    c.write_all(b"GET / HTTP/1.1\r\nHost: x").unwrap();
    let got = read_all(&mut c);
    let after = t0.elapsed();
    assert_eq!(got, "", "a silent client is closed without an answer");
    eprintln!("http_hello ({}): a silent half head was closed after {after:?}", mode.name);
    assert!((0.9..2.5).contains(&after.as_secs_f64()), "closed after {after:?}, the idle timeout is 1 s");

    // A head in two halves within the limit is served.
    let mut c = server.connect();
    c.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    thread::sleep(Duration::from_millis(300)); // the pause under test, not synchronisation
    c.write_all(b"Connection: close\r\n\r\n").unwrap();
    let got = read_all(&mut c);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with(HELLO), "{got:?}");
    stop(server);
}

in_modes!(heads_bounded_in_time; thread: THREAD, event: EVENT, uring: URING);

fn wrk_load(mode: &Mode) {
    let server = start("http_hello", mode, &[]);
    let mut cmd = Command::new(tool("wrk", "wrk"));
    cmd.args(["-t1", "-c10", "-d1s", "--timeout", "5s"]).arg(format!("http://{}/", server.addr));
    let done = run_bounded(cmd, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    assert!(done.status.success(), "wrk: {done:?}");
    let out = &done.stdout;
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.parse().ok()))
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{out}"));
    assert!(requests >= 100, "{requests} requests in a second:\n{out}");
    assert!(!out.contains("Socket errors") && !out.contains("Non-2xx"), "wrk saw errors:\n{out}");
    stop(server);
}

in_modes!(wrk_load;
    fork: FORK, thread: THREAD, pool: POOL, event: EVENT, reactor: REACTOR, uring: URING,
    prefork_event: PREFORK_EVENT,
);
