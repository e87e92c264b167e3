//! Coroutine handlers through the public API, in this process: a handler
//! that panics or fails ends its own connection only (logged with the
//! peer's address, counted), a handler that never yields on its own is made
//! to share its loop and still stops within the grace, and timers inside
//! handlers wake in order. Servers run one at a time (signals, and so
//! stops, are process-wide), on 127.0.0.1 port 0, and each is stopped with
//! its `Stopper` and joined.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use switchyard_server::handler::{handler, sleep, timeout, Connection, Handler};
use switchyard_server::{Config, Mode, Server, Stopper};

/// One server at a time.
static ONE: Mutex<()> = Mutex::new(());

/// What the server logged, for the assertions on log lines.
static LOG: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        LOG.lock().unwrap().push((r.level(), r.args().to_string()));
    }
    fn flush(&self) {}
}

fn logged(what: &str) -> Vec<(log::Level, String)> {
    LOG.lock().unwrap().iter().filter(|(_, l)| l.contains(what)).cloned().collect()
}

struct Running {
    addr: SocketAddr,
    metrics: SocketAddr,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
    done: mpsc::Receiver<io::Result<()>>,
    _one: MutexGuard<'static, ()>,
}

impl Running {
    fn start(mode: Mode, h: Handler) -> Running {
        let one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let _ = log::set_logger(&Capture).map(|()| log::set_max_level(log::LevelFilter::Debug));
        let mut config = Config::new(mode);
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.threads = 2;
        config.grace = Duration::from_secs(1);
        // A port for the metrics endpoint: free when asked (the server binds
        // it a moment later).
        let metrics = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        config.metrics = Some(metrics);
        let server = Server::bind(config).unwrap();
        let (addr, stopper) = (server.local_addr(), server.stopper());
        let (tx, done) = mpsc::channel();
        let thread = Some(std::thread::spawn(move || {
            let _ = tx.send(server.serve(h));
        }));
        Running { addr, metrics, stopper, thread, done, _one: one }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// `switchyard_handler_errors_total` from the metrics page.
    fn handler_errors(&self) -> u64 {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        page.lines()
            .find_map(|l| l.strip_prefix("switchyard_handler_errors_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no handler_errors_total in:\n{page}"))
    }

    /// Stops gracefully; returns how long `serve` took to return.
    fn stop(mut self) -> Duration {
        let asked = Instant::now();
        self.stopper.graceful();
        // Bounded: the grace is 1 s, the flush grace 1 s more.
        let served = self.done.recv_timeout(Duration::from_secs(10)).expect("serve returned within 10 s of a stop");
        let took = asked.elapsed();
        served.unwrap();
        self.thread.take().unwrap().join().unwrap();
        took
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stopper.now();
            // A loop held by a handler cannot stop: leave it rather than
            // hang the test that found it.
            if self.done.recv_timeout(Duration::from_secs(10)).is_ok() {
                let _ = t.join();
            }
        }
    }
}

/// Echoes lines; panics on "panic", fails on "fail".
fn moody() -> Handler {
    handler(|mut conn: Connection| async move {
        let mut buf = [0u8; 256];
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            match &buf[..n] {
                b"panic" => panic!("asked to panic by {}", conn.peer_addr()),
                b"fail" => return Err(io::Error::other("asked to fail")),
                data => conn.write_all(data).await?,
            }
        }
    })
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    assert_eq!(got, msg);
    Ok(())
}

/// Whether the server closed `s` (EOF or reset) within the read timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

fn a_failing_handler_ends_its_connection_only(mode: Mode) {
    let server = Running::start(mode, moody());
    let mut bystander = server.connect();
    roundtrip(&mut bystander, b"before").unwrap();

    let mut p = server.connect();
    let p_addr = p.local_addr().unwrap();
    p.write_all(b"panic").unwrap();
    assert!(closed(&mut p), "{mode}: the panicking handler's connection stays open");
    let mut f = server.connect();
    f.write_all(b"fail").unwrap();
    assert!(closed(&mut f), "{mode}: the failing handler's connection stays open");

    roundtrip(&mut bystander, b"after").unwrap();
    let mut later = server.connect();
    roundtrip(&mut later, b"a new one").unwrap();
    assert_eq!(server.handler_errors(), 2, "{mode}: one panic and one error");
    let panics = logged("handler panicked");
    assert!(
        panics.iter().any(|(lvl, l)| *lvl == log::Level::Warn && l.contains(&p_addr.to_string())),
        "{mode}: the panic is logged at warn with the peer's address {p_addr}: {panics:?}"
    );
    let errors = logged("asked to fail");
    assert!(
        !errors.is_empty() && errors.iter().all(|(lvl, _)| *lvl == log::Level::Debug),
        "{mode}: a handler's error is logged at debug: {errors:?}"
    );
    drop((bystander, later));
    server.stop();
    LOG.lock().unwrap().clear();
}

