//! A minimal HTTP/1.1 server, written as a sans-IO [`Protocol`]: `GET /`
//! answers `Hello, World!` (the TechEmpower "plaintext" shape), anything
//! else a short error.
//!
//! ```sh
//! cargo run --release --example http_hello -- --mode event --listen 127.0.0.1:8080 --idle-timeout 10
//! curl -i http://127.0.0.1:8080/
//! ```
//!
//! What it shows:
//!
//! - **parsing with a well-kept crate**: request heads are parsed by
//!   `httparse` straight from the connection's input, no copy;
//! - **keep-alive and pipelining**: every whole request of a read is
//!   answered, in order; HTTP/1.1 keeps the connection open unless the
//!   request says `Connection: close` (answered with `Connection: close`,
//!   then closed); HTTP/1.0 closes unless it asks for `keep-alive`;
//! - **bad input gets a status and a close**: a malformed request 400, a
//!   `Transfer-Encoding` (not implemented here) 501, a body over 1 MiB 413;
//!   a body up to that is skipped as it streams in, never buffered;
//! - **heads bounded in size and time**: a head may take [`MAX_HEAD`]
//!   bytes (8 KiB, as nginx's default; past that 414 if the request line
//!   alone is that long, else 431, as for more than [`MAX_HEADERS`]
//!   headers). In time: a head must be complete within the server's
//!   `--idle-timeout` of its first byte (10 s without one), checked
//!   whenever bytes of it arrive, so a client trickling a byte at a time
//!   gets 408 and a close; one that stops sending is closed by
//!   `--idle-timeout` itself. A protocol has no clock: the time is read
//!   when a partial head arrives (and the `Date` header's once per read).
//!
//! Every strategy serves it; `event` (or `prefork --worker event`) is the
//! one to compare with nginx (docs/BENCHMARKS.md, examples).

use std::cell::RefCell;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, BytesMut};
use httparse::{Request, Status, EMPTY_HEADER};
use switchyard_server::{Factory, Protocol, Step};

/// Bytes a request head may take.
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers a request may have.
pub const MAX_HEADERS: usize = 64;
/// Body bytes a request may carry (skipped, never buffered).
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a head may take without `--idle-timeout`.
pub const HEAD_TIME: Duration = Duration::from_secs(10);

const BODY: &[u8] = b"Hello, World!";
const _: () = assert!(BODY.len() == 13, "OK_HEAD says Content-Length: 13");

/// One connection.
struct Hello {
    /// How long a head may take from its first byte.
    head_time: Duration,
    /// When the head being received started arriving.
    head_started: Option<Instant>,
    /// Body bytes of the last request still to skip.
    body_left: usize,
}

/// What a request gets, and what follows it.
struct Answer {
    status: &'static str,
    body: &'static [u8],
    /// Send the head only (`HEAD`).
    head_only: bool,
    close: bool,
    /// HTTP/1.0 asked to keep the connection.
    keep_alive_1_0: bool,
    allow: bool,
    /// Body bytes to skip before the next request.
    skip: usize,
}

impl Answer {
    fn error(status: &'static str) -> Answer {
        Answer { status, body: b"", head_only: false, close: true, keep_alive_1_0: false, allow: false, skip: 0 }
    }
}

