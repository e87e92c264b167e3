//! The coroutine echo of `server --handler async`
//! (`switchyard_server::handler::upper_echo`), and the same with `--work`:
//! the handler waits or computes per read as the sans-IO
//! echo's `--work` does, but the coroutine's way: it awaits a timer instead
//! of sleeping (`sleep:MS`), and sends the computation to the offload pool
//! instead of running it on the event loop (`cpu:N`).

use futures_lite::AsyncWriteExt;
use switchyard_common::upper::upper_in_place;
use switchyard_server::handler::{handler, run_blocking, sleep, upper_echo, Connection, Handler};

use crate::work::{burn, Work};

/// The async echo with `--work` applied per read.
pub fn upper_echo_with(work: Option<Work>) -> Handler {
    match work {
        None => handler(upper_echo),
        Some(work) => handler(move |mut conn: Connection| async move {
            while let Some(mut chunk) = conn.read_chunk().await? {
                match work {
                    Work::Sleep(d) => sleep(d).await,
                    Work::Cpu(rounds) => {
                        let n = chunk.len() as u64 * u64::from(rounds);
                        run_blocking(move || burn(0x9E37_79B9_7F4A_7C15, n)).await;
                    }
                }
                upper_in_place(&mut chunk);
                conn.write_all(&chunk).await?;
            }
            Ok(())
        }),
    }
}
