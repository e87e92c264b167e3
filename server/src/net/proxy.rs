//! The PROXY protocol (HAProxy's, v1 text and v2 binary), for servers
//! behind a load balancer that says who the client is.
//!
//! With `--proxy-protocol` every connection must open with a header, sent
//! by a peer whose address is in `--proxy-from` (default: loopback);
//! connections from anywhere else are refused at accept. The header is read
//! before the connection is handed to its strategy, by the acceptor, for
//! every mode: [`peek`] looks at what arrived without taking it
//! (`MSG_PEEK`), [`parse`] (the `ppp` crate) says whether it is a whole
//! header, and only the header's own bytes are then taken from the socket,
//! so whatever the client sent after it stays in the kernel for the
//! protocol, and no driver needs to know a header existed. A header that is
//! not there at accept waits ([`Headers`]) in the loop's poll, under tokens
//! of its own, for at most [`HEADER_TIMEOUT`]; it may be [`MAX_HEADER`]
//! bytes long. A
//! malformed, missing, late or oversized header closes that connection and
//! counts in `switchyard_proxy_header_errors_total`; no other connection
//! notices.
//!
//! The address in the header is the connection's peer from then on: the
//! per-address limit, the logs and the metrics see the client, not the
//! balancer. A v2 `LOCAL` header (the balancer's own health check) and v1
//! `PROXY UNKNOWN` keep the socket's address.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use nix::sys::socket::MsgFlags;
use ppp::v2;
use slab::Slab;

use super::accept::{AcceptPolicy, Accepted, Outcome};
use crate::admission::Reservation;
use crate::context::Context;
use crate::lifecycle::poller::{HEADERS, RESERVED};

/// How long a connection may take to send its header.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest header accepted, in bytes (a v1 header is at most 107 by the
/// specification; v2 allows 65,551, far more than any balancer sends).
pub(crate) const MAX_HEADER: usize = 4096;

/// The first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Its length in bytes: what to take from the socket.
    pub(crate) len: usize,
    /// The client's address, or `None` when the header does not name one
    /// (v2 `LOCAL`, v1 `UNKNOWN`, a unix or unspecified family).
    pub(crate) source: Option<SocketAddr>,
    /// 1 or 2.
    pub(crate) version: u8,
}

/// What the bytes at the start of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// The start of a header: wait for more.
    Incomplete,
    /// A whole header (bytes after it belong to the protocol).
    Header(Header),
    /// Not a header, or a broken one.
    Bad(String),
}

/// Parses the start of a connection's input.
pub(crate) fn parse(input: &[u8]) -> Parsed {
    if input.is_empty() {
        return Parsed::Incomplete;
    }
    // A v2 header says its length up front: refuse one too long at once
    // rather than wait for bytes that will not be taken.
    if input.len() >= 16 && input.starts_with(V2_SIGNATURE) {
        let declared = 16 + usize::from(u16::from_be_bytes([input[14], input[15]]));
        if declared > MAX_HEADER {
            return Parsed::Bad(format!("a PROXY header of {declared} bytes, over {MAX_HEADER}"));
        }
    }
    let parsed = match ppp::HeaderResult::parse(input) {
        ppp::HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                (v2::Command::Proxy, _) => None,
            };
            Parsed::Header(Header { len: h.len(), source, version: 2 })
        }
        ppp::HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
                ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
                ppp::v1::Addresses::Unknown => None,
            };
            Parsed::Header(Header { len: h.header.len(), source, version: 1 })
        }
        r => {
            use ppp::PartialResult as _;
            if r.is_incomplete() {
                Parsed::Incomplete
            } else {
                Parsed::Bad(match r {
                    ppp::HeaderResult::V1(Err(e)) => format!("not a PROXY header: {e}"),
                    ppp::HeaderResult::V2(Err(e)) => format!("not a PROXY header: {e}"),
                    _ => "not a PROXY header".to_string(),
                })
            }
        }
    };
    match parsed {
        // A v1 header ends at its first CRLF: with the line there, nothing
        // more can complete it (ppp calls a line with fields missing partial).
        Parsed::Incomplete if input.starts_with(b"PROXY") && input.windows(2).any(|w| w == b"\r\n") => {
            Parsed::Bad("a malformed PROXY v1 line".to_string())
        }
        Parsed::Incomplete if input.len() >= MAX_HEADER => {
            Parsed::Bad(format!("no whole PROXY header in its first {MAX_HEADER} bytes"))
        }
        Parsed::Header(h) if h.len > MAX_HEADER => Parsed::Bad(format!("a PROXY header over {MAX_HEADER} bytes")),
        p => p,
    }
}

