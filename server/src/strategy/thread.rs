//! Thread per connection. The acceptor admits a connection only while fewer
//! than `--max-conns` are open (a counting semaphore); at the cap it stops
//! accepting and the listen backlog absorbs the rest. Each connection's
//! thread is detached when it finishes (no pile of join handles); threads
//! still serving at shutdown are joined.

use std::io;
use std::net::TcpListener;

use crate::acceptor::Acceptor;
use crate::context::Context;
use crate::driver::blocking;
use crate::signals::Signals;
use crate::sys;
use crate::tracker::Tracker;

/// Stack size of a connection thread: the driver needs little.
pub const STACK_SIZE: usize = 256 * 1024;

/// Runs the thread-per-connection strategy until the server stops.
pub fn run(listener: TcpListener, signals: Signals, ctx: Context) -> io::Result<()> {
    let mut acceptor = Acceptor::new(listener, signals, &ctx)?;
    let tracker = Tracker::new(ctx.config.max_conns, acceptor.waker());
    ctx.ready();
    while ctx.shutdown.is_running() {
        let room = tracker.has_room() || {
            tracker.want_wake(true);
            tracker.has_room()
        };
        let next = acceptor.next(room);
        tracker.want_wake(false);
        let Some(accepted) = next? else { continue };
        ctx.accepted();
        let permit = accepted.permit;
        let conn = tracker.admit(accepted.stream);
        let key = conn.key();
        let c = ctx.clone();
        let spawned = sys::spawn_masked(format!("conn-{key}"), STACK_SIZE, move || {
            let _permit = permit;
            let mut proto = (c.factory)();
            c.finished(blocking::serve(&conn, &mut *proto, &c.shutdown, c.config.idle_timeout, None));
        });
        match spawned {
            Ok(handle) => tracker.attach(key, handle),
            // The closure (and with it the connection) was dropped: the
            // client sees a close, the server goes on.
            Err(e) => log::warn!("cannot spawn a connection thread: {e}"),
        }
    }
    super::drain(&mut acceptor, &tracker, &ctx)
}
