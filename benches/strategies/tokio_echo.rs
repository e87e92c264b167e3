//! The tokio baseline: an idiomatic uppercase-echo server (accept loop, one
//! task per connection, a 64 KiB buffer, `split` into read and write halves,
//! read + uppercase + `write_all`). The harness runs it in a separate process
//! by re-executing its own binary with `--serve-tokio FLAVOR ADDR`, so the
//! server's CPU time and memory are its own and no second build is needed.

use std::io::Write;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The hidden first argument that turns the bench binary into the server.
pub const SERVE_FLAG: &str = "--serve-tokio";

/// Runs the server forever (until killed). `flavor`: `current_thread` or `multi_thread`.
pub fn serve(flavor: &str, addr: SocketAddr) -> std::io::Result<()> {
    let rt = match flavor {
        "current_thread" => tokio::runtime::Builder::new_current_thread().enable_io().build()?,
        "multi_thread" => tokio::runtime::Builder::new_multi_thread().enable_io().build()?,
        other => return Err(std::io::Error::other(format!("unknown tokio flavor {other}"))),
    };
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {local} mode=tokio-{flavor} pid={}", std::process::id())?;
            out.flush()?;
        }
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => continue, // EMFILE, ECONNABORTED: try the next one
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(handle(stream));
        }
    })
}

async fn handle(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut rd, mut wr) = stream.split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        switchyard_common::upper::upper_in_place(&mut buf[..n]);
        wr.write_all(&buf[..n]).await?;
    }
}
