//! One client connection (or, with `--reconnect`, one connection slot that
//! opens a fresh connection per message): non-blocking connect, pipelined
//! sends, and reads that check every byte against the uppercase of what was
//! sent. Replies are matched to sends by cumulative byte count: byte `p` of
//! the reply stream belongs to message `p / size`. In closed loop a
//! connection issues its own messages; at a fixed rate the engine's
//! dispatcher hands it each message ([`Conn::dispatch`]). When the run stops
//! every connection still open sends one last, unmeasured message, the final
//! check, and is counted as held once its reply is right. `engine.rs` owns
//! the connections of one thread and calls [`Conn::on_event`],
//! [`Conn::pump`] and [`Conn::check_timeout`].

use std::io::{self, IoSlice, Write};
use std::net::{IpAddr, SocketAddr};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustix::net::{RecvFlags, SendFlags};
use socket2::{Domain, Protocol, Socket, Type};

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
    /// Messages are handed out by the engine's dispatcher (fixed rate).
    pub paced: bool,
    /// TCP_NODELAY.
    pub nodelay: bool,
    /// Closed loop: no message before this time (ns since the start of the run).
    pub origin: u64,
    /// The run is over: issue nothing new; open connections send their final check.
    pub stopping: bool,
}

/// When a message was due and when it was handed to the socket.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    sched: u64,
    sent: u64,
    /// The final check: not measured.
    check: bool,
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
    /// Where reading and writing are, kept without divisions: the offset in
    /// the current message, and where that message starts in the payload buffer.
    r_off: usize,
    r_pay: usize,
    w_off: usize,
    w_pay: usize,
    /// The slots of the next message to issue and of the next to complete.
    i_slot: usize,
    c_slot: usize,
    bad: bool,
    slots: Box<[Slot]>,
    /// Closed loop: measured messages this connection may still issue.
    budget: Option<u64>,
    /// A reconnecting slot has been started.
    started: bool,
    /// Reconnecting: the message (its scheduled time) to send once connected.
    pending: Option<u64>,
    /// The final check has been issued.
    checking: bool,
    /// The dispatcher's free list holds this connection.
    pub queued: bool,
}

/// The kind of error an I/O error counts as.
fn kind_of(e: &io::Error) -> ErrorKind {
    use nix::errno::Errno;
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::EMFILE | Errno::ENFILE) => return ErrorKind::FdLimit,
        Some(Errno::EADDRNOTAVAIL | Errno::EADDRINUSE) => return ErrorKind::NoLocalPort,
        Some(Errno::ENOMEM | Errno::ENOBUFS) => return ErrorKind::NoMemory,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            ErrorKind::Reset
        }
        io::ErrorKind::TimedOut => ErrorKind::ConnectTimeout,
        _ => ErrorKind::Other,
    }
}

/// recv(2) on `stream`, the hot path's read: rustix's inlined syscall.
/// Going through `Read for mio::net::TcpStream` adds four nested calls
/// (mio, std's socket, std's fd, libc), and a profile of the client puts
/// much of its user time on the returns after each syscall, where the kernel
/// has pushed the caller's code and stack out of the cache: the fewer frames
/// between the event loop and the syscall, the fewer such misses. For the
/// same reason the functions of one echoed message (`on_event` down to
/// `flush`) are inlined into the engine's loop.
#[inline]
fn recv(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::net::recv(stream, buf, RecvFlags::empty())?.0)
}

/// send(2) on `stream` (no SIGPIPE), as [`recv`].
#[inline]
fn send(stream: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(stream, buf, SendFlags::NOSIGNAL)?)
}

