//! Classic daemon operation: `--pid-file`, `--daemon`, and `--log-file`
//! reopened on SIGUSR1 (issue 17). Every mode of the table gets three
//! tests (`daemon::fork::...`):
//!
//! - **the pid file**: a stale one (naming a live process that is no
//!   server) is replaced with a warning; the pid and a newline are there by
//!   the time the start-up line is out, with no temporary file left; a
//!   second server with the same file is refused ("already running as PID
//!   N") and leaves it alone; a graceful stop removes it;
//! - **`--daemon`**: the command returns 0 once the daemon listens, with
//!   the daemon's own start-up line; the daemon is detached (another
//!   session, no terminal, not our child, in `/`, stdin and stdout on
//!   `/dev/null`, stderr on the log file), serves at once, refuses a second
//!   daemon with the same pid file through the report pipe, and stops by
//!   the pid in its pid file, removing it;
//! - **log reopen**: under load (one log line per connection, each
//!   connection telling itself apart by its length), the log file is
//!   renamed and SIGUSR1 goes to the server process only; every process
//!   (workers, fork children) moves to the new file, and in the end every
//!   line of both files is whole, every connection's line is in one of them
//!   exactly once, and those that began after the move are in the new one.
//!
//! Besides: failures at start reach the caller of `--daemon` as the
//! daemon's own message (port in use; a pid file the dropped user may not
//! write) with no process left behind; a log or pid file that cannot be
//! created is an error at start; `--daemon` is refused under systemd.
//!
//! A daemon is not the test's child: it is found through its pid file (and
//! the test's own directory in its command line), and [`Daemon`] kills it,
//! with its descendants, when dropped, also when the test fails.
//!
//! And a daemon upgrades in place (SIGUSR2): the new binary does not detach
//! again, finds the relative paths it was given where the first one was
//! started, takes over the port and the pid file, and moves to `/`. (The
//! pid file across upgrades in the foreground, and after a failed one, is
//! in `operations`.)

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::machine::{self, Claim};
use crate::support::modes::{per_mode, Mode, EVENT, PREFORK_EVENT};
use crate::support::net::{close_cleanly, connect, roundtrip, try_connect};
use crate::support::process::{poll_until, run_bounded, signal_pid, Finished};
use crate::support::procfs::{all_procs, descendants, fds, still_alive, ProcStat};
use crate::support::server::{run_to_exit, Launch, Server, EXIT_TIMEOUT, SETTLE_TIMEOUT};

/// A directory of the test's own under the system's temporary one,
/// removed when dropped. Its path, unique to the test, also marks the
/// processes the test started (it is in their command lines).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("switchyard-daemon-{name}-{}-{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.0)
            .expect("scratch dir")
            .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn marker(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary directory")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `path` as a flag value.
fn arg(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Live processes whose command line contains `marker` (a test's scratch
/// directory: only the processes that test started have it).
fn processes_mentioning(marker: &str) -> Vec<ProcStat> {
    all_procs()
        .into_iter()
        .filter(|p| !p.is_dead())
        .filter(|p| {
            fs::read(format!("/proc/{}/cmdline", p.pid))
                .is_ok_and(|c| String::from_utf8_lossy(&c).replace('\0', " ").contains(marker))
        })
        .collect()
}

/// The pid in a pid file, which must be exactly the pid and a newline.
fn pid_in(path: &Path) -> i32 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("pid file {}: {e}", path.display()));
    let pid = text.strip_suffix('\n').unwrap_or_else(|| panic!("pid file {}: no newline: {text:?}", path.display()));
    pid.parse().unwrap_or_else(|_| panic!("pid file {}: not a pid: {text:?}", path.display()))
}

/// `server ARGS...` as the table runs `mode`, on a free port.
fn server_args<'a>(mode: &'a Mode, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["--mode", mode.name, "--listen", "127.0.0.1:0"];
    v.extend_from_slice(mode.args);
    v.extend_from_slice(extra);
    v
}

// ----- the pid file ----------------------------------------------------------

