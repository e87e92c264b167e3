//! The non-blocking driver: one connection as a resumable state machine over
//! mio readiness. The event loops (`strategy::event`) own many of them and
//! call [`Conn::on_readable`] / [`Conn::on_writable`] when the poll says so.
//!
//! Memory: an idle connection owns no buffer. Reads land in the loop's
//! [`Scratch`]; the protocol writes into scratch output, which goes straight
//! to the socket; only what the socket does not take is copied into the
//! connection's own `out` buffer, and that buffer is freed once it drains.
//! A protocol that answers in place (`Protocol::on_read_in_place`) turns the
//! scratch input into its reply: the two scratch buffers trade places and
//! the reply is sent from where it was read, with no copy.
//!
//! Syscalls: mio is edge-triggered. A read that returns less than the space
//! offered means the kernel queue was empty at that moment, and any later
//! byte raises a new edge, so the common case is one read and one write per
//! readiness event. The exception is an end-of-file that came with the same
//! edge as the data (the event says read-closed): no new edge follows it.
//! The connection remembers that it was told so (the event may come while
//! the connection is paused, long before it reads again), and from then on
//! reads on until it sees the end. A connection that used up its read budget is reported
//! with [`Status::more`] so the loop comes back to it after serving others.
//!
//! Backpressure: above `max_buffer` unsent bytes the connection is paused
//! (not read) until its output drains below a quarter of that.
//!
//! The state machine touches its socket only through [`Socket`], so the same
//! code runs over mio's `TcpStream` in the event loops and over the scripted
//! in-memory peer of [`super::sim`] in unit tests and the fuzz target.

use std::io::{self, Write};

use bytes::BytesMut;
use mio::net::TcpStream;
use switchyard_common::{Protocol, Step};

use super::Totals;
use crate::sys;

/// Bytes offered to one read(2).
pub(crate) const READ_CHUNK: usize = 64 * 1024;
/// Reads one connection may do per readiness event before others get a turn.
pub(crate) const READ_BUDGET: usize = 16;

/// What the connection state machine needs of a non-blocking socket.
pub(crate) trait Socket {
    /// Reads into the spare capacity of `buf` (growing its length by what
    /// was read): `Ok(0)` is end-of-file, `WouldBlock` means nothing queued.
    fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize>;
    /// Writes some of `buf`: `WouldBlock` means the send buffer is full.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
}

impl Socket for TcpStream {
    #[inline]
    fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        sys::read_into(self, buf)
    }

    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Write::write(self, buf)
    }
}

/// Buffers shared by every connection of one loop.
#[derive(Debug)]
pub(crate) struct Scratch {
    input: BytesMut,
    output: BytesMut,
    max_buffer: usize,
}

impl Scratch {
    /// Scratch space for a loop whose connections may hold `max_buffer`
    /// unsent bytes before they are paused.
    pub(crate) fn new(max_buffer: usize) -> Scratch {
        let (input, output) = super::buffer_pair(READ_CHUNK);
        Scratch { input, output, max_buffer }
    }

    /// Forgets whatever a connection left here (its protocol panicked
    /// mid-call): no byte of it may reach the next connection.
    pub(crate) fn reset(&mut self) {
        self.input.clear();
        self.output.clear();
    }
}

/// What a call did, for the loop's bookkeeping.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    /// Bytes moved in either direction (resets the idle timer).
    pub(crate) progressed: bool,
    /// Input may be waiting without a new edge (read budget used, or just
    /// resumed from backpressure): call `on_readable` again soon.
    pub(crate) more: bool,
    /// The connection is finished: drop it.
    pub(crate) done: bool,
}

/// One connection's state, over a socket `S` (mio's `TcpStream` when
/// serving).
pub(crate) struct Conn<S = TcpStream> {
    stream: S,
    proto: Box<dyn Protocol>,
    /// Input the protocol left unconsumed (empty, unallocated for echo).
    input: BytesMut,
    /// Output the socket has not taken yet.
    out: BytesMut,
    read_closed: bool,
    /// A readiness event said the peer closed its write side: an EOF is
    /// queued behind the data, and no further edge will announce it.
    peer_closed: bool,
    paused: bool,
    totals: Totals,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Conn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("stream", &self.stream)
            .field("unsent", &self.out.len())
            .field("read_closed", &self.read_closed)
            .field("paused", &self.paused)
            .finish()
    }
}

impl<S: Socket> Conn<S> {
    /// Wraps an accepted non-blocking stream.
    pub(crate) fn new(stream: S, proto: Box<dyn Protocol>) -> Conn<S> {
        Conn {
            stream,
            proto,
            input: BytesMut::new(),
            out: BytesMut::new(),
            read_closed: false,
            peer_closed: false,
            paused: false,
            totals: Totals::default(),
        }
    }

