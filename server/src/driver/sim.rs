#![cfg_attr(not(feature = "sim"), allow(unreachable_pub))]
//! The non-blocking driver without the network: a scripted in-memory peer
//! ([`SimSocket`]) and a checker ([`run`]) that replays a script of peer
//! actions and readiness events against one [`Conn`] and checks, after every
//! step, what a real event loop relies on:
//!
//! - what the peer receives is always a prefix of the protocol's answer to
//!   what it sent: no byte lost, duplicated, reordered or invented;
//! - the connection's memory stays bounded (backpressure works), and a
//!   connection with nothing pending holds no buffer;
//! - an I/O error only comes from a reset, and `done` only once everything
//!   read was answered;
//! - liveness: after the peer closes and reads everything, the connection
//!   finishes within a bounded number of readiness events, delivered the way
//!   edge-triggered epoll delivers them (no event without a new arrival).
//!
//! Who calls it: the unit and property tests below, the regression test that
//! replays the committed fuzz corpus, and the cargo-fuzz target in `fuzz/`.
//! Scripts are plain bytes ([`decode`]), so any byte string is a valid test.

use std::collections::VecDeque;
use std::io;

use bytes::BytesMut;
use switchyard_common::{Protocol, Step, UpperEcho};

use super::nonblocking::{Conn, Scratch, Socket, Status, READ_CHUNK};

/// An in-memory socket: what the peer sent and has not been read yet, how
/// much the peer's side will take before writes block, and everything the
/// server wrote.
#[derive(Debug, Default)]
pub struct SimSocket {
    inbound: VecDeque<u8>,
    eof: bool,
    reset: bool,
    window: usize,
    interrupts: u8,
    written: Vec<u8>,
}

impl SimSocket {
    fn interrupted(&mut self) -> bool {
        if self.interrupts > 0 {
            self.interrupts -= 1;
            return true;
        }
        false
    }
}

impl Socket for SimSocket {
    fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        if self.interrupted() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if self.inbound.is_empty() {
            return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        // Like recv(2) on a stream socket: everything queued, up to the room
        // offered. Fewer bytes than offered means the queue is now empty.
        let n = self.inbound.len().min(buf.capacity() - buf.len());
        let (a, b) = self.inbound.as_slices();
        let from_a = n.min(a.len());
        buf.extend_from_slice(&a[..from_a]);
        buf.extend_from_slice(&b[..n - from_a]);
        self.inbound.drain(..n);
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.interrupted() {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.reset {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.window == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.window);
        self.window -= n;
        self.written.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

/// The protocol a script runs: the real one, and two that exercise the
/// driver's other paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`UpperEcho`]: consumes everything, never closes.
    Echo,
    /// Uppercase echo of whole `k`-byte blocks only: the driver must keep
    /// the partial block and hand it back with more behind it. A read of
    /// whole blocks takes the in-place path, any other the copying one.
    Blocks(usize),
    /// Uppercase echo up to and including the first 0x04 byte, then
    /// [`Step::Close`].
    Quit,
}

/// Uppercase echo in whole blocks (see [`Kind::Blocks`]).
#[derive(Debug)]
pub struct BlockEcho(pub usize);

impl Protocol for BlockEcho {
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        let whole = input.len() / self.0 * self.0;
        let mut block = input.split_to(whole);
        UpperEcho.on_read(&mut block, output)
    }

    fn on_read_in_place(&mut self, data: &mut [u8]) -> Option<Step> {
        data.len().is_multiple_of(self.0).then(|| UpperEcho.on_read_in_place(data)).flatten()
    }
}

/// Uppercase echo that closes after 0x04 (see [`Kind::Quit`]).
#[derive(Debug, Default)]
pub struct QuitEcho;

impl Protocol for QuitEcho {
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        match input.iter().position(|&b| b == 0x04) {
            Some(i) => {
                let mut head = input.split_to(i + 1);
                input.clear();
                UpperEcho.on_read(&mut head, output);
                Step::Close
            }
            None => UpperEcho.on_read(input, output),
        }
    }
}

impl Kind {
    fn protocol(self) -> Box<dyn Protocol> {
        match self {
            Kind::Echo => Box::new(UpperEcho),
            Kind::Blocks(k) => Box::new(BlockEcho(k)),
            Kind::Quit => Box::new(QuitEcho),
        }
    }

    /// How many bytes of answer the protocol owes for the first `read`
    /// bytes of a stream whose first 0x04 (if any) is at `quit`: for these
    /// protocols the answer is always a prefix of the uppercased input.
    fn owed(self, read: usize, quit: Option<usize>) -> usize {
        match self {
            Kind::Echo => read,
            Kind::Blocks(k) => read / k * k,
            Kind::Quit => quit.map_or(read, |q| read.min(q + 1)),
        }
    }
}