#[test]
fn a_failing_handler_ends_its_connection_only_on_the_event_loop() {
    a_failing_handler_ends_its_connection_only(Mode::Event);
}

#[test]
fn a_failing_handler_ends_its_connection_only_in_thread_mode() {
    a_failing_handler_ends_its_connection_only(Mode::Thread);
}

#[test]
fn a_failing_handler_ends_its_connection_only_in_pool_mode() {
    a_failing_handler_ends_its_connection_only(Mode::Pool);
}

/// A handler whose every await is ready at once (empty writes never
/// block), so it never waits on its own: without the cooperative budget it
/// would hold the loop for ever. The loop must still serve another
/// connection promptly, and stop within the grace.
#[test]
fn a_handler_that_never_waits_shares_its_loop_and_stops_within_the_grace() {
    let spin = handler(|mut conn: Connection| async move {
        let mut hello = [0u8; 5];
        conn.read_exact(&mut hello).await?;
        if &hello == b"spin!" {
            loop {
                conn.write(&[]).await?;
            }
        }
        conn.write_all(&hello).await?;
        let mut rest = [0u8; 64];
        loop {
            let n = conn.read(&mut rest).await?;
            if n == 0 {
                return Ok(());
            }
            conn.write_all(&rest[..n]).await?;
        }
    });
    let server = Running::start(Mode::Event, spin);
    let mut spinning = server.connect();
    spinning.write_all(b"spin!").unwrap();
    let mut other = server.connect();
    let started = Instant::now();
    roundtrip(&mut other, b"hello").unwrap();
    for _ in 0..20 {
        roundtrip(&mut other, b"still served beside a spinning handler").unwrap();
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "21 round trips beside the spinning handler took {took:?}");
    drop(other);
    let stopped = server.stop();
    // Grace 1 s (the spinning handler never ends by itself), then 1 s to flush.
    assert!(stopped < Duration::from_secs(4), "the loop took {stopped:?} to stop");
    assert!(closed(&mut spinning), "the spinning handler's connection was not closed at the stop");
}

/// Timers inside handlers: `sleep` wakes in deadline order, and `timeout`
/// fires only when its future is late.
fn timers_in_handlers(mode: Mode) {
    let h = handler(|mut conn: Connection| async move {
        let mut b = [0u8; 1];
        conn.read_exact(&mut b).await?;
        let ms = u64::from(b[0]) * 10;
        sleep(Duration::from_millis(ms)).await;
        conn.write_all(&b).await?;
        // A read the client never answers: the timeout fires.
        let late = timeout(Duration::from_millis(100), conn.read_exact(&mut b)).await;
        // One it answers at once: it does not.
        let early = timeout(Duration::from_secs(5), async {
            conn.write_all(b"?").await?;
            conn.read_exact(&mut b).await
        })
        .await;
        let verdict = match (late.is_err(), early.is_ok()) {
            (true, true) => b'+',
            _ => b'-',
        };
        conn.write_all(&[verdict]).await
    });
    let server = Running::start(mode, h);
    // Delays 30, 10 and 20 (x10 ms) on three connections at once: the echoes
    // come back shortest first.
    let mut conns: Vec<(u8, TcpStream)> = [30u8, 10, 20].into_iter().map(|d| (d, server.connect())).collect();
    for (d, c) in &mut conns {
        c.write_all(&[*d]).unwrap();
    }
    let order = std::sync::Arc::new(Mutex::new(Vec::new()));
    let readers: Vec<_> = conns
        .into_iter()
        .map(|(d, mut c)| {
            let order = order.clone();
            std::thread::spawn(move || {
                let mut b = [0u8; 1];
                c.read_exact(&mut b).unwrap();
                order.lock().unwrap().push(d);
                c.read_exact(&mut b).unwrap();
                assert_eq!(&b, b"?");
                c.write_all(b"!").unwrap();
                c.read_exact(&mut b).unwrap();
                b[0]
            })
        })
        .collect();
    let verdicts: Vec<u8> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_eq!(*order.lock().unwrap(), [10, 20, 30], "{mode}: sleeps woke out of order");
    assert_eq!(verdicts, [b'+'; 3], "{mode}: a timeout fired when it should not have, or not when it should");
    server.stop();
}

#[test]
fn timers_in_handlers_on_the_event_loop() {
    timers_in_handlers(Mode::Event);
}

#[test]
fn timers_in_handlers_in_thread_mode() {
    timers_in_handlers(Mode::Thread);
}
