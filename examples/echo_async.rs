//! The uppercase echo as an `async fn`: the seeds' `talk(sock)` loop,
//! straight-line code that the server suspends whenever it would block.
//!
//! ```sh
//! cargo run --release --example echo_async -- --mode event --listen 127.0.0.1:7878
//! printf 'hello\n' | nc -N 127.0.0.1 7878       # HELLO
//! ```
//!
//! What it shows: a handler is a plain `async fn(Connection) ->
//! io::Result<()>`; [`handler`] makes it a service and
//! `switchyard::server_cli::main` gives it the whole `server` command
//! line (every `--mode`, limit, signal and the graceful stop). On an event
//! loop (`event`, `reactor`, prefork event workers) each connection is a
//! task of the loop's own executor; in the blocking strategies (`serial`,
//! `fork`, `thread`, `pool`) the same function runs on its connection's
//! thread or process, and its reads and writes simply block.
//! `Connection::read_chunk` lends a buffer for one read, so a connection
//! waiting for input holds none.

use std::io;
use std::process::ExitCode;

use futures_lite::AsyncWriteExt;
use switchyard_server::{handler, Connection};

/// Sends back everything the peer sends, ASCII-uppercased, until it closes.
async fn talk(mut conn: Connection) -> io::Result<()> {
    while let Some(mut chunk) = conn.read_chunk().await? {
        chunk.make_ascii_uppercase();
        conn.write_all(&chunk).await?;
    }
    Ok(())
}

fn main() -> ExitCode {
    switchyard::server_cli::main(handler(talk))
}
