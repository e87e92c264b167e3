//! Drivers move bytes between a socket and a [`Protocol`]: the strategies
//! decide who runs them and when.
//!
//! - [`blocking`]: read, `on_read`, write everything, repeat. Used by serial,
//!   fork, thread, pool.
//! - [`nonblocking`]: a resumable per-connection state machine over mio
//!   readiness with bounded buffers. Used by the event loops.
//! - [`sim`]: the non-blocking driver over a scripted in-memory peer, with
//!   the invariants it must keep. Used by tests and the fuzz target.
//!
//! [`Protocol`]: switchyard_common::Protocol

pub mod blocking;
pub mod nonblocking;
pub mod sim;

/// Bytes a connection moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Bytes read from the peer.
    pub bytes_in: u64,
    /// Bytes written to the peer.
    pub bytes_out: u64,
}