fn pid_file_lifecycle(mode: &Mode) {
    let dir = Scratch::new("pid");
    let pid_file = dir.file("server.pid");
    // Stale: it names a live process that is no server (this test binary).
    fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
    let mut server = Server::start(mode, &["--pid-file", arg(&pid_file)]);
    // Written before the start-up line: no waiting.
    assert_eq!(pid_in(&pid_file), server.pid, "{}: the pid file names the server", mode.name);
    assert_eq!(dir.names(), ["server.pid"], "{}: a temporary file was left behind", mode.name);
    assert!(
        server.wait_log_line("stale", SETTLE_TIMEOUT).is_some(),
        "{}: no warning that a stale pid file was replaced\n{}",
        mode.name,
        server.log()
    );
    // Refused while it names the running server, and left alone.
    let second = run_to_exit(&server_args(mode, &["--pid-file", arg(&pid_file)]));
    assert_eq!(second.status.code(), Some(1), "{}: a second server with the same pid file: {second:?}", mode.name);
    let expected = format!("error: already running as PID {} (pid file {})\n", server.pid, pid_file.display());
    assert_eq!(second.stderr, expected, "{}: the second server's message", mode.name);
    assert_eq!(pid_in(&pid_file), server.pid, "{}: the refused server touched the pid file", mode.name);
    let mut c = server.connect();
    roundtrip(&mut c, b"still serving").unwrap();
    close_cleanly(&mut c).unwrap();
    // Removed on a clean exit.
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(EXIT_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "{}: exit after SIGTERM: {status:?}\n{}", mode.name, server.log());
    assert!(dir.names().is_empty(), "{}: left after a clean exit: {:?}", mode.name, dir.names());
}

/// A pid file naming a dead process, or holding no pid at all, is stale:
/// replaced, with a warning.
#[test]
fn dead_and_garbage_pid_files_are_replaced() {
    let dir = Scratch::new("stale");
    let pid_file = dir.file("server.pid");
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let dead = gone.id();
    gone.wait().unwrap();
    for (content, why) in
        [(format!("{dead}\n"), format!("PID {dead} is not a running server")), ("x\n".into(), "no pid".into())]
    {
        fs::write(&pid_file, content).unwrap();
        let server = Server::start(&EVENT, &["--pid-file", arg(&pid_file)]);
        assert_eq!(pid_in(&pid_file), server.pid);
        let warning = server.wait_log_line("stale", SETTLE_TIMEOUT).unwrap_or_default();
        assert!(warning.contains(&why), "expected a warning saying {why:?}:\n{}", server.log());
    }
}

/// A log file or pid file that cannot be created is an error at start
/// (exit 1, naming the file), with or without `--daemon`.
#[test]
fn unwritable_log_and_pid_files_are_errors_at_start() {
    let dir = Scratch::new("missing");
    let missing = dir.file("no-such-dir/x");
    for daemon in [&[][..], &["--daemon"][..]] {
        let mut args = vec!["--listen", "127.0.0.1:0", "--log-file", arg(&missing)];
        args.extend_from_slice(daemon);
        let (_guard, done) = Daemon::run(&dir, &args);
        assert_eq!(done.status.code(), Some(1), "{done:?}");
        let expected = format!("error: --log-file {}: No such file or directory", missing.display());
        assert!(done.stderr.starts_with(&expected), "{done:?}");
        let mut args = vec!["--listen", "127.0.0.1:0", "--pid-file", arg(&missing)];
        args.extend_from_slice(daemon);
        let (guard, done) = Daemon::run(&dir, &args);
        assert_eq!(done.status.code(), Some(1), "{done:?}");
        assert!(
            done.stderr.contains(&format!("pid file {}: No such file or directory", missing.display())),
            "{done:?}"
        );
        assert!(guard.all_gone(), "left running: {:?}", processes_mentioning(dir.marker()));
    }
}

// ----- --daemon -------------------------------------------------------------

/// A daemon a test started (not its child): every process that mentions the
/// test's scratch directory in its command line, and their descendants,
/// are SIGKILLed when dropped.
struct Daemon {
    marker: String,
    _claim: Claim,
}

