//! The completion driver: one connection served through io_uring
//! completions (the `uring` strategy owns many of them). Where the
//! non-blocking driver is told "readable" and reads, this one is handed
//! what the kernel already received: a multishot receive stays armed on the
//! socket and each completion brings a buffer from the ring's provided
//! buffers, shared by every connection of the ring, so a connection that
//! waits for input holds no buffer at all.
//!
//! - **In place.** A protocol that answers in place
//!   (`Protocol::on_read_in_place`) turns the received buffer into its
//!   reply, and the reply is sent from that buffer: no copy. The buffer goes
//!   back to the ring when the send completes. Otherwise the bytes are
//!   copied into the protocol's input and its output is sent (the copying
//!   path, for protocols that need it).
//! - **Order.** Replies queue per connection; one send is in flight at a
//!   time, and a short send is resumed from where it stopped before the
//!   next reply goes. Replies are sent once the loop has handled the whole
//!   batch of completions, and what queued by then goes in one `sendmsg`
//!   (up to [`MAX_BATCH`] payloads: a 64 KiB message that came in four
//!   buffers goes back in one send, not four in turn).
//! - **Backpressure.** Above `max_buffer` unsent bytes the receive is
//!   cancelled (the kernel keeps what arrives in the socket's buffer and the
//!   peer's window closes); it is armed again once the output drained below
//!   a quarter of that, as in the non-blocking driver.
//! - **Buffers run out.** A receive that finds the ring empty ends
//!   (`ENOBUFS`); the connection is [`Status::starved`] and the loop arms it
//!   again once buffers are back.
//! - **Closing.** A socket is closed only once no request of its own is in
//!   flight ([`Conn::in_flight`]): closing cancels them, and the loop keeps
//!   the connection until their last completions came, so the kernel never
//!   acts on a closed (or reused) fd, and a send's buffer lives until the
//!   kernel is done with it.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;

use bytes::BytesMut;
use switchyard_common::{Protocol, Step};

use super::Totals;
use crate::sys::uring::{Buf, Kind, Payload, Sent, Uring, MAX_BATCH};

/// What a completion did, for the loop's bookkeeping.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Status {
    /// Bytes moved in either direction (resets the idle timer).
    pub(crate) progressed: bool,
    /// The receive ended for want of buffers: arm it again once some are back.
    pub(crate) starved: bool,
    /// Replies wait: the loop sends them ([`Conn::send_queued`]) once it
    /// has handled every completion of the batch, so that what arrived in
    /// several buffers at once goes in one send.
    pub(crate) queued: bool,
    /// Nothing more to do: close the connection.
    pub(crate) done: bool,
}

/// What a connection holds while bytes wait: allocated only then, so an
/// idle connection is a few words.
#[derive(Debug, Default)]
struct Pending {
    /// Input the protocol left unconsumed (the copying path).
    input: BytesMut,
    /// Replies not sent yet, in order (the one in flight is not here).
    queue: VecDeque<Payload>,
    /// Bytes in `queue` and in flight.
    unsent: usize,
}

/// One connection's state.
pub(crate) struct Conn {
    sock: TcpStream,
    /// Tells this connection's completions from those of an earlier one in
    /// the same slot of the loop (kept here, where it fits beside the fd).
    generation: u32,
    proto: Box<dyn Protocol>,
    pending: Option<Box<Pending>>,
    /// The multishot receive is armed (until its last completion).
    receiving: bool,
    /// A cancel of the receive was asked for.
    recv_cancelled: bool,
    /// A send is in flight.
    sending: bool,
    /// No more input is wanted (end-of-file, the protocol closed, the drain).
    read_closed: bool,
    /// Paused by backpressure.
    paused: bool,
    /// Being closed: its requests are cancelled.
    closing: bool,
    totals: Totals,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("sock", &self.sock)
            .field("unsent", &self.unsent())
            .field("receiving", &self.receiving)
            .field("sending", &self.sending)
            .field("read_closed", &self.read_closed)
            .finish()
    }
}

impl Conn {
    /// A connection on an accepted socket; [`Conn::start`] arms its receive.
    pub(crate) fn new(sock: TcpStream, proto: Box<dyn Protocol>, generation: u32) -> Conn {
        Conn {
            sock,
            generation,
            proto,
            pending: None,
            receiving: false,
            recv_cancelled: false,
            sending: false,
            read_closed: false,
            paused: false,
            closing: false,
            totals: Totals::default(),
        }
    }

