//! Switchyard's server: a protocol written once, as a sans-IO state machine
//! ([`Protocol`]), served by every classic concurrency strategy ([`Mode`]):
//! one client at a time, a process per connection, a thread per connection,
//! a thread pool, a single-threaded event loop, one event loop per core,
//! and a prefork master whose workers run any of the in-process ones
//! ([`WorkerMode`]). Every strategy lives the same life (one accept policy,
//! one admission semaphore, one drain, one signal table), so a protocol
//! that works under one works under all.
//!
//! To serve a protocol of your own: implement [`Protocol`] (bytes in,
//! bytes out, no socket), make a [`Factory`] of it, pick a [`Mode`] in a
//! [`Config`], [`Server::bind`] and [`Server::serve`]. A stop comes from the
//! usual signals (SIGTERM drains, SIGQUIT stops at once) or a [`Stopper`].
//!
//! ```
//! use bytes::BytesMut;
//! use std::io::{BufRead, BufReader, Write};
//! use switchyard_server::{factory_of, Config, Mode, Protocol, Server, Step};
//!
//! /// Answers every line with its length: "hello\n" -> "5\n".
//! #[derive(Default)]
//! struct LineLength;
//!
//! impl Protocol for LineLength {
//!     fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
//!         while let Some(end) = input.iter().position(|&b| b == b'\n') {
//!             let line = input.split_to(end + 1);
//!             output.extend_from_slice(format!("{}\n", line.len() - 1).as_bytes());
//!         }
//!         Step::Continue // a partial line stays in `input` until the rest arrives
//!     }
//! }
//!
//! let mut config = Config::new(Mode::Event);
//! config.listen = "127.0.0.1:0".parse().unwrap();
//! let server = Server::bind(config).unwrap();
//! let (addr, stopper) = (server.local_addr(), server.stopper());
//!
//! let client = std::thread::spawn(move || {
//!     let mut conn = std::net::TcpStream::connect(addr).unwrap();
//!     conn.write_all(b"hello\nswitch").unwrap();
//!     conn.write_all(b"yard\n").unwrap();
//!     let mut lines = BufReader::new(conn).lines();
//!     let got = [lines.next().unwrap().unwrap(), lines.next().unwrap().unwrap()];
//!     stopper.graceful();
//!     got
//! });
//! server.serve(factory_of::<LineLength>()).unwrap();
//! assert_eq!(client.join().unwrap(), ["5", "10"]);
//! ```
//!
//! Inside, the crate is laid out by concept: `net` (listeners, the accept
//! policy), `admission` (the connection semaphore, per-address permits),
//! `lifecycle` (shutdown, drain, signals, deadlines, the poll every loop
//! sleeps in), `driver` (blocking and non-blocking), `strategy` (one file or
//! folder per model), `process` (children, scoreboard, metrics, privileges,
//! the pid file, [`daemonize`]) and `sys` (the only module with unsafe code). docs/ARCHITECTURE.md in
//! the repository walks through them.
#![deny(missing_docs)]
#![warn(unreachable_pub)]
// Unsafe code lives in `sys` only; anywhere else it does not compile.
#![deny(unsafe_code)]

mod admission;
mod config;
mod context;
mod driver;
pub mod handler;
mod lifecycle;
mod net;
mod process;
mod queue;
mod serve;
mod strategy;
#[allow(unsafe_code)]
mod sys;

pub use config::{cpus, Config, Mode, ProxyProtocol, WorkerMode};
pub use handler::{handler, Connection, Handler};
pub use process::daemon::{daemonize, Detached, Readiness};
pub use process::upgrade::started_by_upgrade;
pub use serve::{Server, Service, Stopper};
pub use switchyard_common::protocol::factory_of;
pub use switchyard_common::{Factory, Protocol, Step};

/// The connection state machine over a scripted peer, for the fuzz target
/// (feature `sim`); not part of the API.
#[cfg(feature = "sim")]
#[doc(hidden)]
pub use driver::sim;
