//! Switchyard's server: one sans-IO protocol (from `switchyard-common`)
//! served by every concurrency strategy.
//!
//! The layers, from the socket up:
//!
//! - [`listener`]: bind (socket2), backlog, SO_REUSEADDR/SO_REUSEPORT.
//! - [`strategy`]: how connections get CPU time, one file per model.
//! - [`acceptor`], [`tracker`]: the accept loop and the connection
//!   semaphore/registry the blocking strategies share.
//! - [`driver`]: moves bytes between a socket and the protocol.
//! - [`shutdown`], [`signals`]: the stop event and the signals that set it.
//! - [`sys`]: every `unsafe` call (fork, `_exit`, prctl, signal handlers).
//!
//! The `server` binary calls [`cli::main`], which parses flags into a
//! [`Config`] and calls [`serve`].
#![deny(missing_docs)]
// Unsafe code lives in `sys` only; anywhere else it does not compile.
#![deny(unsafe_code)]

pub mod acceptor;
pub mod backlog;
pub mod cli;
pub mod config;
pub mod context;
pub mod driver;
pub mod listener;
pub mod metrics;
pub mod per_ip;
pub mod poll;
pub mod privileges;
pub mod queue;
pub mod scoreboard;
pub mod shutdown;
pub mod signals;
pub mod strategy;
#[allow(unsafe_code)]
pub mod sys;
pub mod timer;
pub mod tracker;
pub mod work;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use config::{Config, Mode};
pub use context::Context;
use shutdown::Shutdown;
use signals::{Signal, Signals};
use switchyard_common::Factory;

/// Binds, reports the bound address through `ready`, and serves with the
/// configured strategy until a stop signal ends it. Signal handlers are
/// installed before binding, so a SIGTERM right after `ready` is honoured.
pub fn serve(config: Config, factory: Factory, ready: impl FnOnce(SocketAddr)) -> io::Result<()> {
    let extra: &[Signal] = match config.mode {
        Mode::Fork => &[Signal::SIGCHLD],
        Mode::Prefork => &[Signal::SIGCHLD, Signal::SIGHUP, Signal::SIGTTIN, Signal::SIGTTOU],
        _ => &[],
    };
    let signals = Signals::install(extra)?;
    acceptor::init_reserve();
    let listener = listener::bind(
        config.listen,
        listener::BindOptions {
            backlog: config.backlog,
            reuseport: config.mode == Mode::Reactor || (config.mode == Mode::Prefork && config.reuseport),
        },
    )?;
    match &config.user {
        Some(user) => privileges::drop_to(user, config.group.as_deref())?,
        None => privileges::warn_if_root(),
    }
    ready(listener.local_addr()?);
    // Fork children add their counters to the parent's slot: it must be
    // shared memory there; elsewhere one process owns it.
    let slot = match config.mode {
        Mode::Fork => scoreboard::Scoreboard::new(1)?.slots().first().expect("one slot"),
        _ => scoreboard::Slot::leaked(),
    };
    slot.claim(std::process::id());
    slot.set_state(scoreboard::State::Running);
    let ctx = Context {
        shutdown: Shutdown::new(config.grace),
        per_ip: config.max_conns_per_ip.map(per_ip::PerIp::new),
        config: Arc::new(config),
        factory,
        slot,
        max_requests: None,
    };
    strategy::run(listener, signals, ctx)
}
