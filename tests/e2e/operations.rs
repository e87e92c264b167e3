//! Living in a deployment: started by systemd with its socket
//! (`systemd-socket-activate`), telling the service manager where it is
//! (`NOTIFY_SOCKET`, a unixgram socket bound here), upgraded to a new binary
//! without losing a connection (SIGUSR2), reloaded only as far as its new
//! workers start (prefork), and recycled when a worker grows too big.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::load::Load;
use crate::support::metrics::{scrape, try_scrape};
use crate::support::modes::{per_mode, Mode, EVENT, PREFORK, PREFORK_EVENT, PREFORK_POOL};
use crate::support::net::{close_cleanly, connect, roundtrip, try_connect, unread};
use crate::support::process::{poll_until, signal_pid};
use crate::support::procfs::proc_stat;
use crate::support::server::{Launch, Server, SETTLE_TIMEOUT};

/// A free port on 127.0.0.1 (bound and released: a wrapper that must be
/// given a port binds it a moment later).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A directory of its own for one test, removed when dropped (named
/// after `name`, this process and a counter: tests of two rows of the
/// mode table may pass the same name).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("switchyard-ops-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a process by pid when dropped (a binary upgrade's successor is
/// not a child of this test).
struct KillPid(i32);

impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = signal_pid(self.0, Signal::SIGKILL);
    }
}

// ----- systemd socket activation -----------------------------------------

/// `systemd-socket-activate -l ADDR server ...` binds ADDR, waits for the
/// first connection and `exec`s the server with the socket as fd 3: the
/// server serves on it (its start-up line says so), that first client
/// included, and stops as usual.
fn serves_a_socket_from_systemd(mode: &Mode) {
    let addr = free_port();
    let listen = addr.to_string();
    // The first client wakes the wrapper; it connects as soon as the
    // wrapper listens, and is served once the server runs.
    let first = thread::spawn(move || -> Result<(), String> {
        let mut c = None;
        poll_until(SETTLE_TIMEOUT, || {
            c = try_connect(addr).ok();
            c.is_some()
        });
        let mut c = c.ok_or("the wrapper never listened")?;
        roundtrip(&mut c, b"the first client, who woke it")?;
        close_cleanly(&mut c)
    });
    let mut server = Launch::new(mode, &[]).wrapped(&["systemd-socket-activate", "-l", &listen]).start();
    assert_eq!(server.addr, addr, "{}: the server serves the socket it was handed", mode.name);
    assert_eq!(
        server.inherited.as_deref(),
        Some("systemd"),
        "{}: the start-up line says where the socket came from",
        mode.name
    );
    first.join().unwrap().unwrap_or_else(|e| panic!("{}: {e}\n{}", mode.name, server.log()));
    let mut c = server.connect();
    roundtrip(&mut c, b"and the next").unwrap_or_else(|e| panic!("{}: {e}", mode.name));
    close_cleanly(&mut c).unwrap();
    server.signal(Signal::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}: {status:?}\n{}", mode.name, server.log());
}

per_mode!(socket_activation => serves_a_socket_from_systemd);

// ----- sd_notify ---------------------------------------------------------------

/// The service manager's side: a unixgram socket the server is pointed at.
struct Manager {
    sock: UnixDatagram,
    path: PathBuf,
    got: Vec<String>,
    _dir: Scratch,
}

impl Manager {
    fn new(name: &str) -> Manager {
        let dir = Scratch::new(name);
        let path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Manager { sock, path, got: Vec::new(), _dir: dir }
    }

