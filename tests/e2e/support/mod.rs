//! What every end-to-end test stands on: the real `server` binary started on
//! `127.0.0.1:0`, talked to over loopback TCP, and looked at from outside.
//!
//! - [`server`]: start a server (limits, faults), its log, signals, its
//!   settled state; run one to its exit;
//! - [`modes`]: the one table of modes;
//! - [`net`]: client sockets and the echo protocol;
//! - [`procfs`]: `/proc` (process tree, CPU, memory, fds), shared with the
//!   benchmarks;
//! - [`metrics`]: the `--metrics` endpoint, scraped and parsed;
//! - [`process`]: bounded waits and runs, signals, the fd limit;
//! - [`programs`]: the example programs (built by cargo) and the standard
//!   tools of other projects (`redis-cli`, `curl`, `wrk`);
//! - [`load`]: clients echoing in the background, their trips and errors;
//! - [`machine`]: heavy tests run alone;
//! - [`faults`]: syscall faults injected into a server (`faults.c`);
//! - [`client`]: the `client` binary's runs and reports, and servers written
//!   to be wrong, for the `client` topic.
//!
//! Rules every helper follows, so a broken server fails a test instead of
//! hanging it, and parallel tests never interfere:
//!
//! - every test starts its own server on `127.0.0.1:0`;
//! - every client socket has read and write timeouts ([`net::IO_TIMEOUT`]);
//! - every wait is a bounded poll of an observable condition
//!   ([`process::poll_until`]), never a sleep used as synchronisation; every
//!   process a test runs is bounded in time;
//! - a server is SIGKILLed with every descendant when its [`server::Server`]
//!   is dropped, also when the test panics.

pub mod client;
pub mod faults;
pub mod load;
pub mod machine;
pub mod metrics;
pub mod modes;
pub mod net;
pub mod process;
pub mod procfs;
pub mod programs;
pub mod server;

/// Panics with every collected failure, one per line.
pub fn fail_if_any(failures: &[String]) {
    assert!(failures.is_empty(), "{} failure(s):\n  - {}", failures.len(), failures.join("\n  - "));
}
