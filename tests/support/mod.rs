//! Shared harness of the end-to-end tests: start the real `server` binary,
//! talk to it over loopback TCP, and look at it from the outside through
//! `/proc` (children, zombies, open fds, threads, fd flags).
//!
//! Rules every helper follows, so a broken server fails a test instead of
//! hanging it, and parallel tests never interfere:
//!
//! - every test starts its own [`Server`] on `127.0.0.1:0`;
//! - every client socket has read and write timeouts ([`IO_TIMEOUT`]);
//! - every wait is a bounded poll of an observable condition ([`poll_until`]),
//!   never a sleep used as synchronisation;
//! - [`Server`]'s `Drop` SIGKILLs the server and every descendant it still
//!   has, then reaps it, also when the test panics (and then prints the
//!   tail of the server's stderr).
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Read and write timeout of every client socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to settle (close fds, reap children).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to exit once it has nothing left to do.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks at a polled condition.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes of server stderr kept for failure reports.
const LOG_KEEP: usize = 64 * 1024;

/// One concurrency strategy of the server, as the test table lists it.
#[derive(Debug, Clone, Copy)]
pub struct Mode {
    /// Value of `--mode`, also expected in the start-up line.
    pub name: &'static str,
    /// Serves several clients at once (everything but serial).
    pub concurrent: bool,
    /// Has child processes that must die with it (fork, prefork).
    pub forks: bool,
    /// Extra flags for every server of this mode.
    pub args: &'static [&'static str],
}

// ----- small utilities -----------------------------------------------------

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

/// Polls `cond` every few milliseconds until it holds or `timeout` passes.
/// Returns whether it held.
pub fn poll_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    poll_every(POLL_INTERVAL, timeout, cond)
}

/// [`poll_until`] with a chosen pause between looks (for conditions that
/// cost something to check, such as a connection attempt).
pub fn poll_every(interval: Duration, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(interval);
    }
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (once), so
/// hundreds of simultaneous clients fit, and servers spawned afterwards
/// inherit the higher limit.
pub fn raise_nofile() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit(RLIMIT_NOFILE)");
        let want = hard.min(65_536);
        if soft < want {
            setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit(RLIMIT_NOFILE)");
        }
    });
}

// ----- clients -------------------------------------------------------------

/// A client socket connected to `addr`, with [`IO_TIMEOUT`] both ways and
/// TCP_NODELAY (small writes go out at once).
pub fn connect(addr: SocketAddr) -> TcpStream {
    try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// [`connect`] that reports the error instead of panicking.
pub fn try_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    client_options(TcpStream::connect_timeout(&addr, IO_TIMEOUT)?)
}

/// [`try_connect`] from the local address `source`. Every address of
/// 127.0.0.0/8 is this host's, so one test can be many clients as far as
/// the server's per-address accounting (`--max-conns-per-ip`) can tell.
pub fn try_connect_from(source: IpAddr, addr: SocketAddr) -> io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::new(source, 0).into())?;
    sock.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    client_options(sock.into())
}

/// [`IO_TIMEOUT`] both ways and TCP_NODELAY.
fn client_options(s: TcpStream) -> io::Result<TcpStream> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

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
        format!("{:?}", String::from_utf8_lossy(&b[at..end]))
    };
    format!(
        "echo differs from the uppercase of what was sent at byte {at} (expected {} bytes, got {}): expected {}..., got {}...",
        want.len(),
        got.len(),
        show(want),
        show(got)
    )
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
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    let read_result = loop {
        match r.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if off + n as u64 > total {
                    break Err(format!("got {} bytes back, sent only {total}", off + n as u64));
                }
                if let Err(e) = check_pattern(seed, off, &buf[..n]) {
                    break Err(e);
                }
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(format!("read at offset {off} of {total}: {e}")),
        }
    };
    if read_result.is_err() {
        // Unblock the writer if it waits for room the server will not make.
        let _ = r.shutdown(Shutdown::Both);
    }
    let write_result = writer.join().map_err(|_| "writer thread panicked".to_string())?;
    read_result?;
    write_result?;
    if off != total {
        return Err(format!("EOF after {off} echoed bytes, sent {total}"));
    }
    Ok(())
}

// ----- /proc -----------------------------------------------------------------

/// One line of `/proc/PID/stat`, the fields the tests use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// State letter (R, S, D, Z, X, ...).
    pub state: char,
    /// Start time in clock ticks after boot (tells a reused pid apart).
    pub starttime: u64,
}

