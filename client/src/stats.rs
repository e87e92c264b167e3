//! Measurements of one engine thread: latency histograms (nanoseconds, 3
//! significant figures, saturating), counts, errors by kind, what became of
//! each connection, and the per-second histograms sent to the main thread
//! for the live progress line, the series and the interval log of the
//! report. `conn.rs` and `engine.rs` record into a [`Recorder`]; `engine.rs`
//! merges the recorders of all threads into a `Report`.
//!
//! A message is recorded once, into the current second's [`Hists`]; the
//! run's totals are the sum of its seconds, added when a second closes, so
//! the series and the totals always agree and the hot path records into as
//! few histograms as it can (closed loop: one, since the corrected and
//! uncorrected latencies are the same there).

use std::io;
use std::sync::mpsc::Sender;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::pacing::NANOS_PER_SEC;
use crate::progress::Series;

/// Largest latency a histogram tells apart (100 s); larger values saturate.
pub const HIST_MAX_NS: u64 = 100 * NANOS_PER_SEC;

/// A new, empty latency histogram in nanoseconds (1 ns to 100 s, 3 digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// Adds `src` into `dst`, growing `dst` if `src` holds larger values.
pub fn add_histogram(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    dst.auto(true);
    // With auto-resize on, addition cannot fail for lack of range.
    let _ = dst.add(src);
}

/// A histogram as HdrHistogram's V2 + DEFLATE encoding, base64.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    // Serializing into a Vec cannot fail for a valid histogram.
    let _ = V2DeflateSerializer::new().serialize(h, &mut buf);
    base64::engine::general_purpose::STANDARD.encode(buf)
}

/// The histogram of [`encode_histogram`] (an empty string: an empty histogram).
pub fn decode_histogram(s: &str) -> io::Result<Histogram<u64>> {
    if s.is_empty() {
        return Ok(new_histogram());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("histogram base64: {e}")))?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut io::Cursor::new(bytes))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("histogram: {e:?}")))?;
    h.auto(true);
    Ok(h)
}

/// What went wrong with a connection or a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server refused the connection.
    Refused,
    /// Connecting took longer than the timeout.
    ConnectTimeout,
    /// The connection was reset (or the pipe broke).
    Reset,
    /// The server closed the connection while a reply was outstanding.
    EofMidReply,
    /// A reply differed from the uppercase of what was sent (one per message).
    Mismatch,
    /// A reply took longer than the timeout.
    ReplyTimeout,
    /// The server closed a connection the client was still using, with no
    /// reply outstanding (e.g. between a reply and the next message).
    ClosedIdle,
    /// The client ran out of file descriptors (EMFILE, ENFILE).
    FdLimit,
    /// No local port was free for the source address (EADDRNOTAVAIL).
    NoLocalPort,
    /// The kernel had no memory or buffers for the socket (ENOMEM, ENOBUFS).
    NoMemory,
    /// Any other I/O error.
    Other,
}

/// Error counts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Errors {
    /// Connections refused.
    pub refused: u64,
    /// Connections that did not complete within the timeout.
    pub connect_timeout: u64,
    /// Connections reset by the peer (or broken pipes).
    pub reset: u64,
    /// Connections closed by the server with a reply outstanding.
    pub eof_mid_reply: u64,
    /// Messages whose reply was not the uppercase of what was sent.
    pub mismatch: u64,
    /// Replies that did not arrive within the timeout.
    pub reply_timeout: u64,
    /// Idle connections closed by the server.
    pub closed_idle: u64,
    /// Sockets the client could not open for lack of file descriptors.
    pub fd_limit: u64,
    /// Connections with no free local port (ephemeral ports exhausted).
    pub no_local_port: u64,
    /// Sockets the kernel had no memory for.
    pub no_memory: u64,
    /// Other I/O errors.
    pub other: u64,
}

impl Errors {
    fn slot(&mut self, kind: ErrorKind) -> &mut u64 {
        match kind {
            ErrorKind::Refused => &mut self.refused,
            ErrorKind::ConnectTimeout => &mut self.connect_timeout,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::EofMidReply => &mut self.eof_mid_reply,
            ErrorKind::Mismatch => &mut self.mismatch,
            ErrorKind::ReplyTimeout => &mut self.reply_timeout,
            ErrorKind::ClosedIdle => &mut self.closed_idle,
            ErrorKind::FdLimit => &mut self.fd_limit,
            ErrorKind::NoLocalPort => &mut self.no_local_port,
            ErrorKind::NoMemory => &mut self.no_memory,
            ErrorKind::Other => &mut self.other,
        }
    }