    /// Reads datagrams until one has a line starting with `want` (bounded).
    fn expect(&mut self, want: &str, within: Duration) -> String {
        let until = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.got.iter().find(|m| m.lines().any(|l| l.starts_with(want))) {
                let m = m.clone();
                self.got.retain(|x| *x != m);
                return m;
            }
            assert!(Instant::now() < until, "no {want:?} within {within:?}; got {:?}", self.got);
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// Counts the datagrams with `want` over `during`.
    fn count(&mut self, want: &str, during: Duration) -> usize {
        let until = Instant::now() + during;
        let mut buf = [0u8; 4096];
        while Instant::now() < until {
            if let Ok(n) = self.sock.recv(&mut buf) {
                self.got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        let n = self.got.iter().filter(|m| m.lines().any(|l| l == want)).count();
        self.got.clear();
        n
    }
}

/// READY=1 with a STATUS once serving, STATUS updates, WATCHDOG=1 at half of
/// `WATCHDOG_USEC`, STOPPING=1 on SIGTERM.
#[test]
fn tells_the_service_manager_ready_status_watchdog_stopping() {
    let mut m = Manager::new("notify");
    let mut server =
        Launch::new(&EVENT, &[]).env("NOTIFY_SOCKET", m.path.to_str().unwrap()).env("WATCHDOG_USEC", "200000").start();
    let ready = m.expect("READY=1", SETTLE_TIMEOUT);
    assert!(ready.contains("STATUS=serving"), "{ready:?}");
    // 200 ms: a WATCHDOG=1 every 100 ms, about 10 in a second (at least 5).
    let pings = m.count("WATCHDOG=1", Duration::from_secs(1));
    assert!(pings >= 5, "{pings} WATCHDOG=1 in a second at WATCHDOG_USEC=200000");
    let mut c = server.connect();
    roundtrip(&mut c, b"one").unwrap();
    m.expect("STATUS=serving 1 connection", SETTLE_TIMEOUT);
    server.signal(Signal::SIGTERM);
    m.expect("STOPPING=1", SETTLE_TIMEOUT);
    drop(c);
    assert!(server.wait_exit(Duration::from_secs(15)).is_some_and(|s| s.success()));
}

/// Prefork: RELOADING=1 with MONOTONIC_USEC on SIGHUP, READY=1 once the new
/// workers serve.
#[test]
fn a_prefork_reload_is_reloading_then_ready() {
    let mut m = Manager::new("reload");
    let server = Launch::new(&PREFORK_EVENT, &[]).env("NOTIFY_SOCKET", m.path.to_str().unwrap()).start();
    m.expect("READY=1", SETTLE_TIMEOUT);
    server.signal(Signal::SIGHUP);
    let reloading = m.expect("RELOADING=1", SETTLE_TIMEOUT);
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let ready = m.expect("READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS=reloaded"), "{ready:?}");
}

// ----- the units in contrib/ ---------------------------------------------------

/// `KEY=VALUE` settings of a unit file's `key=` lines (`Environment=`, `ListenStream=`).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines().filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('=')).map(str::to_string).collect()
}

/// contrib/switchyard.service and .socket pass `systemd-analyze verify`
/// (with the built binary in `ExecStart`), and the service's environment,
/// run the way systemd runs it (the socket's address from
/// `systemd-socket-activate`, a notify socket), serves: the mode of the
/// unit, READY=1 with a status, the privilege drop, STOPPING=1 on SIGTERM.
#[test]
fn the_contrib_units_verify_and_serve() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let service = std::fs::read_to_string(root.join("contrib/switchyard.service")).unwrap();
    let socket = std::fs::read_to_string(root.join("contrib/switchyard.socket")).unwrap();
    assert_eq!(unit_values(&service, "Type"), ["notify"]);
    assert_eq!(unit_values(&service, "ExecStart"), ["/usr/local/bin/server"]);
    let dir = Scratch::new("units");
    let bin = env!("CARGO_BIN_EXE_server");
    std::fs::write(dir.0.join("switchyard.service"), service.replace("/usr/local/bin/server", bin)).unwrap();
    std::fs::write(dir.0.join("switchyard.socket"), &socket).unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.0.join("switchyard.socket"))
        .arg(dir.0.join("switchyard.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/setup.sh installs it)");
    let said = String::from_utf8_lossy(&verify.stderr);
    // Only about what this machine lacks (a user that the unit expects).
    let complaints: Vec<&str> = said.lines().filter(|l| !l.contains("switchyard") || l.contains("Unknown")).collect();
    assert!(verify.status.success() && complaints.is_empty(), "systemd-analyze verify: {said}");

    let env: Vec<(String, String)> = unit_values(&service, "Environment")
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    assert!(env.iter().all(|(k, _)| k.starts_with("SWITCHYARD_")), "{env:?}");
    let mode = env.iter().find(|(k, _)| k == "SWITCHYARD_MODE").map(|(_, v)| v.clone()).unwrap();
    assert_eq!(unit_values(&socket, "ListenStream"), ["127.0.0.1:7878"]);
    let addr = free_port();
    let listen = addr.to_string();
    let mut m = Manager::new("units-notify");
    // systemd-socket-activate passes on only the environment it is told to
    // (-E), as systemd does with Environment=.
    let root_user = nix::unistd::Uid::effective().is_root();
    let mut wrapper = vec!["systemd-socket-activate".to_string(), "-l".to_string(), listen.clone()];
    wrapper.extend(["-E".to_string(), format!("NOTIFY_SOCKET={}", m.path.display())]);
    for (k, v) in &env {
        let v = match k.as_str() {
            // The unit's user need not exist here; nobody does (as root).
            "SWITCHYARD_USER" if root_user => "nobody",
            "SWITCHYARD_USER" => continue,
            // A free port: the metrics of a parallel test may hold the unit's.
            "SWITCHYARD_METRICS" => "127.0.0.1:0",
            _ => v,
        };
        wrapper.extend(["-E".to_string(), format!("{k}={v}")]);
    }
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let launch = Launch::new(&PREFORK, &[]).environment_only().wrapped(&wrapper);
    let first = thread::spawn(move || -> Result<(), String> {
        let mut c = None;
        poll_until(SETTLE_TIMEOUT, || {
            c = try_connect(addr).ok();
            c.is_some()
        });
        let mut c = c.ok_or("the wrapper never listened")?;
        roundtrip(&mut c, b"woke the service")?;
        close_cleanly(&mut c)
    });
    let mut server = launch.start();
    assert_eq!(mode, "prefork");
    assert_eq!(server.inherited.as_deref(), Some("systemd"));
    first.join().unwrap().unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let ready = m.expect("READY=1", SETTLE_TIMEOUT);
    assert!(ready.contains("STATUS="), "{ready:?}");
    if root_user {
        let uid = proc_status_uid(server.pid);
        assert_ne!(uid, Some(0), "the server kept root: SWITCHYARD_USER was not applied");
    }
    let workers = server.live_children().len();
    assert_eq!(workers, 2, "SWITCHYARD_WORKERS=2 from the unit: {workers} workers");
    server.signal(Signal::SIGTERM);
    m.expect("STOPPING=1", SETTLE_TIMEOUT);
    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{status:?}\n{}", server.log());
}

