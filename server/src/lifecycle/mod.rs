//! A process's life, written once for every strategy: the stop event
//! ([`shutdown`]), the stages of a stop ([`drain`]), the signal table
//! ([`signals`]), the deadline table of a loop ([`deadlines`]), and the poll
//! every loop sleeps in ([`poller`]: signals, heartbeats, metrics, a waker,
//! a binary upgrade in progress), and what the outside is told
//! ([`readiness`]: the service manager, a replaced process).

pub(crate) mod deadlines;
pub(crate) mod drain;
pub(crate) mod poller;
pub(crate) mod readiness;
pub(crate) mod shutdown;
pub(crate) mod signals;