impl Daemon {
    /// Runs `server ARGS...` (which must mention `dir`) to its exit; what
    /// it leaves running is killed when the returned guard is dropped.
    fn run(dir: &Scratch, args: &[&str]) -> (Daemon, Finished) {
        Daemon::run_in(dir, Path::new("."), args)
    }

    /// [`Daemon::run`], started in directory `cwd`.
    fn run_in(dir: &Scratch, cwd: &Path, args: &[&str]) -> (Daemon, Finished) {
        let guard = Daemon { marker: dir.marker().to_string(), _claim: machine::claim() };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
        cmd.current_dir(cwd);
        // Whatever runs the tests: the daemon must not think it runs under systemd.
        cmd.args(args).env_remove("LISTEN_FDS").env_remove("LISTEN_PID").env_remove("NOTIFY_SOCKET");
        let done = run_bounded(cmd, EXIT_TIMEOUT).unwrap_or_else(|e| panic!("`server {}`: {e}", args.join(" ")));
        (guard, done)
    }

    /// Whether none of its processes is left (bounded wait: a daemon that
    /// reported a failure may still be on its way out).
    fn all_gone(&self) -> bool {
        poll_until(SETTLE_TIMEOUT, || processes_mentioning(&self.marker).is_empty())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let left = processes_mentioning(&self.marker);
        let all: Vec<ProcStat> = left.iter().flat_map(|p| std::iter::once(*p).chain(descendants(p.pid))).collect();
        for p in all.iter().filter(|p| still_alive(p)) {
            let _ = signal_pid(p.pid, Signal::SIGKILL);
        }
    }
}

/// From `/proc/PID/stat`: parent, process group, session, terminal.
fn session_of(pid: i32) -> (i32, i32, i32, i32) {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    let f: Vec<i32> =
        stat.rsplit_once(')').expect("comm").1.split_whitespace().skip(1).take(5).map(|x| x.parse().unwrap()).collect();
    (f[0], f[1], f[2], f[3])
}