/// Looks at what `sock` received so far and, once it holds a whole header,
/// takes the header's bytes (and only those) from the socket. Never blocks.
pub(crate) fn peek<S: AsFd>(sock: &S) -> io::Result<Parsed> {
    let fd = sock.as_fd().as_raw_fd();
    let mut buf = [0u8; MAX_HEADER];
    let n = loop {
        match nix::sys::socket::recv(fd, &mut buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT) {
            Ok(n) => break n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return Ok(Parsed::Incomplete),
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(Parsed::Bad("closed before its PROXY header".to_string()));
    }
    let parsed = parse(&buf[..n]);
    if let Parsed::Header(h) = &parsed {
        let mut taken = 0;
        while taken < h.len {
            match nix::sys::socket::recv(fd, &mut buf[taken..h.len], MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => taken += k,
                Err(nix::errno::Errno::EINTR) => {}
                // The bytes were there a moment ago: only a reset takes them.
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(parsed)
}

/// A connection accepted from a trusted peer whose header has not come yet.
#[derive(Debug)]
pub(crate) struct Pending<S> {
    /// The connection.
    pub(crate) stream: S,
    /// Who connected (the balancer).
    pub(crate) via: SocketAddr,
    /// Its place under the cap: a connection waiting for its header is open.
    pub(crate) place: Reservation,
}

impl<S> Pending<S> {
    /// In a forked child: closes the child's copy, and leaves its place to
    /// the parent's books ([`Accepted::close_in_child`]).
    fn close_in_child(self) {
        std::mem::forget(self.place);
    }
}

#[derive(Debug)]
struct Entry<S> {
    pending: Pending<S>,
    seq: u64,
    /// An event came since the last look.
    readable: bool,
    /// The peer closed its side.
    closed: bool,
}

/// The table under [`Headers`]: connections waiting for their header, each
/// with its deadline ([`HEADER_TIMEOUT`] after accept). Keys are dense from
/// 0 (each socket's token is [`HEADERS`] + its key).
#[derive(Debug)]
pub(crate) struct Waiting<S> {
    entries: Slab<Entry<S>>,
    /// (deadline, key, seq), in deadline order (every wait is as long).
    order: VecDeque<(Instant, usize, u64)>,
    seq: u64,
    /// Keys with an event, to look at.
    ready: Vec<usize>,
}

impl<S> Default for Waiting<S> {
    fn default() -> Self {
        Waiting { entries: Slab::new(), order: VecDeque::new(), seq: 0, ready: Vec::new() }
    }
}

impl<S> Waiting<S> {
    /// The key the next [`Waiting::insert`] will use (to register first).
    pub(crate) fn next_key(&self) -> usize {
        self.entries.vacant_key()
    }

    /// Waits for `p`'s header until `now` + [`HEADER_TIMEOUT`]; returns its key.
    pub(crate) fn insert(&mut self, p: Pending<S>, now: Instant) -> usize {
        self.seq += 1;
        let key = self.entries.insert(Entry { pending: p, seq: self.seq, readable: false, closed: false });
        self.order.push_back((now + HEADER_TIMEOUT, key, self.seq));
        key
    }

    /// An event for `key`: look at it again.
    pub(crate) fn event(&mut self, key: usize, closed: bool) {
        if let Some(e) = self.entries.get_mut(key) {
            e.closed |= closed;
            if !e.readable {
                e.readable = true;
                self.ready.push(key);
            }
        }
    }

    /// The next connection with an event: its key and whether the peer closed.
    pub(crate) fn next_ready(&mut self) -> Option<(usize, bool)> {
        while let Some(key) = self.ready.pop() {
            if let Some(e) = self.entries.get_mut(key) {
                if e.readable {
                    e.readable = false;
                    return Some((key, e.closed));
                }
            }
        }
        None
    }

    /// The waiting connection under `key`.
    pub(crate) fn get(&self, key: usize) -> Option<&Pending<S>> {
        self.entries.get(key).map(|e| &e.pending)
    }

    /// Stops waiting for `key`'s header (it came, or it is given up).
    pub(crate) fn remove(&mut self, key: usize) -> Pending<S> {
        self.entries.remove(key).pending
    }

    /// A connection whose deadline passed by `now`, if any.
    pub(crate) fn expired(&mut self, now: Instant) -> Option<(usize, Pending<S>)> {
        while let Some(&(at, key, seq)) = self.order.front() {
            if self.entries.get(key).is_some_and(|e| e.seq == seq) {
                if at > now {
                    return None;
                }
                self.order.pop_front();
                return Some((key, self.remove(key)));
            }
            self.order.pop_front(); // its header came (or the slot was reused)
        }
        None
    }

    /// The earliest deadline.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.order.iter().find(|(_, key, seq)| self.entries.get(*key).is_some_and(|e| e.seq == *seq)).map(|o| o.0)
    }

    /// Keys of every waiting connection.
    pub(crate) fn keys(&self) -> Vec<usize> {
        self.entries.iter().map(|(k, _)| k).collect()
    }

    /// Whether none waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The connections of one loop that wait for their PROXY header, watched
/// in the loop's poll (tokens from [`HEADERS`]); the acceptor has one, and
/// so has an io_uring loop (whose ring watches that poll).
#[derive(Debug)]
pub(crate) struct Headers<S> {
    waiting: Waiting<S>,
    ctx: Context,
}

impl<S: AsFd> Headers<S> {
    /// None waiting yet.
    pub(crate) fn new(ctx: &Context) -> Headers<S> {
        Headers { waiting: Waiting::default(), ctx: ctx.clone() }
    }

    /// A connection just accepted from a trusted balancer: its header is
    /// usually there already (then the policy finishes it); if not, it
    /// waits, watched in `registry`.
    pub(crate) fn first_look(
        &mut self,
        p: Pending<S>,
        policy: &mut AcceptPolicy,
        registry: &Registry,
        now: Instant,
    ) -> Option<Accepted<S>> {
        match peek(&p.stream) {
            Ok(Parsed::Incomplete) => {
                let token = Token(HEADERS + self.waiting.next_key());
                let fd = p.stream.as_fd().as_raw_fd();
                if let Err(e) = registry.register(&mut SourceFd(&fd), token, Interest::READABLE) {
                    log::warn!("{}: cannot watch for its PROXY header: {e}; closing it", p.via);
                    self.ctx.accept_failed();
                    return None;
                }
                self.waiting.insert(p, now);
                None
            }
            Ok(Parsed::Header(h)) => self.finish(p, Ok(h), policy),
            Ok(Parsed::Bad(why)) => self.finish(p, Err(why), policy),
            Err(e) => self.finish(p, Err(e.to_string()), policy),
        }
    }

    /// Notes a poll event if it is one of these connections'.
    pub(crate) fn on_event(&mut self, ev: &mio::event::Event) {
        let Token(t) = ev.token();
        if (HEADERS..RESERVED).contains(&t) {
            self.waiting.event(t - HEADERS, ev.is_read_closed() || ev.is_error());
        }
    }

    /// The connections whose header came (or whose time ran out) since the
    /// last look; returns the first one the policy admits.
    pub(crate) fn arrived(
        &mut self,
        policy: &mut AcceptPolicy,
        registry: &Registry,
        now: Instant,
    ) -> Option<Accepted<S>> {
        while let Some((key, closed)) = self.waiting.next_ready() {
            let Some(p) = self.waiting.get(key) else { continue };
            let parsed = match peek(&p.stream) {
                Ok(Parsed::Incomplete) if closed => Err("closed before its whole PROXY header".to_string()),
                Ok(Parsed::Incomplete) => continue,
                Ok(Parsed::Header(h)) => Ok(h),
                Ok(Parsed::Bad(why)) => Err(why),
                Err(e) => Err(e.to_string()),
            };
            let p = self.waiting.remove(key);
            forget(&p, registry);
            if let Some(c) = self.finish(p, parsed, policy) {
                return Some(c);
            }
        }
        while let Some((_, p)) = self.waiting.expired(now) {
            forget(&p, registry);
            let _ = self.finish(p, Err(format!("no PROXY header within {HEADER_TIMEOUT:?}")), policy);
        }
        None
    }

    /// Closes every connection still waiting (the grace is over: they sent
    /// nothing the server owes an answer to).
    pub(crate) fn close_all(&mut self, registry: &Registry) {
        for key in self.waiting.keys() {
            let p = self.waiting.remove(key);
            forget(&p, registry);
            log::debug!("{}: closed at the end of the grace, before its PROXY header", p.via);
            self.ctx.refused(1);
        }
    }

    /// In a forked child: closes the child's copies of the waiting
    /// connections, and only those: the poll is shared with the parent,
    /// whose registrations stay, and their places and counts are the
    /// parent's.
    pub(crate) fn close_in_child(&mut self) {
        for e in std::mem::take(&mut self.waiting).entries.drain() {
            e.pending.close_in_child();
        }
    }

    /// The earliest deadline of a waiting connection.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.waiting.deadline()
    }

    /// Whether none waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Hands a connection whose header is whole to the policy's last steps
    /// (with the header's address), or closes one whose header is bad.
    fn finish(
        &mut self,
        p: Pending<S>,
        header: Result<Header, String>,
        policy: &mut AcceptPolicy,
    ) -> Option<Accepted<S>> {
        match header {
            Ok(h) => {
                let peer = h.source.unwrap_or(p.via);
                log::debug!("{peer}: PROXY v{} header from {}", h.version, p.via);
                match policy.finish(p.stream, peer, p.place) {
                    Outcome::Accepted(c) => Some(c),
                    _ => None,
                }
            }
            Err(why) => {
                log::debug!("{}: {why}; closed", p.via);
                self.ctx.proxy_header_failed();
                None
            }
        }
    }
}

/// Stops watching a connection that leaves the wait.
fn forget<S: AsFd>(p: &Pending<S>, registry: &Registry) {
    let fd = p.stream.as_fd().as_raw_fd();
    let _ = registry.deregister(&mut SourceFd(&fd));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            v2::Addresses::from((src, dst)),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn v1_and_v2_headers_give_the_source_and_their_length() {
        let line = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 7878\r\nhello";
        let h = Header { len: line.len() - 5, source: Some("192.0.2.7:51000".parse().unwrap()), version: 1 };
        assert_eq!(parse(line), Parsed::Header(h));
        let six = b"PROXY TCP6 2001:db8::1 ::1 4000 80\r\n";
        assert!(matches!(parse(six), Parsed::Header(Header { source: Some(s), .. }) if s.port() == 4000));
        assert!(matches!(parse(b"PROXY UNKNOWN\r\n"), Parsed::Header(Header { source: None, len: 15, .. })));

        let src: SocketAddr = "198.51.100.9:61000".parse().unwrap();
        let mut bin = v2_header(src, "127.0.0.1:7878".parse().unwrap());
        let len = bin.len();
        bin.extend_from_slice(b"data");
        assert_eq!(parse(&bin), Parsed::Header(Header { len, source: Some(src), version: 2 }));
        let local =
            v2::Builder::new(v2::Version::Two | v2::Command::Local, v2::Protocol::Unspecified as u8).build().unwrap();
        assert!(matches!(parse(&local), Parsed::Header(Header { source: None, len: 16, version: 2 })));
    }

    #[test]
    fn a_partial_header_waits_and_anything_else_is_bad() {
        let line = b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 7878\r\n";
        for cut in [1, 5, 20, line.len() - 1] {
            assert_eq!(parse(&line[..cut]), Parsed::Incomplete, "{cut} bytes");
        }
        let bin = v2_header("198.51.100.9:61000".parse().unwrap(), "127.0.0.1:7878".parse().unwrap());
        for cut in [1, 12, 15, bin.len() - 1] {
            assert_eq!(parse(&bin[..cut]), Parsed::Incomplete, "{cut} bytes");
        }
        for bad in [&b"GET / HTTP/1.1\r\n"[..], b"hello", b"PROXY TCP4 nonsense\r\n", b"PROXY TCP9 1 2 3 4\r\n"] {
            assert!(matches!(parse(bad), Parsed::Bad(_)), "{:?}", String::from_utf8_lossy(bad));
        }
        // A v1 line with no end in sight.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_HEADER, b'1');
        assert!(matches!(parse(&long), Parsed::Bad(_)));
        // A v2 header declaring more than the limit: bad from its 16th byte.
        let mut huge = bin[..16].to_vec();
        huge[14..16].copy_from_slice(&(MAX_HEADER as u16).to_be_bytes());
        assert!(matches!(parse(&huge), Parsed::Bad(_)));
        assert_eq!(parse(&huge[..15]), Parsed::Incomplete);
    }

    #[test]
    fn peek_takes_the_header_and_leaves_the_data() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        assert_eq!(peek(&s).unwrap(), Parsed::Incomplete, "nothing sent yet");
        c.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 7878").unwrap();
        // Wait (bounded) until the partial line is there: still incomplete.
        let deadline = Instant::now() + Duration::from_secs(5);
        while socket2::SockRef::from(&s).peek(&mut [std::mem::MaybeUninit::new(0u8); 64]).unwrap_or(0) < 10 {
            assert!(Instant::now() < deadline);
            std::thread::yield_now();
        }
        assert_eq!(peek(&s).unwrap(), Parsed::Incomplete);
        c.write_all(b"\r\nafter").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let got = loop {
            match peek(&s).unwrap() {
                Parsed::Incomplete => std::thread::yield_now(),
                p => break p,
            }
            assert!(Instant::now() < deadline);
        };
        assert!(matches!(got, Parsed::Header(Header { version: 1, .. })));
        let mut rest = [0u8; 5];
        std::io::Read::read_exact(&mut &s, &mut rest).unwrap();
        assert_eq!(&rest, b"after", "the bytes after the header stay for the protocol");
        drop(c);
    }

    #[test]
    fn waiting_connections_expire_in_order() {
        let mut w: Waiting<u32> = Waiting::default();
        let t = Instant::now();
        let place = || {
            crate::admission::Admission::new(10, None, crate::process::scoreboard::Slot::leaked()).reserve().unwrap()
        };
        let via: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = w.insert(Pending { stream: 1, via, place: place() }, t);
        let b = w.insert(Pending { stream: 2, via, place: place() }, t + Duration::from_millis(10));
        assert_eq!(w.deadline(), Some(t + HEADER_TIMEOUT));
        w.event(b, false);
        w.event(b, true);
        assert_eq!(w.next_ready(), Some((b, true)), "one look per burst of events");
        assert_eq!(w.next_ready(), None);
        assert!(w.expired(t + HEADER_TIMEOUT - Duration::from_millis(1)).is_none());
        let (k, p) = w.expired(t + HEADER_TIMEOUT).unwrap();
        assert_eq!((k, p.stream), (a, 1));
        let _ = w.remove(b);
        assert!(w.expired(t + 2 * HEADER_TIMEOUT).is_none() && w.is_empty() && w.deadline().is_none());
    }
}
