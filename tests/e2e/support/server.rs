//! The server harness: start the real `server` binary on `127.0.0.1:0`
//! (optionally under a `ulimit`, or with syscall faults injected), read its
//! start-up line and log, signal it, and look at its process tree; and run it
//! to its exit, bounded in time.
//!
//! [`Server`]'s `Drop` SIGKILLs the server and every descendant it still
//! has, then reaps it, also when the test panics (and then prints the tail
//! of the server's stderr).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::faults;
use super::machine::{self, Claim};
use super::modes::Mode;
use super::net::{close_cleanly, connect, roundtrip};
use super::process::{poll_every, poll_until, raise_nofile, run_bounded, signal_pid, Finished};
use super::procfs::{self, descendants, fds, listening_inodes, socket_inode, still_alive, thread_count, ProcStat};

/// How long a server may take to print its `listening on` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may take to settle (close fds, reap children).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server may take to exit once it has nothing left to do.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of server stderr kept for failure reports.
const LOG_KEEP: usize = 64 * 1024;

/// How to start a server: its mode, extra flags, limits, faults.
/// [`Server::start`] is the common case.
pub struct Launch<'a> {
    mode: &'a Mode,
    extra: &'a [&'a str],
    ulimit: Option<String>,
    faults: Option<String>,
    env: Vec<(String, String)>,
    program: Option<std::path::PathBuf>,
    wrapper: Vec<String>,
    bare: bool,
    deny_io_uring: Option<i32>,
}

