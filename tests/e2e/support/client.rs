//! The harness of the client's end-to-end tests (the `client` topic):
//! start the real `server` on 127.0.0.1:0 (killed by PID and reaped when
//! dropped, pass or fail), run the `client` binary, read its JSON report, and
//! look at a server from the outside (its metrics endpoint, its established
//! sockets in `/proc`). Every wait is a bounded poll of a condition.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use switchyard::client::Report;
use switchyard::common::upper::to_upper;

pub use super::process::poll_until;

/// How long a server may take to print its `listening on` line (and its metrics line).
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises this process's open-file limit to its hard limit (the client and
/// server processes a test starts inherit it); returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    hard
}

/// A `server` process, killed (SIGKILL) and reaped when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Its stderr so far.
    log: Arc<Mutex<String>>,
}

impl Server {
    /// `server --mode MODE --listen 127.0.0.1:0 EXTRA...`.
    pub fn start(mode: &str) -> Server {
        Server::with(&["--mode", mode])
    }

    /// `server ARGS... --listen 127.0.0.1:0`, logging at info level.
    pub fn with(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_server"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start server");
        let log = Arc::new(Mutex::new(String::new()));
        let err = BufReader::new(child.stderr.take().unwrap());
        let sink = log.clone();
        thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).expect("read the listening line");
        let addr = line.split_whitespace().nth(2).and_then(|a| a.parse().ok()).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("unexpected first line from server: {line:?}")
        });
        Server { child, addr, log }
    }

    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The address of `--metrics 127.0.0.1:0`, from the server's log.
    pub fn metrics_addr(&self) -> SocketAddr {
        const NEEDLE: &str = "metrics on http://";
        let mut found = None;
        poll_until(START_TIMEOUT, || {
            let log = self.log.lock().unwrap();
            found = log.find(NEEDLE).and_then(|i| log[i + NEEDLE.len()..].split('/').next()?.parse().ok());
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no `{NEEDLE}ADDR/metrics` line in the server's log:\n{}", self.log()))
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET /metrics`: the value of the unlabelled sample `name`.
pub fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Sockets of process `pid` in the ESTABLISHED state, from `/proc`: the
/// socket inodes among its fds, looked up in `/proc/net/tcp` and `tcp6`.
pub fn established(pid: u32) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let count = |table: String| {
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 9 && f[3] == "01" && inodes.contains(f[9])
            })
            .count()
    };
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().filter_map(|p| std::fs::read_to_string(p).ok()).map(count).sum()
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("switchyard-client-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the client to its end.
pub fn client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_client")).args(args).stdin(Stdio::null()).output().expect("run client")
}

/// Starts the client (stdout and stderr piped).
pub fn spawn_client(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_client"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start client")
}

/// A client process killed and reaped when dropped (a test that fails leaves none behind).
pub struct Running(pub Option<Child>);

impl Running {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Waits for the client to end by itself.
    pub fn wait(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().expect("wait for the client")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn describe(o: &Output) -> String {
    format!("status {:?}\n--- stdout\n{}--- stderr\n{}", o.status, text(&o.stdout), text(&o.stderr))
}

pub fn read_report(path: &str) -> (Report, String) {
    let json = std::fs::read_to_string(path).expect("JSON report written");
    (Report::from_json(&json).expect("JSON report parses"), json)
}

/// How a faulty server answers: (bytes read, their offset, connection number) -> (reply, close).
pub type Reply = fn(&[u8], u64, u64) -> (Vec<u8>, bool);

/// A faulty server: each connection's replies go through `reply`, which gets
/// the bytes read, the connection's offset of their first byte and its
/// number (from 0, in order of acceptance), and returns what to write plus
/// whether to close afterwards.
pub fn faulty_server(reply: Reply) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut offset = 0u64;
                loop {
                    let k = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => k,
                    };
                    let (out, close) = reply(&buf[..k], offset, n as u64);
                    offset += k as u64;
                    if s.write_all(&out).is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The faithful reply: the uppercase of what was read.
pub fn upper(data: &[u8]) -> Vec<u8> {
    to_upper(data)
}
