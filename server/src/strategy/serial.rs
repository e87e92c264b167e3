//! Serial: the iterative server. Accept one client, serve it to its end,
//! then accept the next; everyone else waits in the listen backlog. One
//! thread; a stop signal interrupts its blocking read.

use std::io;
use std::net::TcpListener;

use crate::acceptor::Acceptor;
use crate::context::Context;
use crate::driver::blocking;
use crate::signals::Signals;
use crate::tracker::Tracker;

/// Runs the serial strategy until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listener, signals, ctx.shutdown.clone(), ctx.config.nodelay)?;
    let tracker = Tracker::new(1, acceptor.waker());
    while ctx.shutdown.is_running() {
        if let Some(stream) = acceptor.next(true)? {
            let conn = tracker.admit(stream);
            let mut proto = (ctx.factory)();
            super::log_end(blocking::serve(&conn, &mut *proto, &ctx.shutdown, ctx.config.idle_timeout));
        }
    }
    super::drain(&mut acceptor, &tracker, &ctx)
}
