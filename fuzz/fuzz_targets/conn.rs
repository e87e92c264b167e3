//! Fuzzes the connection state machine of the non-blocking driver: any byte
//! string is a script of peer actions (send, close, reset, read some) and
//! readiness events, replayed against one connection with the invariants of
//! `switchyard_server::sim` (feature `sim`) checked after every step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_server::sim;

fuzz_target!(|data: &[u8]| {
    let script = sim::decode(data);
    if let Err(e) = sim::run(&script) {
        panic!("{e} ({} ops)", script.ops.len());
    }
});
