//! Processes and what they share: the child supervisor of fork and prefork
//! ([`children`]), the shared-memory scoreboard of counters ([`scoreboard`]),
//! the Prometheus endpoint that renders it ([`metrics`]), the privilege
//! drop after binding ([`privileges`]), the binary upgrade's successor
//! ([`upgrade`]), the pid file ([`pidfile`]), and the classic detach of
//! `--daemon` ([`daemon`]).

pub(crate) mod children;
pub(crate) mod daemon;
pub(crate) mod metrics;
pub(crate) mod pidfile;
pub(crate) mod privileges;
pub(crate) mod scoreboard;
pub(crate) mod upgrade;