fn daemon_detaches_once_listening(mode: &Mode) {
    let dir = Scratch::new("detach");
    let (pid_file, log_file) = (dir.file("server.pid"), dir.file("server.log"));
    let args = server_args(mode, &["--daemon", "--pid-file", arg(&pid_file), "--log-file", arg(&log_file)]);
    let (daemon, done) = Daemon::run(&dir, &args);
    assert!(done.status.success(), "{}: `server --daemon`: {done:?}", mode.name);
    // Its one line is the daemon's: its pid, that of the pid file.
    let pid = pid_in(&pid_file);
    let line = done.stdout.strip_suffix('\n').unwrap_or_else(|| panic!("no start-up line: {done:?}"));
    let rest = line.strip_prefix("listening on ").unwrap_or_else(|| panic!("bad start-up line {line:?}"));
    let [addr, m, p] = rest.split(' ').collect::<Vec<_>>()[..] else { panic!("bad start-up line {line:?}") };
    assert_eq!((m, p), (format!("mode={}", mode.name).as_str(), format!("pid={pid}").as_str()), "{line:?}");
    assert!(done.stderr.is_empty(), "{}: the caller wrote to stderr: {:?}", mode.name, done.stderr);
    // Detached: not our child, its own session (not its leader), no terminal.
    let (ppid, pgrp, session, tty) = session_of(pid);
    assert_ne!(ppid, std::process::id() as i32, "the daemon is the test's child");
    assert_ne!(session, session_of(std::process::id() as i32).2, "the daemon is in the test's session");
    assert_ne!(session, pid, "the daemon leads its session (it could acquire a terminal)");
    assert_eq!((pgrp, tty), (session, 0), "process group and terminal of the daemon");
    assert_eq!(fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"), "the daemon's directory");
    let fd = |n: i32| fds(pid).into_iter().find(|(f, _)| *f == n).map(|(_, t)| t).unwrap_or_default();
    assert_eq!(
        [fd(0), fd(1), fd(2)],
        ["/dev/null", "/dev/null", arg(&log_file)],
        "{}: stdin, stdout, stderr",
        mode.name
    );
    // Listening already.
    let addr = addr.parse().unwrap_or_else(|e| panic!("address in {line:?}: {e}"));
    let mut c = connect(addr);
    roundtrip(&mut c, b"hello, daemon").unwrap();
    close_cleanly(&mut c).unwrap();
    // A second daemon with the same pid file: refused, and its caller says why.
    let (_second, refused) = Daemon::run(&dir, &args);
    assert_eq!(refused.status.code(), Some(1), "{}: a second daemon: {refused:?}", mode.name);
    let expected = format!("error: already running as PID {pid} (pid file {})\n", pid_file.display());
    assert_eq!(refused.stderr, expected, "{}: the second daemon's message, through its caller", mode.name);
    // Stopped through its pid file: gone, and so is the file.
    signal_pid(pid, Signal::SIGTERM).unwrap();
    assert!(
        daemon.all_gone(),
        "{}: the daemon still runs after SIGTERM: {:?}",
        mode.name,
        processes_mentioning(dir.marker())
    );
    assert_eq!(dir.names(), ["server.log"], "{}: the pid file outlived the daemon", mode.name);
    let log = fs::read_to_string(&log_file).unwrap();
    assert!(log.contains(&format!(" {pid} ")), "{}: nothing from the daemon in its log file:\n{log}", mode.name);
}

/// The port is taken: the daemon's own error is the caller's, exit 1,
/// nothing left running, no pid file.
#[test]
fn daemon_reports_a_port_in_use_and_leaves_nothing_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for mode in [EVENT, PREFORK_EVENT] {
        let dir = Scratch::new("in-use");
        let pid_file = dir.file("server.pid");
        let mut args = vec!["--mode", mode.name, "--listen", addr.as_str(), "--daemon", "--pid-file", arg(&pid_file)];
        args.extend_from_slice(mode.args);
        let (daemon, done) = Daemon::run(&dir, &args);
        assert_eq!(done.status.code(), Some(1), "{}: {done:?}", mode.name);
        assert_eq!(done.stderr, format!("error: {addr} is already in use\n"), "{}: {done:?}", mode.name);
        assert!(done.stdout.is_empty(), "{}: {done:?}", mode.name);
        assert!(daemon.all_gone(), "{}: left running: {:?}", mode.name, processes_mentioning(dir.marker()));
        assert!(dir.names().is_empty(), "{}: left behind: {:?}", mode.name, dir.names());
    }
}

/// After dropping to `nobody` the daemon may not write its pid file in a
/// directory only root may write to: the caller says so, exit 1, nothing
/// left running.
#[test]
#[cfg_attr(not(as_root), ignore = "needs root")]
fn daemon_reports_a_pid_file_the_dropped_user_may_not_write() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("perm");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o700)).unwrap();
    let pid_file = dir.file("server.pid");
    let args =
        ["--mode", "event", "--listen", "127.0.0.1:0", "--user", "nobody", "--daemon", "--pid-file", arg(&pid_file)];
    let (daemon, done) = Daemon::run(&dir, &args);
    assert_eq!(done.status.code(), Some(1), "{done:?}");
    let expected = format!("pid file {}: Permission denied", pid_file.display());
    assert!(done.stderr.starts_with("error: ") && done.stderr.contains(&expected), "{done:?}");
    assert!(daemon.all_gone(), "left running: {:?}", processes_mentioning(dir.marker()));
    assert!(dir.names().is_empty(), "left behind: {:?}", dir.names());
}