/// One step of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// The peer sends these bytes.
    Send(Vec<u8>),
    /// The peer closes its write side.
    Close,
    /// The peer resets the connection.
    Reset,
    /// The peer reads: its side takes this many more bytes.
    Window(usize),
    /// A readable event (spurious ones included, as epoll may deliver).
    Readable,
    /// A writable event.
    Writable,
    /// The next few syscalls fail with EINTR.
    Interrupt(u8),
    /// The grace period ended: stop reading.
    StopReading,
}

/// A decoded script: the protocol, the backpressure limit, the steps.
#[derive(Debug, Clone)]
pub struct Script {
    /// Which protocol the connection runs.
    pub kind: Kind,
    /// `--max-buffer`.
    pub max_buffer: usize,
    /// What happens, in order.
    pub ops: Vec<Op>,
}

/// Reads a script from arbitrary bytes: byte 0 picks the protocol, byte 1
/// the backpressure limit, then each op is a tag byte and its argument;
/// payload bytes come from the script itself, so the fuzzer controls them.
pub fn decode(data: &[u8]) -> Script {
    let at = |i: usize| data.get(i).copied().unwrap_or(0);
    let kind = match at(0) % 3 {
        0 => Kind::Echo,
        1 => Kind::Blocks(1 + at(0) as usize / 3 % 64),
        _ => Kind::Quit,
    };
    let max_buffer = 1024 << (at(1) % 9);
    let mut ops = Vec::new();
    let mut i = 2;
    while i < data.len() && ops.len() < 512 {
        let (tag, arg) = (at(i), at(i + 1));
        i += 2;
        ops.push(match tag % 8 {
            0 => {
                // Short sends come from the script; long ones cycle over it.
                let len = if arg < 200 { arg as usize } else { (arg as usize - 199) * 4096 };
                let src = &data[i.min(data.len())..];
                let bytes: Vec<u8> =
                    if src.is_empty() { vec![b'a'; len] } else { src.iter().copied().cycle().take(len).collect() };
                i += len.min(src.len());
                Op::Send(bytes)
            }
            1 => Op::Close,
            2 if arg == 0 => Op::Reset,
            2 | 3 => Op::Window(if arg == 255 { usize::MAX / 2 } else { arg as usize * 512 }),
            4 => Op::Readable,
            5 => Op::Writable,
            6 => Op::Interrupt(arg % 3),
            _ if arg < 8 => Op::StopReading,
            _ => Op::Readable,
        });
    }
    Script { kind, max_buffer, ops }
}

/// How a script ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The connection finished with every byte it read answered.
    Done,
    /// The connection failed with an I/O error after the peer reset it.
    Reset,
}

/// Most readiness events the closing phase may take: far more than a
/// finishing connection needs (the largest script is a few MiB).
const FINISH_EVENTS: usize = 10_000;

/// One connection under a script, with what the peer did.
struct Run {
    conn: Conn<SimSocket>,
    scratch: Scratch,
    script_kind: Kind,
    max_buffer: usize,
    /// Everything the peer sent, uppercased: the answer can only be a prefix.
    sent_upper: Vec<u8>,
    /// Where the first 0x04 is in what the peer sent.
    quit: Option<usize>,
    /// Bytes of output already compared.
    checked: usize,
    stopped: bool,
}

impl Run {
    fn sock(&mut self) -> &mut SimSocket {
        self.conn.stream_mut()
    }

    fn send(&mut self, bytes: &[u8]) {
        if self.quit.is_none() {
            self.quit = bytes.iter().position(|&b| b == 0x04).map(|p| p + self.sent_upper.len());
        }
        self.sock().inbound.extend(bytes.iter().copied());
        self.sent_upper.extend(bytes.iter().map(u8::to_ascii_uppercase));
    }