    /// Counts one error.
    pub fn count(&mut self, kind: ErrorKind) {
        *self.slot(kind) += 1;
    }

    /// Adds another set of counts.
    pub fn add(&mut self, o: &Errors) {
        for (kind, n) in o.kinds() {
            *self.slot(kind) += n;
        }
    }

    /// All errors together.
    pub fn total(&self) -> u64 {
        self.pairs().iter().map(|(_, n)| n).sum()
    }

    /// Errors that mean the server answered wrongly, broke a reply off,
    /// never sent it, or dropped a connection the client was still using:
    /// mismatches, resets, EOF mid-reply, reply timeouts and idle closes
    /// (the client then exits with 1). The client closes every connection it
    /// is done with itself, so any EOF it sees cut a connection short.
    pub fn verification_failures(&self) -> u64 {
        self.mismatch + self.reset + self.eof_mid_reply + self.reply_timeout + self.closed_idle
    }

    /// Every kind with its count, in a fixed order.
    fn kinds(&self) -> [(ErrorKind, u64); 11] {
        [
            (ErrorKind::Refused, self.refused),
            (ErrorKind::ConnectTimeout, self.connect_timeout),
            (ErrorKind::Reset, self.reset),
            (ErrorKind::EofMidReply, self.eof_mid_reply),
            (ErrorKind::Mismatch, self.mismatch),
            (ErrorKind::ReplyTimeout, self.reply_timeout),
            (ErrorKind::ClosedIdle, self.closed_idle),
            (ErrorKind::FdLimit, self.fd_limit),
            (ErrorKind::NoLocalPort, self.no_local_port),
            (ErrorKind::NoMemory, self.no_memory),
            (ErrorKind::Other, self.other),
        ]
    }

    /// (name, count) for every kind, in a fixed order.
    pub fn pairs(&self) -> [(&'static str, u64); 11] {
        self.kinds().map(|(k, n)| (k.name(), n))
    }
}

impl ErrorKind {
    /// The kind's name in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::EofMidReply => "eof_mid_reply",
            ErrorKind::Mismatch => "mismatch",
            ErrorKind::ReplyTimeout => "reply_timeout",
            ErrorKind::ClosedIdle => "closed_idle",
            ErrorKind::FdLimit => "fd_limit",
            ErrorKind::NoLocalPort => "no_local_port",
            ErrorKind::NoMemory => "no_memory",
            ErrorKind::Other => "other",
        }
    }

    /// The kinds a connection attempt can fail with, by cause.
    pub const CONNECT: [ErrorKind; 6] = [
        ErrorKind::Refused,
        ErrorKind::ConnectTimeout,
        ErrorKind::FdLimit,
        ErrorKind::NoLocalPort,
        ErrorKind::NoMemory,
        ErrorKind::Other,
    ];
}

/// What became of the connections of a run, one count per connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outcomes {
    /// Open until the end of the run, and answered the final check.
    pub held: u64,
    /// Closed (EOF) or reset by the server while the client held it.
    pub closed_by_server: u64,
    /// A reply, or the final check, did not arrive within the timeout: the
    /// server kept the connection but did not serve it (or dropped it silently).
    pub unanswered: u64,
    /// Never established (the causes are in the errors: refused,
    /// connect_timeout, fd_limit, no_local_port, no_memory, other).
    pub failed_to_connect: u64,
    /// Not yet opened when the run ended (the ramp was still going).
    pub not_opened: u64,
    /// Closed by the client after another error.
    pub other: u64,
    /// Failed connection attempts by cause (the same kinds as the errors).
    pub connect_errors: Errors,
}

impl Outcomes {
    /// Adds another set of counts.
    pub fn add(&mut self, o: &Outcomes) {
        self.held += o.held;
        self.closed_by_server += o.closed_by_server;
        self.unanswered += o.unanswered;
        self.failed_to_connect += o.failed_to_connect;
        self.not_opened += o.not_opened;
        self.other += o.other;
        self.connect_errors.add(&o.connect_errors);
    }
}

/// The histograms of measured messages over some time (one second, or the run).
#[derive(Clone, Debug, PartialEq)]
pub struct Hists {
    /// Latency from the scheduled send time (coordinated-omission corrected).
    pub latency: Histogram<u64>,
    /// Latency from the actual send time.
    pub uncorrected: Histogram<u64>,
    /// Fixed rate: how late the client took up each message against its schedule.
    pub lag: Histogram<u64>,
}

