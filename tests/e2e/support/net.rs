//! Client sockets and the echo protocol: connect (with timeouts, from any
//! 127.0.0.0/8 address), round trips checked byte for byte, streams of a
//! deterministic pattern, clean closes and resets, and looks at a socket
//! that read nothing (FIONREAD, POLLRDHUP, the kernel's own counters).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use super::process::run_bounded;

/// Read and write timeout of every client socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

// ----- the test stream -------------------------------------------------------

/// Python's `bytes.upper()`: a-z to A-Z, every other byte unchanged.
pub fn upper(b: &[u8]) -> Vec<u8> {
    b.iter().map(u8::to_ascii_uppercase).collect()
}

/// Byte `i` of the deterministic test stream `seed`: about half lowercase
/// letters (so uppercasing really happens), the rest any of the 256 values.
pub fn pattern(seed: u64, i: u64) -> u8 {
    let mut h = (i ^ seed.rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^= h >> 29;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 32;
    if h & 1 == 0 {
        b'a' + ((h >> 8) % 26) as u8
    } else {
        (h >> 16) as u8
    }
}

/// Fills `buf` with bytes `offset..` of stream `seed`.
pub fn fill_pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern(seed, offset + k as u64);
    }
}

/// Checks that `got` is the uppercase of bytes `offset..` of stream `seed`.
pub fn check_pattern(seed: u64, offset: u64, got: &[u8]) -> Result<(), String> {
    for (k, &b) in got.iter().enumerate() {
        let want = pattern(seed, offset + k as u64).to_ascii_uppercase();
        if b != want {
            return Err(format!("echo byte {} is {b:#04x}, expected {want:#04x}", offset + k as u64));
        }
    }
    Ok(())
}

// ----- connecting ------------------------------------------------------------

/// A client socket connected to `addr`, with [`IO_TIMEOUT`] both ways and
/// TCP_NODELAY (small writes go out at once).
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// [`connect`] that reports the error instead of panicking.
pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    dial(addr, IO_TIMEOUT)
}

/// A client socket with `timeout` on connect and both ways, and TCP_NODELAY.
pub fn dial(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    client_options(TcpStream::connect_timeout(&addr, timeout)?, timeout)
}

/// [`try_connect`] from the local address `source`. Every address of
/// 127.0.0.0/8 is this host's, so one test can be many clients as far as
/// the server's per-address accounting (`--max-conns-per-ip`) can tell.
pub fn try_connect_from(source: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    sock.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    client_options(sock.into(), IO_TIMEOUT)
}

/// `timeout` both ways and TCP_NODELAY.
fn client_options(s: TcpStream, timeout: Duration) -> io::Result<TcpStream> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A non-blocking connection attempt to `addr` that does not wait for the
/// handshake (so a test can queue hundreds in a server's backlog at once).
pub fn connect_nonblocking(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let s = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    match s.connect(&addr.into()) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => Err(e),
        _ => Ok(s),
    }
}

/// Whether a new connection to `addr` is refused right now. A connection
/// that does get through is closed at once.
pub fn connection_refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(s) => {
            drop(s);
            false
        }
        Err(e) => e.kind() == io::ErrorKind::ConnectionRefused,
    }
}

// ----- echoing ---------------------------------------------------------------

/// Writes `msg` and reads back exactly as many bytes, which must be its
/// uppercase.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    s.write_all(msg).map_err(|e| format!("write {} bytes: {e}", msg.len()))?;
    read_echo(s, msg)
}

/// Reads exactly `msg.len()` bytes, which must be the uppercase of `msg`.
pub fn read_echo(s: &mut TcpStream, msg: &[u8]) -> Result<(), String> {
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).map_err(|e| format!("read {} echoed bytes: {e}", msg.len()))?;
    let want = upper(msg);
    if got != want {
        return Err(describe_mismatch(&want, &got));
    }
    Ok(())
}

/// A short account of how `got` differs from `want`: lengths, the first
/// differing offset, and a few bytes of each from there.
pub fn describe_mismatch(want: &[u8], got: &[u8]) -> String {
    let at = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
    let show = |b: &[u8]| {
        let end = (at + 32).min(b.len());
        format!("{:?}", String::from_utf8_lossy(&b[at.min(end)..end]))
    };
    format!(
        "echo differs from the uppercase of what was sent at byte {at} (expected {} bytes, got {}): expected {}..., got {}...",
        want.len(),
        got.len(),
        show(want),
        show(got)
    )
}

/// One connection, one round trip of `msg`, a clean close; every step
/// bounded by `timeout`.
pub fn one_shot(addr: SocketAddr, msg: &[u8], timeout: Duration) -> Result<(), String> {
    let mut s = dial(addr, timeout).map_err(|e| format!("connect: {e}"))?;
    roundtrip(&mut s, msg)?;
    close_cleanly(&mut s)
}

/// Reads until end-of-file (within the socket's read timeout).
pub fn read_to_eof(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| format!("read to EOF (after {} bytes): {e}", out.len()))?;
    Ok(out)
}

