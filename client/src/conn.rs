//! One client connection (or, with `--reconnect`, one connection slot that
//! opens a fresh connection per message): non-blocking connect, pipelined
//! sends, and reads that check every byte against the uppercase of what was
//! sent. Replies are matched to sends by cumulative byte count: byte `p` of
//! the reply stream belongs to message `p / size`. `engine.rs` owns the
//! connections of one thread and calls [`Conn::on_event`], [`Conn::pump`] and
//! [`Conn::check_timeout`].

use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};
use switchyard_common::upper::is_upper_of;

use crate::pacing::Schedule;
use crate::payload::Payloads;
use crate::stats::{ErrorKind, Recorder};

/// Settings shared by the connections of one engine thread.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The run's message bytes.
    pub payloads: &'a Payloads,
    /// Messages in flight per connection.
    pub depth: usize,
    /// A new connection per message.
    pub reconnect: bool,
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// The run is over: issue nothing new.
    pub stopping: bool,
}

/// When a message was due and when it was handed to the socket.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    sched: u64,
    sent: u64,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not connected; connects when started (or, reconnecting, when a message is due).
    Waiting,
    /// Connect in progress since the given time (ns).
    Connecting(u64),
    /// Connected.
    Open,
    /// Finished or failed; never used again.
    Done,
}

/// What comes next for a connection.
enum Next {
    /// A message scheduled at this time may go now.
    Due(u64),
    /// The next message is due at this time.
    At(u64),
    /// Nothing more to send.
    Never,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    token: Token,
    addr: SocketAddr,
    source: Option<IpAddr>,
    stream: Option<TcpStream>,
    state: State,
    /// Messages issued and completed over the connection's life.
    issued: u64,
    completed: u64,
    /// `issued` when the current socket was opened; positions count from it.
    base: u64,
    wpos: u64,
    rpos: u64,
    bad: bool,
    slots: Box<[Slot]>,
    budget: Option<u64>,
    schedule: Option<Schedule>,
    /// Where the schedule starts (ns since the start of the run).
    origin: u64,
    /// A reconnecting slot has been started.
    started: bool,
    next_k: u64,
    pending: Option<u64>,
    timer_at: Option<u64>,
}

/// The kind of error an I/O error on an open connection counts as.
fn kind_of(e: &io::Error) -> ErrorKind {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            ErrorKind::Reset
        }
        io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
        _ => ErrorKind::Other,
    }
}

impl Conn {
    /// Connection number `id` (global over threads), registered as `token`,
    /// with `depth` messages in flight at most; closed loop with no message
    /// budget until [`Conn::paced`] says otherwise.
    pub fn new(id: u64, token: Token, addr: SocketAddr, source: Option<IpAddr>, depth: usize) -> Conn {
        Conn {
            id,
            token,
            addr,
            source,
            stream: None,
            state: State::Waiting,
            issued: 0,
            completed: 0,
            base: 0,
            wpos: 0,
            rpos: 0,
            bad: false,
            slots: vec![Slot::default(); depth].into_boxed_slice(),
            budget: None,
            schedule: None,
            origin: 0,
            started: false,
            next_k: 0,
            pending: None,
            timer_at: None,
        }
    }

