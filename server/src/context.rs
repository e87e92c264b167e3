//! What every strategy is handed besides its listener and signals: the
//! configuration, the protocol factory, the process's stop event, its
//! admission semaphore, and the scoreboard slot its counters go to.

use std::sync::Arc;

use crate::admission::Admission;
use crate::config::{Config, Mode};
use crate::driver::Totals;
use crate::lifecycle::shutdown::Shutdown;
use crate::process::metrics;
use crate::process::scoreboard::{Counter, Slot, State};
use crate::serve::Service;

/// One process's shared state; cheap to clone.
#[derive(Clone)]
pub(crate) struct Context {
    /// What the server was asked to do (`mode` is what this process runs).
    pub(crate) config: Arc<Config>,
    /// What serves each connection: a protocol or a handler.
    pub(crate) service: Service,
    /// The process's stop event.
    pub(crate) shutdown: Shutdown,
    /// The process's connection semaphore and per-address limit.
    pub(crate) admission: Admission,
    /// This process's counters (a scoreboard slot in prefork workers).
    pub(crate) slot: Slot,
    /// Stop accepting after this many connections (prefork --max-requests).
    pub(crate) max_requests: Option<u64>,
}

impl Context {
    /// The context of a process that runs `config.mode`.
    pub(crate) fn new(config: Arc<Config>, service: Service, slot: Slot, max_requests: Option<u64>) -> Context {
        let cap = match config.mode {
            Mode::Serial => 1,
            Mode::Fork => config.max_children,
            Mode::Pool => config.threads.max(1) + config.queue,
            Mode::Thread | Mode::Event | Mode::Reactor | Mode::Uring | Mode::Prefork => config.max_conns,
        };
        Context {
            shutdown: Shutdown::new(config.grace),
            admission: Admission::new(cap, config.max_conns_per_ip, slot),
            config,
            service,
            slot,
            max_requests,
        }
    }

    /// Counts an accepted connection; after `max_requests` of them the
    /// process starts a graceful stop (its master replaces it).
    #[inline]
    pub(crate) fn accepted(&self) {
        self.slot.add(Counter::Active, 1);
        let n = self.slot.add(Counter::Accepted, 1) + 1;
        if self.max_requests.is_some_and(|m| n >= m) && self.shutdown.drain() {
            log::info!("served {n} connections (--max-requests): recycling");
        }
    }

    /// Counts a finished connection.
    #[inline]
    pub(crate) fn closed(&self, t: Totals) {
        self.slot.sub(Counter::Active, 1);
        self.slot.add(Counter::BytesIn, t.bytes_in);
        self.slot.add(Counter::BytesOut, t.bytes_out);
    }

    /// Counts a handler that returned an error or panicked.
    pub(crate) fn handler_failed(&self) {
        self.slot.add(Counter::HandlerErrors, 1);
    }

    /// Counts connections closed at once without being served.
    #[inline]
    pub(crate) fn refused(&self, n: usize) {
        if n > 0 {
            self.slot.add(Counter::Refused, n as u64);
        }
    }

    /// Counts a connection closed for its PROXY header (malformed, missing,
    /// late, too long).
    pub(crate) fn proxy_header_failed(&self) {
        self.slot.add(Counter::ProxyErrors, 1);
    }

    /// Counts a failed accept (or an accepted socket that could not be set up).
    pub(crate) fn accept_failed(&self) {
        self.slot.add(Counter::AcceptErrors, 1);
    }

    /// Counts a connection that was accepted but could not be handed to
    /// whatever serves it (no thread, no process, no poll registration):
    /// it closes unserved.
    pub(crate) fn handover_failed(&self) {
        self.accept_failed();
        self.closed(Totals::default());
    }

    /// The strategy has set itself up and serves from now on. Until then a
    /// prefork worker counts as booting, and a death is a boot failure.
    pub(crate) fn ready(&self) {
        self.slot.set_state(State::Running);
        // The server's main process serves: say so (a worker is another
        // pid, for which this does nothing).
        crate::lifecycle::readiness::ready(&format!("serving ({} mode)", self.config.mode));
    }

    /// This process's metrics page.
    pub(crate) fn page(&self) -> String {
        metrics::render_process(self.slot)
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).field("shutdown", &self.shutdown).finish()
    }
}