impl Default for Hists {
    fn default() -> Hists {
        Hists { latency: new_histogram(), uncorrected: new_histogram(), lag: new_histogram() }
    }
}

impl Hists {
    /// Adds another set.
    pub fn add(&mut self, o: &Hists) {
        add_histogram(&mut self.latency, &o.latency);
        add_histogram(&mut self.uncorrected, &o.uncorrected);
        add_histogram(&mut self.lag, &o.lag);
    }
}

/// One second of one thread's activity, sent to the main thread.
#[derive(Debug)]
pub struct Tick {
    /// Which engine thread sent it.
    pub thread: usize,
    /// Which second since the start of the run (0 = the first).
    pub second: u64,
    /// Measured messages completed in it.
    pub messages: u64,
    /// Messages of the warm-up completed in it.
    pub warmup_messages: u64,
    /// Measured bytes echoed in it.
    pub bytes: u64,
    /// Errors in it.
    pub errors: u64,
    /// Connections open at its end.
    pub conns_open: u64,
    /// Its measured messages.
    pub hists: Hists,
    /// Corrected latencies of its warm-up messages (for the progress line).
    pub warmup_latency: Histogram<u64>,
    /// The thread's last tick: it has stopped.
    pub last: bool,
}

/// Everything one engine thread measured, merged by the engine into a report.
#[derive(Debug)]
pub struct Recorder {
    /// The run's measured messages (the sum of its seconds).
    pub hists: Hists,
    /// Time to establish a connection.
    pub connect: Histogram<u64>,
    /// Measured messages completed.
    pub messages: u64,
    /// Measured bytes echoed (each byte counted once).
    pub bytes: u64,
    /// Messages completed during warm-up (not in the histograms).
    pub warmup_messages: u64,
    /// Final checks answered (one message per held connection at the end).
    pub checks: u64,
    /// Errors by kind.
    pub errors: Errors,
    /// What became of each connection.
    pub outcomes: Outcomes,
    /// Connections attempted.
    pub conns_attempted: u64,
    /// Connections established.
    pub conns_established: u64,
    /// Messages still outstanding when the run stopped.
    pub unfinished: u64,
    /// Messages issued whose reply is not complete yet.
    pub outstanding: u64,
    /// Measured messages still to issue (`None`: no message budget).
    pub budget: Option<u64>,
    /// Fixed rate: messages that found every connection busy and waited for
    /// one to free up (late through the server's slowness, not the client's).
    pub waited_for_conn: u64,
    /// When the last message completed (ns since the start of the run).
    pub last_completion_ns: u64,
    /// When the thread stopped (ns since the start of the run).
    pub end_ns: u64,
    /// CPU time this thread used, in seconds.
    pub cpu_secs: f64,
    measure_start_ns: u64,
    /// Corrected and uncorrected latencies differ (fixed rate).
    paced: bool,
    thread: usize,
    second: u64,
    /// Where the current second ends (ns since the start of the run).
    second_end_ns: u64,
    /// Connections open at the last periodic tick.
    conns_open: u64,
    sec_messages: u64,
    sec_warmup_messages: u64,
    sec_bytes: u64,
    sec_errors: u64,
    sec: Hists,
    sec_warmup: Histogram<u64>,
    sink: TickSink,
    /// The thread's CPU time when the recorder was made.
    cpu0: f64,
}

/// Where a recorder's per-second ticks go.
pub enum TickSink {
    /// Nowhere.
    None,
    /// To the main thread, which assembles the series (several engine threads).
    Channel(Sender<Tick>),
    /// Straight into the series (one engine thread, run on the calling thread:
    /// a process with a single thread also spares libc's cancellation
    /// bookkeeping around every system call).
    Series(Box<Series>),
}

impl std::fmt::Debug for TickSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TickSink::None => "None",
            TickSink::Channel(_) => "Channel",
            TickSink::Series(_) => "Series",
        })
    }
}

impl Recorder {
    /// A recorder whose statistics start at `measure_start_ns` (after
    /// warm-up), sending one [`Tick`] per second to `sink`;
    /// `paced` (fixed rate) records the uncorrected latency apart.
    pub fn new(thread: usize, measure_start_ns: u64, paced: bool, sink: TickSink) -> Recorder {
        Recorder {
            hists: Hists::default(),
            connect: new_histogram(),
            messages: 0,
            bytes: 0,
            warmup_messages: 0,
            checks: 0,
            errors: Errors::default(),
            outcomes: Outcomes::default(),
            conns_attempted: 0,
            conns_established: 0,
            unfinished: 0,
            outstanding: 0,
            budget: None,
            waited_for_conn: 0,
            last_completion_ns: 0,
            end_ns: 0,
            cpu_secs: 0.0,
            measure_start_ns,
            paced,
            thread,
            second: 0,
            second_end_ns: second_phase(measure_start_ns) + NANOS_PER_SEC,
            conns_open: 0,
            sec_messages: 0,
            sec_warmup_messages: 0,
            sec_bytes: 0,
            sec_errors: 0,
            sec: Hists::default(),
            sec_warmup: new_histogram(),
            sink,
            cpu0: thread_cpu_secs(),
        }
    }

