//! What a load test does: [`Config`], filled in by `cli.rs` from flags or by
//! a benchmark harness directly, and read by `engine.rs`. Also the duration
//! syntax shared by the flags (`10s`, `500ms`, `2m`, plain number = seconds).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::payload::PayloadKind;

/// A load test.
#[derive(Clone, Debug)]
pub struct Config {
    /// Servers to connect to; connection `i` goes to `addrs[i % len]`.
    pub addrs: Vec<SocketAddr>,
    /// Source addresses to bind, rotating over connections (empty: any).
    pub source_ips: Vec<IpAddr>,
    /// Event-loop threads (each owns `conns / threads` connections).
    pub threads: usize,
    /// Connections (in `reconnect` mode: concurrent connection slots).
    pub conns: usize,
    /// Bytes per message.
    pub size: usize,
    /// What message bytes look like.
    pub payload: PayloadKind,
    /// Messages in flight per connection (more than 1 = pipelining).
    pub depth: usize,
    /// Total messages per second over all connections (`None`: closed loop).
    pub rate: Option<u64>,
    /// A new connection per message (connect, send, read, close).
    pub reconnect: bool,
    /// How long to measure (after warm-up). With `messages`, whichever ends first.
    pub duration: Option<Duration>,
    /// How many messages to measure in total (after warm-up).
    pub messages: Option<u64>,
    /// Time at the start whose messages are left out of the statistics.
    pub warmup: Duration,
    /// New connections per second, in total (the ramp).
    pub connect_rate: u64,
    /// Connect and reply timeout.
    pub timeout: Duration,
    /// TCP_NODELAY on client sockets.
    pub nodelay: bool,
    /// Print a live progress line on stderr every second.
    pub progress: bool,
    /// Percentiles to report (e.g. 50, 99, 99.9).
    pub percentiles: Vec<f64>,
}

/// The number of CPUs (at least 1).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Percentiles reported unless asked otherwise.
pub const DEFAULT_PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

impl Default for Config {
    fn default() -> Config {
        Config {
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], 7878))],
            source_ips: Vec::new(),
            threads: cpus(),
            conns: 16,
            size: 64,
            payload: PayloadKind::Random,
            depth: 1,
            rate: None,
            reconnect: false,
            duration: None,
            messages: None,
            warmup: Duration::ZERO,
            connect_rate: 10_000,
            timeout: Duration::from_secs(5),
            nodelay: true,
            progress: false,
            percentiles: DEFAULT_PERCENTILES.to_vec(),
        }
    }
}

impl Config {
    /// Checks that the configuration makes sense.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |m: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, m.to_string()));
        if self.addrs.is_empty() {
            return bad("no server address");
        }
        if self.conns == 0 || self.threads == 0 || self.depth == 0 || self.connect_rate == 0 {
            return bad("conns, threads, depth and connect-rate must be at least 1");
        }
        if self.size == 0 {
            return bad("message size must be at least 1 byte");
        }
        if self.rate == Some(0) {
            return bad("rate must be at least 1 message per second");
        }
        if self.messages == Some(0) {
            return bad("messages must be at least 1");
        }
        if self.percentiles.iter().any(|p| !(0.0..=100.0).contains(p)) {
            return bad("percentiles must be between 0 and 100");
        }
        if self.timeout.is_zero() {
            return bad("timeout must be positive");
        }
        Ok(())
    }

    /// The measured duration: as given, or 10 s when neither a duration nor a
    /// message count is set.
    pub fn effective_duration(&self) -> Option<Duration> {
        match (self.duration, self.messages) {
            (None, None) => Some(Duration::from_secs(10)),
            (d, _) => d,
        }
    }

    /// Messages in flight per connection (always 1 in reconnect mode).
    pub fn effective_depth(&self) -> usize {
        if self.reconnect {
            1
        } else {
            self.depth
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `250us` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (us, ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn defaults_validate() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.effective_duration(), Some(Duration::from_secs(10)));
        let c = Config { conns: 0, ..Config::default() };
        assert!(c.validate().is_err());
    }
}
