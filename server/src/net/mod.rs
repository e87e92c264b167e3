//! The network edge: binding listeners and setting up accepted sockets
//! ([`listener`]), the one accept policy every strategy calls ([`accept`]),
//! the queue-wait limit on the listen backlog ([`backlog`]), and the
//! acceptor that puts a listener, its policy and a poll together
//! ([`acceptor`]), and the PROXY protocol header it reads first when asked
//! ([`proxy`]).

pub(crate) mod accept;
pub(crate) mod acceptor;
pub(crate) mod backlog;
pub(crate) mod listener;
pub(crate) mod proxy;
