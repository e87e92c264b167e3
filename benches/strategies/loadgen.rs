//! The floor for the client's CPU per message: a minimal closed-loop load
//! generator. One thread, one mio poll, `conns` connections, each with a
//! fixed message of `size` bytes (random, about half of them lowercase
//! letters), its expected reply (the uppercase) and a fixed reply buffer;
//! a reply is checked by comparing bytes, and the clock is read once per
//! reply (its latency ends there, and the next message starts there). No
//! histograms, no per-second series, no timeouts: as little as a load
//! generator that verifies every byte can do.
//!
//! The strategy harness runs it as a separate process (this bench binary
//! re-executed with [`FLAG`]) beside the `client` binary against the same
//! server; `cargo bench --bench loadgen -- ADDR CONNS SIZE SECS` runs it by
//! hand. It prints one JSON line: messages, mismatches, seconds.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

/// The flag that makes the bench binary run the load generator.
pub const FLAG: &str = "--loadgen";

/// What the load generator does.
#[derive(Clone, Copy, Debug)]
pub struct Args {
    pub addr: SocketAddr,
    pub conns: usize,
    pub size: usize,
    pub secs: f64,
}

impl Args {
    /// `ADDR CONNS SIZE SECS`.
    pub fn parse(args: &[String]) -> Result<Args, String> {
        let usage = || "usage: loadgen ADDR CONNS SIZE SECS".to_string();
        let [addr, conns, size, secs] = args else { return Err(usage()) };
        Ok(Args {
            addr: addr.parse().map_err(|_| usage())?,
            conns: conns.parse().map_err(|_| usage())?,
            size: size.parse().map_err(|_| usage())?,
            secs: secs.parse().map_err(|_| usage())?,
        })
    }
}

/// One connection.
struct Conn {
    stream: TcpStream,
    open: bool,
    msg: Vec<u8>,
    expect: Vec<u8>,
    buf: Vec<u8>,
    wrote: usize,
    got: usize,
    sent: Instant,
}

impl Conn {
    /// Writes what is left of the message.
    fn send(&mut self) -> io::Result<()> {
        while self.wrote < self.msg.len() {
            match self.stream.write(&self.msg[self.wrote..]) {
                Ok(n) => self.wrote += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// What a run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub messages: u64,
    pub mismatches: u64,
    pub secs: f64,
    /// The sum of the latencies, ns (for the mean).
    pub latency_ns: u128,
}

/// Runs the load generator.
pub fn run(a: &Args) -> io::Result<Outcome> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut conns = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        let mut stream = TcpStream::connect(a.addr)?;
        stream.set_nodelay(true)?;
        poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        let msg: Vec<u8> = (0..a.size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x & 1 == 0 {
                    b'a' + (x >> 8) as u8 % 26
                } else {
                    (x >> 16) as u8
                }
            })
            .collect();
        let expect = msg.iter().map(u8::to_ascii_uppercase).collect();
        conns.push(Conn {
            stream,
            open: false,
            msg,
            expect,
            buf: vec![0; a.size],
            wrote: 0,
            got: 0,
            sent: Instant::now(),
        });
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.secs);
    let mut out = Outcome::default();
    let mut now = start;
    while now < end {
        poll.poll(&mut events, Some(end - now))?;
        for ev in events.iter() {
            let c = &mut conns[ev.token().0];
            if !c.open {
                if let Some(e) = c.stream.take_error()? {
                    return Err(e);
                }
                if c.stream.peer_addr().is_err() {
                    continue;
                }
                c.open = true;
                c.sent = Instant::now();
                c.send()?;
                continue;
            }
            if ev.is_writable() {
                c.send()?;
            }
            if !ev.is_readable() {
                continue;
            }
            loop {
                match c.stream.read(&mut c.buf[c.got..]) {
                    Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed")),
                    Ok(n) => c.got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
                if c.got == c.buf.len() {
                    // The one clock read of this reply: its end, and the next message's start.
                    now = Instant::now();
                    out.mismatches += u64::from(c.buf != c.expect);
                    out.messages += 1;
                    out.latency_ns += (now - c.sent).as_nanos();
                    c.sent = now;
                    c.got = 0;
                    c.wrote = 0;
                    c.send()?;
                    break;
                }
            }
        }
        now = Instant::now();
    }
    out.secs = (now - start).as_secs_f64();
    Ok(out)
}

/// The whole program: `ADDR CONNS SIZE SECS`; prints one JSON line; exit 1
/// on an error or a mismatch, 2 on bad arguments.
pub fn main_with(args: &[String]) -> std::process::ExitCode {
    let a = match Args::parse(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(o) => {
            println!(
                "{{\"messages\": {}, \"mismatches\": {}, \"secs\": {:.6}, \"mean_latency_us\": {:.3}}}",
                o.messages,
                o.mismatches,
                o.secs,
                o.latency_ns as f64 / o.messages.max(1) as f64 / 1e3
            );
            if o.mismatches > 0 {
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
