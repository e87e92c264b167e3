//! `--work`: a benchmarking aid that makes the handler compute or block, to
//! show how each strategy behaves when handlers are CPU-bound or IO-bound
//! (processes win on compute, threads and event loops on waiting — unless
//! the waiting happens inside an event loop, which then stalls everyone).
//!
//! It wraps any protocol; the bytes on the wire do not change.
//!
//! - `cpu:N`: N rounds of a xorshift step per byte received (deterministic
//!   instructions; about N × 1 ns per byte on a 2020s x86 core);
//! - `sleep:MS`: sleep MS milliseconds on every read (a blocking call inside
//!   the handler, like a slow database query).
//!
//! Caller: the server CLI (`--work`) wraps the factory; strategies never know.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use switchyard_server::{Factory, Protocol, Step};

/// What the handler does besides the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Rounds of xorshift per byte.
    Cpu(u32),
    /// Sleep per read.
    Sleep(Duration),
}

impl FromStr for Work {
    type Err = String;
    fn from_str(s: &str) -> Result<Work, String> {
        let bad = || format!("`{s}`: expected cpu:N (rounds per byte) or sleep:MS (milliseconds per read)");
        let (kind, n) = s.split_once(':').ok_or_else(bad)?;
        let n: u32 = n.parse().map_err(|_| bad())?;
        match kind {
            "cpu" => Ok(Work::Cpu(n)),
            "sleep" => Ok(Work::Sleep(Duration::from_millis(n.into()))),
            _ => Err(bad()),
        }
    }
}

/// Wraps every protocol `inner` makes with `work`.
pub fn with_work(inner: Factory, work: Work) -> Factory {
    Arc::new(move || Box::new(Working { inner: inner(), work, state: 0x9E37_79B9_7F4A_7C15 }))
}

struct Working {
    inner: Box<dyn Protocol>,
    work: Work,
    state: u64,
}

impl Working {
    fn work(&mut self, bytes: usize) {
        match self.work {
            Work::Cpu(rounds) => self.state = burn(self.state, bytes as u64 * u64::from(rounds)),
            Work::Sleep(d) => std::thread::sleep(d),
        }
    }
}

impl Protocol for Working {
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        self.work(input.len());
        self.inner.on_read(input, output)
    }

    /// The inner protocol's in-place path, the work done once it was taken
    /// (a `None` goes on to `on_read`, which does the work).
    fn on_read_in_place(&mut self, data: &mut [u8]) -> Option<Step> {
        let step = self.inner.on_read_in_place(data)?;
        self.work(data.len());
        Some(step)
    }

    fn on_eof(&mut self, output: &mut BytesMut) -> Step {
        self.inner.on_eof(output)
    }
}

/// `n` dependent xorshift steps: the compiler cannot skip or vectorize them.
#[inline(never)]
pub(crate) fn burn(mut x: u64, n: u64) -> u64 {
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    std::hint::black_box(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_common::UpperEcho;
    use switchyard_server::factory_of;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("cpu:5".parse(), Ok(Work::Cpu(5)));
        assert_eq!("sleep:20".parse(), Ok(Work::Sleep(Duration::from_millis(20))));
        assert!("cpu".parse::<Work>().is_err());
        assert!("gpu:1".parse::<Work>().is_err());
        assert!("cpu:x".parse::<Work>().is_err());
    }

    #[test]
    fn bytes_are_unchanged_by_work() {
        let f = with_work(factory_of::<UpperEcho>(), Work::Cpu(3));
        let mut p = f();
        let mut input = BytesMut::from(&b"abc\xffxyz"[..]);
        let mut out = BytesMut::new();
        assert_eq!(p.on_read(&mut input, &mut out), Step::Continue);
        assert_eq!(&out[..], b"ABC\xffXYZ");
        assert!(input.is_empty());
    }
}