impl ProcStat {
    /// A zombie (exited, not reaped) or a dead entry.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: the
    // fields that follow start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        // Field 22 of the whole line; the fields here start at field 3.
        starttime: f.get(19)?.parse().ok()?,
    })
}

/// Every process visible in `/proc`.
pub fn all_procs() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).filter_map(proc_stat).collect()
}

/// Processes whose parent is in `parents`, recursively (not including the
/// parents), zombies included.
pub fn descendants(root: i32) -> Vec<ProcStat> {
    let procs = all_procs();
    let mut tree: HashSet<i32> = HashSet::from([root]);
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for p in &procs {
            if tree.contains(&p.ppid) && !tree.contains(&p.pid) {
                tree.insert(p.pid);
                out.push(*p);
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Whether `p` (same pid, same start time) is still a live process.
pub fn still_alive(p: &ProcStat) -> bool {
    proc_stat(p.pid).is_some_and(|now| now.starttime == p.starttime && !now.is_dead())
}

/// Open fds of `pid` as (fd, link target).
pub fn fds(pid: i32) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<(i32, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let fd = e.file_name().to_str()?.parse().ok()?;
            let target = std::fs::read_link(e.path()).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
            Some((fd, target))
        })
        .collect();
    out.sort();
    out
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`);
/// `None` when the process is gone.
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// CPU time `pid` has used so far, every thread, user plus system
/// (`utime + stime` of `/proc/PID/stat`); `None` when the process is gone.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // Fields 14 and 15 of the whole line; the fields here start at field 3.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    };
    Some(Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz))
}

/// Number of threads of `pid`.
pub fn thread_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

/// The `flags:` field of `/proc/PID/fdinfo/FD` (octal), if the fd is open.
pub fn fd_flags(pid: i32, fd: i32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let line = text.lines().find(|l| l.starts_with("flags:"))?;
    u32::from_str_radix(line["flags:".len()..].trim(), 8).ok()
}

/// Inode of a `socket:[N]` link target.
pub fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Inodes of the TCP sockets in LISTEN state (this network namespace).
pub fn listening_inodes() -> HashSet<u64> {
    let mut out = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) == Some(&"0A") {
                if let Some(inode) = f.get(9).and_then(|i| i.parse().ok()) {
                    out.insert(inode);
                }
            }
        }
    }
    out
}

// ----- the server ------------------------------------------------------------

/// What a settled server looks like: measured after a warm-up connection
/// closed, compared with [`Server::assert_settled`] after a test's churn.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Open fds of the server process.
    pub fds: usize,
    /// Their targets, for the failure message.
    pub fd_list: Vec<(i32, String)>,
    /// Threads of the server process.
    pub threads: usize,
    /// Live descendants (prefork workers; none for the other modes).
    pub children: Vec<ProcStat>,
}

/// A running `server` process, killed (with its children) when dropped.
pub struct Server {
    /// The mode it runs.
    pub mode: Mode,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: i32,
    child: Child,
    status: Option<ExitStatus>,
    log: Arc<Mutex<Vec<u8>>>,
    /// The first [`LOG_KEEP`] bytes of stderr, never trimmed (start-up
    /// lines such as `metrics on ...` stay findable however long the run).
    log_head: Arc<Mutex<Vec<u8>>>,
}

impl Server {
    /// Starts `server --mode NAME --listen 127.0.0.1:0 ARGS... EXTRA...` and
    /// waits (bounded) for its `listening on` line.
    pub fn start(mode: &Mode, extra: &[&str]) -> Server {
        raise_nofile();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
        cmd.args(["--mode", mode.name, "--listen", "127.0.0.1:0"]).args(mode.args).args(extra);
        Server::launch(mode, cmd)
    }

    /// [`Server::start`] with the server's RLIMIT_NOFILE (soft and hard) set
    /// to `nofile`: a shell sets the limit and `exec`s the server, so the
    /// process (and its pid) is the server's, and this test process keeps
    /// its own limit.
    pub fn start_with_nofile(mode: &Mode, extra: &[&str], nofile: u64) -> Server {
        raise_nofile();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_server"))
            .args(["--mode", mode.name, "--listen", "127.0.0.1:0"])
            .args(mode.args)
            .args(extra);
        Server::launch(mode, cmd)
    }

    /// [`Server::start`] under a shell `ulimit ULIMIT` (for example `-v
    /// 100000`): the shell `exec`s the server, so the process (and its pid)
    /// is the server's, and this test process keeps its own limits.
    pub fn start_with_ulimit(mode: &Mode, extra: &[&str], ulimit: &str) -> Server {
        raise_nofile();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("ulimit {ulimit} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_server"))
            .args(["--mode", mode.name, "--listen", "127.0.0.1:0"])
            .args(mode.args)
            .args(extra);
        Server::launch(mode, cmd)
    }

    /// Spawns `cmd` (which must end up as the server process itself) and
    /// waits (bounded) for its `listening on` line.
    fn launch(mode: &Mode, mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd));
        let pid = child.id() as i32;
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_head = Arc::new(Mutex::new(Vec::new()));
        spawn_log_drain(child.stderr.take().expect("stderr piped"), log.clone(), log_head.clone());
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name(format!("server-{pid}-stdout"))
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                let first = r.read_line(&mut line).map(|_| line);
                let _ = tx.send(first);
                // Keep the pipe open and drained for the server's lifetime.
                let _ = io::copy(&mut r, &mut io::sink());
            })
            .expect("spawn stdout reader");
        // From here on the guard owns the process: a failed start kills it.
        let mut server = Server {
            mode: *mode,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            child,
            status: None,
            log,
            log_head,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("reading the server's stdout: {e}"),
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                panic!("no `listening on` line within {START_TIMEOUT:?} (exit status: {status:?})")
            }
        };
        server.addr = parse_listening_line(&line, mode.name, pid);
        server
    }

    /// The server's stderr so far (tail).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The first stderr line containing `needle` (searched in the start of
    /// stderr, which is never trimmed, then in the kept tail).
    pub fn log_line_containing(&self, needle: &str) -> Option<String> {
        let head = String::from_utf8_lossy(&self.log_head.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        let tail = self.log();
        let found = head.lines().chain(tail.lines()).find(|l| l.contains(needle));
        found.map(str::to_string)
    }

    /// Waits (bounded by `timeout`) for a stderr line containing `needle`.
    pub fn wait_log_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let mut line = None;
        poll_every(Duration::from_millis(20), timeout, || {
            line = self.log_line_containing(needle);
            line.is_some()
        });
        line
    }

    /// The address of the `--metrics` endpoint, from the server's
    /// `metrics on http://ADDR/metrics` log line (waited for, bounded).
    pub fn metrics_addr(&self) -> SocketAddr {
        let line = self
            .wait_log_line("metrics on http://", START_TIMEOUT)
            .unwrap_or_else(|| panic!("no `metrics on http://ADDR/metrics` line on stderr within {START_TIMEOUT:?}"));
        let rest = &line[line.find("metrics on http://").expect("needle") + "metrics on http://".len()..];
        let addr = rest.split('/').next().unwrap_or_default();
        addr.parse().unwrap_or_else(|e| panic!("bad metrics address {addr:?} in {line:?}: {e}"))
    }

    /// A new client connection (timeouts set).
    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Sends `sig` to the server process.
    pub fn signal(&self, sig: Signal) {
        assert!(self.status.is_none(), "signal {sig} to a server that already exited");
        kill(Pid::from_raw(self.pid), sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// Whether `sig`, sent to the whole process, is still pending (not yet
    /// delivered to any thread), from `ShdPnd` in `/proc/PID/status`.
    pub fn signal_pending(&self, sig: Signal) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("ShdPnd:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        mask & (1 << (sig as i32 - 1)) != 0
    }

    /// Sends `sig` and waits (bounded) until the process has taken it, so a
    /// second one is a separate delivery rather than merged with the first.
    pub fn signal_and_wait_delivery(&self, sig: Signal) {
        self.signal(sig);
        assert!(
            poll_until(SETTLE_TIMEOUT, || !self.signal_pending(sig)),
            "{sig} still pending in the server after {SETTLE_TIMEOUT:?}"
        );
    }

    /// Where each thread of the server (and of its children) is blocked:
    /// `pid/tid: syscall (wchan)`, from `/proc` (for failure messages).
    pub fn where_blocked(&self) -> String {
        let mut pids = vec![self.pid];
        pids.extend(self.live_children().iter().map(|p| p.pid));
        let mut out = Vec::new();
        for pid in pids {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
                let syscall = read("syscall");
                let nr = syscall.split_whitespace().next().unwrap_or("?").to_string();
                let name = syscall_name(&nr);
                out.push(format!("{pid}/{}: {name} ({})", task.file_name().to_string_lossy(), read("wchan")));
            }
        }
        out.join(", ")
    }

    /// Waits (bounded) for the server to exit; `None` if it is still running
    /// after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            let child = &mut self.child;
            let mut status = None;
            poll_until(timeout, || {
                status = child.try_wait().expect("try_wait");
                status.is_some()
            });
            self.status = status;
        }
        self.status
    }

    /// Whether the server process is still running (not exited, not a zombie).
    pub fn is_running(&mut self) -> bool {
        self.status.is_none() && self.child.try_wait().expect("try_wait").is_none()
    }

    /// Live descendants of the server (fork children, prefork workers).
    pub fn live_children(&self) -> Vec<ProcStat> {
        descendants(self.pid).into_iter().filter(|p| !p.is_dead()).collect()
    }

    /// Zombie descendants of the server: exited, never reaped.
    pub fn zombies(&self) -> Vec<ProcStat> {
        descendants(self.pid).into_iter().filter(ProcStat::is_dead).collect()
    }

    /// Connection sockets (TCP sockets not in LISTEN state, or any other
    /// socket) held by the server or any of its live descendants, as
    /// (pid, fd, target).
    pub fn connection_sockets(&self) -> Vec<(i32, i32, String)> {
        let listening = listening_inodes();
        let mut pids = vec![self.pid];
        pids.extend(self.live_children().iter().map(|p| p.pid));
        let mut out = Vec::new();
        for pid in pids {
            for (fd, target) in fds(pid) {
                if socket_inode(&target).is_some_and(|i| !listening.contains(&i)) {
                    out.push((pid, fd, target));
                }
            }
        }
        out
    }

    /// Makes one warm-up round trip (so the server's accept machinery
    /// exists), waits until no connection is left in the server's process
    /// tree and no zombie, and records what the settled server looks like.
    pub fn baseline(&self) -> Baseline {
        let mut s = self.connect();
        roundtrip(&mut s, b"warm-up: hello, server").unwrap_or_else(|e| panic!("warm-up round trip: {e}"));
        close_cleanly(&mut s).unwrap_or_else(|e| panic!("warm-up close: {e}"));
        drop(s);
        let settled = poll_until(SETTLE_TIMEOUT, || self.connection_sockets().is_empty() && self.zombies().is_empty());
        assert!(
            settled,
            "server never settled after one closed connection: connection sockets {:?}, zombies {:?}",
            self.connection_sockets(),
            self.zombies()
        );
        let fd_list = fds(self.pid);
        Baseline { fds: fd_list.len(), fd_list, threads: thread_count(self.pid), children: self.live_children() }
    }

    /// After every client closed: waits (bounded by [`SETTLE_TIMEOUT`]) until
    /// the server has no zombie child, no child it did not have at the
    /// baseline, no connection socket, no more threads than at the baseline,
    /// and exactly the baseline's number of open fds; then asserts each.
    pub fn assert_settled(&self, base: &Baseline) {
        let known: HashSet<(i32, u64)> = base.children.iter().map(|p| (p.pid, p.starttime)).collect();
        let extra_children = || -> Vec<ProcStat> {
            self.live_children().into_iter().filter(|p| !known.contains(&(p.pid, p.starttime))).collect()
        };
        let ok = poll_until(SETTLE_TIMEOUT, || {
            self.zombies().is_empty()
                && extra_children().is_empty()
                && self.connection_sockets().is_empty()
                && thread_count(self.pid) <= base.threads
                && fds(self.pid).len() == base.fds
        });
        if ok {
            return;
        }
        let zombies = self.zombies();
        assert!(
            zombies.is_empty(),
            "{} zombie children of the server after {SETTLE_TIMEOUT:?}: {zombies:?}",
            zombies.len()
        );
        let extra = extra_children();
        assert!(extra.is_empty(), "{} children still alive after every client closed: {extra:?}", extra.len());
        let conns = self.connection_sockets();
        assert!(conns.is_empty(), "{} connection sockets still open after every client closed: {conns:?}", conns.len());
        let threads = thread_count(self.pid);
        assert!(threads <= base.threads, "server has {threads} threads, {} at the baseline", base.threads);
        let now = fds(self.pid);
        assert_eq!(
            now.len(),
            base.fds,
            "open fds of the server not back to the baseline after {SETTLE_TIMEOUT:?}\n  baseline: {:?}\n  now:      {:?}",
            base.fd_list,
            now
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.status.is_none() {
            // Children first collected, then everyone killed: once the
            // parent is gone its children can no longer be found by ppid.
            let children = descendants(self.pid);
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            for c in children.iter().filter(|c| still_alive(c)) {
                let _ = kill(Pid::from_raw(c.pid), Signal::SIGKILL);
            }
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let log = self.log();
            eprintln!(
                "----- stderr of server pid {} ({}) -----\n{log}----- end of server stderr -----",
                self.pid, self.mode.name
            );
        }
    }
}

