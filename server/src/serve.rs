//! The entry point: [`Server::bind`] sets up signal handling, binds (so a
//! port below 1024 works as root), and drops privileges; [`Server::serve`]
//! runs the configured strategy until a stop.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use switchyard_common::Factory;

use crate::handler::Handler;

use crate::config::{Config, Mode, WorkerMode};
use crate::context::Context;
use crate::lifecycle::signals::{self, Role, Signal, Signals};
use crate::net::{accept, listener};
use crate::process::privileges;
use crate::process::scoreboard::{Scoreboard, Slot};

/// A server that is bound and ready to serve.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listener: TcpListener,
    signals: Signals,
    addr: SocketAddr,
}

impl Server {
    /// Installs the signal handling of the configured mode (before binding,
    /// so a SIGTERM as soon as the address is known is honoured), binds
    /// `config.listen`, and drops to `config.user` if given.
    pub fn bind(config: Config) -> io::Result<Server> {
        let role = match config.mode {
            Mode::Fork => Role::ForkParent,
            Mode::Prefork => Role::Master,
            _ => Role::Single,
        };
        if config.mode == Mode::Uring || (config.mode == Mode::Prefork && config.worker == WorkerMode::Uring) {
            // Once, before binding: a server that cannot run says so at start
            // (and a prefork master's workers never boot only to fail).
            crate::strategy::uring::probe()?;
        }
        let signals = Signals::install(role, config.mode.name())?;
        accept::init_reserve();
        let reuseport = config.mode == Mode::Reactor
            || (config.mode == Mode::Uring && config.threads > 1)
            || (config.mode == Mode::Prefork && config.reuseport);
        let listener = listener::bind(config.listen, listener::BindOptions { backlog: config.backlog, reuseport })?;
        match &config.user {
            Some(user) => privileges::drop_to(user, config.group.as_deref())?,
            None => privileges::warn_if_root(),
        }
        let addr = listener.local_addr()?;
        Ok(Server { config, listener, signals, addr })
    }

    /// The address the server listens on (the port is known even when
    /// `config.listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops the server from another thread of this process.
    pub fn stopper(&self) -> Stopper {
        Stopper(())
    }

    /// Serves every connection with `service` (a protocol [`Factory`] or a
    /// [`Handler`]) until the server stops (a signal or a [`Stopper`]);
    /// returns once every connection has been drained.
    pub fn serve(self, service: impl Into<Service>) -> io::Result<()> {
        // Fork children count into their parent's slot: it must be shared
        // memory there; elsewhere one process owns it.
        let slot = match self.config.mode {
            Mode::Fork => Scoreboard::new(1)?.slot(0),
            _ => Slot::leaked(),
        };
        slot.claim(std::process::id());
        let ctx = Context::new(Arc::new(self.config), service.into(), slot, None);
        crate::strategy::run(self.listener, self.signals, ctx)
    }
}

/// What serves each connection.
#[derive(Clone)]
pub enum Service {
    /// A sans-IO state machine per connection (the fastest; every driver).
    Protocol(Factory),
    /// A coroutine per connection (`async fn`), see [`Handler`].
    Handler(Handler),
}

impl From<Factory> for Service {
    fn from(f: Factory) -> Service {
        Service::Protocol(f)
    }
}

impl From<Handler> for Service {
    fn from(h: Handler) -> Service {
        Service::Handler(h)
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Service::Protocol(_) => "Service::Protocol",
            Service::Handler(_) => "Service::Handler",
        })
    }
}

/// Stops the server of this process as its signals would: [`graceful`]
/// as SIGTERM does, [`now`] as SIGQUIT does.
///
/// [`graceful`]: Stopper::graceful
/// [`now`]: Stopper::now
#[derive(Debug, Clone, Copy)]
pub struct Stopper(());

impl Stopper {
    /// A graceful stop: no new connections; open ones are served until they
    /// close or the grace period ends.
    pub fn graceful(&self) {
        signals::raise(Signal::SIGTERM);
    }

    /// An immediate stop.
    pub fn now(&self) {
        signals::raise(Signal::SIGQUIT);
    }
}
