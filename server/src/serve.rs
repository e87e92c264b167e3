//! The entry point: [`Server::bind`] sets up signal handling, binds (so a
//! port below 1024 works as root) or takes the listening sockets it was
//! handed (systemd's socket activation, or the process a binary upgrade
//! replaces), drops privileges, and writes the pid file; [`Server::serve`]
//! runs the configured strategy until a stop.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use switchyard_common::Factory;

use crate::handler::Handler;

use crate::config::{Config, Mode, WorkerMode};
use crate::context::Context;
use crate::lifecycle::readiness;
use crate::lifecycle::signals::{self, ReopenHook, Role, Signal, Signals};
use crate::net::{accept, listener};
use crate::process::pidfile::{self, PidFile};
use crate::process::scoreboard::{Scoreboard, Slot};
use crate::process::{privileges, upgrade};
use crate::sys;

/// A server that is bound and ready to serve.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listeners: Vec<TcpListener>,
    signals: Signals,
    addr: SocketAddr,
    inherited: Option<&'static str>,
    /// Removed when the server is done (dropped with it, or after `serve`).
    pid_file: Option<pidfile::Held>,
}

impl Server {
    /// Installs the signal handling of the configured mode (before binding,
    /// so a SIGTERM as soon as the address is known is honoured), takes the
    /// listening sockets this process was handed (`LISTEN_FDS`: then
    /// `config.listen` only documents) or binds `config.listen`, drops to
    /// `config.user` if given, and then writes `config.pid_file` if given
    /// (as the user that will remove it).
    ///
    /// A pid file that names a running server is an error
    /// ([`io::ErrorKind::AlreadyExists`], "already running as PID N"),
    /// found before binding; a stale one is replaced with a warning.
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
        if let Some(path) = &config.pid_file {
            pidfile::check(path)?;
        }
        accept::init_reserve();
        upgrade::remember_how_started();
        let upgrade_pipe = sys::take_inherited_fd(readiness::UPGRADE_READY_FD);
        let handed: Vec<TcpListener> = sys::take_listen_fds()?.into_iter().map(|(l, _)| l).collect();
        let (listeners, inherited) = if handed.is_empty() {
            let reuseport = config.mode == Mode::Reactor
                || (config.mode == Mode::Uring && config.threads > 1)
                || (config.mode == Mode::Prefork && config.reuseport);
            let opts = listener::BindOptions { backlog: config.backlog, reuseport };
            (vec![listener::bind(config.listen, opts)?], None)
        } else {
            let from = if upgrade_pipe.is_some() { "the server it replaces" } else { "systemd" };
            log::info!("serving on {} socket(s) handed over by {from} (--listen only documents)", handed.len());
            (handed, Some(from))
        };
        readiness::init(upgrade_pipe);
        match &config.user {
            Some(user) => privileges::drop_to(user, config.group.as_deref())?,
            None => privileges::warn_if_root(),
        }
        let addr = listeners[0].local_addr()?;
        let pid_file = config.pid_file.as_deref().map(|p| PidFile::write(p).map(pidfile::hold)).transpose()?;
        Ok(Server { config, listeners, signals, addr, inherited, pid_file })
    }

    /// Who handed this server its listening sockets, if it did not bind them
    /// itself: `"systemd"` (socket activation) or `"the server it replaces"`
    /// (a binary upgrade).
    pub fn inherited(&self) -> Option<&'static str> {
        self.inherited
    }

    /// The address the server listens on (the port is known even when
    /// `config.listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What SIGUSR1 does (logrotate's `postrotate` convention): `reopen` is
    /// called in every process of the server, on the thread that handles
    /// signals, between two polls (so it must be quick: open a file, swap
    /// it in). Supervisors (the fork parent, the prefork master) call it and
    /// forward the signal to their children, which call it too, so one
    /// signal to the server reaches every process. An error is logged and
    /// the server serves on. Without a hook SIGUSR1 is logged ("nothing to
    /// reopen").
    pub fn on_reopen(mut self, reopen: impl Fn() -> io::Result<()> + Send + Sync + 'static) -> Server {
        self.signals.set_reopen(ReopenHook(Arc::new(reopen)));
        self
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
        let served = crate::strategy::run(self.listeners, self.signals, ctx);
        drop(self.pid_file);
        served
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
