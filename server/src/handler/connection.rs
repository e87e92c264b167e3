//! [`Connection`]: what a handler is given. It implements the `futures-io`
//! traits [`AsyncRead`] and [`AsyncWrite`] (so the extension methods of
//! `futures` and `futures-lite`, and codecs built on them, work), tells the
//! peer's address, and offers [`Connection::read_chunk`], a read into a
//! buffer lent from the thread's pool, so that a connection waiting for
//! input holds no buffer at all.
//!
//! Two sides behind one type:
//!
//! - on an event loop, a non-blocking socket registered in the loop's poll
//!   ([`LoopIo`]): an operation that would block leaves its waker and waits
//!   for the loop's readiness event; writes go straight to the socket, so a
//!   handler that writes faster than its peer reads waits in `write`
//!   instead of buffering;
//! - in the blocking strategies, the blocking driver's socket side
//!   (`BlockingIo`): operations block the thread, with the idle timeout,
//!   the drain's stages and the process's lookout as the Protocol driver
//!   has them, and return early only when a timer of the handler is due.
//!
//! Either way the server ends the input (reads see end-of-file) when the
//! grace of a graceful stop is over, and at the idle timeout.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::BytesMut;
use futures_io::{AsyncRead, AsyncWrite};

use super::{executor, timers};
use crate::driver::blocking::{BlockingIo, Got, Wrote};
use crate::driver::Totals;
use crate::sys;

/// Bytes a [`Chunk`] holds at most (one read).
pub const CHUNK: usize = 64 * 1024;

/// A handler's connection.
pub struct Connection {
    io: Io,
    peer: SocketAddr,
}

enum Io {
    Loop(Rc<LoopIo>),
    Blocking(Rc<RefCell<BlockingIo>>),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("peer", &self.peer).finish()
    }
}

impl Connection {
    pub(crate) fn on_loop(io: Rc<LoopIo>, peer: SocketAddr) -> Connection {
        Connection { io: Io::Loop(io), peer }
    }

    pub(crate) fn blocking(io: Rc<RefCell<BlockingIo>>, peer: SocketAddr) -> Connection {
        Connection { io: Io::Blocking(io), peer }
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Reads what has arrived into a buffer lent from this thread's pool
    /// (at most [`CHUNK`] bytes); `None` at end of input. The buffer goes
    /// back to the pool when the [`Chunk`] is dropped, so a connection that
    /// waits for input holds no buffer.
    pub fn read_chunk(&mut self) -> ReadChunk<'_> {
        ReadChunk { conn: self }
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Chunk>>> {
        match &self.io {
            Io::Loop(io) => {
                std::task::ready!(executor::proceed(cx));
                let mut chunk = Chunk::lend();
                let offered = chunk.buf.capacity() - chunk.buf.len();
                // Pending drops the chunk: a waiting connection holds none.
                io.poll_read(cx, offered, |stream| sys::read_into(stream, &mut chunk.buf))
                    .map(|r| r.map(|n| (n > 0).then_some(chunk)))
            }
            Io::Blocking(io) => {
                let mut chunk = Chunk::lend();
                let got = io.borrow_mut().read_into(&mut chunk.buf, timers::next_deadline());
                blocking_read(got).map(|r| r.map(|n| (n > 0).then_some(chunk)))
            }
        }
    }
}

/// What a blocking read means to a future: data, end of input, or a timer
/// of the handler that is due (fired; the future waits for its waker).
fn blocking_read(got: io::Result<Got>) -> Poll<io::Result<usize>> {
    match got {
        Ok(Got::Data(n)) => Poll::Ready(Ok(n)),
        Ok(Got::Eof(_)) => Poll::Ready(Ok(0)),
        Ok(Got::Stopped) => Poll::Ready(Err(io::Error::new(io::ErrorKind::Interrupted, "server stopped"))),
        Ok(Got::Due) => {
            timers::fire(Instant::now());
            Poll::Pending
        }
        Err(e) => Poll::Ready(Err(e)),
    }
}

/// The future of [`Connection::read_chunk`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct ReadChunk<'a> {
    conn: &'a mut Connection,
}

impl Future for ReadChunk<'_> {
    type Output = io::Result<Option<Chunk>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.conn.poll_chunk(cx)
    }
}

