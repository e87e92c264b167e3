//! End-to-end tests of the `server` binary and of the example programs,
//! one test binary, a module per topic. Every test starts its own server
//! process on `127.0.0.1:0` and talks to it over loopback TCP (see
//! [`support`]).
//!
//! - [`modes`]: every case against every mode of the table
//!   (`support::modes::every_mode!`);
//! - [`limits`]: thousands of connections, clients that never read, idle
//!   timeouts, fd exhaustion, `--max-conns`, a stalled server;
//! - [`hardening`]: load shedding, per-address limits, slowloris and fast
//!   trickles, dropping root;
//! - [`prefork`]: the prefork master as a supervisor;
//! - [`drivers`]: property tests of both drivers, and of a handler's
//!   `Connection` over both, over real sockets;
//! - [`faults`]: the syscall fault-injection shim itself;
//! - [`accept_errors`]: the accept policy's error table, a test per row in
//!   every mode (with the shim);
//! - [`metrics_endpoint`]: a scrape beside a thousand hostile clients of
//!   the metrics port, in every mode;
//! - [`cli`]: flags from the environment;
//! - [`client`]: the `client` binary and library: verification against
//!   faulty servers, held connections, schedule lag, coordinated instances,
//!   interval logs, merge, plots;
//! - [`operations`]: systemd socket activation and notifications, binary
//!   upgrades under load, health-checked reloads, memory recycling;
//! - [`proxy`]: the PROXY protocol in every mode;
//! - [`haproxy`]: three servers behind a real HAProxy, one killed and one
//!   drained mid-run;
//! - [`signals`]: the common signals that are not stops, sent to every mode
//!   under load: handled as the signal table says, nobody hurt;
//! - [`daemon`]: `--pid-file`, `--daemon`, and `--log-file` reopened on
//!   SIGUSR1 under load, in every mode.
//! - [`uring`]: the io_uring strategy's refusals: no io_uring (a seccomp
//!   filter), a coroutine handler.
//! - [`examples`]: the example programs (`examples/`: async echo, a Redis
//!   key-value server, an HTTP server, a chat room) as real processes,
//!   checked with `redis-cli`, `redis-benchmark`, `redis-server`, `curl`
//!   and `wrk`.
//!
//! `cargo test --test e2e modes::fork::` runs one mode, `cargo test --test
//! e2e half_close` one case in every mode, `cargo test --test e2e limits::`
//! one topic; `-- --nocapture` also prints the figures the tests measure.

mod accept_errors;
mod cli;
mod client;
mod daemon;
mod drivers;
mod examples;
mod faults;
mod haproxy;
mod hardening;
mod limits;
mod metrics_endpoint;
mod modes;
mod operations;
mod prefork;
mod proxy;
mod signals;
mod support;
mod uring;