/// The real user id of a process (`Uid:` in /proc/PID/status).
fn proc_status_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()
}

// ----- binary upgrade ----------------------------------------------------------

/// The pid in a `listening on ... pid=N` line.
fn pid_of(line: &str) -> i32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Five upgrades in a row under continuous load: each successor reports
/// serving on the same address, each old server drains and exits, and no
/// client sees an error or loses a byte (every round trip is checked).
fn five_upgrades_lose_nothing(mode: &Mode) {
    let server = Server::start(mode, &["--grace", "10"]);
    let load = Load::start(server.addr, 4, 10, Duration::from_millis(2), Duration::from_secs(5));
    assert!(load.progresses(40), "{}: no traffic before the upgrades", mode.name);
    let mut pid = server.pid;
    let mut guards = Vec::new();
    for n in 1..=5 {
        signal_pid(pid, Signal::SIGUSR2).unwrap();
        let line = poll_line(&server, "(socket from the server it replaces)", n)
            .unwrap_or_else(|| panic!("{}: upgrade {n}: no successor's start-up line\n{}", mode.name, server.log()));
        let next = pid_of(&line);
        guards.push(KillPid(next));
        assert!(
            poll_until(Duration::from_secs(15), || !alive(pid)),
            "{}: upgrade {n}: the old server {pid} did not drain and exit\n{}",
            mode.name,
            server.log()
        );
        pid = next;
        assert!(load.progresses(20), "{}: no traffic after upgrade {n}\n{}", mode.name, server.log());
    }
    let (trips, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{}: clients failed ({trips} round trips):\n{}\n{}",
        mode.name,
        errors.join("\n"),
        server.log()
    );
    assert!(alive(pid), "{}: the last successor is not running", mode.name);
}