impl AsyncRead for Connection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match &self.io {
            Io::Loop(io) => {
                std::task::ready!(executor::proceed(cx));
                let offered = buf.len();
                io.poll_read(cx, offered, |mut stream| stream.read(buf))
            }
            Io::Blocking(io) => blocking_read(io.borrow_mut().read(buf, timers::next_deadline())),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &self.io {
            Io::Loop(io) => {
                std::task::ready!(executor::proceed(cx));
                io.poll_write(cx, buf)
            }
            Io::Blocking(io) => match io.borrow_mut().write(buf, timers::next_deadline()) {
                Ok(Wrote::Sent(n)) => Poll::Ready(Ok(n)),
                Ok(Wrote::Due) => {
                    timers::fire(Instant::now());
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered: writes go to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.io {
            Io::Loop(io) => {
                let _ = io.stream.shutdown(std::net::Shutdown::Write);
            }
            Io::Blocking(io) => io.borrow().shutdown_write(),
        }
        Poll::Ready(Ok(()))
    }
}

/// A buffer lent from this thread's pool, holding what one read brought.
/// Derefs to the bytes; goes back to the pool when dropped.
pub struct Chunk {
    buf: BytesMut,
}

/// Buffers kept per thread at most; more are freed.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

impl Chunk {
    fn lend() -> Chunk {
        let mut buf = POOL.with(|p| p.borrow_mut().pop()).unwrap_or_else(|| BytesMut::with_capacity(CHUNK));
        buf.clear();
        buf.reserve(CHUNK);
        Chunk { buf }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() >= CHUNK {
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(buf);
                }
            });
        }
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for Chunk {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk").field("len", &self.buf.len()).finish()
    }
}

/// A handler's socket on an event loop: the stream, its readiness as the
/// loop last saw it, the wakers of a suspended read and write, and counts.
pub(crate) struct LoopIo {
    stream: mio::net::TcpStream,
    readable: Cell<bool>,
    writable: Cell<bool>,
    /// An event said the peer closed its side: read on to end-of-file.
    peer_closed: Cell<bool>,
    /// The server ended the input (the grace is over).
    input_ended: Cell<bool>,
    read_waker: RefCell<Option<Waker>>,
    write_waker: RefCell<Option<Waker>>,
    totals: Cell<Totals>,
    progressed: Cell<bool>,
}

impl LoopIo {
    /// Wraps a registered non-blocking stream.
    pub(crate) fn new(stream: mio::net::TcpStream) -> LoopIo {
        LoopIo {
            stream,
            // Edge-triggered: try first, wait for an edge after WouldBlock.
            readable: Cell::new(true),
            writable: Cell::new(true),
            peer_closed: Cell::new(false),
            input_ended: Cell::new(false),
            read_waker: RefCell::new(None),
            write_waker: RefCell::new(None),
            totals: Cell::new(Totals::default()),
            progressed: Cell::new(false),
        }
    }

    /// A readiness event for this socket: note it and wake what waits.
    pub(crate) fn on_event(&self, readable: bool, writable: bool, closed: bool) {
        if closed {
            self.peer_closed.set(true);
        }
        if readable || closed {
            self.readable.set(true);
            if let Some(w) = self.read_waker.borrow_mut().take() {
                w.wake();
            }
        }
        if writable || closed {
            self.writable.set(true);
            if let Some(w) = self.write_waker.borrow_mut().take() {
                w.wake();
            }
        }
    }

    /// The grace is over: reads see end-of-file from now on.
    pub(crate) fn end_input(&self) {
        self.input_ended.set(true);
        if let Some(w) = self.read_waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Whether bytes moved since the last call (the idle clock restarts).
    pub(crate) fn take_progress(&self) -> bool {
        self.progressed.replace(false)
    }

    /// Bytes moved so far.
    pub(crate) fn totals(&self) -> Totals {
        self.totals.get()
    }

    /// One read with `read`, which is offered `offered` bytes of room:
    /// the bytes read, `Ok(0)` at end of input.
    fn poll_read(
        &self,
        cx: &mut Context<'_>,
        offered: usize,
        mut read: impl FnMut(&mio::net::TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        if self.input_ended.get() {
            return Poll::Ready(Ok(0));
        }
        loop {
            if !self.readable.get() {
                *self.read_waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            match read(&self.stream) {
                Ok(n) => {
                    if n > 0 {
                        let mut t = self.totals.get();
                        t.bytes_in += n as u64;
                        self.totals.set(t);
                        self.progressed.set(true);
                    }
                    // Less than offered: the kernel queue was empty, and a
                    // later byte raises a new edge (unless the peer closed:
                    // no edge announces the end-of-file behind the data).
                    if n < offered && !self.peer_closed.get() {
                        self.readable.set(false);
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable.set(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            if !self.writable.get() {
                *self.write_waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            match (&self.stream).write(buf) {
                Ok(n) => {
                    if n < buf.len() {
                        self.writable.set(false);
                    }
                    let mut t = self.totals.get();
                    t.bytes_out += n as u64;
                    self.totals.set(t);
                    self.progressed.set(n > 0 || self.progressed.get());
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable.set(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
