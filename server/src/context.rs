//! What every strategy is handed besides its listener and signals: the
//! configuration, the protocol factory, the shutdown event, and the
//! scoreboard slot its counters go to.

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use switchyard_common::Factory;

use crate::config::Config;
use crate::driver::Totals;
use crate::per_ip::{IpPermit, PerIp};
use crate::scoreboard::Slot;
use crate::shutdown::Shutdown;

/// Shared, cheap to clone.
#[derive(Clone)]
pub struct Context {
    /// What the server was asked to do.
    pub config: Arc<Config>,
    /// Makes one protocol per connection.
    pub factory: Factory,
    /// The process's stop event.
    pub shutdown: Shutdown,
    /// This process's counters (a scoreboard slot in prefork workers).
    pub slot: &'static Slot,
    /// Stop accepting after this many connections (prefork --max-requests).
    pub max_requests: Option<u64>,
    /// Open connections per client address (`--max-conns-per-ip`).
    pub per_ip: Option<PerIp>,
}

impl Context {
    /// Counts an accepted connection; after `max_requests` of them the
    /// process starts a graceful stop (its master replaces it).
    #[inline]
    pub fn accepted(&self) {
        self.slot.active.fetch_add(1, Relaxed);
        let n = self.slot.accepted.fetch_add(1, Relaxed) + 1;
        if self.max_requests.is_some_and(|m| n >= m) && self.shutdown.drain() {
            log::info!("served {n} connections (--max-requests): recycling");
        }
    }

    /// Counts a finished connection; returns how many were open before.
    #[inline]
    pub fn closed(&self, t: Totals) -> u64 {
        let before = self.slot.active.fetch_sub(1, Relaxed);
        self.slot.bytes_in.fetch_add(t.bytes_in, Relaxed);
        self.slot.bytes_out.fetch_add(t.bytes_out, Relaxed);
        before
    }

    /// Connections open in this process now.
    #[inline]
    pub fn open_connections(&self) -> usize {
        self.slot.active.load(Relaxed) as usize
    }

    /// A place for one more connection from `peer`: `Some(None)` when there
    /// is no per-address limit, `None` when `peer` is at its limit (the caller
    /// closes the connection at once).
    pub fn admit_peer(&self, peer: std::net::SocketAddr) -> Option<Option<IpPermit>> {
        match &self.per_ip {
            None => Some(None),
            Some(l) => match l.admit(peer.ip()) {
                Some(p) => Some(Some(p)),
                None => {
                    log::debug!("{peer}: at --max-conns-per-ip, closed");
                    self.refused(1);
                    None
                }
            },
        }
    }

    /// The strategy has set itself up and serves from now on. Until then a
    /// prefork worker counts as booting, and a death is a boot failure.
    pub fn ready(&self) {
        self.slot.set_state(crate::scoreboard::State::Running);
    }

    /// Counts connections closed at once without being served.
    #[inline]
    pub fn refused(&self, n: usize) {
        if n > 0 {
            self.slot.refused.fetch_add(n as u64, Relaxed);
        }
    }

    /// Counts a failed accept.
    pub fn accept_failed(&self) {
        self.slot.accept_errors.fetch_add(1, Relaxed);
    }

    /// Counts and logs how a blocking connection ended (peer faults below
    /// error level).
    pub fn finished(&self, result: io::Result<(crate::driver::blocking::End, Totals)>) {
        match result {
            Ok((end, t)) => {
                log::trace!("connection ended: {end:?}, {} bytes in, {} out", t.bytes_in, t.bytes_out);
                self.closed(t);
            }
            Err(e) => {
                log::debug!("connection failed: {e}");
                let _ = self.closed(Totals::default());
            }
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).field("shutdown", &self.shutdown).finish()
    }
}