/// The `n`th successor's start-up line (bounded wait).
fn poll_line(server: &Server, needle: &str, n: usize) -> Option<String> {
    let mut found = None;
    poll_until(Duration::from_secs(15), || {
        let lines: Vec<String> = server.stdout_lines().into_iter().filter(|l| l.contains(needle)).collect();
        found = lines.get(n - 1).cloned();
        found.is_some()
    });
    found
}

per_mode!(upgrade => five_upgrades_lose_nothing);

/// A server of `mode` started from a copy of the binary in `dir`, whose
/// copy is then replaced by a Python wrapper that runs `first` (a line of
/// Python: the wait before the new binary starts) and then execs a second
/// copy: what a SIGUSR2 starts is that wrapper.
fn server_with_slow_successor(dir: &Scratch, mode: &Mode, args: &[&str], first: &str) -> Server {
    let (copy, real) = (dir.0.join("server"), dir.0.join("server-real"));
    std::fs::copy(env!("CARGO_BIN_EXE_server"), &copy).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_server"), &real).unwrap();
    let server = Launch::new(mode, args).program(&copy).start();
    let wrapper = dir.0.join("wrapper");
    let script = format!(
        "#!/usr/bin/python3\nimport os, sys, time\n{first}\nos.execv({real:?}, [{real:?}] + sys.argv[1:])\n",
        real = real.display().to_string()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&wrapper, &copy).unwrap();
    server
}

/// A successor signalled from the moment it exists (SIGUSR1 and SIGHUP, as
/// a `pkill -USR1 server` from logrotate or a `pkill -HUP` would, before
/// its handlers are in place) is not killed by them: it starts with them
/// blocked, handles them once it can, and the upgrade completes. The new
/// binary takes 0.5 s to start (a wrapper that sleeps, then execs the
/// server), so the signals surely come before its handlers.
#[test]
fn a_successor_signalled_as_it_starts_is_not_killed() {
    let dir = Scratch::new("upgrade-signalled");
    let server = server_with_slow_successor(&dir, &EVENT, &[], "time.sleep(0.5)");
    let mut c = server.connect();
    roundtrip(&mut c, b"before").unwrap();
    server.signal(Signal::SIGUSR2);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut successor, mut sent) = (None, 0u32);
    while Instant::now() < deadline
        && server.stdout_lines().iter().all(|l| !l.contains("(socket from the server it replaces)"))
    {
        for child in crate::support::procfs::descendants(server.pid) {
            for sig in [Signal::SIGUSR1, Signal::SIGHUP] {
                if signal_pid(child.pid, sig).is_ok() {
                    sent += 1;
                }
            }
            successor.get_or_insert(child.pid);
        }
    }
    let line = poll_line(&server, "(socket from the server it replaces)", 1)
        .unwrap_or_else(|| panic!("no successor served ({sent} signals sent to it)\n{}", server.log()));
    let next = pid_of(&line);
    let _guard = KillPid(next);
    assert_eq!(successor, Some(next), "the signals went to another process");
    assert!(sent > 0, "no signal reached the successor before it served");
    roundtrip(&mut c, b"the old server drains").unwrap();
    close_cleanly(&mut c).unwrap();
    assert!(
        poll_until(Duration::from_secs(15), || !alive(server.pid)),
        "the old server did not exit\n{}",
        server.log()
    );
    assert!(alive(next), "the successor died\n{}", server.log());
    let mut d = TcpStream::connect(server.addr).unwrap();
    roundtrip(&mut d, b"the successor serves").unwrap();
}