/// Decides the answer to a parsed request head.
fn answer(req: &Request) -> Answer {
    let (method, path, version) = (req.method.unwrap_or(""), req.path.unwrap_or(""), req.version.unwrap_or(1));
    let (mut close, mut keep_alive, mut length, mut chunked) = (false, false, None, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value).ok().filter(|v| v.bytes().all(|b| b.is_ascii_digit()));
            match (n.and_then(|v| v.parse::<usize>().ok()), length) {
                (Some(n), None) => length = Some(n),
                (Some(n), Some(m)) if n == m => {}
                _ => return Answer::error("400 Bad Request"),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    if chunked {
        return Answer::error("501 Not Implemented");
    }
    let skip = length.unwrap_or(0);
    if skip > MAX_BODY {
        return Answer::error("413 Content Too Large");
    }
    // HTTP/1.1 keeps the connection unless told to close; 1.0 closes
    // unless asked to keep it.
    let keep_alive_1_0 = version == 0 && keep_alive && !close;
    let close = close || (version == 0 && !keep_alive_1_0);
    let target = path.split('?').next().unwrap_or("");
    let mut a =
        Answer { status: "200 OK", body: BODY, head_only: method == "HEAD", close, keep_alive_1_0, allow: false, skip };
    match (method, target) {
        ("GET" | "HEAD", "/") => {}
        ("GET" | "HEAD", _) => (a.status, a.body) = ("404 Not Found", b"Not Found"),
        _ => (a.status, a.body, a.allow) = ("405 Method Not Allowed", b"", true),
    }
    a
}

thread_local! {
    /// The `Date` header's value and the second it was made for.
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Appends the `Date` header's value for now (formatted once a second).
fn date(out: &mut BytesMut) {
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs || d.1.is_empty() {
            *d = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(d.1.as_bytes());
    });
}

/// The head of the common answer, up to its `Date` value.
const OK_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nServer: switchyard\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nDate: ";

/// Appends the response of `a`.
fn respond(out: &mut BytesMut, a: &Answer) {
    if a.status == "200 OK" && !a.close && !a.keep_alive_1_0 && !a.head_only {
        // The answer to nearly every request, in three copies.
        out.extend_from_slice(OK_HEAD);
        date(out);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(BODY);
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(a.status.as_bytes());
    out.extend_from_slice(b"\r\nServer: switchyard\r\nContent-Type: text/plain\r\nContent-Length: ");
    out.extend_from_slice(a.body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    date(out);
    if a.close {
        out.extend_from_slice(b"\r\nConnection: close");
    } else if a.keep_alive_1_0 {
        out.extend_from_slice(b"\r\nConnection: keep-alive");
    }
    if a.allow {
        out.extend_from_slice(b"\r\nAllow: GET, HEAD");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !a.head_only {
        out.extend_from_slice(a.body);
    }
}

impl Protocol for Hello {
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        loop {
            if self.body_left > 0 {
                let n = self.body_left.min(input.len());
                input.advance(n);
                self.body_left -= n;
                if self.body_left > 0 {
                    return Step::Continue;
                }
            }
            if input.is_empty() {
                self.head_started = None;
                return Step::Continue;
            }
            let mut headers = [EMPTY_HEADER; MAX_HEADERS];
            let mut req = Request::new(&mut headers);
            let window = &input[..input.len().min(MAX_HEAD)];
            let a = match req.parse(window) {
                Ok(Status::Complete(head)) => {
                    let a = answer(&req);
                    input.advance(head);
                    a
                }
                Ok(Status::Partial) if window.len() == MAX_HEAD => match window.contains(&b'\n') {
                    false => Answer::error("414 URI Too Long"),
                    true => Answer::error("431 Request Header Fields Too Large"),
                },
                Ok(Status::Partial) => {
                    let now = Instant::now();
                    let started = *self.head_started.get_or_insert(now);
                    if now.duration_since(started) < self.head_time {
                        return Step::Continue; // the rest of the head is yet to come
                    }
                    Answer::error("408 Request Timeout")
                }
                Err(httparse::Error::TooManyHeaders) => Answer::error("431 Request Header Fields Too Large"),
                Err(_) => Answer::error("400 Bad Request"),
            };
            respond(output, &a);
            self.head_started = None;
            if a.close {
                input.clear();
                return Step::Close;
            }
            self.body_left = a.skip;
        }
    }
}

fn main() -> ExitCode {
    switchyard::server_cli::main_with(|config| {
        let head_time = config.idle_timeout.unwrap_or(HEAD_TIME);
        let factory: Factory = Arc::new(move || Box::new(Hello { head_time, head_started: None, body_left: 0 }));
        Ok::<_, String>(factory)
    })
}
