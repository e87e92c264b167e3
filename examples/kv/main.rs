//! A Redis-protocol (RESP2) key-value server, written as a sans-IO
//! [`Protocol`]: `PING`, `ECHO`, `SET` (with `EX`/`PX`, `NX`/`XX`), `GET`, `DEL`,
//! `EXISTS`, `INCR`, `DBSIZE`, `FLUSHALL`, `COMMAND` and `CONFIG GET`
//! (what `redis-cli` and `redis-benchmark` ask when they connect).
//!
//! ```sh
//! cargo run --release --example kv -- --mode event --listen 127.0.0.1:6380
//! redis-cli -p 6380 set greeting hello && redis-cli -p 6380 get greeting
//! ```
//!
//! What it shows:
//!
//! - **framing** in a state machine: requests are parsed from the front of
//!   the input (`resp.rs`: multibulk as clients send it, inline commands as
//!   typed, pipelining: every whole command of a read is answered in order);
//!   a command that arrived in part stays in the input until the rest
//!   comes, split at any byte (a property test splits requests at every
//!   position); every declared length is checked before it is waited for,
//!   so one command buffers at most [`resp::MAX_REQUEST`] bytes (1 MiB; an
//!   inline line 64 KiB), and a bigger one gets `-ERR Protocol error: ...`
//!   and is closed, as Redis closes on protocol errors. The replies of one
//!   read are bounded as well ([`MAX_BATCH_REPLIES`]), so a pipeline of
//!   `GET`s of large values cannot grow one connection's output without
//!   bound;
//! - **state shared between connections**: one [`store::Store`] per
//!   process behind a mutex, taken once per read's batch of commands;
//!   expiry is by time, read when a batch needs it (a protocol has no
//!   clock of its own);
//! - **what processes share: nothing.** In `thread`, `pool`, `event`,
//!   `reactor` and `serial` mode every connection sees the same keys. In
//!   `fork` mode each connection is a process of its own with its own
//!   (empty) copy of the store, gone when the connection closes; in
//!   `prefork` mode each worker has one, so a key is visible only to the
//!   connections that worker serves (`--workers 1` makes it one store).
//!   Sharing across processes would take shared memory or a server of its
//!   own: that is the lesson, not a bug to hide.
//!
//! Errors are Redis' own texts: `ERR unknown command 'x', with args
//! beginning with: ...`, `ERR wrong number of arguments for 'get'
//! command`, `ERR value is not an integer or out of range`.

mod commands;
mod resp;
mod store;

use std::process::ExitCode;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use switchyard_server::{Factory, Protocol, Step};

use resp::Parser;
use store::{Clock, Store};

/// Reply bytes one read's commands may produce: past this the connection
/// gets an error and is closed (Redis' `client-output-buffer-limit`, in
/// spirit).
pub const MAX_BATCH_REPLIES: usize = 16 * 1024 * 1024;

/// One connection: the shared store and a parser.
struct Kv {
    store: Arc<Store>,
    parser: Parser,
}

impl Protocol for Kv {
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        let start = output.len();
        let mut clock = Clock::default();
        let mut db = None;
        loop {
            match self.parser.parse(input) {
                Ok(None) => return Step::Continue,
                Ok(Some(n)) => {
                    let args = self.parser.args(input);
                    if !args.is_empty() {
                        let db = db.get_or_insert_with(|| {
                            let mut db = self.store.lock();
                            db.expire(&mut clock);
                            db
                        });
                        commands::execute(&args, db, &mut clock, output);
                    }
                    input.advance(n);
                    if output.len() - start > MAX_BATCH_REPLIES {
                        let text = format!("ERR replies to one read over {MAX_BATCH_REPLIES} bytes: pipeline less");
                        resp::error_reply(output, text.as_bytes());
                        input.clear();
                        return Step::Close;
                    }
                }
                Err(e) => {
                    resp::error_reply(output, format!("ERR Protocol error: {e}").as_bytes());
                    input.clear();
                    return Step::Close;
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let store = Arc::new(Store::default());
    let factory: Factory = Arc::new(move || Box::new(Kv { store: store.clone(), parser: Parser::default() }));
    switchyard::server_cli::main(factory)
}