/// SIGUSR2 while an upgrade is under way starts no second one, and SIGUSR2
/// to a server that drains after handing over starts none either: each is
/// logged, nothing is lost, exactly one successor serves. The new binary
/// is a wrapper that execs the server only once the test opens its gate,
/// so the upgrade is surely in progress while the extra signals arrive.
fn sigusr2_during_an_upgrade_starts_no_second_one(mode: &Mode) {
    let dir = Scratch::new(&format!("upgrade-twice-{}", mode.name));
    let gate = dir.0.join("gate");
    let wait = format!("while not os.path.exists({:?}): time.sleep(0.01)", gate.display().to_string());
    let server = server_with_slow_successor(&dir, mode, &["--grace", "10"], &wait);
    let mut c = server.connect();
    roundtrip(&mut c, b"before").unwrap();
    server.signal(Signal::SIGUSR2);
    assert!(
        server.wait_log_line("upgrade: started", SETTLE_TIMEOUT).is_some(),
        "{}: no upgrade\n{}",
        mode.name,
        server.log()
    );
    for n in 1..=2 {
        server.signal(Signal::SIGUSR2);
        assert!(
            poll_until(SETTLE_TIMEOUT, || log_count(&server, "SIGUSR2: an upgrade is in progress already") == n),
            "{}: SIGUSR2 {n} during the upgrade not refused\n{}",
            mode.name,
            server.log()
        );
        roundtrip(&mut c, b"while it starts").unwrap();
    }
    std::fs::write(&gate, b"").unwrap();
    let line = poll_line(&server, "(socket from the server it replaces)", 1)
        .unwrap_or_else(|| panic!("{}: no successor served\n{}", mode.name, server.log()));
    let next = pid_of(&line);
    let _guard = KillPid(next);
    assert!(server.wait_log_line("this server drains", SETTLE_TIMEOUT).is_some(), "{}\n{}", mode.name, server.log());
    // The old server drains (it holds `c`): SIGUSR2 now starts nothing.
    server.signal(Signal::SIGUSR2);
    assert!(
        server.wait_log_line("SIGUSR2: the server is stopping; no upgrade", SETTLE_TIMEOUT).is_some(),
        "{}: SIGUSR2 while draining not refused\n{}",
        mode.name,
        server.log()
    );
    roundtrip(&mut c, b"the old server drains").unwrap();
    close_cleanly(&mut c).unwrap();
    assert!(
        poll_until(Duration::from_secs(15), || !alive(server.pid)),
        "{}: the old server did not exit\n{}",
        mode.name,
        server.log()
    );
    let mut d = TcpStream::connect(server.addr).unwrap();
    roundtrip(&mut d, b"the successor serves").unwrap();
    assert_eq!(log_count(&server, "upgrade: started"), 1, "{}: upgrades started\n{}", mode.name, server.log());
    assert!(alive(next), "{}: the successor died\n{}", mode.name, server.log());
}

/// How many lines of the server's log (its stderr, the successors' too) contain `needle`.
fn log_count(server: &Server, needle: &str) -> usize {
    server.log().lines().filter(|l| l.contains(needle)).count()
}

per_mode!(upgrade_twice => sigusr2_during_an_upgrade_starts_no_second_one);

/// An upgrade to a binary that exits at start: the old server says why and
/// goes on serving.
#[test]
fn a_failed_upgrade_leaves_the_old_server_serving() {
    let dir = Scratch::new("upgrade-fails");
    let copy = dir.0.join("server");
    std::fs::copy(env!("CARGO_BIN_EXE_server"), &copy).unwrap();
    let server = Launch::new(&EVENT, &[]).program(&copy).start();
    // The binary on disk is replaced by one that cannot start.
    let broken = dir.0.join("broken");
    std::fs::write(&broken, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &copy).unwrap();
    let mut c = server.connect();
    roundtrip(&mut c, b"before").unwrap();
    server.signal(Signal::SIGUSR2);
    let said = server.wait_log_line("upgrade failed", Duration::from_secs(10));
    assert!(said.as_deref().is_some_and(|l| l.contains("exited before serving")), "{said:?}\n{}", server.log());
    roundtrip(&mut c, b"the old one serves on").unwrap();
    let mut d = server.connect();
    roundtrip(&mut d, b"and takes new clients").unwrap();
    assert!(alive(server.pid));
}

