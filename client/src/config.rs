//! What a load test does: [`Config`], filled in by `cli.rs` from flags or by
//! a benchmark harness directly, and read by `engine.rs`. Also the duration
//! syntax shared by the flags (`10s`, `500ms`, `2m`, plain number = seconds)
//! and the wall-clock times of `--start-at` (RFC 3339, Unix time, `+SECS`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pacing::Arrival;
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
    /// How the send times of a fixed rate are spread.
    pub arrival: Arrival,
    /// Seed of the Poisson schedule.
    pub seed: u64,
    /// Wall-clock time at which warm-up (and then measuring) starts, so that
    /// several instances measure the same window (`None`: after the ramp).
    pub start_at: Option<SystemTime>,
    /// Fixed rate: fail the run when the p99 of the client's schedule lag exceeds this.
    pub max_lag: Option<Duration>,
    /// Fixed rate: wake this long before each send and poll without sleeping
    /// until it is due (less lag, more CPU; zero: sleep until due).
    pub spin: Duration,
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

/// The Poisson schedule's seed unless asked otherwise.
pub const DEFAULT_SEED: u64 = 1;

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
            arrival: Arrival::Uniform,
            seed: DEFAULT_SEED,
            start_at: None,
            max_lag: None,
            spin: Duration::ZERO,
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
        if let Some(at) = self.start_at {
            // A moment of slack for the start-up of the process itself.
            if at + Duration::from_secs(1) < SystemTime::now() {
                return bad("the --start-at time has already passed");
            }
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

/// Parses the time of `--start-at`: `+SECS` from now (any duration, e.g.
/// `+5`, `+1.5s`, `+500ms`), a Unix time in seconds (`1767225600.5`), or an
/// RFC 3339 time with a zone (`2026-01-01T00:00:00Z`, `...+01:00`).
pub fn parse_start_at(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('+') {
        return Ok(SystemTime::now() + parse_duration(rel)?);
    }
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(UNIX_EPOCH + Duration::from_secs_f64(secs));
        }
    }
    let ts: jiff::Timestamp = s.parse().map_err(|e| {
        format!("`{s}` is not a time (+SECS, Unix seconds, or RFC 3339 such as 2026-01-01T12:00:00Z): {e}")
    })?;
    Ok(SystemTime::from(ts))
}

/// A wall-clock time as RFC 3339 in UTC with milliseconds.
pub fn fmt_wall(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("{ts:.3}"),
        Err(_) => "?".into(),
    }
}

/// A wall-clock time as Unix seconds.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
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
    fn start_times() {
        let t = parse_start_at("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(unix_secs(t), 1_767_225_600.0);
        assert_eq!(parse_start_at("2026-01-01T01:00:00+01:00").unwrap(), t);
        assert_eq!(parse_start_at("1767225600").unwrap(), t);
        assert_eq!(unix_secs(parse_start_at("1767225600.25").unwrap()), 1_767_225_600.25);
        let soon = parse_start_at("+2").unwrap();
        let ahead = soon.duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_millis(1500) && ahead <= Duration::from_secs(2), "{ahead:?}");
        assert!(parse_start_at("+500ms").is_ok());
        for bad in ["tomorrow", "2026-01-01", "+x", "-5"] {
            assert!(parse_start_at(bad).is_err(), "{bad}");
        }
        assert_eq!(fmt_wall(t), "2026-01-01T00:00:00.000Z");
        let past = Config { start_at: Some(t - Duration::from_secs(86_400 * 3650)), ..Config::default() };
        assert!(past.validate().is_err());
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