/// systemd wants its service in the foreground: `--daemon` is a usage
/// error there, and nothing starts.
#[test]
fn daemon_is_refused_under_systemd() {
    for var in ["LISTEN_FDS", "NOTIFY_SOCKET"] {
        let dir = Scratch::new("systemd");
        let pid_file = dir.file("server.pid");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
        cmd.args(["--listen", "127.0.0.1:0", "--daemon", "--pid-file", arg(&pid_file)]).env(var, "1");
        let done = run_bounded(cmd, EXIT_TIMEOUT).unwrap();
        assert_eq!(done.status.code(), Some(2), "{var}: {done:?}");
        assert!(
            done.stderr.starts_with("error: --daemon under systemd")
                && done.stderr.contains(&format!("{var} is set"))
                && done.stderr.contains("drop --daemon"),
            "{var}: {done:?}"
        );
        assert!(dir.names().is_empty(), "{var}: {:?}", dir.names());
    }
}

/// SIGUSR2 to a daemon (by its pid file): the successor serves on the same
/// port without detaching again (it is the daemon's child until the old
/// one exits), found its relative pid file where the daemon was started,
/// moved to `/`, and the old daemon exits; a client held across it is
/// served to its end.
#[test]
fn a_daemon_upgrades_in_place() {
    let dir = Scratch::new("upgrade");
    let log_file = dir.file("server.log");
    let pid_file = dir.file("server.pid");
    let args = [
        "--mode",
        "event",
        "--listen",
        "127.0.0.1:0",
        "--daemon",
        "--pid-file",
        "server.pid",
        "--log-file",
        arg(&log_file),
    ];
    let (daemon, done) = Daemon::run_in(&dir, &dir.0, &args);
    assert!(done.status.success(), "{done:?}");
    let old = pid_in(&pid_file);
    let addr: std::net::SocketAddr =
        done.stdout.split_whitespace().nth(2).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("{done:?}"));
    let mut held = connect(addr);
    roundtrip(&mut held, b"before the upgrade").unwrap();
    signal_pid(old, Signal::SIGUSR2).unwrap();
    let moved = poll_until(Duration::from_secs(15), || {
        fs::read_to_string(&pid_file).is_ok_and(|t| t.trim().parse::<i32>().is_ok_and(|p| p != old))
    });
    let log = || fs::read_to_string(&log_file).unwrap_or_default();
    assert!(moved, "the successor did not take the pid file over\n{}", log());
    let new = pid_in(&pid_file);
    assert_eq!(pid_in(&dir.file("server.pid.oldbin")), old, "the old daemon's file while it drains");
    let (_, _, session, tty) = session_of(new);
    assert_eq!(
        (session, tty),
        (session_of(old).2, 0),
        "the successor stays in the daemon's session, without a terminal"
    );
    assert_eq!(fs::read_link(format!("/proc/{new}/cwd")).unwrap(), Path::new("/"), "the successor's directory");
    let mut fresh = connect(addr);
    roundtrip(&mut fresh, b"after the upgrade").unwrap();
    roundtrip(&mut held, b"held across it").unwrap();
    close_cleanly(&mut held).unwrap();
    close_cleanly(&mut fresh).unwrap();
    assert!(poll_until(Duration::from_secs(15), || !still_running(old)), "the old daemon still runs\n{}", log());
    assert_eq!(dir.names(), ["server.log", "server.pid"], "what the old daemon left");
    signal_pid(new, Signal::SIGTERM).unwrap();
    assert!(daemon.all_gone(), "still running: {:?}", processes_mentioning(dir.marker()));
    assert_eq!(dir.names(), ["server.log"]);
}

/// Whether `pid` runs (not a zombie, not gone).
fn still_running(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, r)| !r.trim_start().starts_with('Z')))
}

// ----- the log file, reopened on SIGUSR1 ------------------------------------

/// Connections at most, and how long the load may last.
const MAX_CONNS: u64 = 4_000;
const LOAD_LIMIT: Duration = Duration::from_secs(60);
/// Connections before the rename, and after every process moved.
const EACH_SIDE: u64 = 150;