/// The pid in a pid file (the pid and a newline), if it is there.
fn pid_file_names(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.strip_suffix('\n')?.parse().ok()
}

/// With `--pid-file`, an upgrade follows nginx: while the old server
/// drains (a client keeps it busy) its file is `PATH.oldbin` and `PATH`
/// names the successor; once the old server is gone only `PATH` is left.
fn an_upgrade_hands_the_pid_file_over(mode: &Mode) {
    let dir = Scratch::new(&format!("upgrade-pid-{}", mode.args.len()));
    let (path, oldbin) = (dir.0.join("server.pid"), dir.0.join("server.pid.oldbin"));
    let server = Server::start(mode, &["--grace", "20", "--pid-file", path.to_str().unwrap()]);
    assert_eq!(pid_file_names(&path), Some(server.pid));
    let mut held = server.connect();
    roundtrip(&mut held, b"keeps the old server draining").unwrap();
    server.signal(Signal::SIGUSR2);
    let line = poll_line(&server, "(socket from the server it replaces)", 1)
        .unwrap_or_else(|| panic!("{}: no successor\n{}", mode.name, server.log()));
    let next = pid_of(&line);
    let _guard = KillPid(next);
    assert_eq!(pid_file_names(&path), Some(next), "{}: PATH names the successor once it serves", mode.name);
    assert_eq!(pid_file_names(&oldbin), Some(server.pid), "{}: PATH.oldbin names the draining server", mode.name);
    roundtrip(&mut held, b"served while draining").unwrap();
    close_cleanly(&mut held).unwrap();
    assert!(poll_until(Duration::from_secs(15), || !alive(server.pid)), "{}: the old server did not exit", mode.name);
    assert!(!oldbin.exists(), "{}: PATH.oldbin outlived the old server", mode.name);
    assert_eq!(pid_file_names(&path), Some(next), "{}: the successor's file after the old one left", mode.name);
    signal_pid(next, Signal::SIGTERM).unwrap();
    assert!(poll_until(Duration::from_secs(15), || !alive(next)), "{}: the successor did not stop", mode.name);
    assert!(!path.exists(), "{}: the successor left its pid file", mode.name);
}

#[test]
fn an_upgrade_hands_the_pid_file_over_event() {
    an_upgrade_hands_the_pid_file_over(&EVENT);
}

#[test]
fn an_upgrade_hands_the_pid_file_over_prefork() {
    an_upgrade_hands_the_pid_file_over(&PREFORK_EVENT);
}