    /// Whether a message scheduled at `sched_ns` is measured (not warm-up).
    #[inline]
    pub fn is_measured(&self, sched_ns: u64) -> bool {
        sched_ns >= self.measure_start_ns
    }

    /// Closes the seconds that ended before `now_ns` if the current one has.
    #[inline]
    fn roll(&mut self, now_ns: u64) {
        if now_ns >= self.second_end_ns {
            self.tick(now_ns, self.conns_open);
        }
    }

    /// Records a completed message.
    #[inline]
    pub fn complete(&mut self, sched_ns: u64, sent_ns: u64, now_ns: u64, bytes: u64) {
        // Count the message in the second it completed in.
        self.roll(now_ns);
        self.outstanding -= 1;
        let corrected = now_ns.saturating_sub(sched_ns);
        if self.is_measured(sched_ns) {
            self.sec_messages += 1;
            self.sec_bytes += bytes;
            self.sec.latency.saturating_record(corrected);
            if self.paced {
                self.sec.uncorrected.saturating_record(now_ns.saturating_sub(sent_ns));
            }
            self.last_completion_ns = now_ns;
        } else {
            self.sec_warmup_messages += 1;
            self.sec_warmup.saturating_record(corrected);
        }
    }

    /// Records that the client took up a message scheduled at `sched_ns`
    /// at `now_ns` (fixed rate): its lag.
    #[inline]
    pub fn took_up(&mut self, sched_ns: u64, now_ns: u64) {
        if self.is_measured(sched_ns) {
            self.roll(now_ns);
            self.sec.lag.saturating_record(now_ns.saturating_sub(sched_ns));
        }
    }

    /// Records a connection established after `ns`.
    pub fn connected(&mut self, ns: u64) {
        self.conns_established += 1;
        self.connect.saturating_record(ns);
    }

    /// Records an error.
    pub fn error(&mut self, kind: ErrorKind) {
        self.errors.count(kind);
        self.sec_errors += 1;
    }

    /// Sends the ticks of every second that ended before `now_ns`. Seconds
    /// are aligned on the start of measuring: see [`second_phase`].
    pub fn tick(&mut self, now_ns: u64, conns_open: u64) {
        self.conns_open = conns_open;
        let now_sec = now_ns.saturating_sub(second_phase(self.measure_start_ns)) / NANOS_PER_SEC;
        while self.second < now_sec {
            self.send_second(conns_open, false);
        }
    }

    /// Sends the current (partial) second as the thread's last tick, records
    /// the end time and the CPU time the thread used since the recorder was
    /// made, and lets go of the channel (if it sends to one).
    pub fn finish(&mut self, now_ns: u64) {
        self.tick(now_ns, 0);
        self.send_second(0, true);
        if let TickSink::Channel(_) = self.sink {
            self.sink = TickSink::None;
        }
        self.end_ns = now_ns;
        self.cpu_secs = thread_cpu_secs() - self.cpu0;
    }

    /// The series the ticks went into, if they went straight into one.
    pub fn take_series(&mut self) -> Option<Series> {
        match std::mem::replace(&mut self.sink, TickSink::None) {
            TickSink::Series(s) => Some(*s),
            other => {
                self.sink = other;
                None
            }
        }
    }

    fn send_second(&mut self, conns_open: u64, last: bool) {
        let mut hists = std::mem::take(&mut self.sec);
        if !self.paced {
            // Closed loop: a message is sent when it is due, so both latencies are one.
            hists.uncorrected = hists.latency.clone();
        }
        self.hists.add(&hists);
        self.messages += self.sec_messages;
        self.bytes += self.sec_bytes;
        self.warmup_messages += self.sec_warmup_messages;
        let tick = Tick {
            thread: self.thread,
            second: self.second,
            messages: std::mem::take(&mut self.sec_messages),
            warmup_messages: std::mem::take(&mut self.sec_warmup_messages),
            bytes: std::mem::take(&mut self.sec_bytes),
            errors: std::mem::take(&mut self.sec_errors),
            conns_open,
            hists,
            warmup_latency: std::mem::replace(&mut self.sec_warmup, new_histogram()),
            last,
        };
        self.second += 1;
        self.second_end_ns += NANOS_PER_SEC;
        match &mut self.sink {
            // The main thread may have gone; the tick is then just dropped.
            TickSink::Channel(tx) => drop(tx.send(tick)),
            TickSink::Series(s) => s.add(tick),
            TickSink::None => {}
        }
    }
}