/// Clients that open connection after connection, each numbered: the `i`th
/// sends `i + 1` bytes (so its one log line, `... N bytes in, N out`, names
/// it), reads them back uppercased and closes.
struct Load {
    next: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(server: &Server, clients: usize) -> Load {
        let next = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (next, done, stop, errors, addr) =
                    (next.clone(), done.clone(), stop.clone(), errors.clone(), server.addr);
                std::thread::spawn(move || {
                    let deadline = Instant::now() + LOAD_LIMIT;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= MAX_CONNS {
                            break;
                        }
                        let msg: Vec<u8> = (0..=i).map(|b| b"abcdefghij"[(b % 10) as usize]).collect();
                        let r = try_connect(addr)
                            .map_err(|e| format!("connect: {e}"))
                            .and_then(|mut s| roundtrip(&mut s, &msg).and_then(|()| close_cleanly(&mut s)));
                        match r {
                            Ok(()) => {
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => errors.lock().unwrap().push(format!("connection {i}: {e}")),
                        }
                    }
                })
            })
            .collect();
        Load { next, done, stop, errors, threads }
    }

    /// Waits (bounded) until `n` connections have been served in all.
    fn reaches(&self, n: u64) -> bool {
        poll_until(LOAD_LIMIT, || self.done.load(Ordering::SeqCst) >= n || !self.errors.lock().unwrap().is_empty())
            && self.done.load(Ordering::SeqCst) >= n
    }

    /// Stops the clients; how many connections were started, and the errors.
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let started = self.next.load(Ordering::SeqCst).min(MAX_CONNS);
        (started, std::mem::take(&mut *self.errors.lock().unwrap()))
    }
}

/// One line of the log: `[TIMESTAMP LEVEL PID TARGET] MESSAGE`, whole:
/// its pid and message, or what is wrong with it.
fn parse_line(line: &str) -> Result<(i32, &str), String> {
    let bad = |why: &str| format!("{why}: {line:?}");
    let rest = line.strip_prefix('[').ok_or_else(|| bad("no '['"))?;
    let (head, msg) = rest.split_once("] ").ok_or_else(|| bad("no ']'"))?;
    let mut f = head.split_whitespace();
    let ts = f.next().unwrap_or_default();
    let ok_ts = ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T';
    let level = f.next().unwrap_or_default();
    let ok_level = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level);
    let pid = f.next().and_then(|p| p.parse().ok());
    let target = f.next().unwrap_or_default();
    let ok_target = target.starts_with("switchyard") && f.next().is_none();
    match pid {
        Some(pid) if ok_ts && ok_level && ok_target => Ok((pid, msg)),
        _ => Err(bad("not a whole log line")),
    }
}

/// The connection a line is about: `... N bytes in, N out` is the line of
/// connection `N - 1`.
fn connection_of(msg: &str) -> Option<u64> {
    let (left, right) = msg.strip_suffix(" out")?.rsplit_once(" bytes in, ")?;
    let bytes_in: u64 = left.rsplit(' ').next()?.parse().ok()?;
    let bytes_out: u64 = right.parse().ok()?;
    (bytes_in == bytes_out && bytes_in > 0).then(|| bytes_in - 1)
}

/// The server's processes that still write to `path` (the renamed file).
fn writing_to(server: &Server, path: &Path) -> Vec<i32> {
    let mut pids = vec![server.pid];
    pids.extend(server.live_children().iter().map(|p| p.pid));
    pids.into_iter().filter(|&p| fds(p).iter().any(|(_, t)| t.starts_with(arg(path)))).collect()
}