/// A failed upgrade moves the pid file back: `PATH` names the old server,
/// no `PATH.oldbin` is left.
#[test]
fn a_failed_upgrade_gives_the_pid_file_back() {
    let dir = Scratch::new("upgrade-fails-pid");
    let copy = dir.0.join("server");
    std::fs::copy(env!("CARGO_BIN_EXE_server"), &copy).unwrap();
    let path = dir.0.join("server.pid");
    let server = Launch::new(&EVENT, &["--pid-file", path.to_str().unwrap()]).program(&copy).start();
    let broken = dir.0.join("broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &copy).unwrap();
    server.signal(Signal::SIGUSR2);
    assert!(server.wait_log_line("upgrade failed", Duration::from_secs(10)).is_some(), "{}", server.log());
    assert!(server.wait_log_line("pid file moved to", Duration::from_secs(1)).is_some(), "{}", server.log());
    assert_eq!(pid_file_names(&path), Some(server.pid), "PATH is the old server's again\n{}", server.log());
    assert!(!dir.0.join("server.pid.oldbin").exists());
    roundtrip(&mut server.connect(), b"serves on").unwrap();
}

// ----- prefork: health-checked reloads, memory -------------------------------

/// A reload whose new workers cannot start (the fault shim makes their
/// pool threads fail once a file exists): the reload is given up, the old
/// workers serve on, and it is logged and counted.
#[test]
fn a_reload_whose_workers_cannot_start_keeps_the_old_ones() {
    let dir = Scratch::new("reload-fails");
    let flag = dir.0.join("broken");
    let spec = format!("pthread_create:EAGAIN:every=1:count=100000:when=exists:{}", flag.display());
    let server = Launch::new(&PREFORK_POOL, &["--metrics", "127.0.0.1:0", "--threads", "2"]).faults(&spec).start();
    let maddr = server.metrics_addr();
    // Both workers set up (their threads made) before the fault is armed:
    // it is meant for the reload's new workers only.
    let mut before = Default::default();
    let serving = poll_until(SETTLE_TIMEOUT, || {
        before = scrape(maddr).per_pid("switchyard_worker_serving");
        before.len() == 2 && before.values().all(|&v| v == 1.0)
    });
    assert!(serving, "two workers serving before the reload: {before:?}\n{}", server.log());
    std::fs::write(&flag, "").unwrap();
    server.signal(Signal::SIGHUP);
    let said = server.wait_log_line("reload failed", Duration::from_secs(10));
    assert!(said.is_some(), "no failed reload logged\n{}", server.log());
    let mut c = server.connect();
    roundtrip(&mut c, b"the old workers serve").unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    close_cleanly(&mut c).unwrap();
    let mut after = None;
    poll_until(SETTLE_TIMEOUT, || {
        after = try_scrape(maddr).ok();
        after.as_ref().is_some_and(|p| p.value("switchyard_reload_failures_total") == 1.0)
    });
    let after = after.unwrap();
    assert_eq!(after.value("switchyard_reload_failures_total"), 1.0, "{}", after.text);
    let pids: Vec<i32> = after.per_pid("switchyard_worker_connections_accepted_total").into_keys().collect();
    for old in before.keys() {
        assert!(pids.contains(old), "old worker {old} was drained by a failed reload: now {pids:?}");
    }
}

/// `--max-worker-memory 40`: a worker made to hold ~64 MiB (a client that
/// never reads, against `--max-buffer 64 MiB`) is replaced, its successor
/// first, while another client goes on being served; the metrics show each
/// worker's RSS and busy ratio.
#[test]
fn a_worker_over_its_memory_limit_is_replaced() {
    let server = Server::start(
        &Mode { args: &["--workers", "1", "--worker", "event"], ..PREFORK },
        &["--max-worker-memory", "40", "--max-buffer", "67108864", "--grace", "2", "--metrics", "127.0.0.1:0"],
    );
    let maddr = server.metrics_addr();
    // The master reads them at its sweeps, every half second.
    let mut page = scrape(maddr);
    poll_until(SETTLE_TIMEOUT, || {
        page = scrape(maddr);
        !page.per_pid("switchyard_worker_busy_ratio").is_empty()
    });
    let rss = page.per_pid("switchyard_worker_rss_bytes");
    let busy = page.per_pid("switchyard_worker_busy_ratio");
    let (&worker, &r) = rss.iter().next().expect("a worker's RSS on the page");
    assert!(r > 1e6 && r < 40e6, "worker RSS {r}");
    assert!(busy.get(&worker).is_some_and(|b| (0.0..=1.0).contains(b)), "busy ratio {busy:?}");
    // The hog: writes 80 MiB and never reads; the worker buffers what it
    // owes it, up to --max-buffer.
    let addr = server.addr;
    let hog = thread::spawn(move || {
        let mut s: TcpStream = connect(addr);
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..80 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        unread(&s)
    });
    let said = server.wait_log_line("over --max-worker-memory", Duration::from_secs(20));
    assert!(said.as_deref().is_some_and(|l| l.contains(&format!("worker {worker}"))), "{said:?}\n{}", server.log());
    let mut replaced = false;
    poll_until(Duration::from_secs(10), || {
        let pids: Vec<i32> = try_scrape(maddr)
            .map(|p| p.per_pid("switchyard_worker_rss_bytes").into_keys().collect())
            .unwrap_or_default();
        replaced = pids.iter().any(|p| *p != worker);
        replaced
    });
    assert!(replaced, "no new worker beside {worker}\n{}", server.log());
    let mut c = server.connect();
    roundtrip(&mut c, b"served by the new worker").unwrap_or_else(|e| panic!("{e}\n{}", server.log()));
    let _ = hog.join();
}