/// Where second 0 of the ticks starts (ns since the start of the run), so
/// that a second boundary falls exactly where measuring starts.
pub fn second_phase(measure_start_ns: u64) -> u64 {
    measure_start_ns % NANOS_PER_SEC
}

/// CPU time (user + system) of the calling thread, in seconds.
pub fn thread_cpu_secs() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(u) => {
            let tv = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            tv(u.user_time()) + tv(u.system_time())
        }
        Err(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_messages_are_not_measured() {
        let mut r = Recorder::new(0, 1000, true, TickSink::None);
        r.outstanding = 2;
        r.complete(999, 999, 2000, 64);
        r.complete(1000, 1500, 2000, 64);
        r.finish(2000);
        assert_eq!((r.messages, r.warmup_messages, r.bytes), (1, 1, 64));
        assert_eq!(r.hists.latency.len(), 1);
        assert_eq!(r.hists.latency.max(), r.hists.latency.highest_equivalent(1000));
        assert_eq!(r.hists.uncorrected.max(), r.hists.uncorrected.highest_equivalent(500));
    }

    #[test]
    fn closed_loop_latencies_are_one() {
        let mut r = Recorder::new(0, 0, false, TickSink::None);
        r.outstanding = 1;
        r.complete(100, 100, 700, 64);
        r.finish(800);
        assert_eq!(r.hists.uncorrected, r.hists.latency);
        assert_eq!(r.hists.latency.len(), 1);
        assert!(r.hists.lag.is_empty());
    }

    #[test]
    fn saturating_record_clamps() {
        let mut r = Recorder::new(0, 0, false, TickSink::None);
        r.outstanding = 1;
        r.complete(0, 0, 10 * HIST_MAX_NS, 1);
        r.finish(10 * HIST_MAX_NS);
        assert_eq!(r.hists.latency.len(), 1);
        assert!(r.hists.latency.max() >= HIST_MAX_NS);
    }

    #[test]
    fn lag_is_recorded_for_measured_messages_only() {
        let mut r = Recorder::new(0, 1000, true, TickSink::None);
        r.took_up(500, 600);
        r.took_up(1000, 1250);
        r.finish(2000);
        assert_eq!(r.hists.lag.len(), 1);
        assert_eq!(r.hists.lag.max(), r.hists.lag.highest_equivalent(250));
    }

    #[test]
    fn errors_add_and_total() {
        let mut a = Errors::default();
        a.count(ErrorKind::Mismatch);
        a.count(ErrorKind::Refused);
        let mut b = Errors::default();
        b.count(ErrorKind::Mismatch);
        b.count(ErrorKind::EofMidReply);
        b.count(ErrorKind::FdLimit);
        a.add(&b);
        assert_eq!((a.mismatch, a.refused, a.eof_mid_reply, a.fd_limit, a.total()), (2, 1, 1, 1, 5));
        assert_eq!(a.verification_failures(), 3);
        assert_eq!(a.pairs()[7], ("fd_limit", 1));
    }

    #[test]
    fn ticks_cover_every_second_and_add_up_to_the_totals() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut r = Recorder::new(0, 0, false, TickSink::Channel(tx));
        r.outstanding = 3;
        r.complete(0, 0, 10, 8);
        r.complete(0, 0, 2 * NANOS_PER_SEC + 10, 8);
        r.tick(3 * NANOS_PER_SEC + 5, 2);
        r.complete(0, 0, 3 * NANOS_PER_SEC + 10, 8);
        r.finish(3 * NANOS_PER_SEC + 20);
        let ticks: Vec<Tick> = rx.try_iter().collect();
        assert_eq!(ticks.iter().map(|t| t.second).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(ticks.iter().map(|t| t.messages).collect::<Vec<_>>(), vec![1, 0, 1, 1]);
        assert!(ticks[3].last);
        assert_eq!(r.messages, 3);
        assert_eq!(ticks.iter().map(|t| t.hists.latency.len()).sum::<u64>(), r.hists.latency.len());
    }
}
