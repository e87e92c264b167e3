//! The in-place path (`Protocol::on_read_in_place`) through the public API,
//! in this process: every driver (blocking: serial, thread, pool;
//! non-blocking: event, reactor; completion: uring) answers a protocol
//! that can reply in place from where the bytes landed, and never calls
//! its copying `on_read`; a protocol that declines (`None`) for some input
//! gets those bytes, unchanged, through `on_read`. Servers run one at a
//! time (stops are process-wide), on 127.0.0.1 port 0, stopped with their
//! `Stopper` and joined.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use switchyard_server::{Config, Factory, Mode, Protocol, Server, Step};

static ONE: Mutex<()> = Mutex::new(());

/// Calls of each path.
#[derive(Default)]
struct Calls {
    in_place: AtomicUsize,
    copied: AtomicUsize,
}

/// Uppercase echo that answers in place unless the input holds a `!`
/// (`declines`), which it leaves for the copying path.
struct Counting {
    calls: Arc<Calls>,
    declines: bool,
}

impl Protocol for Counting {
    fn on_read(&mut self, input: &mut BytesMut, output: &mut BytesMut) -> Step {
        self.calls.copied.fetch_add(1, Ordering::SeqCst);
        output.extend(input.iter().map(u8::to_ascii_uppercase));
        input.clear();
        Step::Continue
    }

    fn on_read_in_place(&mut self, data: &mut [u8]) -> Option<Step> {
        if self.declines && data.contains(&b'!') {
            return None;
        }
        self.calls.in_place.fetch_add(1, Ordering::SeqCst);
        data.make_ascii_uppercase();
        Some(Step::Continue)
    }
}

/// Serves `factory` in `mode`, sends `messages` one round trip each, and
/// stops the server.
fn serve(mode: Mode, factory: Factory, messages: &[&[u8]]) {
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let mut config = Config::new(mode);
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.threads = 2;
    config.grace = Duration::from_secs(1);
    let server = Server::bind(config).unwrap();
    let (addr, stopper) = (server.local_addr(), server.stopper());
    let running = std::thread::spawn(move || server.serve(factory));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for m in messages {
        s.write_all(m).unwrap();
        let mut got = vec![0u8; m.len()];
        s.read_exact(&mut got).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(got, m.to_ascii_uppercase(), "{mode}");
    }
    drop(s);
    stopper.graceful();
    running.join().unwrap().unwrap();
}

fn factory(calls: &Arc<Calls>, declines: bool) -> Factory {
    let calls = calls.clone();
    Arc::new(move || Box::new(Counting { calls: calls.clone(), declines }))
}

const MODES: [Mode; 6] = [Mode::Serial, Mode::Thread, Mode::Pool, Mode::Event, Mode::Reactor, Mode::Uring];

#[test]
fn every_driver_answers_in_place_without_copying() {
    for mode in MODES {
        let calls = Arc::new(Calls::default());
        serve(mode, factory(&calls, false), &[b"hello", &[b'x'; 4096], &[b'y'; 60_000]]);
        let (in_place, copied) = (calls.in_place.load(Ordering::SeqCst), calls.copied.load(Ordering::SeqCst));
        assert!(in_place >= 3, "{mode}: in place {in_place} times for 3 messages");
        assert_eq!(copied, 0, "{mode}: the copying path was taken {copied} times");
    }
}

#[test]
fn a_declined_input_takes_the_copying_path_unchanged() {
    for mode in MODES {
        let calls = Arc::new(Calls::default());
        serve(mode, factory(&calls, true), &[b"in place", b"copied!", b"in place again"]);
        let (in_place, copied) = (calls.in_place.load(Ordering::SeqCst), calls.copied.load(Ordering::SeqCst));
        assert!(in_place >= 2 && copied >= 1, "{mode}: in place {in_place}, copied {copied}");
    }
}