fn log_reopen_loses_no_line(mode: &Mode) {
    let dir = Scratch::new("reopen");
    let (log_file, rotated) = (dir.file("server.log"), dir.file("server.log.1"));
    let mut server = Launch::new(mode, &["--log-file", arg(&log_file), "--grace", "5"])
        .env("RUST_LOG", "info,switchyard_server=trace")
        .start();
    let files = || {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        format!("--- {}:\n{}--- {}:\n{}", rotated.display(), read(&rotated), log_file.display(), read(&log_file))
    };
    let load = Load::start(&server, if mode.concurrent { 4 } else { 1 });
    assert!(load.reaches(EACH_SIDE), "{}: no load before the rename: {:?}", mode.name, load.errors.lock().unwrap());
    let processes = 1 + server.live_children().len();
    fs::rename(&log_file, &rotated).unwrap();
    server.signal(Signal::SIGUSR1);
    let moved = poll_until(SETTLE_TIMEOUT, || writing_to(&server, &rotated).is_empty());
    assert!(
        moved,
        "{}: still writing to the renamed file: {:?}\n{}",
        mode.name,
        writing_to(&server, &rotated),
        files()
    );
    let boundary = load.next.load(Ordering::SeqCst);
    assert!(
        load.reaches(boundary + EACH_SIDE),
        "{}: no load after the reopen: {:?}",
        mode.name,
        load.errors.lock().unwrap()
    );
    let (started, errors) = load.finish();
    assert!(errors.is_empty(), "{}: clients failed: {errors:?}", mode.name);
    // A connection's line follows its close, and a stopping server does not
    // wait for a thread that has closed its connection (thread mode): the
    // lines are awaited before the stop, so that a missing one is a lost one.
    let lines = || {
        let text =
            fs::read_to_string(&rotated).unwrap_or_default() + &fs::read_to_string(&log_file).unwrap_or_default();
        text.lines().filter(|l| parse_line(l).is_ok_and(|(_, m)| connection_of(m).is_some())).count() as u64
    };
    poll_until(SETTLE_TIMEOUT, || lines() >= started);
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(EXIT_TIMEOUT);
    assert!(status.is_some_and(|s| s.success()), "{}: exit after SIGTERM: {status:?}\n{}", mode.name, files());

    // Every line whole; every connection's line once, in one file; the
    // late ones in the new file; every process said it reopened.
    let mut seen: HashMap<u64, Vec<&str>> = HashMap::new();
    let mut broken = Vec::new();
    let mut reopened = Vec::new();
    let (old, new) = (fs::read_to_string(&rotated).unwrap(), fs::read_to_string(&log_file).unwrap());
    for (name, text) in [("old", &old), ("new", &new)] {
        if !text.is_empty() && !text.ends_with('\n') {
            broken.push(format!("{name} file ends mid-line"));
        }
        for line in text.lines() {
            match parse_line(line) {
                Err(e) => broken.push(format!("{name}: {e}")),
                Ok((pid, msg)) => {
                    if let Some(i) = connection_of(msg) {
                        seen.entry(i).or_default().push(name);
                    }
                    if name == "new" && msg.starts_with("SIGUSR1: log file reopened") {
                        reopened.push(pid);
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}: {} broken line(s): {:?}", mode.name, broken.len(), &broken[..broken.len().min(5)]);
    let mut failures = Vec::new();
    for i in 0..started {
        match seen.get(&i).map(Vec::as_slice) {
            None => failures.push(format!("connection {i}: no line")),
            Some(["old"]) if i >= boundary => {
                failures.push(format!("connection {i} began after every process reopened, logged in the old file"))
            }
            Some([_]) => {}
            Some(more) => failures.push(format!("connection {i}: {} lines ({more:?})", more.len())),
        }
    }
    failures.extend(seen.keys().filter(|&&i| i >= started).map(|i| format!("a line of connection {i}, never made")));
    assert!(
        failures.is_empty(),
        "{}: {} of {started} connections wrong (boundary {boundary}):\n  {}",
        mode.name,
        failures.len(),
        failures[..failures.len().min(10)].join("\n  ")
    );
    let old_lines = seen.values().filter(|v| v[0] == "old").count();
    assert!(old_lines > 0 && started - old_lines as u64 > 0, "{}: one of the files holds every line", mode.name);
    // Workers say so themselves; fork children come and go (the first
    // reopens at least the parent).
    let want = if mode.name == "fork" { 1 } else { processes };
    assert!(
        reopened.contains(&server.pid) && reopened.len() >= want,
        "{}: {} of {processes} processes logged their reopen ({reopened:?})\n{}",
        mode.name,
        reopened.len(),
        files()
    );
}

per_mode!(pid_file_lifecycle, daemon_detaches_once_listening, log_reopen_loses_no_line);
