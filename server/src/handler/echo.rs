//! The uppercase echo written as a coroutine, the seeds' `talk(sock)` loop:
//! read what arrived, uppercase it, send it back, until the peer closes. The
//! buffer is lent from the thread's pool for each read and goes back before
//! the next wait, so a connection that waits holds none.

use std::io;

use futures_lite::AsyncWriteExt;
use switchyard_common::upper::upper_in_place;

use super::Connection;

/// Uppercase echo, as an `async fn`: `server --handler async`.
pub async fn upper_echo(mut conn: Connection) -> io::Result<()> {
    while let Some(mut chunk) = conn.read_chunk().await? {
        upper_in_place(&mut chunk);
        conn.write_all(&chunk).await?;
    }
    Ok(())
}
