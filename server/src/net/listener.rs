//! Binding the listening socket (socket2): SO_REUSEADDR so an immediate
//! restart binds, optional SO_REUSEPORT, the backlog, close-on-exec; and the
//! per-connection options applied after accept.
//!
//! Callers: `serve` (once per server), `strategy::reactor` and
//! `strategy::prefork` (one SO_REUSEPORT socket per loop or worker), and the
//! accept policy after each accept.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Options for [`bind`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BindOptions {
    /// listen(2) backlog.
    pub(crate) backlog: i32,
    /// Set SO_REUSEPORT (several sockets on one port; the kernel spreads
    /// connections across them).
    pub(crate) reuseport: bool,
}

/// Binds and listens on `addr`. A port in use is reported as
/// `AddrInUse` with the address in the message.
pub(crate) fn bind(addr: SocketAddr, opts: BindOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if opts.reuseport {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into()).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(io::ErrorKind::AddrInUse, format!("{addr} is already in use"))
        } else {
            io::Error::new(e.kind(), format!("cannot bind {addr}: {e}"))
        }
    })?;
    socket.listen(opts.backlog)?;
    Ok(socket.into())
}

/// Options applied to every accepted connection: TCP_NODELAY, and
/// SO_SNDBUF/SO_RCVBUF when `buffer` is given (`--socket-buffer`).
pub(crate) fn configure<S: std::os::fd::AsFd>(stream: &S, nodelay: bool, buffer: Option<usize>) -> io::Result<()> {
    let sock = socket2::SockRef::from(stream);
    if nodelay {
        sock.set_tcp_nodelay(true)?;
    }
    if let Some(b) = buffer {
        sock.set_send_buffer_size(b)?;
        sock.set_recv_buffer_size(b)?;
    }
    Ok(())
}