/// Parses `listening on 127.0.0.1:PORT mode=MODE pid=PID\n`, checking
/// every part.
fn parse_listening_line(line: &str, mode: &str, pid: i32) -> SocketAddr {
    let bad = |why: &str| -> ! { panic!("bad start-up line {line:?}: {why}") };
    let Some(body) = line.strip_suffix('\n') else { bad("no newline (missing, or not flushed)") };
    let Some(rest) = body.strip_prefix("listening on ") else { bad("does not start with `listening on `") };
    let parts: Vec<&str> = rest.split(' ').collect();
    let [addr, m, p] = parts[..] else { bad("expected `ADDR mode=MODE pid=PID`") };
    let addr: SocketAddr = addr.parse().unwrap_or_else(|_| bad("address does not parse"));
    if addr.ip() != std::net::Ipv4Addr::LOCALHOST || addr.port() == 0 {
        bad("expected 127.0.0.1 and a real port");
    }
    if m != format!("mode={mode}") {
        bad(&format!("expected mode={mode}"));
    }
    if p != format!("pid={pid}") {
        bad(&format!("expected pid={pid}"));
    }
    addr
}

/// Copies a pipe into `log`, keeping the last [`LOG_KEEP`] bytes.
fn spawn_log_drain(mut pipe: impl Read + Send + 'static, log: Arc<Mutex<Vec<u8>>>, head: Arc<Mutex<Vec<u8>>>) {
    thread::Builder::new()
        .name("server-stderr".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                {
                    let mut h = head.lock().unwrap_or_else(|e| e.into_inner());
                    let room = LOG_KEEP.saturating_sub(h.len()).min(n);
                    h.extend_from_slice(&buf[..room]);
                }
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.extend_from_slice(&buf[..n]);
                if l.len() > 2 * LOG_KEEP {
                    let cut = l.len() - LOG_KEEP;
                    l.drain(..cut);
                }
            }
        })
        .expect("spawn stderr reader");
}