    /// The socket, to register it.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes moved so far.
    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    /// Unsent bytes held by this connection.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn unsent(&self) -> usize {
        self.out.len()
    }

    /// Bytes of buffer memory this connection holds (capacity, not length).
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn held(&self) -> usize {
        self.input.capacity() + self.out.capacity()
    }

    /// Reads what has arrived (within the budget), runs the protocol and
    /// writes what the socket takes. `peer_closed`: the readiness event said
    /// the peer's write side is closed, so read on to end-of-file.
    pub(crate) fn on_readable(&mut self, s: &mut Scratch, peer_closed: bool) -> io::Result<Status> {
        self.peer_closed |= peer_closed;
        let mut st = Status::default();
        let mut reads = 0;
        while !self.read_closed && !self.paused {
            if reads == READ_BUDGET {
                st.more = true;
                break;
            }
            reads += 1;
            let buf = if self.input.is_empty() {
                s.input.clear();
                &mut s.input
            } else {
                &mut self.input
            };
            buf.reserve(READ_CHUNK);
            let offered = buf.capacity() - buf.len();
            match self.stream.read_into(buf) {
                Ok(0) => {
                    self.read_closed = true;
                    let target = if self.out.is_empty() { &mut s.output } else { &mut self.out };
                    self.proto.on_eof(target);
                }
                Ok(n) => {
                    st.progressed = true;
                    self.totals.bytes_in += n as u64;
                    let in_scratch = self.input.is_empty();
                    let step = match in_scratch.then(|| self.proto.on_read_in_place(&mut s.input)).flatten() {
                        // The reply is the input, where it landed: the
                        // scratch buffers trade places (no copy), unless
                        // it must queue behind unsent output.
                        Some(step) => {
                            if self.out.is_empty() {
                                std::mem::swap(&mut s.input, &mut s.output);
                            } else {
                                self.out.extend_from_slice(&s.input);
                                s.input.clear();
                            }
                            step
                        }
                        None => {
                            let (input, target) = match (in_scratch, self.out.is_empty()) {
                                (true, true) => (&mut s.input, &mut s.output),
                                (true, false) => (&mut s.input, &mut self.out),
                                (false, true) => (&mut self.input, &mut s.output),
                                (false, false) => (&mut self.input, &mut self.out),
                            };
                            self.proto.on_read(input, target)
                        }
                    };
                    if in_scratch && !s.input.is_empty() {
                        // The protocol wants more before it can use these.
                        self.input.extend_from_slice(&s.input);
                    }
                    if step == Step::Close {
                        self.read_closed = true;
                    }
                    self.flush(s, &mut st)?;
                    if n < offered && !self.peer_closed {
                        break; // the kernel queue is empty: wait for the next edge
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.flush(s, &mut st)?;
        st.done = self.read_closed && self.out.is_empty();
        Ok(st)
    }

    /// The socket has room: send what is pending.
    pub(crate) fn on_writable(&mut self, s: &mut Scratch) -> io::Result<Status> {
        let mut st = Status::default();
        self.flush(s, &mut st)?;
        st.done = self.read_closed && self.out.is_empty();
        Ok(st)
    }

    /// Stops reading (the grace period is over): once the output drains, the
    /// connection is done.
    pub(crate) fn stop_reading(&mut self) -> bool {
        self.read_closed = true;
        self.out.is_empty()
    }

    /// Sends pending output, then scratch output; keeps what the socket
    /// refuses; applies backpressure.
    fn flush(&mut self, s: &mut Scratch, st: &mut Status) -> io::Result<()> {
        if !self.out.is_empty() {
            let n = write_some(&mut self.stream, &self.out)?;
            if n > 0 {
                st.progressed = true;
                self.totals.bytes_out += n as u64;
                let _ = self.out.split_to(n);
            }
        }
        if !s.output.is_empty() {
            // The scratch output belongs to this connection only for this
            // call: it is emptied whatever the write does, so no byte can
            // reach the loop's next connection.
            let written = if self.out.is_empty() { write_some(&mut self.stream, &s.output) } else { Ok(0) };
            let n = match written {
                Ok(n) => n,
                Err(e) => {
                    s.output.clear();
                    return Err(e);
                }
            };
            if n > 0 {
                st.progressed = true;
                self.totals.bytes_out += n as u64;
            }
            if n < s.output.len() {
                self.out.extend_from_slice(&s.output[n..]);
            }
            s.output.clear();
        }
        if self.out.is_empty() {
            if self.out.capacity() > 0 {
                self.out = BytesMut::new(); // idle connections hold no buffer
            }
            if self.paused {
                self.paused = false;
                st.more = true;
            }
        } else if self.out.len() >= s.max_buffer {
            self.paused = true;
        } else if self.paused && self.out.len() <= s.max_buffer / 4 {
            self.paused = false;
            st.more = true;
        }
        Ok(())
    }
}

/// Writes as much of `buf` as the socket takes now.
fn write_some<S: Socket>(stream: &mut S, buf: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < buf.len() {
        match stream.write(&buf[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}
