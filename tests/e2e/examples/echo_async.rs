//! `examples/echo_async.rs`: the uppercase echo as an `async fn`, in every
//! strategy (the table of modes without its `--handler async` twins: an
//! example serves its own handler). Every byte value comes back
//! uppercased, a half-close gets everything and then EOF, several clients
//! at once are each echoed (where the mode serves several), and SIGTERM
//! stops it with exit 0.

use std::thread;

use super::{in_modes, start, stop};
use crate::support::modes::Mode;
use crate::support::net::{close_cleanly, read_to_eof, roundtrip, upper};

fn echoes_every_byte_and_stops_gracefully(mode: &Mode) {
    let server = start("echo_async", mode, &[]);
    let all: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let mut c = server.connect();
    roundtrip(&mut c, &all).unwrap_or_else(|e| panic!("all byte values: {e}"));
    // Half-close: what was sent before the FIN comes back, then EOF.
    std::io::Write::write_all(&mut c, b"the last words").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_to_eof(&mut c).unwrap(), upper(b"the last words"));

    let clients = if mode.concurrent { 8 } else { 1 };
    let addr = server.addr;
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            thread::spawn(move || {
                let mut c = crate::support::net::connect(addr);
                for round in 0..20 {
                    roundtrip(&mut c, format!("client {i}, round {round}: hello").as_bytes())?;
                }
                close_cleanly(&mut c)
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread").unwrap_or_else(|e| panic!("{e}"));
    }
    stop(server);
}

in_modes!(echoes_every_byte_and_stops_gracefully;
    serial: SERIAL, fork: FORK, thread: THREAD, pool: POOL, event: EVENT, reactor: REACTOR,
    prefork_event: PREFORK_EVENT, prefork_serial: PREFORK_SERIAL, prefork_thread: PREFORK_THREAD,
    prefork_pool: PREFORK_POOL,
);