// ----- one-shot runs ---------------------------------------------------------

/// How a server run that was expected to end on its own ended.
#[derive(Debug)]
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote on stdout.
    pub stdout: String,
    /// Everything it wrote on stderr.
    pub stderr: String,
}

/// Runs `server ARGS...` expecting it to exit on its own within
/// [`EXIT_TIMEOUT`]; kills it and panics if it does not.
pub fn run_to_exit(args: &[&str]) -> Finished {
    let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    spawn_collect(child.stdout.take().expect("stdout"), out.clone(), done_tx.clone());
    spawn_collect(child.stderr.take().expect("stderr"), err.clone(), done_tx);
    let text =
        |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let mut status = None;
    poll_until(EXIT_TIMEOUT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("`server {}` still running after {EXIT_TIMEOUT:?}; stderr:\n{}", args.join(" "), text(&err));
    };
    // The pipes reach EOF now that the process is gone (bounded anyway, in
    // case something it started still holds them).
    for _ in 0..2 {
        if done_rx.recv_timeout(SETTLE_TIMEOUT).is_err() {
            panic!("`server {}` exited ({status}) but its stdout/stderr stayed open", args.join(" "));
        }
    }
    Finished { status, stdout: text(&out), stderr: text(&err) }
}

/// Copies a pipe into `into` until EOF, then reports on `done`.
fn spawn_collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>, done: mpsc::Sender<()>) {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            into.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(&buf[..n]);
        }
        let _ = done.send(());
    });
}

/// A readable name for the x86-64 syscall numbers a blocked server sits in.
fn syscall_name(nr: &str) -> String {
    let name = match (cfg!(target_arch = "x86_64"), nr) {
        (true, "0") => "read",
        (true, "1") => "write",
        (true, "7") => "poll",
        (true, "44") => "sendto",
        (true, "45") => "recvfrom",
        (true, "61") => "wait4",
        (true, "202") => "futex",
        (true, "232") => "epoll_wait",
        (true, "281") => "epoll_pwait",
        (true, "288") => "accept4",
        (true, "441") => "epoll_pwait2",
        (_, "running") => "running",
        _ => return format!("syscall {nr}"),
    };
    name.to_string()
}