    /// Checks the invariants that hold after every step.
    fn check(&mut self, st: &Status) -> Result<(), String> {
        let t = self.conn.totals();
        let written = &self.conn.stream_mut().written;
        if t.bytes_out != written.len() as u64 {
            return Err(format!("totals say {} bytes out, the peer got {}", t.bytes_out, written.len()));
        }
        let owed = self.script_kind.owed(t.bytes_in as usize, self.quit);
        if written.len() > owed {
            return Err(format!("the peer got {} bytes, only {owed} are owed for {} read", written.len(), t.bytes_in));
        }
        let new = self.checked..written.len();
        if written[new.clone()] != self.sent_upper[new.clone()] {
            let at = new.clone().find(|&i| written[i] != self.sent_upper[i]).unwrap_or(new.start);
            return Err(format!("byte {at} of the answer is {:#04x}, not {:#04x}", written[at], self.sent_upper[at]));
        }
        self.checked = new.end;
        // Bounded memory: a connection is paused at max_buffer unsent bytes,
        // and one read adds at most a read chunk (plus allocator slack).
        let bound = 2 * (self.max_buffer + 4 * READ_CHUNK);
        if self.conn.held() > bound {
            return Err(format!("connection holds {} bytes of buffers (bound {bound})", self.conn.held()));
        }
        if self.script_kind == Kind::Echo && self.conn.unsent() == 0 && self.conn.held() != 0 {
            return Err(format!("nothing pending, yet {} bytes of buffers held", self.conn.held()));
        }
        if st.done && self.conn.unsent() != 0 {
            return Err(format!("done with {} bytes unsent", self.conn.unsent()));
        }
        Ok(())
    }

    /// Checks the state of a finished connection: everything read answered,
    /// and everything sent read unless the connection had reason to stop.
    fn check_done(&mut self) -> Result<Ending, String> {
        let t = self.conn.totals();
        let got = self.conn.stream_mut().written.len();
        let owed = self.script_kind.owed(t.bytes_in as usize, self.quit);
        if got != owed {
            return Err(format!("finished having sent {got} bytes; {owed} are owed for the {} read", t.bytes_in));
        }
        let sent = self.sent_upper.len() as u64;
        let closed_by_protocol = self.script_kind == Kind::Quit && self.quit.is_some();
        if !self.stopped && !closed_by_protocol && t.bytes_in != sent {
            return Err(format!("finished after reading {} of the {sent} bytes sent", t.bytes_in));
        }
        Ok(Ending::Done)
    }

    /// Handles the result of one call: `Some` when the connection ended.
    fn step(&mut self, r: io::Result<Status>) -> Result<Option<Ending>, String> {
        match r {
            Ok(st) => {
                self.check(&st)?;
                if st.done {
                    return self.check_done().map(Some);
                }
                Ok(None)
            }
            Err(e) if self.sock().reset => {
                let _ = e;
                Ok(Some(Ending::Reset))
            }
            Err(e) => Err(format!("I/O error without a reset: {e}")),
        }
    }
}

/// Replays `script` against a fresh connection; `Err` names the broken
/// invariant.
pub fn run(script: &Script) -> Result<Ending, String> {
    let mut r = Run {
        conn: Conn::new(SimSocket::default(), script.kind.protocol()),
        scratch: Scratch::new(script.max_buffer),
        script_kind: script.kind,
        max_buffer: script.max_buffer,
        sent_upper: Vec::new(),
        quit: None,
        checked: 0,
        stopped: false,
    };
    for op in &script.ops {
        let result = match op {
            Op::Send(b) => {
                if r.sock().eof || r.sock().reset {
                    continue; // a closed peer sends nothing more
                }
                r.send(b);
                continue;
            }
            Op::Close => {
                r.sock().eof = true;
                continue;
            }
            Op::Reset => {
                r.sock().reset = true;
                continue;
            }
            Op::Window(n) => {
                let s = r.sock();
                s.window = s.window.saturating_add(*n);
                continue;
            }
            Op::Interrupt(n) => {
                r.sock().interrupts = *n;
                continue;
            }
            Op::Readable => {
                // mio says read-closed only when the peer did close.
                let peer_closed = r.sock().eof;
                r.conn.on_readable(&mut r.scratch, peer_closed)
            }
            Op::Writable => r.conn.on_writable(&mut r.scratch),
            Op::StopReading => {
                r.stopped = true;
                let drained = r.conn.stop_reading();
                if drained {
                    return r.check_done();
                }
                continue;
            }
        };
        if let Some(end) = r.step(result)? {
            return Ok(end);
        }
    }
    finish(&mut r)
}

