//! Measurements of one engine thread: latency histograms (nanoseconds, 3
//! significant figures, saturating), counts, errors by kind and the
//! per-second buckets sent to the main thread for the live progress line and
//! the series in the report. `conn.rs` records into a [`Recorder`];
//! `engine.rs` merges the recorders of all threads into a `Report`.

use std::sync::mpsc::Sender;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::pacing::NANOS_PER_SEC;

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
    /// Any other I/O error.
    Other,
}

/// Error counts by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Other I/O errors.
    pub other: u64,
}

impl Errors {
    /// Counts one error.
    pub fn count(&mut self, kind: ErrorKind) {
        *match kind {
            ErrorKind::Refused => &mut self.refused,
            ErrorKind::ConnectTimeout => &mut self.connect_timeout,
            ErrorKind::Reset => &mut self.reset,
            ErrorKind::EofMidReply => &mut self.eof_mid_reply,
            ErrorKind::Mismatch => &mut self.mismatch,
            ErrorKind::ReplyTimeout => &mut self.reply_timeout,
            ErrorKind::ClosedIdle => &mut self.closed_idle,
            ErrorKind::Other => &mut self.other,
        } += 1;
    }

    /// Adds another set of counts.
    pub fn add(&mut self, o: &Errors) {
        self.refused += o.refused;
        self.connect_timeout += o.connect_timeout;
        self.reset += o.reset;
        self.eof_mid_reply += o.eof_mid_reply;
        self.mismatch += o.mismatch;
        self.reply_timeout += o.reply_timeout;
        self.closed_idle += o.closed_idle;
        self.other += o.other;
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

    /// (name, count) for every kind, in a fixed order.
    pub fn pairs(&self) -> [(&'static str, u64); 8] {
        [
            ("refused", self.refused),
            ("connect_timeout", self.connect_timeout),
            ("reset", self.reset),
            ("eof_mid_reply", self.eof_mid_reply),
            ("mismatch", self.mismatch),
            ("reply_timeout", self.reply_timeout),
            ("closed_idle", self.closed_idle),
            ("other", self.other),
        ]
    }
}

/// One second of one thread's activity, sent to the main thread.
#[derive(Debug)]
pub struct Tick {
    /// Which engine thread sent it.
    pub thread: usize,
    /// Which second since the start of the run (0 = the first).
    pub second: u64,
    /// Messages completed in it (warm-up included).
    pub messages: u64,
    /// Bytes echoed in it.
    pub bytes: u64,
    /// Errors in it.
    pub errors: u64,
    /// Connections open at its end.
    pub conns_open: u64,
    /// Latencies (corrected, ns) of its messages.
    pub latency: Histogram<u64>,
    /// The thread's last tick: it has stopped.
    pub last: bool,
}

/// Everything one engine thread measured, merged by the engine into a report.
#[derive(Debug)]
pub struct Recorder {
    /// Latency from the scheduled send time (coordinated-omission corrected).
    pub latency: Histogram<u64>,
    /// Latency from the actual send time.
    pub latency_uncorrected: Histogram<u64>,
    /// Time to establish a connection.
    pub connect: Histogram<u64>,
    /// Measured messages completed.
    pub messages: u64,
    /// Measured bytes echoed (each byte counted once).
    pub bytes: u64,
    /// Messages completed during warm-up (not in the histograms).
    pub warmup_messages: u64,
    /// Errors by kind.
    pub errors: Errors,
    /// Connections attempted.
    pub conns_attempted: u64,
    /// Connections established.
    pub conns_established: u64,
    /// Messages still outstanding when the run stopped.
    pub unfinished: u64,
    /// When the last message completed (ns since the start of the run).
    pub last_completion_ns: u64,
    /// When the thread stopped (ns since the start of the run).
    pub end_ns: u64,
    /// CPU time this thread used, in seconds.
    pub cpu_secs: f64,
    measure_start_ns: u64,
    thread: usize,
    second: u64,
    /// Where the current second ends (ns since the start of the run).
    second_end_ns: u64,
    /// Connections open at the last periodic tick.
    conns_open: u64,
    sec_messages: u64,
    sec_bytes: u64,
    sec_errors: u64,
    sec_latency: Histogram<u64>,
    ticks: Option<Sender<Tick>>,
}

impl Recorder {
    /// A recorder whose statistics start at `measure_start_ns` (after
    /// warm-up), sending one [`Tick`] per second to `ticks` if given.
    pub fn new(thread: usize, measure_start_ns: u64, ticks: Option<Sender<Tick>>) -> Recorder {
        Recorder {
            latency: new_histogram(),
            latency_uncorrected: new_histogram(),
            connect: new_histogram(),
            messages: 0,
            bytes: 0,
            warmup_messages: 0,
            errors: Errors::default(),
            conns_attempted: 0,
            conns_established: 0,
            unfinished: 0,
            last_completion_ns: 0,
            end_ns: 0,
            cpu_secs: 0.0,
            measure_start_ns,
            thread,
            second: 0,
            second_end_ns: second_phase(measure_start_ns) + NANOS_PER_SEC,
            conns_open: 0,
            sec_messages: 0,
            sec_bytes: 0,
            sec_errors: 0,
            sec_latency: new_histogram(),
            ticks,
        }
    }

    /// Whether a message scheduled at `sched_ns` is measured (not warm-up).
    #[inline]
    pub fn is_measured(&self, sched_ns: u64) -> bool {
        sched_ns >= self.measure_start_ns
    }

    /// Records a completed message.
    #[inline]
    pub fn complete(&mut self, sched_ns: u64, sent_ns: u64, now_ns: u64, bytes: u64) {
        if now_ns >= self.second_end_ns {
            // Count the message in the second it completed in.
            self.tick(now_ns, self.conns_open);
        }
        let corrected = now_ns.saturating_sub(sched_ns);
        self.sec_messages += 1;
        self.sec_bytes += bytes;
        self.sec_latency.saturating_record(corrected);
        if self.is_measured(sched_ns) {
            self.messages += 1;
            self.bytes += bytes;
            self.latency.saturating_record(corrected);
            self.latency_uncorrected.saturating_record(now_ns.saturating_sub(sent_ns));
            self.last_completion_ns = now_ns;
        } else {
            self.warmup_messages += 1;
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
            self.flush_second(conns_open);
        }
    }

    /// Sends the current (partial) second as the thread's last tick, records
    /// the end time and the thread's CPU time, and lets go of the channel.
    pub fn finish(&mut self, now_ns: u64) {
        self.tick(now_ns, 0);
        self.send_second(0, true);
        self.ticks = None;
        self.end_ns = now_ns;
        self.cpu_secs = thread_cpu_secs();
    }

    fn flush_second(&mut self, conns_open: u64) {
        self.send_second(conns_open, false);
    }

    fn send_second(&mut self, conns_open: u64, last: bool) {
        let latency = std::mem::replace(&mut self.sec_latency, new_histogram());
        let tick = Tick {
            thread: self.thread,
            second: self.second,
            messages: std::mem::take(&mut self.sec_messages),
            bytes: std::mem::take(&mut self.sec_bytes),
            errors: std::mem::take(&mut self.sec_errors),
            conns_open,
            latency,
            last,
        };
        self.second += 1;
        self.second_end_ns += NANOS_PER_SEC;
        if let Some(tx) = &self.ticks {
            // The main thread may have gone; the tick is then just dropped.
            let _ = tx.send(tick);
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
        let mut r = Recorder::new(0, 1000, None);
        r.complete(999, 999, 2000, 64);
        r.complete(1000, 1500, 2000, 64);
        assert_eq!((r.messages, r.warmup_messages, r.bytes), (1, 1, 64));
        assert_eq!(r.latency.len(), 1);
        assert_eq!(r.latency.max(), r.latency.highest_equivalent(1000));
        assert_eq!(r.latency_uncorrected.max(), r.latency_uncorrected.highest_equivalent(500));
    }

    #[test]
    fn saturating_record_clamps() {
        let mut r = Recorder::new(0, 0, None);
        r.complete(0, 0, 10 * HIST_MAX_NS, 1);
        assert_eq!(r.latency.len(), 1);
        assert!(r.latency.max() >= HIST_MAX_NS);
    }

    #[test]
    fn errors_add_and_total() {
        let mut a = Errors::default();
        a.count(ErrorKind::Mismatch);
        a.count(ErrorKind::Refused);
        let mut b = Errors::default();
        b.count(ErrorKind::Mismatch);
        b.count(ErrorKind::EofMidReply);
        a.add(&b);
        assert_eq!((a.mismatch, a.refused, a.eof_mid_reply, a.total()), (2, 1, 1, 4));
        assert_eq!(a.verification_failures(), 3);
    }

    #[test]
    fn ticks_cover_every_second() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut r = Recorder::new(0, 0, Some(tx));
        r.complete(0, 0, 10, 8);
        r.tick(3 * NANOS_PER_SEC + 5, 2);
        let ticks: Vec<Tick> = rx.try_iter().collect();
        assert_eq!(ticks.iter().map(|t| t.second).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(ticks[0].messages, 1);
        assert_eq!(ticks[1].messages, 0);
    }
}