    /// Sends at most `budget` measured messages (if set), paced by `schedule`
    /// from `origin` (ns since the start of the run; without one: closed loop).
    pub fn paced(mut self, budget: Option<u64>, schedule: Option<Schedule>, origin: u64) -> Conn {
        self.budget = budget;
        self.schedule = schedule;
        self.origin = origin;
        self
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Messages sent whose reply is not complete.
    pub fn in_flight(&self) -> u64 {
        self.issued - self.completed
    }

    /// Starts the connection at `now`: connects (or, reconnecting, waits for
    /// the first message to be due). Returns a timer to arm, if any.
    pub fn start(&mut self, ctx: &Ctx, rec: &mut Recorder, reg: &Registry, now: u64) -> Result<Option<u64>, ErrorKind> {
        if ctx.reconnect {
            self.started = true;
            self.pump(ctx, rec, reg, now)
        } else {
            self.connect(ctx, rec, reg, now)?;
            Ok(None)
        }
    }

    fn connect(&mut self, ctx: &Ctx, rec: &mut Recorder, reg: &Registry, now: u64) -> Result<(), ErrorKind> {
        rec.conns_attempted += 1;
        let sock =
            Socket::new(Domain::for_address(self.addr), Type::STREAM, Some(Protocol::TCP)).map_err(|e| kind_of(&e))?;
        let other = |_: io::Error| ErrorKind::Other;
        sock.set_nonblocking(true).map_err(other)?;
        if ctx.nodelay {
            sock.set_tcp_nodelay(true).map_err(other)?;
        }
        if let Some(ip) = self.source {
            if ip.is_ipv4() {
                // Choose the source port at connect time, by the whole 4-tuple,
                // so that one source address serves more than ~28,000 connections.
                let _ = nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::IpBindAddressNoPort, &true);
            }
            sock.bind(&SocketAddr::new(ip, 0).into()).map_err(other)?;
        }
        match sock.connect(&self.addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(kind_of(&e)),
        }
        let mut stream = TcpStream::from_std(sock.into());
        reg.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE).map_err(other)?;
        self.stream = Some(stream);
        self.state = State::Connecting(now);
        self.base = self.issued;
        self.wpos = 0;
        self.rpos = 0;
        Ok(())
    }

    /// Closes the socket (if any); the connection waits or is done.
    fn close(&mut self, reg: &Registry, next: State) {
        if let Some(mut s) = self.stream.take() {
            let _ = reg.deregister(&mut s);
        }
        self.state = next;
    }

    /// Counts `kind`, closes the connection and marks it done.
    pub fn fail(&mut self, kind: ErrorKind, rec: &mut Recorder, reg: &Registry) {
        rec.error(kind);
        self.close(reg, State::Done);
    }

    /// Stops the connection at the end of the run, counting what is outstanding.
    pub fn abandon(&mut self, rec: &mut Recorder, reg: &Registry) {
        rec.unfinished += self.in_flight() + u64::from(self.pending.is_some());
        self.close(reg, State::Done);
    }

    /// Handles readiness. Returns a timer to arm, if any.
    pub fn on_event(
        &mut self,
        ev: &Event,
        ctx: &Ctx,
        rec: &mut Recorder,
        reg: &Registry,
        scratch: &mut [u8],
        now: u64,
    ) -> Result<Option<u64>, ErrorKind> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        if let State::Connecting(started) = self.state {
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => return Err(kind_of(&e)),
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => {
                    rec.connected(now.saturating_sub(started));
                    self.state = State::Open;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(None),
                Err(e) => return Err(kind_of(&e)),
            }
        } else if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            // A short read proves the socket drained unless the peer's FIN is
            // already in (it then brings no new edge): read on to the EOF.
            let to_eof = ev.is_read_closed() || ev.is_error();
            self.read(ctx, rec, reg, scratch, now, to_eof)?;
        }
        self.pump(ctx, rec, reg, now)
    }

    /// Reads until the socket would block, checking and completing replies.
    fn read(
        &mut self,
        ctx: &Ctx,
        rec: &mut Recorder,
        reg: &Registry,
        scratch: &mut [u8],
        now: u64,
        to_eof: bool,
    ) -> Result<(), ErrorKind> {
        loop {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            match stream.read(scratch) {
                Ok(0) => {
                    return Err(if self.in_flight() > 0 { ErrorKind::EofMidReply } else { ErrorKind::ClosedIdle });
                }
                Ok(n) => {
                    self.verify(&scratch[..n], ctx, rec, reg, now)?;
                    // A short read drained the socket; the next byte brings a new edge.
                    if n < scratch.len() && !to_eof {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(kind_of(&e)),
            }
        }
    }

    /// Checks received bytes against the uppercase of the bytes sent at the
    /// same stream positions, completing messages as their last byte arrives.
    fn verify(
        &mut self,
        mut data: &[u8],
        ctx: &Ctx,
        rec: &mut Recorder,
        reg: &Registry,
        now: u64,
    ) -> Result<(), ErrorKind> {
        let size = ctx.payloads.size() as u64;
        while !data.is_empty() {
            if self.rpos >= self.wpos {
                // The server sent bytes we never sent.
                return Err(ErrorKind::Mismatch);
            }
            let j = self.rpos / size;
            let o = (self.rpos % size) as usize;
            let m = self.base + j;
            let msg = ctx.payloads.message(self.id, m);
            let n = data.len().min(msg.len() - o).min((self.wpos - self.rpos) as usize);
            if !is_upper_of(&msg[o..o + n], &data[..n]) {
                self.bad = true;
            }
            self.rpos += n as u64;
            data = &data[n..];
            if o + n == msg.len() {
                let slot = self.slots[(m % self.slots.len() as u64) as usize];
                rec.complete(slot.sched, slot.sent, now, size);
                if std::mem::take(&mut self.bad) {
                    rec.error(ErrorKind::Mismatch);
                }
                self.completed += 1;
                if ctx.reconnect && self.in_flight() == 0 {
                    self.close(reg, State::Waiting);
                    if !data.is_empty() {
                        return Err(ErrorKind::Mismatch);
                    }
                }
            }
        }
        Ok(())
    }

    /// What this connection may send next at `now`; consumes it if due.
    fn next(&mut self, ctx: &Ctx, rec: &Recorder, now: u64) -> Next {
        if ctx.stopping || self.budget == Some(0) {
            return Next::Never;
        }
        let sched = match self.schedule {
            Some(s) => self.origin + s.at(self.next_k),
            None => now,
        };
        if sched > now {
            return Next::At(sched);
        }
        self.next_k += 1;
        if rec.is_measured(sched) {
            if let Some(b) = self.budget.as_mut() {
                *b -= 1;
            }
        }
        Next::Due(sched)
    }

    fn issue(&mut self, sched: u64, now: u64) {
        let i = (self.issued % self.slots.len() as u64) as usize;
        self.slots[i] = Slot { sched, sent: now };
        self.issued += 1;
    }

    /// Issues every message that is due and writes what the socket takes;
    /// connects a reconnecting slot whose next message is due; finishes a
    /// connection with nothing left to do. Returns a timer to arm, if any.
    pub fn pump(&mut self, ctx: &Ctx, rec: &mut Recorder, reg: &Registry, now: u64) -> Result<Option<u64>, ErrorKind> {
        let mut timer = None;
        let mut more = true;
        match self.state {
            State::Done | State::Connecting(_) => return Ok(None),
            State::Waiting => {
                if ctx.reconnect && self.started {
                    match self.next(ctx, rec, now) {
                        Next::Due(sched) => {
                            self.pending = Some(sched);
                            self.connect(ctx, rec, reg, now)?;
                        }
                        Next::At(t) => timer = Some(t),
                        Next::Never => self.state = State::Done,
                    }
                }
            }
            State::Open => {
                if ctx.reconnect {
                    if let Some(sched) = self.pending.take() {
                        self.issue(sched, now);
                    }
                } else {
                    while self.in_flight() < self.slots.len() as u64 {
                        match self.next(ctx, rec, now) {
                            Next::Due(sched) => self.issue(sched, now),
                            Next::At(t) => {
                                timer = Some(t);
                                break;
                            }
                            Next::Never => {
                                more = false;
                                break;
                            }
                        }
                    }
                }
                self.flush(ctx)?;
                if !ctx.reconnect && !more && self.in_flight() == 0 {
                    self.close(reg, State::Done);
                }
            }
        }
        // Arm a timer only when it changes, so the heap holds no duplicates.
        if timer.is_some() && timer != self.timer_at {
            self.timer_at = timer;
            return Ok(timer);
        }
        Ok(None)
    }

    /// Whether a timer popped at `t` is the one this connection armed.
    pub fn take_timer(&mut self, t: u64) -> bool {
        if self.timer_at == Some(t) {
            self.timer_at = None;
            true
        } else {
            false
        }
    }

    /// Writes issued bytes until done or the socket would block.
    fn flush(&mut self, ctx: &Ctx) -> Result<(), ErrorKind> {
        let size = ctx.payloads.size() as u64;
        let target = (self.issued - self.base) * size;
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        while self.wpos < target {
            let mut bufs = [IoSlice::new(&[]); 16];
            let mut k = 0;
            let mut pos = self.wpos;
            while k < bufs.len() && pos < target {
                let o = (pos % size) as usize;
                let msg = ctx.payloads.message(self.id, self.base + pos / size);
                bufs[k] = IoSlice::new(&msg[o..]);
                k += 1;
                pos += (msg.len() - o) as u64;
            }
            match stream.write_vectored(&bufs[..k]) {
                Ok(0) => return Err(ErrorKind::Other),
                Ok(n) => self.wpos += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(kind_of(&e)),
            }
        }
        Ok(())
    }

    /// The timeout this connection has run into at `now`, if any.
    pub fn check_timeout(&self, now: u64, timeout_ns: u64) -> Option<ErrorKind> {
        match self.state {
            State::Connecting(started) if now.saturating_sub(started) > timeout_ns => Some(ErrorKind::ConnectTimeout),
            State::Open if self.in_flight() > 0 => {
                let oldest = self.slots[(self.completed % self.slots.len() as u64) as usize];
                (now.saturating_sub(oldest.sent) > timeout_ns).then_some(ErrorKind::ReplyTimeout)
            }
            _ => None,
        }
    }
}