impl Conn {
    /// Connection number `id` (global over threads), registered as `token`,
    /// with `depth` messages in flight at most and, in closed loop, at most
    /// `budget` measured messages (if set).
    pub fn new(
        id: u64,
        token: Token,
        addr: SocketAddr,
        source: Option<IpAddr>,
        depth: usize,
        budget: Option<u64>,
    ) -> Conn {
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
            r_off: 0,
            r_pay: 0,
            w_off: 0,
            w_pay: 0,
            i_slot: 0,
            c_slot: 0,
            bad: false,
            slots: vec![Slot::default(); depth].into_boxed_slice(),
            budget,
            started: false,
            pending: None,
            checking: false,
            queued: false,
        }
    }

    /// Where the connection is.
    pub fn state(&self) -> State {
        self.state
    }

    /// Messages sent whose reply is not complete.
    pub fn in_flight(&self) -> u64 {
        self.issued - self.completed
    }

    /// Measured (and warm-up) messages issued or pending whose reply is not in.
    fn outstanding(&self) -> u64 {
        if self.state == State::Done {
            return 0;
        }
        self.in_flight() - u64::from(self.checking) + u64::from(self.pending.is_some())
    }

    /// Whether the dispatcher may hand this connection a message now: open
    /// with room in its pipeline or, reconnecting, a started slot waiting.
    pub fn is_free(&self, ctx: &Ctx) -> bool {
        if ctx.reconnect {
            self.started && self.state == State::Waiting && self.pending.is_none()
        } else {
            self.state == State::Open && !self.checking && self.in_flight() < self.slots.len() as u64
        }
    }

    /// Starts the connection at `now`: connects (or, reconnecting, waits for
    /// its first message).
    pub fn start(&mut self, ctx: &Ctx, rec: &mut Recorder, reg: &Registry, now: u64) -> Result<(), ErrorKind> {
        if ctx.reconnect {
            self.started = true;
            self.pump(ctx, rec, reg, now)
        } else {
            self.connect(ctx, rec, reg, now)
        }
    }

    fn connect(&mut self, ctx: &Ctx, rec: &mut Recorder, reg: &Registry, now: u64) -> Result<(), ErrorKind> {
        rec.conns_attempted += 1;
        // A failed attempt is the connection's outcome; `fail` is told so by the state.
        self.state = State::Connecting(now);
        let sock =
            Socket::new(Domain::for_address(self.addr), Type::STREAM, Some(Protocol::TCP)).map_err(|e| kind_of(&e))?;
        let other = |e: io::Error| kind_of(&e);
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
        self.base = self.issued;
        self.wpos = 0;
        self.rpos = 0;
        self.r_off = 0;
        self.w_off = 0;
        self.r_pay = ctx.payloads.offset(self.id, self.base);
        self.w_pay = self.r_pay;
        Ok(())
    }

    /// Closes the socket (if any); the connection waits or is done.
    fn close(&mut self, reg: &Registry, next: State) {
        if let Some(mut s) = self.stream.take() {
            let _ = reg.deregister(&mut s);
        }
        self.state = next;
    }

    /// Counts `kind` and what it means for the connection, closes it and
    /// marks it done.
    pub fn fail(&mut self, kind: ErrorKind, rec: &mut Recorder, reg: &Registry) {
        rec.error(kind);
        let o = &mut rec.outcomes;
        match (self.state, kind) {
            (State::Connecting(_) | State::Waiting, _) => {
                o.failed_to_connect += 1;
                o.connect_errors.count(kind);
            }
            (_, ErrorKind::EofMidReply | ErrorKind::ClosedIdle | ErrorKind::Reset) => o.closed_by_server += 1,
            (_, ErrorKind::ReplyTimeout) => o.unanswered += 1,
            _ => o.other += 1,
        }
        rec.outstanding -= self.outstanding();
        self.completed = self.issued;
        self.pending = None;
        self.close(reg, State::Done);
    }

    /// Stops the connection at the end of the run (the drain is over),
    /// counting what is still outstanding.
    pub fn abandon(&mut self, ctx: &Ctx, rec: &mut Recorder, reg: &Registry) {
        match self.state {
            State::Connecting(_) => return self.fail(ErrorKind::ConnectTimeout, rec, reg),
            State::Open if !ctx.reconnect => rec.outcomes.unanswered += 1,
            _ => {}
        }
        let left = self.outstanding();
        rec.unfinished += left;
        rec.outstanding -= left;
        self.completed = self.issued;
        self.pending = None;
        self.close(reg, State::Done);
    }

    /// Handles readiness.
    #[inline(always)]
    pub fn on_event(
        &mut self,
        ev: &Event,
        ctx: &Ctx,
        rec: &mut Recorder,
        reg: &Registry,
        scratch: &mut [u8],
        now: u64,
    ) -> Result<(), ErrorKind> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
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
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
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
    #[inline(always)]
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
            match recv(stream, scratch) {
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
    #[inline(always)]
    fn verify(
        &mut self,
        mut data: &[u8],
        ctx: &Ctx,
        rec: &mut Recorder,
        reg: &Registry,
        now: u64,
    ) -> Result<(), ErrorKind> {
        let size = ctx.payloads.size();
        while !data.is_empty() {
            if self.rpos >= self.wpos {
                // The server sent bytes we never sent.
                return Err(ErrorKind::Mismatch);
            }
            let expected = ctx.payloads.reply_at(self.r_pay);
            let o = self.r_off;
            let n = data.len().min(size - o).min((self.wpos - self.rpos) as usize);
            if expected[o..o + n] != data[..n] {
                self.bad = true;
            }
            self.rpos += n as u64;
            self.r_off += n;
            data = &data[n..];
            if self.r_off == size {
                self.r_off = 0;
                self.r_pay = ctx.payloads.next_offset(self.r_pay);
                let slot = self.slots[self.c_slot];
                self.c_slot = self.wrap(self.c_slot + 1);
                self.completed += 1;
                let bad = std::mem::take(&mut self.bad);
                if bad {
                    rec.error(ErrorKind::Mismatch);
                }
                let last = self.in_flight() == 0 && (slot.check || ctx.reconnect);
                if last && !data.is_empty() {
                    // Bytes beyond everything sent.
                    return Err(ErrorKind::Mismatch);
                }
                if slot.check {
                    if bad {
                        rec.outcomes.other += 1;
                    } else {
                        rec.checks += 1;
                        rec.outcomes.held += 1;
                    }
                    self.close(reg, State::Done);
                    return Ok(());
                }
                rec.complete(slot.sched, slot.sent, now, size as u64);
                if ctx.reconnect && last {
                    self.close(reg, State::Waiting);
                }
            }
        }
        Ok(())
    }

    /// Puts a message scheduled at `sched` into the pipeline at `now`.
    #[inline(always)]
    fn issue(&mut self, sched: u64, now: u64, check: bool, rec: &mut Recorder) {
        self.slots[self.i_slot] = Slot { sched, sent: now, check };
        self.i_slot = self.wrap(self.i_slot + 1);
        self.issued += 1;
        if !check {
            rec.outstanding += 1;
        }
    }

    /// Hands the connection a message scheduled at `sched` (fixed rate; the
    /// connection is free, see [`Conn::is_free`]) and sends it.
    pub fn dispatch(
        &mut self,
        sched: u64,
        ctx: &Ctx,
        rec: &mut Recorder,
        reg: &Registry,
        now: u64,
    ) -> Result<(), ErrorKind> {
        if ctx.reconnect {
            self.pending = Some(sched);
            rec.outstanding += 1;
            return self.connect(ctx, rec, reg, now);
        }
        self.issue(sched, now, false, rec);
        self.flush(ctx)
    }

    /// Whether a closed-loop connection may issue a message at `now`; takes it from the budget.
    #[inline(always)]
    fn take_closed_loop(&mut self, ctx: &Ctx, rec: &mut Recorder, now: u64) -> bool {
        if ctx.paced || ctx.stopping || now < ctx.origin || self.budget == Some(0) {
            return false;
        }
        if rec.is_measured(now) {
            if let Some(b) = self.budget.as_mut() {
                *b -= 1;
                if let Some(left) = rec.budget.as_mut() {
                    *left -= 1;
                }
            }
        }
        true
    }

    /// Issues what is due and writes what the socket takes: closed loop,
    /// the next messages; reconnecting, connects a slot whose message is due,
    /// or sends it once connected; stopping, the final check of an open
    /// connection once its last reply is in.
    #[inline(always)]
    pub fn pump(&mut self, ctx: &Ctx, rec: &mut Recorder, reg: &Registry, now: u64) -> Result<(), ErrorKind> {
        match self.state {
            State::Done | State::Connecting(_) => Ok(()),
            State::Waiting => {
                if ctx.reconnect && self.started && self.pending.is_none() {
                    if self.take_closed_loop(ctx, rec, now) {
                        self.pending = Some(now);
                        rec.outstanding += 1;
                        self.connect(ctx, rec, reg, now)?;
                    } else if ctx.stopping || self.budget == Some(0) {
                        self.state = State::Done;
                    }
                }
                Ok(())
            }
            State::Open => {
                if ctx.reconnect {
                    if let Some(sched) = self.pending.take() {
                        rec.outstanding -= 1; // counted again by `issue`
                        self.issue(sched, now, false, rec);
                    }
                } else if ctx.stopping {
                    if !self.checking && self.in_flight() == 0 {
                        // The final check: the connection is held if it answers.
                        self.checking = true;
                        self.issue(now, now, true, rec);
                    }
                } else {
                    while self.in_flight() < self.slots.len() as u64 && self.take_closed_loop(ctx, rec, now) {
                        self.issue(now, now, false, rec);
                    }
                }
                self.flush(ctx)
            }
        }
    }

    /// Slot index `i` wrapped around the pipeline's depth.
    #[inline]
    fn wrap(&self, i: usize) -> usize {
        if i == self.slots.len() {
            0
        } else {
            i
        }
    }

    /// Writes issued bytes until done or the socket would block.
    #[inline(always)]
    fn flush(&mut self, ctx: &Ctx) -> Result<(), ErrorKind> {
        let size = ctx.payloads.size();
        let target = (self.issued - self.base) * size as u64;
        while self.wpos < target {
            let Some(stream) = self.stream.as_mut() else {
                return Ok(());
            };
            if target - self.wpos <= (size - self.w_off) as u64 {
                // The rest of one message (the usual case): send(2), which
                // skips the VFS layer (and its fsnotify hook) of writev(2).
                match send(stream, &ctx.payloads.at(self.w_pay)[self.w_off..]) {
                    Ok(0) => return Err(ErrorKind::Other),
                    Ok(n) => self.wrote(n, ctx),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(kind_of(&e)),
                }
                continue;
            }
            let mut bufs = [IoSlice::new(&[]); 16];
            let mut k = 0;
            let (mut pos, mut off, mut pay) = (self.wpos, self.w_off, self.w_pay);
            while k < bufs.len() && pos < target {
                bufs[k] = IoSlice::new(&ctx.payloads.at(pay)[off..]);
                k += 1;
                pos += (size - off) as u64;
                off = 0;
                pay = ctx.payloads.next_offset(pay);
            }
            match stream.write_vectored(&bufs[..k]) {
                Ok(0) => return Err(ErrorKind::Other),
                Ok(n) => self.wrote(n, ctx),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(kind_of(&e)),
            }
        }
        Ok(())
    }

    /// Moves the write position on by `n` bytes.
    #[inline(always)]
    fn wrote(&mut self, mut n: usize, ctx: &Ctx) {
        let size = ctx.payloads.size();
        self.wpos += n as u64;
        while n > 0 {
            let take = n.min(size - self.w_off);
            self.w_off += take;
            n -= take;
            if self.w_off == size {
                self.w_off = 0;
                self.w_pay = ctx.payloads.next_offset(self.w_pay);
            }
        }
    }

    /// The timeout this connection has run into at `now`, if any.
    pub fn check_timeout(&self, now: u64, timeout_ns: u64) -> Option<ErrorKind> {
        match self.state {
            State::Connecting(started) if now.saturating_sub(started) > timeout_ns => Some(ErrorKind::ConnectTimeout),
            State::Open if self.in_flight() > 0 => {
                let oldest = self.slots[self.c_slot];
                (now.saturating_sub(oldest.sent) > timeout_ns).then_some(ErrorKind::ReplyTimeout)
            }
            _ => None,
        }
    }
}