/// The closing phase: the peer closes and reads everything. Events come as
/// edge-triggered epoll gives them: one readable event (with read-closed)
/// for the arrival of the end-of-file, writable events only after a write
/// was refused, and readable events again only when the connection asked
/// for them (`more`). The connection must finish.
fn finish(r: &mut Run) -> Result<Ending, String> {
    if !r.sock().reset {
        r.sock().eof = true;
    }
    r.sock().window = usize::MAX / 2;
    let mut result = r.conn.on_readable(&mut r.scratch, true);
    for _ in 0..FINISH_EVENTS {
        let more = matches!(result, Ok(st) if st.more);
        if let Some(end) = r.step(result)? {
            return Ok(end);
        }
        result = if more {
            r.conn.on_readable(&mut r.scratch, false)
        } else if r.conn.unsent() > 0 {
            r.conn.on_writable(&mut r.scratch)
        } else {
            return Err(format!(
                "stalled: the peer closed and reads everything, no event is due, yet the connection is not done \
                 ({} of {} bytes read, {} unsent)",
                r.conn.totals().bytes_in,
                r.sent_upper.len(),
                r.conn.unsent()
            ));
        };
    }
    Err(format!("not done after {FINISH_EVENTS} events: spinning"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(kind: Kind, max_buffer: usize, ops: Vec<Op>) -> Script {
        Script { kind, max_buffer, ops }
    }

    #[test]
    fn echoes_then_finishes_on_eof() {
        let s = script(Kind::Echo, 1024, vec![Op::Send(b"hello".to_vec()), Op::Window(100), Op::Readable]);
        assert_eq!(run(&s), Ok(Ending::Done));
    }

    #[test]
    fn eof_in_the_same_event_as_data_is_not_missed() {
        // Data and end-of-file arrive before the only readable event.
        let s = script(Kind::Echo, 1024, vec![Op::Window(1 << 20), Op::Send(vec![b'x'; 70_000]), Op::Close]);
        assert_eq!(run(&s), Ok(Ending::Done));
    }

    #[test]
    fn blocked_peer_pauses_reading_and_resumes() {
        let s = script(
            Kind::Echo,
            4096,
            vec![Op::Send(vec![b'q'; 300_000]), Op::Readable, Op::Readable, Op::Window(10), Op::Writable],
        );
        assert_eq!(run(&s), Ok(Ending::Done));
    }

    #[test]
    fn partial_blocks_are_kept_across_reads() {
        let ops = vec![
            Op::Window(1 << 20),
            Op::Send(b"abc".to_vec()),
            Op::Readable,
            Op::Send(b"defg".to_vec()),
            Op::Interrupt(2),
            Op::Readable,
        ];
        assert_eq!(run(&script(Kind::Blocks(5), 1024, ops)), Ok(Ending::Done));
    }

    #[test]
    fn protocol_close_stops_reading() {
        let ops = vec![Op::Window(100), Op::Send(b"ab\x04cd".to_vec()), Op::Readable];
        assert_eq!(run(&script(Kind::Quit, 1024, ops)), Ok(Ending::Done));
    }

    #[test]
    fn reset_ends_with_an_error_not_a_panic() {
        let ops = vec![Op::Send(b"ab".to_vec()), Op::Reset, Op::Readable];
        assert_eq!(run(&script(Kind::Echo, 1024, ops)), Ok(Ending::Reset));
    }

    #[test]
    fn grace_end_answers_what_was_read() {
        let ops = vec![Op::Send(b"ab".to_vec()), Op::Readable, Op::StopReading, Op::Send(b"late".to_vec())];
        assert_eq!(run(&script(Kind::Echo, 1024, ops)), Ok(Ending::Done));
    }

    /// The checker itself can fail: a socket that drops a byte is caught.
    #[test]
    fn checker_catches_a_lost_byte() {
        let mut r = Run {
            conn: Conn::new(SimSocket::default(), Kind::Echo.protocol()),
            scratch: Scratch::new(1024),
            script_kind: Kind::Echo,
            max_buffer: 1024,
            sent_upper: Vec::new(),
            quit: None,
            checked: 0,
            stopped: false,
        };
        r.send(b"abc");
        r.sock().window = 100;
        let st = r.conn.on_readable(&mut r.scratch, false).unwrap();
        r.sock().written.remove(1);
        assert!(r.check(&st).is_err());
    }

    /// Every input the fuzzer kept (fuzz/corpus/conn) still passes: the
    /// corpus is a regression suite that runs without cargo-fuzz.
    #[test]
    fn fuzz_corpus_replays_clean() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/conn");
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            run(&decode(&data)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 10, "only {n} corpus files in {}", dir.display());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Random scripts on stable Rust: a small taste of what the fuzzer does.
        #[test]
        fn random_scripts_keep_every_invariant(data in proptest::collection::vec(proptest::num::u8::ANY, 0..2048)) {
            let script = decode(&data);
            if let Err(e) = run(&script) {
                return Err(proptest::test_runner::TestCaseError::fail(e));
            }
        }
    }

    #[test]
    fn any_bytes_decode_to_a_script() {
        for data in [&[][..], &[1], &[2, 3, 0, 250, 1, 2], &[255; 64]] {
            let s = decode(data);
            let _ = run(&s).unwrap_or_else(|e| panic!("{data:?}: {e}"));
        }
    }
}
