//! Serial: the iterative server. Accept one client, serve it to its end,
//! then accept the next; everyone else waits in the listen backlog. One
//! thread: while it serves, the driver watches the signal pipe too, and a
//! graceful stop closes the listener at once (the backlog is refused rather
//! than left waiting). With `--queue-timeout`, clients that wait longer than
//! that in the backlog are refused (the acceptor, as the driver's lookout,
//! samples the backlog while a connection is served).

use std::io;
use std::net::TcpListener;

use crate::acceptor::Acceptor;
use crate::context::Context;
use crate::driver::blocking;
use crate::signals::Signals;
use crate::tracker::Tracker;

/// Runs the serial strategy until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listener, signals, &ctx)?;
    let tracker = Tracker::new(1, acceptor.waker());
    ctx.ready();
    while ctx.shutdown.is_running() {
        if let Some(accepted) = acceptor.next(true)? {
            ctx.accepted();
            let _permit = accepted.permit;
            let conn = tracker.admit(accepted.stream);
            let mut proto = (ctx.factory)();
            let served =
                blocking::serve(&conn, &mut *proto, &ctx.shutdown, ctx.config.idle_timeout, Some(&mut acceptor));
            ctx.finished(served);
        }
    }
    super::drain(&mut acceptor, &tracker, &ctx)
}
