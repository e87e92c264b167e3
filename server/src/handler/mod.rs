//! Coroutine-style handlers: a connection served by straight-line code,
//! `async fn handle(conn: Connection) -> io::Result<()>`, the way gevent
//! serves `data = sock.recv(); sock.send(data.upper())`. The server switches
//! between handlers whenever one would block.
//!
//! The same handler runs under every strategy:
//!
//! - on an event loop (`event`, `reactor`, prefork event workers) each
//!   connection is a task polled by the loop that owns its socket, woken by
//!   readiness from the loop's own poll ([`executor`](self) has the
//!   details); [`sleep`] and [`timeout`] are served by the loop's timers, and
//!   [`run_blocking`] sends work to a small pool of threads while the task
//!   waits;
//! - in the blocking strategies (`serial`, `fork`, `thread`, `pool`, and
//!   prefork workers running them) it runs on its connection's own thread
//!   or process through a small `block_on` over a blocking socket; `sleep`
//!   sleeps the thread and `run_blocking` runs inline.
//!
//! A handler must await to let others run: one that loops without awaiting
//! (a CPU-bound loop) holds its whole event loop, and no signal can stop it
//! (the process must be killed); send such work to [`run_blocking`]. A
//! handler whose awaits are always ready (a client that floods it) is made
//! to yield every so often, so it cannot starve the others.
//!
//! A panic in a handler closes its connection only (logged with the peer's
//! address); an error it returns is logged at debug and counted
//! (`switchyard_handler_errors_total`).

mod block_on;
mod connection;
mod echo;
mod executor;
mod offload;
mod timers;

use std::future::Future;
use std::io;
use std::sync::Arc;

pub(crate) use block_on::block_on;
pub(crate) use connection::LoopIo;
pub use connection::{Chunk, Connection, ReadChunk, CHUNK};
pub use echo::upper_echo;
#[cfg(test)]
pub(crate) use executor::task_waker_size;
pub use executor::LocalFuture;
pub(crate) use executor::{panic_message, Polled, RunQueue, Task};
pub use offload::{run_blocking, Blocking};
pub(crate) use timers::{fire as fire_timers, next_deadline as next_timer};
pub use timers::{sleep, timeout, Elapsed, Sleep, Timeout};

/// Makes one handler future per connection. Shared by every thread (and,
/// after fork, every process) of a server; the futures it makes need not
/// be `Send`: each runs on the thread that owns its connection.
pub type Handler = Arc<dyn Fn(Connection) -> LocalFuture + Send + Sync>;

/// A [`Handler`] from an `async fn(Connection) -> io::Result<()>` (or any
/// function returning such a future).
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(Connection) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>> + 'static,
{
    Arc::new(move |conn| Box::pin(f(conn)))
}