    /// Arms the multishot receive (`tag` names this connection's requests).
    pub(crate) fn start(&mut self, ring: &mut Uring, tag: u64) -> io::Result<()> {
        if self.receiving || self.read_closed || self.paused || self.closing {
            return Ok(());
        }
        ring.recv_multi(self.sock.as_raw_fd(), tag)?;
        self.receiving = true;
        self.recv_cancelled = false;
        Ok(())
    }

    /// Its generation (see the field).
    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// Bytes moved so far.
    pub(crate) fn totals(&self) -> Totals {
        self.totals
    }

    /// Requests of this connection still in flight.
    pub(crate) fn in_flight(&self) -> usize {
        usize::from(self.receiving) + usize::from(self.sending)
    }

    /// Whether it is being closed.
    pub(crate) fn closing(&self) -> bool {
        self.closing
    }

    /// Unsent bytes.
    pub(crate) fn unsent(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.unsent)
    }

    /// A completion of the receive: bytes (`Ok(Some)`), end-of-file
    /// (`Ok(None)`) or an error; `more`: the receive stays armed.
    pub(crate) fn on_received(
        &mut self,
        ring: &mut Uring,
        tag: u64,
        result: io::Result<Option<Buf>>,
        more: bool,
        scratch: &mut BytesMut,
        max_buffer: usize,
    ) -> io::Result<Status> {
        if !more {
            self.receiving = false;
        }
        let mut st = Status::default();
        match result {
            Ok(Some(buf)) if self.closing => ring.recycle(buf),
            Ok(Some(buf)) => {
                st.progressed = true;
                self.totals.bytes_in += buf.len() as u64;
                self.answer(ring, buf, scratch);
            }
            Ok(None) => {
                self.read_closed = true;
                if !self.closing {
                    scratch.clear();
                    self.proto.on_eof(scratch);
                    self.queue_owned(scratch);
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => st.starved = !self.read_closed && !self.closing,
            Err(e) => return Err(e),
        }
        if self.read_closed && self.receiving {
            self.cancel_recv(ring, tag)?;
        }
        st.queued = !self.sending && self.pending.as_ref().is_some_and(|p| !p.queue.is_empty());
        if !st.queued {
            self.flush(ring, tag)?; // frees the pending state if nothing waits
        }
        if self.unsent() >= max_buffer && !self.paused {
            self.paused = true;
            if self.receiving {
                self.cancel_recv(ring, tag)?;
            }
        }
        if !self.receiving && !st.starved {
            self.start(ring, tag)?;
        }
        st.done = self.finished();
        Ok(st)
    }

    /// The protocol's answer to what arrived in `buf`.
    fn answer(&mut self, ring: &mut Uring, buf: Buf, scratch: &mut BytesMut) {
        let holds_input = self.pending.as_ref().is_some_and(|p| !p.input.is_empty());
        let step = match (!holds_input).then(|| self.proto.on_read_in_place(ring.bytes_mut(&buf))).flatten() {
            // The reply is the buffer itself, sent from where it landed.
            Some(step) => {
                let p = self.pending.get_or_insert_with(Box::default);
                p.unsent += buf.len();
                p.queue.push_back(Payload::Buf { buf, start: 0 });
                step
            }
            None => {
                let p = self.pending.get_or_insert_with(Box::default);
                p.input.extend_from_slice(ring.bytes_mut(&buf));
                ring.recycle(buf);
                scratch.clear();
                let step = self.proto.on_read(&mut p.input, scratch);
                if p.input.is_empty() && p.input.capacity() > 0 {
                    p.input = BytesMut::new();
                }
                self.queue_owned(scratch);
                step
            }
        };
        if step == Step::Close {
            self.read_closed = true;
        }
    }

    /// Queues what the protocol wrote into `scratch` (taking its bytes).
    fn queue_owned(&mut self, scratch: &mut BytesMut) {
        if scratch.is_empty() {
            return;
        }
        let data = scratch.split();
        let p = self.pending.get_or_insert_with(Box::default);
        p.unsent += data.len();
        p.queue.push_back(Payload::Owned { data, start: 0 });
    }

    /// A send completed: `result` bytes of `payload` went (from its
    /// first payload on).
    pub(crate) fn on_sent(
        &mut self,
        ring: &mut Uring,
        tag: u64,
        result: io::Result<usize>,
        payload: Sent,
        max_buffer: usize,
    ) -> io::Result<Status> {
        self.sending = false;
        let mut st = Status::default();
        if self.closing {
            payload.each(|p| release(ring, p));
            return Ok(Status { done: true, ..st });
        }
        let n = match result {
            // Nothing empty is ever queued: a send that took nothing failed.
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            other => other,
        };
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                payload.each(|p| release(ring, p));
                return Err(e);
            }
        };
        st.progressed = true;
        self.totals.bytes_out += n as u64;
        let p = self.pending.as_mut().expect("a send in flight has its pending state");
        p.unsent -= n;
        // What did not go (a short send) goes first next time, in order.
        let (mut left, mut rest) = (n, Vec::new());
        payload.each(|mut one| {
            let took = left.min(one.remaining());
            one.advance(took);
            left -= took;
            if one.remaining() > 0 {
                rest.push(one);
            } else {
                release(ring, one);
            }
        });
        for one in rest.into_iter().rev() {
            p.queue.push_front(one);
        }
        self.flush(ring, tag)?;
        if self.paused && self.unsent() <= max_buffer / 4 {
            self.paused = false;
            self.start(ring, tag)?;
        }
        st.done = self.finished();
        Ok(st)
    }

    /// Sends the replies that queued during a batch of completions (see
    /// [`Status::queued`]).
    pub(crate) fn send_queued(&mut self, ring: &mut Uring, tag: u64) -> io::Result<Status> {
        self.flush(ring, tag)?;
        Ok(Status { done: self.finished(), ..Status::default() })
    }

    /// Sends what is queued if no send is in flight (one payload by
    /// `send`, several by one `sendmsg`); frees the pending state once
    /// nothing waits.
    fn flush(&mut self, ring: &mut Uring, tag: u64) -> io::Result<()> {
        let Some(p) = self.pending.as_mut() else { return Ok(()) };
        if !self.sending && !self.closing {
            match p.queue.len() {
                0 => {}
                1 => {
                    let next = p.queue.pop_front().expect("one queued");
                    ring.send(self.sock.as_raw_fd(), next, tag)?;
                    self.sending = true;
                }
                n => {
                    let batch: Vec<Payload> = p.queue.drain(..n.min(MAX_BATCH)).collect();
                    ring.send_many(self.sock.as_raw_fd(), batch, tag)?;
                    self.sending = true;
                }
            }
        }
        if !self.sending && p.queue.is_empty() && p.input.is_empty() {
            self.pending = None; // an idle connection holds no buffer
        }
        Ok(())
    }

    fn cancel_recv(&mut self, ring: &mut Uring, tag: u64) -> io::Result<()> {
        if !self.recv_cancelled {
            ring.cancel(Kind::Recv, tag)?;
            self.recv_cancelled = true;
        }
        Ok(())
    }

    /// No more input is read (the drain's flush stage): once the output is
    /// sent, the connection is done. Returns whether it is done now.
    pub(crate) fn stop_reading(&mut self, ring: &mut Uring, tag: u64) -> io::Result<bool> {
        self.read_closed = true;
        if self.receiving {
            self.cancel_recv(ring, tag)?;
        }
        Ok(self.finished())
    }

    /// Starts closing: every request in flight is cancelled; queued
    /// replies are dropped. The socket may close once
    /// [`Conn::in_flight`] is 0.
    pub(crate) fn close(&mut self, ring: &mut Uring) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.read_closed = true;
        self.recv_cancelled = true; // by the cancel of every request below
        if let Some(mut p) = self.pending.take() {
            for payload in p.queue.drain(..) {
                release(ring, payload);
            }
            p.unsent = 0;
            if self.sending {
                self.pending = Some(p);
            }
        }
        if self.in_flight() > 0 {
            let _ = ring.cancel_fd(self.sock.as_raw_fd());
        }
    }

    /// Nothing is left to do: no input wanted, nothing to send.
    fn finished(&self) -> bool {
        self.read_closed && !self.sending && self.unsent() == 0
    }
}

/// Gives a payload's buffer back to the ring (owned bytes are dropped).
fn release(ring: &mut Uring, payload: Payload) {
    if let Payload::Buf { buf, .. } = payload {
        ring.recycle(buf);
    }
}
