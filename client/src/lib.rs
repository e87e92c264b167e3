//! Switchyard's load tester for uppercase echo servers.
//!
//! [`run`] opens and holds `conns` connections from `threads` mio event
//! loops, sends messages (closed loop, fixed rate with uniform or Poisson
//! arrivals, or one connection per message), checks every byte of every
//! reply against the ASCII uppercase of what was sent, checks at the end
//! that every held connection still answers, and returns a [`Report`] with
//! HDR histograms (latency corrected and uncorrected, the client's own
//! schedule lag), rates, errors by kind, what became of each connection and
//! the client's own CPU time. [`Report::merged`] adds the reports of client
//! instances that ran together (see `--start-at`). The `client` binary is
//! [`cli::main`].
//!
//! ```no_run
//! let cfg = switchyard_client::Config {
//!     addrs: vec!["127.0.0.1:7878".parse().unwrap()],
//!     conns: 8,
//!     messages: Some(10_000),
//!     ..Default::default()
//! };
//! let report = switchyard_client::run(&cfg).unwrap();
//! println!("{:.0} msgs/s, p99 {} ns", report.msgs_per_sec, report.latency.value_at_quantile(0.99));
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod conn;
pub mod engine;
pub mod hlog;
pub mod merge;
pub mod pacing;
pub mod payload;
pub mod plot;
pub mod progress;
pub mod report;
pub mod stats;
pub mod timer;

pub use config::{parse_duration, parse_start_at, Config};
pub use engine::run;
pub use hdrhistogram::Histogram;
pub use pacing::Arrival;
pub use payload::PayloadKind;
pub use progress::SecondStat;
pub use report::{Report, RunInfo, Window};
pub use stats::{ErrorKind, Errors, Outcomes};