impl<'a> Launch<'a> {
    /// `server --mode NAME --listen 127.0.0.1:0 ARGS... EXTRA...`.
    pub fn new(mode: &'a Mode, extra: &'a [&'a str]) -> Launch<'a> {
        Launch {
            mode,
            extra,
            ulimit: None,
            faults: None,
            env: Vec::new(),
            program: None,
            wrapper: Vec::new(),
            bare: false,
            deny_io_uring: None,
        }
    }

    /// Under a shell `ulimit ULIMIT` (for example `-v 32000`): the shell
    /// `exec`s the server, so the process (and its pid) is the server's,
    /// and this test process keeps its own limits.
    pub fn ulimit(mut self, ulimit: &str) -> Self {
        self.ulimit = Some(ulimit.to_string());
        self
    }

    /// With RLIMIT_NOFILE (soft and hard) set to `nofile`.
    pub fn nofile(self, nofile: u64) -> Self {
        self.ulimit(&format!("-n {nofile}"))
    }

    /// Runs `program` (a copy of the server binary) instead of the built one.
    pub fn program(mut self, program: &std::path::Path) -> Self {
        self.program = Some(program.to_path_buf());
        self
    }

    /// Runs the server through `wrapper` (a program that `exec`s its
    /// arguments, such as `systemd-socket-activate -l ADDR`): the pid stays
    /// the server's.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Self {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// With `key=value` in the server's environment.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Without `--mode`, `--listen` and the mode's flags: the configuration
    /// comes from the environment (`SWITCHYARD_*`) and `extra` only; the
    /// start-up line must still name the mode.
    pub fn environment_only(mut self) -> Self {
        self.bare = true;
        self
    }

    /// Under a seccomp filter that fails io_uring_setup(2) with `errno`
    /// (see [`faults::no_uring`]).
    pub fn deny_io_uring(mut self, errno: i32) -> Self {
        self.deny_io_uring = Some(errno);
        self
    }

    /// With the syscall faults of `spec` injected (see [`faults`]).
    pub fn faults(mut self, spec: &str) -> Self {
        self.faults = Some(spec.to_string());
        self
    }

    /// Starts it and waits (bounded) for its `listening on` line.
    pub fn start(self) -> Server {
        raise_nofile();
        let claim = machine::claim();
        let cmd = self.command();
        Server::launch(self.mode, cmd, claim)
    }

    /// Runs it to its exit (bounded: [`EXIT_TIMEOUT`]), for a server that
    /// must refuse to start.
    pub fn run_to_exit(self) -> Finished {
        let cmd = self.command();
        run_bounded(cmd, EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{} {:?}: {e}", self.mode.name, self.extra))
    }

    fn command(&self) -> Command {
        let built = std::path::Path::new(env!("CARGO_BIN_EXE_server"));
        let server = self.program.as_deref().unwrap_or(built);
        let mut cmd = match (&self.ulimit, self.wrapper.split_first(), self.deny_io_uring) {
            (None, Some((wrapper, args)), None) => {
                let mut w = Command::new(wrapper);
                w.args(args).arg(server);
                w
            }
            (None, None, None) => Command::new(server),
            (None, None, Some(errno)) => {
                let mut c = Command::new(faults::no_uring());
                c.arg(errno.to_string()).arg(server);
                c
            }
            (Some(limit), None, None) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c").arg(format!("ulimit {limit} && exec \"$0\" \"$@\"")).arg(server);
                sh
            }
            _ => panic!("a ulimit, a wrapper and a seccomp filter: one at a time"),
        };
        if !self.bare {
            cmd.args(["--mode", self.mode.name, "--listen", "127.0.0.1:0"]).args(self.mode.args);
        }
        cmd.args(self.extra);
        if let Some(spec) = &self.faults {
            faults::inject(&mut cmd, spec);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

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
    /// Every line the server (and any successor of a binary upgrade, which
    /// shares its stdout) printed on stdout.
    stdout: Arc<Mutex<Vec<String>>>,
    /// Who handed it its listening socket, as its start-up line says.
    pub inherited: Option<String>,
    /// Its share of the machine (see [`machine`]), released after it is
    /// killed.
    _claim: Claim,
}

impl Server {
    /// Starts `server --mode NAME --listen 127.0.0.1:0 ARGS... EXTRA...` and
    /// waits (bounded) for its `listening on` line.
    pub fn start(mode: &Mode, extra: &[&str]) -> Server {
        Launch::new(mode, extra).start()
    }

    /// Spawns `cmd` (which must end up as the server process itself) and
    /// waits (bounded) for its `listening on` line.
    fn launch(mode: &Mode, mut cmd: Command, claim: Claim) -> Server {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd));
        let pid = child.id() as i32;
        let log = Arc::new(Mutex::new(Vec::new()));
        let log_head = Arc::new(Mutex::new(Vec::new()));
        spawn_log_drain(child.stderr.take().expect("stderr piped"), log.clone(), log_head.clone());
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let all = lines.clone();
        thread::Builder::new()
            .name(format!("server-{pid}-stdout"))
            .spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                let first = r.read_line(&mut line).map(|_| line.clone());
                all.lock().unwrap().push(line.clone());
                let _ = tx.send(first);
                // Keep the pipe open and drained for the server's lifetime
                // (and its successors'), keeping what they print.
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => all.lock().unwrap().push(line.clone()),
                    }
                }
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
            stdout: lines,
            inherited: None,
            _claim: claim,
        };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => panic!("reading the server's stdout: {e}"),
            Err(_) => {
                let status = server.child.try_wait().ok().flatten();
                panic!("no `listening on` line within {START_TIMEOUT:?} (exit status: {status:?})")
            }
        };
        let (addr, inherited) = parse_listening_line(&line, mode.name, pid);
        server.addr = addr;
        server.inherited = inherited;
        server
    }

    /// Every line on stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
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
        signal_pid(self.pid, sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid));
    }

    /// Sends `sig` and waits (bounded) until the process has taken it, so a
    /// second one is a separate delivery rather than merged with the first.
    pub fn signal_and_wait_delivery(&self, sig: Signal) {
        self.signal(sig);
        assert!(
            poll_until(SETTLE_TIMEOUT, || !procfs::signal_pending(self.pid, sig as i32)),
            "{sig} still pending in the server after {SETTLE_TIMEOUT:?}"
        );
    }

    /// Where each thread of the server (and of its children) is blocked:
    /// `pid/tid: syscall (wchan)`, from `/proc` (for failure messages).
    pub fn where_blocked(&self) -> String {
        let mut pids = vec![self.pid];
        pids.extend(self.live_children().iter().map(|p| p.pid));
        procfs::where_blocked(&pids)
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
            let _ = signal_pid(self.pid, Signal::SIGKILL);
            for c in children.iter().filter(|c| still_alive(c)) {
                let _ = signal_pid(c.pid, Signal::SIGKILL);
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
fn parse_listening_line(line: &str, mode: &str, pid: i32) -> (SocketAddr, Option<String>) {
    let bad = |why: &str| -> ! { panic!("bad start-up line {line:?}: {why}") };
    let Some(body) = line.strip_suffix('\n') else { bad("no newline (missing, or not flushed)") };
    let Some(rest) = body.strip_prefix("listening on ") else { bad("does not start with `listening on `") };
    let (rest, inherited) = match rest.split_once(" (socket from ") {
        Some((rest, from)) => {
            let Some(from) = from.strip_suffix(')') else { bad("unclosed `(socket from ...`") };
            (rest, Some(from.to_string()))
        }
        None => (rest, None),
    };
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
    (addr, inherited)
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

/// Runs `server ARGS...` expecting it to exit on its own within
/// [`EXIT_TIMEOUT`]; it is killed and the test fails if it does not.
pub fn run_to_exit(args: &[&str]) -> Finished {
    run_to_exit_with(args, &[])
}

/// [`run_to_exit`] with `env` added to the server's environment.
pub fn run_to_exit_with(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args(args).envs(env.iter().copied());
    run_bounded(cmd, EXIT_TIMEOUT).unwrap_or_else(|e| panic!("`server {}`: {e}", args.join(" ")))
}

/// [`run_to_exit`] for another program with the `server` command line.
pub fn run_program_to_exit(program: &std::path::Path, args: &[&str]) -> Finished {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_bounded(cmd, EXIT_TIMEOUT).unwrap_or_else(|e| panic!("`{} {}`: {e}", program.display(), args.join(" ")))
}