/// Shuts the write side and expects end-of-file with nothing more to read.
pub fn close_cleanly(s: &mut TcpStream) -> Result<(), String> {
    s.shutdown(Shutdown::Write).map_err(|e| format!("shutdown(Write): {e}"))?;
    let rest = read_to_eof(s)?;
    if !rest.is_empty() {
        return Err(format!(
            "{} unexpected bytes before EOF, starting {:?}",
            rest.len(),
            String::from_utf8_lossy(&rest[..rest.len().min(32)])
        ));
    }
    Ok(())
}

/// A connection that ends with a RST instead of a FIN: SO_LINGER 0, then
/// close.
pub fn reset(s: TcpStream) {
    socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(s);
}

/// Reads once (within the socket's read timeout) and says whether that
/// read saw the end of the connection: EOF or a reset.
pub fn read_sees_close(s: &mut TcpStream) -> Result<(), String> {
    let mut b = [0u8; 256];
    match s.read(&mut b) {
        Ok(0) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted) => Ok(()),
        Ok(n) => Err(format!("expected EOF or reset, read {n} bytes {:?}", String::from_utf8_lossy(&b[..n]))),
        Err(e) => Err(format!("expected EOF or reset, got {e}")),
    }
}

/// Streams `total` bytes of stream `seed` through `s` with a writer thread
/// (pseudo-random chunk sizes up to `max_chunk`) while this thread reads and
/// checks the echo, then expects EOF after the writer's `shutdown(Write)`.
/// Never writes everything before reading, which could deadlock.
pub fn stream_through(s: TcpStream, seed: u64, total: u64, max_chunk: usize) -> Result<(), String> {
    let mut w = s.try_clone().map_err(|e| format!("try_clone: {e}"))?;
    let writer = thread::Builder::new()
        .name("e2e-writer".into())
        .spawn(move || -> Result<(), String> {
            let mut buf = vec![0u8; max_chunk];
            let mut off = 0u64;
            let mut rng = seed | 1;
            while off < total {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let len = (1 + (rng % max_chunk as u64)).min(total - off) as usize;
                fill_pattern(seed, off, &mut buf[..len]);
                w.write_all(&buf[..len]).map_err(|e| format!("write at offset {off}: {e}"))?;
                off += len as u64;
            }
            w.shutdown(Shutdown::Write).map_err(|e| format!("shutdown(Write): {e}"))
        })
        .map_err(|e| format!("spawn writer: {e}"))?;
    let mut r = s;
    let progress = AtomicU64::new(0);
    let read_result = read_pattern_to_eof(&mut r, seed, &progress);
    if read_result.is_err() {
        // Unblock the writer if it waits for room the server will not make.
        let _ = r.shutdown(Shutdown::Both);
    }
    let write_result = writer.join().map_err(|_| "writer thread panicked".to_string())?;
    let echoed = read_result?;
    write_result?;
    if echoed != total {
        return Err(format!("EOF after {echoed} echoed bytes, sent {total}"));
    }
    Ok(())
}

/// Reads `r` to end-of-file, checking that the bytes are the uppercase of
/// stream `seed` from its start; `progress` follows how many were checked.
/// Returns how many there were.
pub fn read_pattern_to_eof(r: &mut TcpStream, seed: u64, progress: &AtomicU64) -> Result<u64, String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(off),
            Ok(n) => {
                check_pattern(seed, off, &buf[..n])?;
                off += n as u64;
                progress.store(off, Ordering::SeqCst);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {off} echoed bytes: {e}")),
        }
    }
}

// ----- looking without reading -------------------------------------------------

/// Whether the peer of `s` has closed or reset the connection, looked at
/// without reading: POLLRDHUP (a FIN arrived), POLLHUP or POLLERR (a RST).
pub fn peer_gone(s: &TcpStream) -> bool {
    let mut pfd = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Bytes waiting unread in the receive queue of `s` (FIONREAD).
pub fn unread(s: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        0
    } else {
        n as usize
    }
}

/// Bytes the owner of the TCP socket `local` -> `remote` has written into
/// it and read from it so far, from `ss -ti` (the kernel's own counters,
/// seen from outside the process): written = bytes_acked + Send-Q, read =
/// bytes_received - Recv-Q. `None` once the socket has left the
/// ESTABLISHED state (its owner closed or shut it down).
pub fn socket_traffic(local: SocketAddr, remote: SocketAddr) -> Result<Option<(u64, u64)>, String> {
    let mut ss = Command::new("ss");
    ss.args(["-tinH", "state", "established", "src", &local.to_string(), "dst", &remote.to_string()]);
    let out = run_bounded(ss, Duration::from_secs(5)).map_err(|e| format!("running `ss` (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!("`ss` failed: {}", out.stderr));
    }
    let text = out.stdout;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut words = text.split_whitespace();
    let recv_q: u64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(|| format!("`ss` said {text:?}"))?;
    let send_q: u64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(|| format!("`ss` said {text:?}"))?;
    // Counters still at zero are left out.
    let counter = |name: &str| -> u64 {
        text.split_whitespace().find_map(|w| w.strip_prefix(name)?.strip_prefix(':')?.parse().ok()).unwrap_or(0)
    };
    Ok(Some((counter("bytes_acked") + send_q, counter("bytes_received").saturating_sub(recv_q))))
}
